"""``panacea compare RUN [RUN ...]``: the variants of several finished runs in one table and one plot.

Each RUN is a finished run directory (``metrics.json``), a finished multi-seed run (``summary.json``:
every column as mean ± 95 % interval over its seeds) or a result kept by ``panacea record``. Rows
are named ``<run>/<variant>``, ``<run>`` being the run's ``name`` (its folder's name, or more of
its path, when two runs share a name). Written into ``--out`` (default
``runs/compare/<timestamp>/`` under the current directory):

* ``compare.md``: a table of the runs (folder, seeds, judge), the results table (``report.table_rows``,
  the same table as a run's ``results.md``), the plot, what each column means, and caveats when the
  runs were scored by different judges or on different prompts;
* ``compare.png``: HS vs FA, one point per variant, coloured by run (``plots.plot_hs_fa``).

An existing non-empty ``--out`` is refused unless ``--force`` (which replaces ``compare.md`` and
``compare.png`` only). A RUN that is not a finished run is named in a one-line error (exit 2).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from .errors import UserError
from .paths import expand_path
from .plots import plot_hs_fa, point
from .report import PLOT, _render, column_notes, files_section, footer, judge_of, summary_rows, table_rows, write_results
from .rundir import read_status, write_atomic
from .timings import load_metrics

MD, PNG = "compare.md", "compare.png"
#: the evaluation settings that make two runs' numbers comparable
_EVAL_KEYS = ("harmful", "utility", "benign", "max_new_tokens", "utility_max_new_tokens")


def _json(path: Path, run: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{run}: not a finished panacea run ({path.name} is unreadable: {type(e).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise UserError(f"{run}: not a finished panacea run ({path.name} has no results)")
    return data


def load_run(arg: str | Path) -> dict:
    """One finished run: ``{"path", "name", "rows", "seeds", "judge", "config", "wall", "provenance"}``
    (``seeds`` None for a one-seed run); a one-line
    ``UserError`` naming ``arg`` when it is not a finished run."""
    run = str(arg)
    path = expand_path(arg, "RUN")
    if not path.is_dir():
        raise UserError(f"{run}: no such run directory")
    status = read_status(path)
    if status is not None and status.get("state") not in (None, "done"):
        why = f": {status['error']}" if status.get("error") else ""
        raise UserError(f"{run}: not a finished panacea run (status {status.get('state')}{why})")
    try:
        cfg = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        cfg = None
    cfg = cfg if isinstance(cfg, dict) else {}
    if (path / "summary.json").is_file():
        m = _json(path / "summary.json", run)
        rows, seeds = summary_rows(m), list(m.get("seeds") or [])
    elif (path / "metrics.json").is_file():
        _json(path / "metrics.json", run)
        m = load_metrics(path)  # with the seconds of timings.json
        rows, seeds = m["results"], None
    elif (path / "run" / "metrics.json").is_file():  # a bench folder holds its run in run/
        raise UserError(f"{run}: not a finished panacea run but a bench folder; compare its run: {path / 'run'}")
    else:
        raise UserError(f"{run}: not a finished panacea run (no metrics.json or summary.json)")
    if not rows or not all(isinstance(r, dict) and "name" in r for r in rows):
        raise UserError(f"{run}: not a finished panacea run (no evaluated variants)")
    return {"path": path, "name": str(m.get("name") or cfg.get("name") or path.name), "rows": rows, "seeds": seeds,
            "judge": judge_of(rows, (cfg.get("eval") or {}).get("judge")), "config": cfg,
            "wall": m.get("wall_seconds"), "provenance": m.get("provenance")}


def _labels(runs: list[dict]) -> list[str]:
    """Unique short names: the run's name, else its folder, else more of its path."""
    labels = [r["name"] for r in runs]
    for depth in (1, 2, 3, 4):
        dup = {x for x in labels if labels.count(x) > 1}
        if not dup:
            return labels
        labels = [("/".join(r["path"].parts[-depth:]) if lab in dup else lab) for lab, r in zip(labels, runs)]
    return [f"{lab}#{i}" for i, lab in enumerate(labels, 1)]


def _caveats(runs: list[dict], labels: list[str]) -> list[str]:
    out = []
    judges = {r["judge"] for r in runs}
    if len(judges) > 1:
        out.append("HS of these runs comes from different judges ("
                   + ", ".join(f"{lab}: `{r['judge']}`" for lab, r in zip(labels, runs)) + "); compare HS across "
                   "judges with care, or re-judge with `panacea rejudge RUN --judge NAME`.")
    first = (runs[0]["config"].get("eval") or {})
    for lab, r in zip(labels[1:], runs[1:]):
        ev = r["config"].get("eval") or {}
        diff = [k for k in _EVAL_KEYS if first and ev and first.get(k) != ev.get(k)]
        if diff:
            out.append(f"{lab} was evaluated differently from {labels[0]} (eval.{', eval.'.join(diff)}); its "
                       "numbers are measured on other prompts or settings.")
    return out


def _out_dir(out: str | None, force: bool) -> Path:
    if out is None:
        base = expand_path(Path("runs") / "compare" / time.strftime("%Y%m%d-%H%M%S"), "--out")
        path, i = base, 1
        while path.exists():
            i += 1
            path = base.with_name(f"{base.name}-{i}")
        return path
    path = expand_path(out, "--out")
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out}: is a file")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UserError(f"--out {out}: {str(path)!r} is not empty; pass --force to replace its {MD} and {PNG}, "
                        f"or choose a new folder")
    return path


def compare(runs: list[str | Path], out: str | None = None, force: bool = False) -> dict:
    """Compare finished runs: write ``compare.md`` and ``compare.png`` into the output folder and
    return ``{"out", "markdown", "text", "rows"}`` (``text``: the plain table with its legend)."""
    if not runs:
        raise UserError("compare needs at least one RUN")
    seen = set()
    loaded = []
    for arg in runs:
        r = load_run(arg)
        if r["path"] in seen:
            raise UserError(f"{arg}: given twice")
        seen.add(r["path"])
        loaded.append(r)
    dest = _out_dir(out, force)  # after every RUN is checked: a bad RUN leaves nothing behind
    labels = _labels(loaded)
    rows = [{**row, "name": f"{lab}/{row['name']}"} for lab, r in zip(labels, loaded) for row in r["rows"]]
    judges = {r["judge"] for r in loaded}
    judge = next(iter(judges)) if len(judges) == 1 else None
    seed_counts = {len(r["seeds"]) if r["seeds"] else None for r in loaded}
    seeds = next(iter(seed_counts)) if len(seed_counts) == 1 else None
    mixed = len(seed_counts) > 1
    head, cells = table_rows(rows)
    dest.mkdir(parents=True, exist_ok=True)

    # coloured by run (the legend names it), labelled by variant
    pts = [point(row, group=lab) for lab, r in zip(labels, loaded) for row in r["rows"]]
    plot_hs_fa(pts, dest / PNG, f"{len(loaded)} run{'s' if len(loaded) != 1 else ''}: harmful score vs fine-tune accuracy",
               note="bars: HS 95 % interval (over the prompts for one run, over the seeds for several)")
    caveats = _caveats(loaded, labels)
    L = [f"# Comparison of {len(loaded)} run{'s' if len(loaded) != 1 else ''}", "",
         "| run | folder | seeds | judge | variants |", "|---|---|---|---|---:|"]
    for lab, r in zip(labels, loaded):
        L.append(f"| {lab} | `{r['path']}` | {', '.join(map(str, r['seeds'])) if r['seeds'] else 'one run'} | "
                 f"`{r['judge'] or '?'}` | {len(r['rows'])} |")
    L += ["", "All numbers in %; a row is `<run>/<variant>`.", ""]
    L += _render(head, cells, markdown=True) + [""]
    L += [f"![HS vs FA]({PNG})", "",
          f"`{PNG}`: one point per variant at (FA, HS), its HS interval as a vertical bar, coloured by run. "
          "Lower right is better: little harm, little task accuracy lost.", ""]
    if caveats:
        L += ["## Caveats", ""] + [f"* {c}" for c in caveats] + [""]
    L += ["## What the columns mean", ""] + column_notes(judge, seeds)
    if mixed:
        L += ["* Intervals: a run with one training seed shows HS with its Wilson 95 % interval over the prompts; "
              "a run with several seeds shows every column as mean ± 95 % interval over its seeds."]
    md = "\n".join(L).rstrip() + "\n"
    write_atomic(dest / MD, md)
    text = "\n".join([f"compare: {', '.join(labels)}  (HS, HS+, shares, FA, OR in %)", *_render(head, cells),
                      footer(judge, seeds)] + [f"caveat: {c}" for c in caveats])
    return {"out": dest, "markdown": dest / MD, "plot": dest / PNG, "text": text, "rows": rows}


def redraw(path: str | Path) -> list[Path]:
    """``panacea plot RUN``: (re)write a finished run's ``results.md`` and ``hs_fa.png`` from its
    files (``RUN`` or its ``metrics.json`` / ``summary.json``), e.g. for a run made before panacea
    wrote them. Returns the written paths."""
    p = Path(path)
    if p.name in ("metrics.json", "summary.json") and not p.is_dir():
        p = p.parent
    r = load_run(p)
    md = write_results(r["path"], r["name"], r["rows"], r["judge"], cfg=r["config"], seeds=r["seeds"],
                       wall=r["wall"], prov=r["provenance"], extra=files_section(r["seeds"]))
    return [md] + ([r["path"] / PLOT] if (r["path"] / PLOT).is_file() else [])
