"""``metrics.json`` and ``timings.json`` of a run directory: what measures the method and what
measures the machine and the moment, apart (pipeline.py writes them). Imports nothing heavy, so
commands that only read finished runs (``panacea compare``, ``panacea plot RUN``) start fast.
"""

from __future__ import annotations

import json
from pathlib import Path


#: Fields that measure the machine and the moment, not the method: ``timings.json`` holds them, so
#: two runs of one config and seed on one machine write byte-identical ``metrics.json``.
TIMING_KEYS = ("train_seconds", "step_seconds", "peak_memory_gb", "eval_seconds", "apply_seconds",
               "memory_kind", "device")
TIMING_TOP = ("wall_seconds", "machine", "stages")
"""(``stages``: how many stages the run's last invocation computed and reused, pipeline.StageStore.)"""


def split_timings(metrics: dict) -> tuple[dict, dict]:
    """``(metrics.json, timings.json)`` contents of a run's metrics: the results and records
    without ``TIMING_KEYS``, and those keys per variant (``results``) and per stage (``records``)
    with the wall time and the machine."""
    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]

    def take(r):
        return {k: r[k] for k in TIMING_KEYS if k in r}

    out = {k: v for k, v in metrics.items() if k not in TIMING_TOP}
    out["results"] = strip(metrics["results"])
    timings = {k: metrics[k] for k in TIMING_TOP if k in metrics}
    timings["results"] = {r["name"]: take(r) for r in metrics["results"]}
    if "records" in metrics:
        out["records"] = {n: strip([r])[0] for n, r in metrics["records"].items()}
        timings["records"] = {n: take(r) for n, r in metrics["records"].items()}
    return out, timings


def merge_timings(metrics: dict | None, timings: dict | None) -> dict | None:
    """The in-memory metrics of a run (as ``run_experiment`` returns them): ``metrics.json`` with
    the fields of ``timings.json`` put back (``split_timings`` undone); either may be None."""
    if metrics is None or not isinstance(timings, dict):
        return metrics
    out = {**metrics, **{k: timings[k] for k in TIMING_TOP if k in timings}}
    per = timings.get("results") if isinstance(timings.get("results"), dict) else {}
    out["results"] = [{**r, **per.get(r.get("name"), {})} for r in metrics.get("results", [])]
    recs = timings.get("records") if isinstance(timings.get("records"), dict) else {}
    if isinstance(metrics.get("records"), dict):
        out["records"] = {n: {**r, **recs.get(n, {})} for n, r in metrics["records"].items()}
    return out


def read_timings(run_dir: Path) -> dict | None:
    """``run_dir/timings.json``, or None when absent or unreadable (timings are informative only)."""
    try:
        t = json.loads((Path(run_dir) / "timings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return t if isinstance(t, dict) else None


def load_metrics(run_dir: Path) -> dict:
    """A finished run's ``metrics.json`` merged with its ``timings.json`` ({} when unreadable); a
    ``metrics.json`` of an older panacea, which held the timings itself, is returned as it is."""
    try:
        m = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return merge_timings(m, read_timings(run_dir)) if isinstance(m, dict) else {}
