"""The auxiliary data of the multi-pass trainers: a seeded, cycled loader (``CyclingLoader``) of
the defender's set, the ``AuxiliaryMixin`` that draws from it, logs auxiliary losses and keeps
the loader's position in checkpoints, and the harmful pass Booster and Panacea share.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.profiler import record_function

from ..errors import DataError
from ..weights import global_l2
from .checks import check_finite
from .gradients import process_gradients, process_mean, token_share


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


def add_auxiliary_logs(logs: dict, aux: dict) -> None:
    """Put the mean of each auxiliary loss since the last log into ``logs`` and reset them
    (rule 7: the task loss stays ``loss``; h(w), h(w+ε), … are logged under their own keys)."""
    for k, v in aux.items():
        if v:
            logs[k] = round(sum(v) / len(v), 4)
    aux.clear()
