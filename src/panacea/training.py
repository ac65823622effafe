"""Plumbing shared by every training stage: ``TrainingArguments`` from a config and overhead
measurement. No method logic lives here (style.md, habit 1)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import asdict

import torch
from transformers import TrainerCallback, TrainingArguments


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
    kw.update(extra)
    return TrainingArguments(**kw)


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


def _reset_peak():
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: writing 5 resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Overhead(TrainerCallback):
    """Step time (mean after ``warmup`` steps) and peak memory of one training stage.

    Memory is ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on a CPU
    (protocol.md §10 asks for peak allocated memory on named hardware).
    """

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self.times: list[float] = []
        self._t0 = 0.0
        self.train_seconds = 0.0

    def on_train_begin(self, args, state, control, **kw):
        _reset_peak()
        self._start = time.perf_counter()

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t0)

    def on_train_end(self, args, state, control, **kw):
        self.train_seconds = time.perf_counter() - self._start

    def summary(self) -> dict:
        t = self.times[self.warmup :] or self.times
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _rss_peak_bytes()
        return {
            "train_seconds": round(self.train_seconds, 2),
            "steps": len(self.times),
            "step_seconds": round(sum(t) / len(t), 4) if t else None,
            "peak_memory_gb": round(peak / 2**30, 3),
            "memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "process_peak_rss",
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{os.cpu_count()}",
        }


class CyclingLoader:
    """An auxiliary data loader (a defender's harmful set) for multi-pass trainers.

    Seeded random sampler, cycled with a fresh iterator when exhausted (algorithms.md §0, rule 6);
    its batch size is a config field, never hard-coded (rule 5).
    """

    def __init__(self, dataset, batch_size: int, seed: int, collate_fn):
        gen = torch.Generator().manual_seed(seed)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, generator=gen, collate_fn=collate_fn
        )
        self._it = iter(self.loader)

    def next(self):
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)


def add_auxiliary_logs(logs: dict, aux: dict) -> None:
    """Put the mean of each auxiliary loss since the last log into ``logs`` and reset them
    (rule 7: the task loss stays ``loss``; h(w), h(w+ε), … are logged under their own keys)."""
    for k, v in aux.items():
        if v:
            logs[k] = round(sum(v) / len(v), 4)
    aux.clear()
