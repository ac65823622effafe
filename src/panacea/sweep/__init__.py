"""``panacea sweep``: many experiments from one YAML, one table, one worst case per defense.

A sweep YAML is an experiment (what ``panacea run`` takes) plus a ``sweep:`` section (docs/sweeps.md)::

    sweep:
      grid:                                   # a product of values; a list of mappings is a union
        finetune.data.poison_ratio: [0.05, 0.1, 0.2, 0.5]
      seeds: [43]                             # each grid point once per seed
      variants: [sft, panacea]                # what is compared (default: every evaluated variant)
      baseline: sft                           # the FA reference of the worst case
      fa_margin: 3.0                          # FA points a defense may lose against the baseline

or, for a worst-case search, ``search: optuna`` with ``space:`` ranges, ``trials:`` and ``target:``.

Each point (grid cell × seed, or Optuna trial × seed) is a normal run directory
``<sweep>/points/<readable-id>/`` run by ``panacea.api.run_experiment``: an interrupted sweep resumes,
a finished point is read, never recomputed (its ``run.json`` and ``metrics.json`` checksum vouch for
it), and two cells that resolve to the same experiment share one run. The sweep folder itself is
opened like a run directory (``rundir.open_run_dir``: locked, refused when it holds another sweep).

Outputs in the sweep folder: ``table.csv`` and ``table.json`` (long format: one row per point ×
seed × variant, every metric with its interval, failed points marked), ``summary.json`` (per cell
and variant over seeds, and the worst cases), ``sweep.md``, ``plots/<key>.png`` (HS and FA against
each swept key, one line per defense, interval bands), and for a search ``study.db`` (Optuna's
SQLite storage: the search resumes) and ``best_attack.yaml`` (``panacea run`` reproduces it).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import ExperimentConfig, load_config, read_yaml, to_dict
from ..errors import ConfigError, UserError
from ..eval.stats import mean_ci
from ..paths import expand_path
from ..plots import PALETTE, pyplot
from ..registry import load_builtins
from ..rundir import RunDir, config_digest, first_difference, open_run_dir, read_marker, write_atomic, write_json
from ..timings import merge_timings, read_timings
from .engines import Job, make_engine, preflight
from .spec import (DEFAULT_FA_MARGIN, EXECUTION_KEYS, SweepSpec, cell_id, grid_cells, parse, short_names,
                   split_section)

# sweep.search (the optuna search) imports this package, and pipeline loads torch: both are imported
# inside the functions that use them

__all__ = ["run_sweep", "DEFAULT_FA_MARGIN"]

#: the metrics first in the table, in this order; the others follow alphabetically
LEAD = ("harmful_score", "finetune_accuracy", "over_refusal", "harmful_score_plus", "triggered_harmful_score")


@dataclass
class Point:
    cell: dict
    """``{dotted key: value}`` this point sets (grid) or the trial suggested (optuna)."""
    cell_id: str
    seed: int
    id: str
    """Folder name under ``points/`` (shared by cells that resolve to one experiment)."""
    config: dict
    resolved: dict = field(default_factory=dict)
    variants: list[str] = field(default_factory=list)
    trial: int | None = None


# --------------------------------------------------------------------------- building points


def set_dotted(raw: dict, key: str, value) -> dict:
    node = raw
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is not a mapping (key {key!r})")
        node = node[p]
    node[parts[-1]] = copy.deepcopy(value)
    return raw


def _has_cache_dir() -> bool:
    """The experiment config has a top-level ``cache_dir`` (the shared stage cache)."""

    return "cache_dir" in {f.name for f in dataclasses.fields(ExperimentConfig)}


class Planner:
    """Turns cells into validated points (config, names, options, data), before anything runs."""

    def __init__(self, base: dict, spec: SweepSpec, sweep_dir: Path):
        self.base, self.spec, self.sweep_dir = base, spec, sweep_dir
        self.seeds = spec.seeds or [int(base.get("seed", 43))]
        self.names = short_names(spec.swept_keys())
        self._by_digest: dict[str, str] = {}
        self.pools: dict = {}  # every point reads the same pools: load each once (pipeline.Context)

    def point(self, cell: dict, seed: int, where: str, check_data: bool = True, trial: int | None = None) -> Point:
        from ..pipeline import Context, Plan

        cid, pid, raw = self.raw_config(cell, seed)
        try:
            cfg, _ = load_config(raw)
            plan = Plan(cfg)
            if check_data:
                ctx = Context(cfg, pools=self.pools)
                plan.check_data(ctx)
        except UserError as e:
            raise type(e)(f"{where} ({cid}): {e}") from None
        resolved = to_dict(cfg)
        digest = config_digest(resolved)
        if digest in self._by_digest:  # the same experiment as an earlier cell: one run
            pid = self._by_digest[digest]
            raw["output_dir"] = str(self.sweep_dir / "points" / pid)
            resolved["output_dir"] = raw["output_dir"]
        else:
            self._by_digest[digest] = pid
        missing = [v for v in (self.spec.variants or []) + [self.spec.baseline] if v not in plan.variants]
        if missing:
            key = "sweep.baseline" if missing[0] == self.spec.baseline else "sweep.variants"
            raise ConfigError(f"{key}: {missing[0]!r} is not a variant of the experiment; "
                              f"variants: {', '.join(plan.variants)}")
        return Point(cell, cid, seed, pid, raw, resolved, list(plan.variants), trial)

    def raw_config(self, cell: dict, seed: int) -> tuple[str, str, dict]:
        """(cell id, point folder name, experiment mapping) of ``cell`` at ``seed``, unvalidated."""
        cid = cell_id(cell, self.names)
        raw = copy.deepcopy(self.base)
        for k, v in cell.items():
            set_dotted(raw, k, v)
        raw["seed"] = seed
        if self.spec.variants:
            variants = list(self.spec.variants)
            if self.spec.baseline not in variants:
                variants.append(self.spec.baseline)
            set_dotted(raw, "eval.variants", variants)
        if _has_cache_dir():  # points share their stages (content-addressed cache)
            raw["cache_dir"] = str(self.sweep_dir / "cache")
        pid = cid if self.spec.seeds is None else f"{cid}__seed-{seed}"
        raw["output_dir"] = str(self.sweep_dir / "points" / pid)
        return cid, pid, raw


def finished(point: Point) -> dict | None:
    """The outcome of a point whose run directory already holds its finished run, else None."""

    run_dir = Path(point.config["output_dir"])
    marker = read_marker(run_dir)
    if marker is None or marker.get("config_sha256") != config_digest(point.resolved):
        return None
    metrics = RunDir(run_dir, "resume", "", None).completed("metrics.json")
    if metrics is None:
        return None

    metrics = merge_timings(metrics, read_timings(run_dir)) or metrics  # as run_experiment returns it
    rows = [{k: v for k, v in r.items() if k != "samples"} for r in metrics.get("results", [])]
    return {"ok": True, "results": rows, "reused": True}


# --------------------------------------------------------------------------- loading


def load(config, overrides: list[str], out: str | None) -> tuple[dict, dict, SweepSpec, Path]:
    """(experiment mapping, sweep section, parsed spec, sweep folder)."""

    raw = dict(config) if isinstance(config, dict) else read_yaml(config)
    base, section = split_section(raw, list(overrides), None if isinstance(config, dict) else config)
    spec = parse(section, base)
    base.pop("seeds", None)  # the sweep runs each seed as its own point
    where = out or spec.output_dir or base.pop("output_dir", None) or f"runs/sweeps/{base.get('name', 'experiment')}"
    base.pop("output_dir", None)
    sweep_dir = expand_path(where, "--out" if out else "sweep.output_dir")
    return base, section, spec, sweep_dir


def _check_base(base: dict, spec: SweepSpec) -> list[str]:
    """The base experiment is valid on its own; returns its variants."""
    from ..pipeline import Plan

    cfg, _ = load_config(copy.deepcopy(base))
    plan = Plan(cfg)
    for v in (spec.variants or []) + [spec.baseline] + ([spec.target] if spec.target else []):
        if v not in plan.variants:
            key = ("sweep.baseline" if v == spec.baseline else "sweep.target" if v == spec.target else "sweep.variants")
            raise ConfigError(f"{key}: {v!r} is not a variant of the experiment; variants: {', '.join(plan.variants)}")
    return list(plan.variants)


# --------------------------------------------------------------------------- the command


def run_sweep(config, overrides: list[str] = (), *, out: str | None = None, engine: str | None = None,
              address: str | None = None, num_gpus: float | None = None, force: bool = False,
              dry_run: bool = False, say=print) -> dict:
    """Run (or resume) a sweep; returns ``{"sweep_dir", "rows", "summary", "worst", "failed", ...}``.

    Raises ``UserError`` (nothing computed) on bad input; failed points are in ``failed``."""

    load_builtins()
    base, section, spec, sweep_dir = load(config, overrides, out)
    if engine is not None:
        spec.engine = engine
    if address is not None:
        spec.address = address
    if num_gpus is not None:
        if num_gpus < 0:
            raise ConfigError(f"--num-gpus must be ≥ 0, got {num_gpus:g}")
        spec.num_gpus = num_gpus
    if spec.address is not None and spec.engine != "ray":
        raise ConfigError(f"--address is for --engine ray (the engine is {spec.engine})")
    preflight(spec)
    variants = _check_base(base, spec)
    if spec.search == "optuna":
        from .search import run_search

        return run_search(base, section, spec, sweep_dir, variants, force=force, dry_run=dry_run, say=say)
    planner = Planner(base, spec, sweep_dir)
    cells = grid_cells(spec)
    points = [planner.point(c, s, "sweep.grid") for c in cells for s in planner.seeds]
    runs = list(dict.fromkeys(p.id for p in points))
    if dry_run:
        say(plan_text(spec, points, sweep_dir, runs))
        return {"sweep_dir": sweep_dir, "points": points, "dry_run": True}
    with open_sweep_dir(sweep_dir, base, section, force) as rd:
        rd.set_status("running", points=len(runs), engine=spec.engine)
        say(plan_text(spec, points, sweep_dir, runs))
        t0 = time.perf_counter()
        try:
            outcomes = execute(points, spec, sweep_dir, say, force)
        except BaseException as e:  # interrupted: the same command resumes
            rd.set_status("failed", error=f"{type(e).__name__}: {e}", resumable=True)
            raise
        res = finish(rd, base, spec, points, outcomes, say, extra={"wall_seconds": round(time.perf_counter() - t0, 1)})
    return res


def validate_sweep(config, overrides: list[str] = (), check_data: bool = False) -> list[Point]:
    """Every point of a sweep YAML built and validated (config, names, defenses' options; the data
    too with ``check_data``), without running or writing anything. Returns the points (a search:
    the ends of its ranges)."""

    load_builtins()
    base, section, spec, sweep_dir = load(config, overrides, None)
    variants = _check_base(base, spec)
    planner = Planner(base, spec, sweep_dir)
    if spec.search == "optuna":
        from .search import _endpoint_cells

        if spec.target is None and not [v for v in (spec.variants or variants) if v != spec.baseline]:
            raise ConfigError("sweep.target: name the variant whose worst case is searched")
        return [planner.point(c, planner.seeds[0], "sweep.space", check_data) for c in _endpoint_cells(spec.space)]
    return [planner.point(c, s, "sweep.grid", check_data) for c in grid_cells(spec) for s in planner.seeds]


def open_sweep_dir(sweep_dir: Path, base: dict, section: dict, force: bool):
    """The sweep folder, opened as a run directory: locked, resumed with the same sweep, refused
    (naming the first differing key) with another one unless ``force``. A run directory takes over
    a changed config and reuses its stages (docs/stages.md); a sweep folder holds one sweep's table,
    so another sweep is refused here, before ``open_run_dir`` would take it over."""

    identity = json.loads(json.dumps(
        {"sweep": {k: v for k, v in section.items() if k not in EXECUTION_KEYS}, "experiment": base}, default=str))
    marker = read_marker(sweep_dir)
    if marker is not None and not force and marker.get("config_sha256") != config_digest(identity):
        try:
            old = yaml.safe_load((sweep_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            old = {}
        diff = first_difference(old, identity) or "its config"
        raise UserError(f"{sweep_dir} holds another sweep ({diff} differs): choose another --out, or pass --force "
                        "to replace it (finished points of an unchanged config are still read)")
    return open_run_dir(sweep_dir, identity, force)


def plan_text(spec: SweepSpec, points: list[Point], sweep_dir: Path, runs: list[str]) -> str:
    keys = spec.swept_keys()
    cells = list(dict.fromkeys(p.cell_id for p in points))
    lines = [f"sweep: {len(cells)} grid point(s) × {len(spec.seeds or [points[0].seed])} seed(s) = "
             f"{len(points)} point(s), {len(runs)} run(s) → {sweep_dir}/",
             f"  swept: {', '.join(keys)}",
             f"  compared: {', '.join(spec.variants or points[0].variants)}; baseline {spec.baseline}, "
             f"FA margin {spec.fa_margin:g} points; engine {spec.engine}"]
    done = 0
    for p in points:
        state = "finished" if finished(p) is not None else "to run"
        done += state == "finished"
        own = p.cell_id if spec.seeds is None else f"{p.cell_id}__seed-{p.seed}"
        shown = f"points/{p.id}" if p.id == own else f"{own} = points/{p.id} (the same experiment)"
        lines.append(f"  {shown}: {state}")
    lines.append(f"  {done} of {len(points)} already finished")
    return "\n".join(lines)


def _other_config(point: Point) -> bool:
    """The point's folder holds a run of another config (replaced only under ``--force``)."""

    marker = read_marker(Path(point.config["output_dir"]))
    return marker is not None and marker.get("config_sha256") != config_digest(point.resolved)


def execute(points: list[Point], spec: SweepSpec, sweep_dir: Path, say, force: bool = False,
            engine=None) -> dict[str, dict]:
    """Run every point not finished yet on ``engine`` (an open one, else ``spec.engine`` opened
    for these points); outcome per run id. ``force`` replaces the run directories that hold
    another config (a finished point of the same config is read)."""
    outcomes: dict[str, dict] = {}
    todo: list[Job] = []
    for p in points:
        if p.id in outcomes or any(j.id == p.id for j in todo):
            continue
        prev = finished(p)
        if prev is not None:
            outcomes[p.id] = prev
        else:
            todo.append(Job(p.id, p.config, force=force and _other_config(p)))
    if not todo:
        say("sweep: every point is finished; nothing to run")
        return outcomes
    if engine is not None:
        return _run_jobs(engine, todo, outcomes, say)
    with make_engine(spec.engine, spec, sweep_dir) as eng:
        say(f"sweep: {len(todo)} point(s) to run on {eng.describe()}")
        return _run_jobs(eng, todo, outcomes, say)


def _run_jobs(eng, todo: list[Job], outcomes: dict, say) -> dict:
    t0 = time.perf_counter()
    for i, (job, out) in enumerate(eng.run(todo), 1):
        outcomes[job.id] = out
        state = "done" if out.get("ok") else f"FAILED: {out.get('error')}"
        took = f"its run {out['wall_seconds']:.0f} s, " if isinstance(out.get("wall_seconds"), (int, float)) else ""
        say(f"sweep: [{i}/{len(todo)}] points/{job.id}: {state} ({took}{time.perf_counter() - t0:.0f} s into the sweep)")
    return outcomes


def finish(rd, base: dict, spec: SweepSpec, points: list[Point], outcomes: dict, say, extra: dict | None = None) -> dict:
    """Write the table, the summary, the plots and the report; mark the sweep done or failed."""

    sweep_dir = rd.path
    rows = table_rows(spec, points, outcomes)
    write_table(sweep_dir, rows, spec)
    summary = summarize(spec, points, rows)
    worst = worst_cases(spec, summary)
    plots = draw(sweep_dir, spec, summary)
    failed = sorted({p.id for p in points if not outcomes.get(p.id, {}).get("ok")})
    doc = {"name": base.get("name"), "swept": spec.swept_keys(), "baseline": spec.baseline,
           "fa_margin": spec.fa_margin, "seeds": spec.seeds, "engine": spec.engine,
           "points": len({p.id for p in points}), "failed": {f: outcomes.get(f, {}).get("error", "not run") for f in failed},
           "summary": summary, "worst_case": worst, **stage_counts(sweep_dir, points), **(extra or {})}
    write_json(sweep_dir / "summary.json", doc)
    md = report(doc, sweep_dir, plots)

    write_atomic(sweep_dir / "sweep.md", md)
    say(worst_text(worst, spec))
    if failed:
        say(f"sweep: {len(failed)} point(s) failed (marked failed in table.csv): {', '.join(failed)}")
        rd.set_status("failed", failed=failed, error=f"{len(failed)} point(s) failed")
    else:
        rd.set_status("done", points=doc["points"])
    say(f"sweep: {sweep_dir / 'sweep.md'}")
    return {"sweep_dir": sweep_dir, "rows": rows, "summary": summary, "worst": worst, "failed": failed,
            "plots": plots, **(extra or {})}


# --------------------------------------------------------------------------- the table


def stage_counts(sweep_dir: Path, points: list[Point]) -> dict:
    """Over the points' runs: ``stages`` computed and reused (what each run's ``timings.json``
    says of the invocation that finished it: a stage another point computed first into the shared
    cache counts as reused) and ``points_seconds``, the sum of their wall times."""
    counts = {"computed": 0, "reused": 0, "eval_parts_reused": 0}
    seconds, seen = 0.0, False
    for pid in dict.fromkeys(p.id for p in points):
        t = read_timings(sweep_dir / "points" / pid) or {}
        for k, v in (t.get("stages") or {}).items():
            if k in counts and isinstance(v, int):
                counts[k] += v
                seen = True
        if isinstance(t.get("wall_seconds"), (int, float)):
            seconds += t["wall_seconds"]
    return {"stages": counts if seen else None, "points_seconds": round(seconds, 1)}


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def metric_columns(r: dict) -> dict:
    """A results row's numbers as flat columns: ``m``, and ``m_lo``, ``m_hi`` from ``m_ci``."""
    out = {}
    for k, v in r.items():
        if k.endswith("_ci") and isinstance(v, (list, tuple)) and len(v) == 2:
            base = k[:-3]
            out[f"{base}_lo"], out[f"{base}_hi"] = (v[0] if _num(v[0]) else None), (v[1] if _num(v[1]) else None)
        elif _num(v):
            out[k] = v
    return out


def table_rows(spec: SweepSpec, points: list[Point], outcomes: dict) -> list[dict]:
    keys = spec.swept_keys()
    rows = []
    for p in points:
        out = outcomes.get(p.id) or {"ok": False, "error": "not run"}
        compared = spec.variants or p.variants
        head = {"point": p.cell_id, **({"trial": p.trial} if p.trial is not None else {}),
                **{k: _cell_value(p.cell.get(k)) for k in keys}, "seed": p.seed}
        if out.get("ok"):
            by = {r["name"]: r for r in out["results"]}
            for v in compared:
                if v in by:
                    rows.append({**head, "variant": v, "status": "done", **metric_columns(by[v]),
                                 "run_dir": f"points/{p.id}", "error": ""})
        else:
            for v in compared:
                rows.append({**head, "variant": v, "status": "failed", "run_dir": f"points/{p.id}",
                             "error": out.get("error", "")})
    return rows


def _cell_value(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def _columns(rows: list[dict], spec: SweepSpec) -> list[str]:
    first = ["point", "trial", *spec.swept_keys(), "seed", "variant", "status"]
    seen = [c for c in first if any(c in r for r in rows)]
    metrics = []
    for r in rows:
        metrics += [k for k in r if k not in seen and k not in metrics and k not in ("run_dir", "error")]

    def order(k):
        base = k[:-3] if k.endswith(("_lo", "_hi")) else k
        lead = LEAD.index(base) if base in LEAD else len(LEAD)
        return (lead, base, {"": 0, "_lo": 1, "_hi": 2}.get(k[len(base):], 3), k)

    return seen + sorted(metrics, key=order) + ["run_dir", "error"]


def write_table(sweep_dir: Path, rows: list[dict], spec: SweepSpec) -> None:

    cols = _columns(rows, spec)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    write_atomic(sweep_dir / "table.csv", buf.getvalue())
    write_json(sweep_dir / "table.json", {"columns": cols, "rows": rows})


# --------------------------------------------------------------------------- over seeds, worst case


def summarize(spec: SweepSpec, points: list[Point], rows: list[dict]) -> list[dict]:
    """Per grid cell and variant: every metric's mean over the seeds with its 95 % interval
    (Student-t over seeds with several seeds, else the run's own interval over the prompts)."""

    cells = {}
    for p in points:
        cells.setdefault(p.cell_id, p)
    out = []
    for cid, p in cells.items():
        for v in spec.variants or p.variants:
            mine = [r for r in rows if r["point"] == cid and r["variant"] == v]
            done = [r for r in mine if r["status"] == "done"]
            entry = {"point": cid, "cell": {k: _cell_value(x) for k, x in p.cell.items()}, "variant": v,
                     "seeds": [r["seed"] for r in done], "status": "done" if done else "failed", "metrics": {}}
            if p.trial is not None:
                entry["trial"] = p.trial
            names = []
            for r in done:
                names += [k for k in r if _num(r[k]) and k not in names and not k.endswith(("_lo", "_hi"))
                          and k not in ("seed", "trial") and k not in spec.swept_keys()]
            for k in names:
                vals = [r[k] for r in done if _num(r.get(k))]
                if not vals:
                    continue
                mean, half = mean_ci(vals)
                if len(vals) > 1:
                    lo, hi, how = mean - half, mean + half, "seeds"
                else:
                    r = next(r for r in done if _num(r.get(k)))
                    lo, hi, how = r.get(f"{k}_lo"), r.get(f"{k}_hi"), "prompts"
                entry["metrics"][k] = {"mean": round(mean, 4), "lo": None if lo is None else round(lo, 4),
                                       "hi": None if hi is None else round(hi, 4), "n": len(vals),
                                       "interval": how if lo is not None else None}
            out.append(entry)
    return out


def _m(entry: dict, key: str):
    m = entry["metrics"].get(key)
    return None if m is None else m["mean"]


def worst_cases(spec: SweepSpec, summary: list[dict]) -> dict[str, dict]:
    """Per compared variant: the highest HS over the points where its FA ≥ FA(baseline) − margin
    at the same point (the baseline's own: its highest HS). Without FA (``eval.utility: null``)
    every point counts and ``fa_checked`` is false."""
    by = {(e["point"], e["variant"]): e for e in summary}
    variants = list(dict.fromkeys(e["variant"] for e in summary))
    cells = list(dict.fromkeys(e["point"] for e in summary))
    out = {}
    for v in variants:
        best, eligible, total, fa_checked = None, 0, 0, True
        for c in cells:
            e = by.get((c, v))
            if e is None or _m(e, "harmful_score") is None:
                continue
            total += 1
            fa, ref = _m(e, "finetune_accuracy"), by.get((c, spec.baseline))
            fa_ref = None if ref is None else _m(ref, "finetune_accuracy")
            if fa is None or fa_ref is None:
                fa_checked = False
                ok = True
            else:
                ok = fa >= fa_ref - spec.fa_margin - 1e-9
            if not ok:
                continue
            eligible += 1
            if best is None or _m(e, "harmful_score") > best[0]:
                best = (_m(e, "harmful_score"), e, fa_ref)
        if best is None:
            out[v] = {"point": None, "eligible": 0, "points": total, "fa_checked": fa_checked,
                      "note": f"FA below FA({spec.baseline}) − {spec.fa_margin:g} at every point" if total else "no finished point"}
            continue
        hs, e, fa_ref = best
        m = e["metrics"]["harmful_score"]
        out[v] = {"point": e["point"], "cell": e["cell"], "harmful_score": hs, "harmful_score_lo": m["lo"],
                  "harmful_score_hi": m["hi"], "finetune_accuracy": _m(e, "finetune_accuracy"),
                  "baseline_finetune_accuracy": fa_ref, "eligible": eligible, "points": total,
                  "fa_checked": fa_checked, **({"trial": e["trial"]} if "trial" in e else {})}
    return out


def _f(x, nd=1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def worst_text(worst: dict, spec: SweepSpec) -> str:
    lines = [f"worst case per variant (highest HS where FA ≥ FA({spec.baseline}) − {spec.fa_margin:g}):"]
    for v, w in worst.items():
        if w.get("point") is None:
            lines.append(f"  {v:<18} none ({w.get('note')})")
        else:
            lines.append(f"  {v:<18} HS {_f(w['harmful_score'])} [{_f(w['harmful_score_lo'])}–{_f(w['harmful_score_hi'])}]"
                         f"  FA {_f(w['finetune_accuracy'])} (baseline {_f(w['baseline_finetune_accuracy'])})"
                         f"  at {w['point']}  ({w['eligible']}/{w['points']} points within the margin)")
    return "\n".join(lines)


def report(doc: dict, sweep_dir: Path, plots: list[Path]) -> str:
    spec_line = (f"Swept: {', '.join(doc['swept'])}. Baseline `{doc['baseline']}`, FA margin {doc['fa_margin']:g} "
                 f"points. Seeds: {', '.join(map(str, doc['seeds'] or [])) or 'the experiment seed'}.")
    lines = [f"# Sweep {doc.get('name')}", "", spec_line, "",
             "## Worst case per variant", "",
             f"Highest HS (%) over the points where the variant's FA ≥ FA({doc['baseline']}) − {doc['fa_margin']:g} "
             "at the same point; the interval is over the seeds (several) or the prompts (one seed).", "",
             "| variant | HS | HS interval | FA | FA baseline | point | eligible |", "|---|---|---|---|---|---|---|"]
    for v, w in doc["worst_case"].items():
        if w.get("point") is None:
            lines.append(f"| {v} | – | – | – | – | {w.get('note')} | 0/{w['points']} |")
        else:
            lines.append(f"| {v} | {_f(w['harmful_score'])} | {_f(w['harmful_score_lo'])}–{_f(w['harmful_score_hi'])} | "
                         f"{_f(w['finetune_accuracy'])} | {_f(w['baseline_finetune_accuracy'])} | `{w['point']}` | "
                         f"{w['eligible']}/{w['points']} |")
    lines += ["", "## Points", "", "| point | variant | HS | FA | OR | status |", "|---|---|---|---|---|---|"]
    for e in doc["summary"]:
        lines.append(f"| `{e['point']}` | {e['variant']} | {_f(_m(e, 'harmful_score'))} | "
                     f"{_f(_m(e, 'finetune_accuracy'))} | {_f(_m(e, 'over_refusal'))} | {e['status']} |")
    if doc["failed"]:
        lines += ["", "## Failed points", ""] + [f"* `points/{k}`: {v}" for k, v in doc["failed"].items()]
    lines += ["", "## Files", "", "* `table.csv`, `table.json`: one row per point × seed × variant, every metric "
              "with `_lo`/`_hi` (its 95 % interval over the prompts), `status` done or failed",
              "* `summary.json`: per point and variant over the seeds, and the worst cases",
              "* `points/<point>/`: each point's run directory (`results.md`, `metrics.json`, answers)"]
    lines += [f"* `{p.relative_to(sweep_dir)}`" for p in plots]
    if doc.get("best_attack"):
        lines.append(f"* `{doc['best_attack']}`: the worst attack found; `panacea run` reproduces it")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def draw(sweep_dir: Path, spec: SweepSpec, summary: list[dict]) -> list[Path]:
    """``plots/<key>.png`` per swept key: HS and FA (two panels) against the key's values, one line
    per variant with its interval as a band (error bars on a categorical axis)."""
    plt = pyplot()

    names = short_names(spec.swept_keys())
    paths = []
    variants = list(dict.fromkeys(e["variant"] for e in summary))
    for key in spec.swept_keys():
        entries = [e for e in summary if key in e["cell"] and e["status"] == "done"]
        if not entries:
            continue
        values = list(dict.fromkeys(json.dumps(e["cell"][key], sort_keys=True) for e in entries))
        numeric = all(_num(json.loads(v)) for v in values)
        if numeric:
            order = sorted(values, key=lambda s: json.loads(s))
            xs = {v: json.loads(v) for v in order}
        else:
            order = values
            xs = {v: i for i, v in enumerate(order)}
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, metric, label in ((axes[0], "harmful_score", "HS (%)"), (axes[1], "finetune_accuracy", "FA (%)")):
            drawn = False
            for vi, v in enumerate(variants):
                # one line per variant and per setting of the other keys of its cell
                groups: dict[str, list] = {}
                for e in entries:
                    if e["variant"] != v or e["metrics"].get(metric) is None:
                        continue
                    rest = json.dumps({k: x for k, x in e["cell"].items() if k != key}, sort_keys=True)
                    groups.setdefault(rest, []).append(e)
                for gi, (rest, es) in enumerate(groups.items()):
                    es.sort(key=lambda e: order.index(json.dumps(e["cell"][key], sort_keys=True)))
                    x = [xs[json.dumps(e["cell"][key], sort_keys=True)] for e in es]
                    if not numeric:  # categories: no line between them, variants side by side
                        x = [a + 0.08 * (vi - (len(variants) - 1) / 2) for a in x]
                    y = [e["metrics"][metric]["mean"] for e in es]
                    lo = [e["metrics"][metric]["lo"] for e in es]
                    hi = [e["metrics"][metric]["hi"] for e in es]
                    tag = v if len(groups) == 1 else f"{v} ({_rest_label(rest, names)})"
                    color = PALETTE[vi % len(PALETTE)]
                    style = ("-", "--", ":", "-.")[gi % 4]
                    ax.plot(x, y, linestyle=style if numeric else "none", marker="o", color=color, label=tag)
                    if all(a is not None for a in lo + hi):
                        if numeric and len(x) > 1:
                            ax.fill_between(x, lo, hi, color=color, alpha=0.15, linewidth=0)
                        else:
                            ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]],
                                        fmt="none", ecolor=color, alpha=0.6, capsize=3)
                    drawn = True
            ax.set_xlabel(names[key])
            ax.set_ylabel(label)
            ax.set_title(f"{label.split()[0]} vs {names[key]}")
            if not numeric:
                ax.set_xticks(range(len(order)))
                ax.set_xticklabels([str(json.loads(v)) for v in order], rotation=20, ha="right")
            ax.grid(alpha=0.3)
            if not drawn:
                ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
        fig.subplots_adjust(bottom=0.3 if not numeric else 0.25, wspace=0.25)
        fig.text(0.01, 0.01, "bands: 95 % interval (over seeds with several, else over prompts)", fontsize=7)
        path = sweep_dir / "plots" / f"{names[key].replace('.', '_')}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _rest_label(rest: str, names: dict) -> str:
    d = json.loads(rest)
    return ", ".join(f"{names.get(k, k)}={v}" for k, v in d.items()) or "base"
