"""Re-score a finished run's saved answers with another judge (``panacea rejudge``).

Every evaluated answer is saved in ``generations/<variant>.jsonl`` (one JSON object per line:
``set``, ``prompt``, ``response``, the original ``harmful``/``score``/``category``/``incoherent``
and, when the judge gave one, ``detail``). ``rejudge`` reads the ``set: harmful`` lines, runs the
new judge on (prompt, response) and writes, next to the run's untouched ``metrics.json``:

* ``rejudge_<judge>[_<tag>].json``: ``results`` per variant in the ``metrics.json`` layout (HS
  with its Wilson interval, HS+, the category shares, the judge's ``info`` with its threshold and
  where it came from), the original HS/HS+, the agreement with the original verdicts, and the
  judge-independent numbers copied from ``metrics.json`` (FA, OR, train seconds);
* ``rejudge_<judge>[_<tag>]/<variant>.jsonl``: the new verdict of every answer, with the
  original ``harmful`` as ``original_harmful``, for auditing.

A multi-seed run directory (``seed_<s>/`` folders, see ``panacea.seeds``) is re-judged seed by seed
(each seed folder gets its own files) and the parent gets the mean ± 95 % interval over seeds.
A second re-judging with the same judge (and tag) is refused, naming the existing files, unless
``force`` (``--force``) replaces them; ``--tag`` keeps several versions side by side.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import yaml

from ..errors import UserError
from .answers import read_answers
from .evaluate import harm_metrics, verdict_row
from .stats import summarize
from ..judges.calibration import judge_info
from ..registry import JUDGES
from ..rundir import write_atomic, write_json
from ..timings import load_metrics

#: judge-independent numbers carried over from metrics.json
_CARRY = ("finetune_accuracy", "finetune_accuracy_ci", "n_task_items", "over_refusal", "over_refusal_ci",
          "n_benign_prompts", "train_seconds")


def _variants(run: Path) -> list[tuple[str, Path]]:
    """(variant, generations file) in the order of metrics.json (else by file name)."""
    gdir = run / "generations"
    files = {p.stem: p for p in sorted(gdir.glob("*.jsonl"))} if gdir.is_dir() else {}
    if not files:
        raise UserError(f"{run}: no generations/*.jsonl to re-judge (is this a finished panacea run?)")
    order = [r["name"] for r in _metrics(run).get("results", []) if r.get("name") in files]
    order += [v for v in files if v not in order]
    return [(v, files[v]) for v in order]


def _metrics(run: Path) -> dict:
    """metrics.json with the timings of timings.json (``timings.load_metrics``), {} if unreadable."""
    return load_metrics(run)


def _stem(judge_name: str, tag: str | None) -> str:
    if tag is not None and not re.fullmatch(r"[A-Za-z0-9_.+-]+", tag):
        raise UserError(f"--tag must use letters, digits and _.+- only, got {tag!r}")
    return f"rejudge_{judge_name}" + (f"_{tag}" if tag else "")


def rejudge_run(run: Path, judge, judge_name: str, options: dict, tag: str | None = None) -> dict:
    """Re-judge one (single-seed) run directory; writes and returns ``rejudge_<name>.json``."""

    t0 = time.perf_counter()
    stem = _stem(judge_name, tag)
    original = {r["name"]: r for r in _metrics(run).get("results", []) if isinstance(r, dict) and "name" in r}
    variants = [(v, read_answers(p)) for v, p in _variants(run)]
    results = []
    for v, rows in variants:
        verdicts = judge([r["prompt"] for r in rows], [r["response"] for r in rows])
        old = [bool(r.get("harmful")) for r in rows]
        new = [bool(x.harmful) for x in verdicts]
        orig = original.get(v, {})
        row = {
            "name": v,
            **harm_metrics(verdicts),
            "judge": judge_info(judge),
            "original_harmful_score": orig.get("harmful_score"),
            "original_harmful_score_plus": orig.get("harmful_score_plus"),
            "agreement": round(100.0 * sum(a == b for a, b in zip(old, new)) / len(rows), 2) if rows else None,
            "flipped_to_harmful": sum(b and not a for a, b in zip(old, new)),
            "flipped_to_not_harmful": sum(a and not b for a, b in zip(old, new)),
            **{k: orig[k] for k in _CARRY if k in orig},
        }
        results.append(row)
        lines = [json.dumps({"set": "harmful", **verdict_row(r["prompt"], r["response"], x),
                             "original_harmful": a}, ensure_ascii=False)
                 for r, x, a in zip(rows, verdicts, old)]
        write_atomic(run / stem / f"{v}.jsonl", "\n".join(lines) + "\n")
    out = {
        "name": _metrics(run).get("name", run.name),
        "run": run.name,  # the folder it sits in (no machine paths)
        "judge": judge_name,
        "judge_options": options,
        "judge_info": judge_info(judge),
        "original_judge": _original_judge(run),
        "results": results,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(run / f"{stem}.json", out)
    return out


def _original_judge(run: Path) -> str | None:
    p = run / "config.yaml"
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    return cfg.get("eval", {}).get("judge") if isinstance(cfg, dict) else None


def _seed(d: Path) -> int | str:
    s = d.name[len("seed_"):]
    return int(s) if s.lstrip("-").isdigit() else s


def seed_dirs(run: Path) -> list[Path]:
    """The ``seed_<s>`` folders of a multi-seed run (empty for a single run)."""
    if (run / "generations").is_dir():
        return []
    found = [p for p in run.glob("seed_*") if p.is_dir() and (p / "generations").is_dir()]
    return sorted(found, key=lambda p: (0, _seed(p), "") if isinstance(_seed(p), int) else (1, 0, p.name))


def _earlier(dirs: list[Path], stem: str, judge_name: str, force: bool) -> list[Path]:
    """The folders of an earlier re-judging ``stem`` in ``dirs``; refused (one line, naming it)
    unless ``force``."""
    found = []
    for d in dirs:
        old = [p for p in (d / f"{stem}.json", d / stem) if p.exists()]
        if old and not force:
            raise UserError(f"{old[-1]} already holds a re-judging with {judge_name}; pass --force to replace it "
                            f"or --tag NAME to keep both")
        found += [d / stem] if (d / stem).is_dir() else []
    return found


def rejudge(run_dir: str | Path, judge_name: str, options: dict | None = None, tag: str | None = None,
            force: bool = False) -> dict:
    """Re-judge ``run_dir`` (a run or a multi-seed run) with the judge ``judge_name``.

    Returns the written ``rejudge_<name>.json`` content; for a multi-seed run it has ``seeds``,
    the per-seed ``runs`` and ``results`` = mean ± 95 % interval per variant (``eval.stats.summarize``).
    An earlier re-judging with the same judge and tag is refused unless ``force``.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run directory {str(run)!r} not found")
    options = dict(options or {})
    stem = _stem(judge_name, tag)
    seeds = seed_dirs(run)
    for d in seeds or [run]:
        _variants(d)  # fail on a bad directory before loading a judge model
    entry = JUDGES.get(judge_name, "--judge")
    earlier = _earlier(([run] if seeds else []) + (seeds or [run]), stem, judge_name, force)
    judge = entry.obj(options)
    for d in earlier:  # --force: no answer file of the earlier re-judging stays behind
        shutil.rmtree(d)
    if not seeds:
        return rejudge_run(run, judge, judge_name, options, tag)
    per_seed = {_seed(d): rejudge_run(d, judge, judge_name, options, tag) for d in seeds}
    out = {
        "name": next(iter(per_seed.values()))["name"],
        "run": run.name,  # the folder it sits in (no machine paths)
        "judge": judge_name,
        "judge_options": options,
        "judge_info": judge_info(judge),
        "seeds": list(per_seed),
        "runs": {d.name: f"{d.name}/{stem}.json" for d in seeds},
        "interval": "95% Student-t over seeds: mean ± t(0.975, n-1)·sd/sqrt(n)",
        "results": summarize({k: v["results"] for k, v in per_seed.items()}),
    }
    write_json(run / f"{stem}.json", out)
    return out
