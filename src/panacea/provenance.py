"""Where a result came from: package versions, the git commit of the source, the machine.

One implementation for every file that records it: ``metrics.json`` of a run (``provenance``),
``timings.json`` (``machine``, with the GPU), ``panacea record``'s ``result.json`` and the bench's
``results.json``.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .distributed import num_processes

#: the packages whose versions decide a result
PACKAGES = ("panacea", "torch", "transformers", "peft", "accelerate")


def versions() -> dict:
    """``{package: version or None}`` for ``PACKAGES`` as installed."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict:
    """The commit of the git checkout this package's source runs from, and whether tracked files
    had local changes: ``{"commit": sha, "dirty": bool}``; ``{"commit": None, "dirty": None}`` when
    the source is not in a git checkout (an installed wheel) or git is missing."""
    src = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        # the package itself must be tracked: an installed copy that merely sits inside some
        # other repository (a virtualenv in a project folder) has no commit of its own
        git("ls-files", "--error-unmatch", "__init__.py")
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(dirty)}


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host() -> dict:
    """The machine without anything that needs torch: CPU model, cores, OS, Python."""
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def machine() -> dict:
    """``host()`` with torch's version, the GPU (or None) and, under ``accelerate launch``, the
    number of processes (what ``timings.json`` and the bench record)."""
    import torch

    return {
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        **({"processes": num_processes()} if num_processes() > 1 else {}),
    }


def provenance() -> dict:
    """What ``metrics.json`` records: ``versions``, ``git`` and ``machine`` (``host()`` plus the
    GPU name, or None). Stable for one checkout on one machine, so two runs of one config and seed
    there still write byte-identical files."""
    import torch

    return {"versions": versions(), "git": git_commit(),
            "machine": {**host(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}}
