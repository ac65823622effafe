"""Trainer checkpoints a killed run resumes from exactly, and the NaN/inf guard of a training stage.

With ``train.save_steps: N`` the Trainer writes ``<stage>/checkpoint-<step>/`` every N optimizer
steps: the adapter (safetensors), optimizer, scheduler and RNG states and ``trainer_state.json``
(transformers reads its PyTorch files back with ``weights_only=True``, no arbitrary pickle).
``CheckpointState`` completes each one with what the Trainer does not know::

    panacea_state.safetensors   tensors of the defense's own state (Panacea's ε and its window,
                                Lisa's anchors, the generator of every auxiliary loader)
    panacea_state.json          the rest of that state (numbers, strings) and where each tensor goes
    panacea_checkpoint.json     written last: the step and the sha256 of every file above

A checkpoint without ``panacea_checkpoint.json``, or whose files no longer match it, is incomplete
and never resumed from; an older checkpoint is deleted only once a newer one is complete.

A trainer takes part by implementing ``defenses.base.Resumable``: ``extra_state() -> dict``
(nested dicts and lists of tensors, numbers, strings and None) and ``load_extra_state(state)``;
the latter is called before ``train()``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from .defenses.base import Resumable
from .rundir import sha256_file, write_json
from .training import check_finite

MARKER = "panacea_checkpoint.json"
STATE = "panacea_state"
_NAME = re.compile(r"checkpoint-(\d+)")


# --------------------------------------------------------------------------- state <-> files


def _split(obj, tensors: dict, path: str):
    """JSON-able copy of ``obj`` with every tensor moved into ``tensors`` under its path."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {str(k): _split(v, tensors, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    return obj


def _join(obj, tensors: dict):
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save_state(folder: Path, state: dict, suffix: str = "") -> None:
    tensors: dict = {}
    meta = _split(state, tensors, "state")
    if tensors:
        save_file(tensors, str(folder / f"{STATE}{suffix}.safetensors"))
    # every process writes its own state (rundir.write_json writes from the main process only)
    path = folder / f"{STATE}{suffix}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta), encoding="utf-8")
    os.replace(tmp, path)


def load_state(folder: Path, suffix: str = "") -> dict:
    meta = json.loads((folder / f"{STATE}{suffix}.json").read_text(encoding="utf-8"))
    st = folder / f"{STATE}{suffix}.safetensors"
    tensors = load_file(str(st)) if st.exists() else {}
    return _join(meta, tensors)


# --------------------------------------------------------------------------- finding and pruning checkpoints


def _step(p: Path) -> int:
    m = _NAME.fullmatch(p.name)
    return int(m.group(1)) if m else -1


def checkpoints(stage_dir: Path) -> list[Path]:
    """Every ``checkpoint-<step>`` folder of a stage, newest first (complete or not)."""
    if not Path(stage_dir).is_dir():
        return []
    found = [p for p in Path(stage_dir).iterdir() if p.is_dir() and _step(p) >= 0]
    return sorted(found, key=_step, reverse=True)


def is_complete(ckpt: Path) -> bool:
    try:
        files = json.loads((ckpt / MARKER).read_text(encoding="utf-8"))["files"]
        return bool(files) and all(sha256_file(ckpt / rel) == digest for rel, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def latest_checkpoint(stage_dir: Path) -> Path | None:
    """The newest complete checkpoint of a stage; incomplete and newer ones are deleted."""
    found = checkpoints(stage_dir)
    for i, ckpt in enumerate(found):
        if is_complete(ckpt):
            for newer in found[:i]:
                shutil.rmtree(newer, ignore_errors=True)
            return ckpt
    return None


def remove_checkpoints(stage_dir: Path, keep: list[Path] = ()) -> None:
    keep = {Path(k).resolve() for k in keep}
    for ckpt in checkpoints(stage_dir):
        if ckpt.resolve() not in keep:
            shutil.rmtree(ckpt, ignore_errors=True)


# --------------------------------------------------------------------------- the callback


class CheckpointState(TrainerCallback):
    """Completes every Trainer checkpoint with the defense's and the overhead meter's state, marks
    it complete, then keeps the newest ``limit`` complete checkpoints (module docstring)."""

    def __init__(self, trainer, overhead, limit: int = 1):
        self.trainer, self.overhead, self.limit = trainer, overhead, max(1, limit)

    def _suffix(self, args) -> str:
        return f"_{args.process_index}" if args.world_size > 1 else ""

    def state(self) -> dict:
        extra = self.trainer.extra_state() if isinstance(self.trainer, Resumable) else None
        return {"trainer": extra, "overhead": self.overhead.state_dict()}

    def on_save(self, args, state, control, **kw):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        save_state(folder, self.state(), self._suffix(args))
        if args.world_size > 1:
            self.trainer.accelerator.wait_for_everyone()
        if args.should_save:
            files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
            write_json(folder / MARKER, {"step": state.global_step,
                                         "files": {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}})
            complete = [c for c in checkpoints(args.output_dir) if c == folder or is_complete(c)]
            remove_checkpoints(args.output_dir, keep=complete[: self.limit])
        return control

    def load(self, ckpt: Path) -> None:
        """Restore the defense's and the overhead meter's state from ``ckpt`` (before ``train``)."""
        st = load_state(ckpt, self._suffix(self.trainer.args))
        if st.get("trainer") is not None:
            self.trainer.load_extra_state(st["trainer"])
        self.overhead.load_state_dict(st["overhead"])

    def save_now(self) -> Path:
        """A complete checkpoint of the current state (after ``global_step`` good steps), e.g. when
        a step turned out NaN: the weights and optimizer are still those of the last good step."""
        t = self.trainer
        folder = Path(t.args.output_dir) / f"checkpoint-{t.state.global_step}"
        if not is_complete(folder):
            shutil.rmtree(folder, ignore_errors=True)
            t._save_checkpoint(t.model, trial=None)
            self.on_save(t.args, t.state, t.control)
        return folder


class NumericsGuard(TrainerCallback):
    """Stops a stage at the first NaN/inf training loss or gradient (``NonFiniteError``).

    The loss each ``training_step`` returns is checked (multi-pass trainers also check each of
    their own terms, by name, inside the step); the gradients are checked just before the
    optimizer step, so no weight is ever updated with a non-finite value.
    """

    def __init__(self, trainer):
        step = trainer.training_step

        def training_step(model, inputs, num_items_in_batch=None):
            loss = step(model, inputs, num_items_in_batch)
            check_finite(trainer, "training loss", loss)
            return loss

        trainer.training_step = training_step
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        grads = [p.grad for p in (model or self.trainer.model).parameters() if p.requires_grad and p.grad is not None]
        if grads:
            dev = grads[0].device
            ok = torch.stack([torch.isfinite(g).all().to(dev) for g in grads]).all()
            check_finite(self.trainer, "gradient", torch.where(ok, 0.0, float("nan")))
        return control
