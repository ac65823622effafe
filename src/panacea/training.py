"""Plumbing shared by every training stage: ``TrainingArguments`` from a config, overhead
measurement, the auxiliary data loader, and what the multi-pass trainers need to stay correct on
several processes. No method logic lives here (docs/contributing.md#habits, habit 1).

Several processes (docs/algorithms.md#shared-rules, rules 2 and 6). The Trainer averages the
gradient of its own ``backward`` over processes (DDP all-reduce, FSDP reduce-scatter); the
multi-pass trainers take gradients themselves and write ``.grad``, so they use
``process_gradients``, which returns the same average: ``torch.autograd.grad`` +
``average_across_processes`` for replicated parameters (one process, DDP: ``.grad`` and DDP's
reducer are never touched, so nothing is averaged twice), or one ``backward`` read out of ``.grad``
for FSDP2's sharded parameters (``autograd.grad`` cannot reach them). The Trainer's own loss
(``compute_loss`` with ``num_items_in_batch``) is already weighted by target tokens across processes
(``average_tokens_across_devices``, on by default: the token count is summed over processes and the
loss multiplied by their number), so its gradient is averaged plainly. A loss the trainer computes
itself (the defender's harmful batch) is a token mean over the process's own share of the batch;
``token_share`` rescales it so that the plain average over processes is the token mean over the
global batch, as on one process with the batches concatenated. DeepSpeed (it keeps gradients in its
own partitioned buffers) and FSDP1 (flat parameters) are refused by ``require_gradient_access`` with
one line.
"""

from __future__ import annotations

import os
import resource
import time
from collections import defaultdict
from dataclasses import asdict

import torch
from torch.profiler import record_function
from transformers import ProgressCallback, TrainerCallback, TrainingArguments

from .distributed import is_main, launched_processes, num_processes
from .errors import ConfigError, DataError, NonFiniteError
from .weights import average_across_processes, global_l2, is_dtensor


def training_arguments(train, output_dir, seed: int, **extra) -> TrainingArguments:
    """``TrainingArguments`` from a ``TrainSettings`` (same field names)."""
    kw = dict(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    kw.update(asdict(train))
    # checkpoints (TrainSettings.save_steps, 0 = none): the Trainer writes them, the pipeline
    # completes, rotates and deletes them (checkpoint.CheckpointState), so a checkpoint is never
    # deleted before its successor is complete
    save_steps = kw.pop("save_steps", 0)
    kw.pop("save_total_limit", None)
    kw.pop("keep_checkpoints", None)
    if save_steps:
        kw.update(save_strategy="steps", save_steps=save_steps, save_total_limit=None)
    if kw.pop("global_batch_size", None) is not None:
        kw["per_device_train_batch_size"] = per_device_batch_size(train, launched_processes())
    kw.update(extra)
    return TrainingArguments(**kw)


def per_device_batch_size(train, processes: int, key: str = "train.global_batch_size") -> int:
    """The per-process batch of a ``TrainSettings`` on ``processes`` processes.

    ``per_device_train_batch_size`` unless ``global_batch_size`` is set; then that divided by
    processes × ``gradient_accumulation_steps``, which must divide it (else a ``ConfigError``
    naming ``key``, the ``global_batch_size`` key as the user typed it, e.g.
    ``finetune.train.global_batch_size``).
    """
    if train.global_batch_size is None:
        return train.per_device_train_batch_size
    ga = train.gradient_accumulation_steps
    if train.global_batch_size % (processes * ga):
        raise ConfigError(
            f"{key}: {train.global_batch_size} is not divisible by {processes} processes × "
            f"gradient_accumulation_steps {ga}; pick a world size that divides it or change the batch"
        )
    return train.global_batch_size // (processes * ga)


def _rss_peak_bytes() -> int:
    """Peak resident memory of this process since the last reset (Linux ``VmHWM``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_freed_memory() -> None:
    """Collect garbage (a finished stage's Trainer and model sit in reference cycles until the
    next collection) and hand freed memory back (the CUDA cache; heap pages to the OS with glibc
    ``malloc_trim``), so the RSS a stage starts from is what is alive, not what earlier stages
    left behind."""
    import ctypes
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): RSS then includes retained heap
        pass


def _reset_peak():
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    release_freed_memory()
    try:  # Linux: writing 5 resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Overhead(TrainerCallback):
    """Step time (mean after ``warmup`` steps) and peak memory of one training stage.

    Memory is ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on a CPU
    (docs/protocol.md#overhead asks for peak allocated memory on named hardware).
    """

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self.times: list[float] = []
        self._t0 = 0.0
        self._start = time.perf_counter()
        self.train_seconds = 0.0
        self.prior_seconds = 0.0  # training time before a resume (from the checkpoint)

    def on_train_begin(self, args, state, control, **kw):
        _reset_peak()
        self._start = time.perf_counter()

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t0)

    def on_train_end(self, args, state, control, **kw):
        self.train_seconds = self.prior_seconds + time.perf_counter() - self._start

    def state_dict(self) -> dict:
        """Step times and training seconds so far, saved with a checkpoint."""
        return {"times": list(self.times), "seconds": self.prior_seconds + time.perf_counter() - self._start}

    def load_state_dict(self, state: dict) -> None:
        self.times = list(state["times"])
        self.prior_seconds = float(state["seconds"])

    def summary(self) -> dict:
        t = self.times[self.warmup :] or self.times
        return {
            "train_seconds": round(self.train_seconds, 2),
            "steps": len(self.times),
            "step_seconds": round(sum(t) / len(t), 4) if t else None,
            **peak_memory(),
        }


def reset_peak_memory() -> None:
    """Start a stage's peak-memory measurement (``peak_memory``) from what is alive now: freed
    memory is returned first, then the CUDA peak or the process's RSS high-water mark is reset."""
    _reset_peak()


def peak_memory() -> dict:
    """Peak memory since ``reset_peak_memory`` as a stage record's fields: ``peak_memory_gb``,
    ``memory_kind`` (``cuda_max_allocated`` on a GPU, ``process_peak_rss`` on a CPU) and ``device``.
    The training stages (``Overhead``) and the one-shot post-fine-tuning defenses record the same."""
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _rss_peak_bytes()
    return {
        "peak_memory_gb": round(peak / 2**30, 3),
        "memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "process_peak_rss",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{os.cpu_count()}",
    }


class NamedProgress(ProgressCallback):
    """The Trainer's own progress bar (``ProgressCallback``) labelled with its stage, e.g.
    ``finetune/panacea`` (the stage's folder in the run directory)."""

    def __init__(self, desc: str):
        super().__init__()
        self.desc = desc

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.desc)


def name_progress(trainer, desc: str) -> None:
    """Replace ``trainer``'s default progress bar by a ``NamedProgress(desc)`` (none is added when
    the Trainer shows no bar, ``disable_tqdm``)."""
    if any(type(cb) is ProgressCallback for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(NamedProgress(desc))


class CyclingLoader:
    """An auxiliary data loader (a defender's harmful set) for multi-pass trainers.

    Seeded random sampler, cycled with a fresh iterator when exhausted
    (docs/algorithms.md#shared-rules, rule 6);
    its batch size is a config field, never hard-coded (rule 5). ``state_dict`` /
    ``load_state_dict`` save and restore its exact position, for runs resumed from a checkpoint.

    The batch size is per process: on N processes every process draws the same seeded global
    batch of N × ``batch_size`` examples and keeps slice ``process_index`` of it (accelerate's
    ``BatchSamplerShard`` order), so N processes × b see exactly the examples one process sees
    with batch N·b. There an incomplete last global batch is dropped (every process needs a full
    batch); one process keeps it, as before.
    """

    def __init__(self, dataset, batch_size: int, seed: int, collate_fn, num_processes: int = 1,
                 process_index: int = 0, key: str = "harmful_data"):
        self._gen = torch.Generator().manual_seed(seed)
        if num_processes == 1:
            self.loader = torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, shuffle=True, generator=self._gen, collate_fn=collate_fn
            )
        else:
            if len(dataset) < batch_size * num_processes:
                raise DataError(
                    f"{key}: {len(dataset)} examples cannot fill one batch of {batch_size} on each of "
                    f"{num_processes} processes; lower the batch size or add data"
                )
            sampler = torch.utils.data.RandomSampler(dataset, generator=self._gen)
            batches = torch.utils.data.BatchSampler(sampler, batch_size * num_processes, drop_last=True)
            start = process_index * batch_size
            self.loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=_Slice(batches, start, start + batch_size), generator=self._gen,
                collate_fn=collate_fn,
            )
        self._new_pass()

    @classmethod
    def for_trainer(cls, trainer, dataset, batch_size: int, key: str = "harmful_data"):
        """A loader seeded with ``args.seed``, its batches sharded over the trainer's processes."""
        acc = trainer.accelerator
        return cls(dataset, batch_size, trainer.args.seed, trainer.data_collator,
                   acc.num_processes, acc.process_index, key)

    def _new_pass(self):
        # every random draw of a pass (base seed, permutation) comes from the generator after this
        # state, so (state, batches taken) reproduces the position exactly (state_dict)
        self._pass_start = self._gen.get_state()
        self._it = iter(self.loader)
        self._taken = 0

    def next(self):
        try:
            batch = next(self._it)
        except StopIteration:
            self._new_pass()
            batch = next(self._it)
        self._taken += 1
        return batch

    def state_dict(self) -> dict:
        """The position: the generator state at the start of the current pass and the batches taken."""
        return {"generator": self._pass_start.clone(), "taken": self._taken}

    def load_state_dict(self, state: dict) -> None:
        self._gen.set_state(state["generator"])
        self._new_pass()
        for _ in range(int(state["taken"])):
            next(self._it)
        self._taken = int(state["taken"])


class _Slice:
    """Positions ``[start, stop)`` of every batch of a batch sampler."""

    def __init__(self, batches, start: int, stop: int):
        self.batches, self.start, self.stop = batches, start, stop

    def __iter__(self):
        for b in self.batches:
            yield b[self.start : self.stop]

    def __len__(self):
        return len(self.batches)


class AuxiliaryMixin:
    """What the multi-pass trainers share (``class X(AuxiliaryMixin, Trainer)``): auxiliary losses
    appended to ``self._aux`` and logged under their own keys (``add_auxiliary_logs``), and one
    auxiliary data set (the defender's harmful, alignment or safety set) drawn by ``_aux_batch``
    from a ``CyclingLoader`` built at the first batch, whose position ``extra_state`` saves under
    ``aux_state_key`` (``checkpoint.CheckpointState``). Call ``_init_auxiliary`` after
    ``Trainer.__init__``; a trainer with more state extends ``extra_state`` / ``load_extra_state``.
    """

    aux_state_key = "harmful"

    def _init_auxiliary(self, dataset=None, batch_size: int | None = None, key: str = "harmful_data") -> None:
        """``dataset`` None: logs only (no loader, no state); ``batch_size`` None: the Trainer's
        ``per_device_train_batch_size``; ``key`` names the data set in errors."""
        self._aux = defaultdict(list)
        self._aux_data, self._aux_batch_size, self._aux_key = dataset, batch_size, key
        self._aux_loader: CyclingLoader | None = None

    def _auxiliary_loader(self) -> CyclingLoader:
        if self._aux_loader is None:  # per process; on N processes each takes its slice of N batches
            bs = self._aux_batch_size or self.args.per_device_train_batch_size
            self._aux_loader = CyclingLoader.for_trainer(self, self._aux_data, bs, self._aux_key)
        return self._aux_loader

    def _aux_batch(self):
        """The next auxiliary batch, on the trainer's device."""
        return self._prepare_inputs(self._auxiliary_loader().next())

    def _harmful_gradient(self, model, params, tag: str):
        """The harmful pass of Booster (its pass 1) and Panacea (its pass 2): the next defender
        batch, its loss h(w) (the processes' token-weighted mean), ∇h(w) averaged over processes,
        and ‖∇h(w)‖ (global L2), each checked finite before anything is written. The batch and its
        token share are returned so that the next pass reuses exactly this batch.

        Returns ``(batch, share, h_w, grad_h, norm_h)``; profiled as ``<tag>/harmful_pass``.
        """
        hb = self._aux_batch()
        share = token_share(hb)  # 1.0 on one process
        with record_function(f"{tag}/harmful_pass"):
            with self.compute_loss_context_manager():
                loss_h = model(**hb).loss
            h_w = process_mean(loss_h, share)
            check_finite(self, "h(w)", h_w)
            grad_h = process_gradients(loss_h * share, params, model)
        norm_h = global_l2(grad_h)
        check_finite(self, "‖∇h(w)‖", norm_h)
        return hb, share, h_w, grad_h, norm_h

    def log(self, logs, *args, **kwargs):
        add_auxiliary_logs(logs, self._aux)
        super().log(logs, *args, **kwargs)

    # -- resume: the auxiliary loader's position (None until the first batch); logs only: no state
    def extra_state(self) -> dict | None:
        if self._aux_data is None:
            return None
        return {self.aux_state_key: None if self._aux_loader is None else self._aux_loader.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if state[self.aux_state_key] is not None:
            self._auxiliary_loader().load_state_dict(state[self.aux_state_key])


# --------------------------------------------------------------------------- several processes


def require_gradient_access(trainer, method: str) -> None:
    """Refuse engines under which a trainer cannot write ``.grad`` itself (one line, exit 2)."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        raise ConfigError(
            f"{method} writes its own gradients, which DeepSpeed keeps in its partitioned buffers; "
            "launch it with configs/accelerate/ddp.yaml or configs/accelerate/fsdp.yaml"
        )
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is not None and getattr(plugin, "fsdp_version", 1) != 2:
        raise ConfigError(f"{method} under FSDP needs fsdp_version: 2 (see configs/accelerate/fsdp.yaml)")


def process_gradients(loss, params, model=None) -> list[torch.Tensor]:
    """∇loss w.r.t. ``params`` averaged over processes, without changing ``.grad``.

    These are the values DDP or FSDP would leave in ``.grad`` after ``loss.backward()``, identical
    on every process (sharded like the parameters under FSDP2). On one process: exactly
    ``torch.autograd.grad(loss, params)``.
    """
    if any(is_dtensor(p) for p in params):
        # FSDP2: the registered parameters are shards outside the autograd graph; one backward
        # reduce-scatters their averaged gradient into .grad, which is read and put back as it was
        if model is not None and hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(True)  # also inside the Trainer's no_sync window
        saved = [p.grad for p in params]
        for p in params:
            p.grad = None
        loss.backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        for p, g in zip(params, saved):
            p.grad = g
        return grads
    return average_across_processes(torch.autograd.grad(loss, params))


def micro_batch_scale(trainer, num_items_in_batch) -> float:
    """The factor a micro-batch's loss gets before its gradient is added, as ``Trainer.training_step``
    applies it: 1 when the model's loss already divides by the whole step's target-token count
    (``num_items_in_batch``, token-weighted across micro-batches), else 1/GA."""
    scaled = trainer.model_accepts_loss_kwargs and num_items_in_batch is not None
    return 1.0 if scaled else 1.0 / trainer.current_gradient_accumulation_steps


def accumulate_grads(params, grads) -> None:
    """``p.grad += G`` (G in ``p``'s dtype; ``p.grad = G`` when there is none yet), outside autograd:
    how a trainer that computes its own gradient adds one micro-batch, as ``backward`` would.
    ``grads`` may be a generator; it is evaluated under ``no_grad``."""
    with torch.no_grad():
        for p, g in zip(params, grads):
            g = g.to(p.dtype)
            p.grad = g if p.grad is None else p.grad + g


def token_share(batch):
    """N·n_r / Σ_r n_r for this process r's batch (n = target tokens, N = processes); 1.0 on one.

    A token-mean loss multiplied by it has, averaged over processes, the gradient of the token
    mean over all processes' batches together (what one process computes on the concatenation).
    """
    n_proc = num_processes()
    if n_proc == 1:
        return 1.0
    n = (batch["labels"][..., 1:] != -100).sum().float()
    total = n.clone()
    torch.distributed.all_reduce(total)
    return n_proc * n / total.clamp_min(1.0)


def process_mean(value: torch.Tensor, share=1.0) -> torch.Tensor:
    """The mean over processes of ``value × share`` (with ``token_share``: the global token mean)."""
    value = value.detach()
    if num_processes() == 1:
        return value
    v = (value.float() * share).reshape(1)
    torch.distributed.all_reduce(v)
    return (v / num_processes())[0]


def full_tensors(tensors) -> list[torch.Tensor]:
    """Whole tensors from FSDP2 shards (collective: call it on every process); others unchanged."""
    return [t.full_tensor() if is_dtensor(t) else t for t in tensors]


def save_adapter(model, path, trainer=None) -> None:
    """Save a peft model's adapter to ``path`` from the main process only.

    Under FSDP2 the trainable tensors are gathered from their shards first, and under DeepSpeed
    (``trainer`` given) the state dict comes from ``accelerator.get_state_dict`` (ZeRO-3 needs
    ``zero3_save_16bit_model: true``); both are collectives, so call this on every process. The
    caller makes the other processes wait before they read the files (the pipeline's stage barrier).
    """
    state = None
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if trainer is not None and getattr(trainer, "is_deepspeed_enabled", False):
        full = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        state = {n: full[n] for n, _ in named if n in full} if is_main() else None
    elif any(is_dtensor(p) for _, p in named):
        state = {n: t.detach().cpu() for (n, _), t in zip(named, full_tensors([p for _, p in named]))}
    if is_main():
        kw = {} if state is None else {"state_dict": state}
        model.save_pretrained(str(path), safe_serialization=True, **kw)


def check_finite(trainer, term: str, value: torch.Tensor) -> None:
    """Raise ``NonFiniteError`` if ``value`` (a loss term or a gradient norm) is NaN or ±inf.

    Called inside ``training_step`` before the step writes any gradient, so the weights are still
    those of the last good step; ``term`` names the value in the error (e.g. ``h(w+ε)``) and the
    step is the optimizer step being computed (1-based).
    """
    v = value.detach()
    if not bool(torch.isfinite(v).all()):
        shown = str(v.item()) if v.numel() == 1 else ("nan" if bool(torch.isnan(v).any()) else "inf")
        raise NonFiniteError(term, trainer.state.global_step + 1, shown)


def add_auxiliary_logs(logs: dict, aux: dict) -> None:
    """Put the mean of each auxiliary loss since the last log into ``logs`` and reset them
    (rule 7: the task loss stays ``loss``; h(w), h(w+ε), … are logged under their own keys)."""
    for k, v in aux.items():
        if v:
            logs[k] = round(sum(v) / len(v), 4)
    aux.clear()
