"""Overhead measurement of a stage: peak memory (process RSS on CPU, CUDA peak on GPU) and step
time (the ``Overhead`` callback), one implementation for the pipeline, the bench and the scaling
sweep.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import time

import torch
from transformers import TrainerCallback


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
