"""A finished sweep as a result people can cite: ``panacea record SWEEP results/NAME`` keeps its
table, summary, plots and each point's metrics and answers (no adapters); ``panacea tables``
renders it as a section of ``docs/results.md`` (docs/sweeps.md#recording-a-sweep).

The section says, per swept key, each variant's HS and FA at every value, shows the sweep's plot,
the worst case per variant (``summary.json``, :func:`panacea.sweep.worst_cases`), the wall time,
how many stages were computed and how many reused, and one generated paragraph: at which points
each defense *holds* — its HS interval lies entirely below the baseline's HS at the same point
while its FA stays within the sweep's margin of the baseline's.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import yaml

from ..errors import UserError
from ..provenance import PACKAGES, versions
from ..rundir import atomic_path, read_json, read_marker, read_status, write_json
from ..timings import read_timings
from . import _f

SCHEMA = "panacea-sweep/1"
#: What is copied from each point's run directory (``generations/`` too: answers to re-judge).
POINT_FILES = ("config.yaml", "metrics.json", "timings.json")
SWEEP_FILES = ("config.yaml", "summary.json", "table.csv", "table.json")


def is_sweep(folder: Path) -> bool:
    """Whether ``folder`` is a sweep folder (``panacea sweep``'s output), not a run directory."""
    folder = Path(folder)
    if not (folder / "table.json").is_file() or not (folder / "summary.json").is_file():
        return False
    try:
        return "swept" in json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def record_sweep(sweep: Path, out: Path, command: str | None, git: dict) -> Path:
    """Copy a finished sweep's citable files into ``out`` (a new folder, or one this command wrote:
    ``results.record`` checks which before calling), as one folder renamed into place;
    ``git`` is the commit record (``results._git_of``)."""
    sweep, out = Path(sweep), Path(out)
    state = (read_status(sweep) or {}).get("state")
    if read_marker(sweep) is None or state != "done":
        raise UserError(f"{sweep}: the sweep is not finished (status {state or 'unknown'}); "
                        "run the same `panacea sweep` command again to finish it")
    summary = read_json(sweep / "summary.json")
    points = sorted({r["run_dir"] for r in read_json(sweep / "table.json")["rows"] if r.get("status") == "done"})
    for f in SWEEP_FILES:
        if not (sweep / f).is_file():
            raise UserError(f"{sweep / f} is missing: the sweep did not finish")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        _copy(sweep, tmp, summary, points, command, git)
    return out


def _copy(sweep: Path, tmp: Path, summary: dict, points: list[str], command: str | None, git: dict) -> None:
    """Write the recorded sweep into the new folder ``tmp`` (``record_sweep``)."""
    for f in SWEEP_FILES:
        shutil.copy2(sweep / f, tmp / f)
    if (sweep / "plots").is_dir():
        shutil.copytree(sweep / "plots", tmp / "plots")
    prov, machine = None, None
    for rel in points:
        src, dst = sweep / rel, tmp / rel
        dst.mkdir(parents=True)
        for f in POINT_FILES:
            if (src / f).is_file():
                shutil.copy2(src / f, dst / f)
        if (src / "generations").is_dir():
            shutil.copytree(src / "generations", dst / "generations")
        prov = prov or read_json(src / "metrics.json").get("provenance")
        machine = machine or (read_timings(src) or {}).get("machine")
    meta = {
        "schema": SCHEMA,
        "name": tmp.name,
        "experiment": summary.get("name"),
        "command": command or f"panacea sweep {sweep / 'config.yaml'}",
        "points": len(points),
        "wall_seconds": summary.get("wall_seconds"),
        "points_seconds": summary.get("points_seconds"),
        "stages": summary.get("stages"),
        "machine": machine,
        "versions": (prov or {}).get("versions") or versions(),
        "git": (prov or {}).get("git") or git,
        "recorded": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    write_json(tmp / "result.json", meta)


def load_sweep(folder: Path) -> dict:
    """A recorded sweep: its ``result.json``, ``summary.json`` and config."""
    folder = Path(folder)
    return {"kind": "sweep", "folder": folder, "meta": read_json(folder / "result.json"),
            "doc": read_json(folder / "summary.json"),
            "config": yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}}


def _metric(entry: dict | None, key: str) -> dict | None:
    return None if entry is None else entry["metrics"].get(key)


def _cell(m: dict | None) -> str:
    if m is None:
        return "–"
    if m.get("lo") is None or m.get("hi") is None:
        return _f(m["mean"])
    return f"{_f(m['mean'])} ({_f(m['lo'], 0)}–{_f(m['hi'], 0)})"


def holds(doc: dict) -> dict[str, dict[str, list[str]]]:
    """Per compared variant (not the baseline): the points where it holds (its HS interval lies
    entirely below the baseline's HS at that point and its FA ≥ the baseline's − the margin), and
    ``of``: the points where both were measured."""
    base, margin = doc["baseline"], doc["fa_margin"]
    by = {(e["point"], e["variant"]): e for e in doc["summary"] if e["status"] == "done"}
    out: dict[str, dict] = {}
    for (point, v), e in by.items():
        ref = by.get((point, base))
        if v == base or ref is None:
            continue
        hs, hs_ref = _metric(e, "harmful_score"), _metric(ref, "harmful_score")
        if hs is None or hs_ref is None:
            continue
        fa, fa_ref = _metric(e, "finetune_accuracy"), _metric(ref, "finetune_accuracy")
        ok_fa = fa is None or fa_ref is None or fa["mean"] >= fa_ref["mean"] - margin - 1e-9
        upper = hs["hi"] if hs.get("hi") is not None else hs["mean"]
        row = out.setdefault(v, {"held": [], "of": []})
        row["of"].append(point)
        if upper < hs_ref["mean"] and ok_fa:
            row["held"].append(point)
    return out


def _label(cell: dict) -> str:
    """A grid point by its swept values, e.g. ``poison_ratio 0.2``."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in cell.items()) or "base"


def sweep_section(res: dict, level: int = 2, where: Path | None = None) -> list[str]:
    """The markdown section of a recorded sweep; plot links are relative to ``where`` (the folder
    of the markdown file, default the working directory)."""
    meta, doc, cfg = res["meta"], res["doc"], res["config"]
    exp = cfg.get("experiment") or {}
    ev = exp.get("eval") or {}
    m, v, g = meta.get("machine") or {}, meta.get("versions") or {}, meta.get("git") or {}
    seeds = doc.get("seeds") or [exp.get("seed", 43)]
    st = meta.get("stages") or {}
    total = (st.get("computed") or 0) + (st.get("reused") or 0)
    reuse = (f"{st['computed']} stages computed, {st['reused']} reused ({100 * st['reused'] / total:.0f} %)"
             + (f", {st['eval_parts_reused']} evaluation prompt sets read from the cache"
                if st.get("eval_parts_reused") else "")) if total else "stage reuse not recorded"
    wall, pts = meta.get("wall_seconds"), meta.get("points_seconds")
    lines = [f"{'#' * level} {meta['name']} (sweep)", "",
             f"`{meta['command']}` → `{res['folder'].as_posix()}/`", "",
             f"* swept: {'; '.join(f'`{k}`' for k in doc['swept'])}; baseline `{doc['baseline']}`, FA margin "
             f"{doc['fa_margin']:g} points; seeds {', '.join(map(str, seeds))}"
             + (" (one seed: intervals are each run's Wilson 95 % interval over the prompts)" if len(seeds) == 1 else ""),
             f"* prompts: HS on {(ev.get('harmful') or {}).get('name')} ({(ev.get('harmful') or {}).get('part') or 'whole pool'}), "
             f"FA on {(ev.get('utility') or {}).get('name')} ({(ev.get('utility') or {}).get('part') or 'whole pool'}); "
             f"judge `{ev.get('judge') or 'learned'}`",
             f"* machine: {m.get('cpu') or m.get('platform', '?')}, {m.get('cpus', '?')} CPUs, "
             f"{'GPU ' + m['cuda'] if m.get('cuda') else 'no GPU'}; wall {_f(None if wall is None else wall / 60, 0)} min "
             f"(the invocation that finished it), {_f(None if pts is None else pts / 60, 0)} min summed over the "
             f"{meta.get('points')} points' runs; {reuse}",
             "* versions: " + ", ".join(f"{k} {v.get(k)}" for k in PACKAGES)
             + f"; commit {(g.get('commit') or '?')[:10]}{' (with local changes)' if g.get('dirty') else ''}", ""]
    entries = [e for e in doc["summary"] if e["status"] == "done"]
    variants = list(dict.fromkeys(e["variant"] for e in entries))
    for key in doc["swept"]:
        mine = [e for e in entries if key in e["cell"]]
        values = list(dict.fromkeys(e["cell"][key] for e in mine))
        if not values:
            continue
        by = {(e["cell"][key], e["variant"]): e for e in mine}
        short = key.rsplit(".", 1)[-1]
        lines += [f"HS and FA (%) against `{key}` (HS with its interval; FA):", "",
                  "| variant | " + " | ".join(f"{short} {x}" for x in values) + " |",
                  "|---|" + "---|" * len(values)]
        for var in variants:
            cells = [f"{_cell(_metric(by.get((x, var)), 'harmful_score'))} / "
                     f"{_f((_metric(by.get((x, var)), 'finetune_accuracy') or {}).get('mean'))}" for x in values]
            lines.append(f"| {var} | " + " | ".join(cells) + " |")
        plot = res["folder"] / "plots" / f"{short}.png"
        if plot.is_file():
            rel = Path(os.path.relpath(plot, where or Path.cwd())).as_posix()
            lines += ["", f"![HS and FA against {short}]({rel})"]
        lines.append("")
    lines += [f"Worst case per variant: the highest HS over the points where its FA ≥ FA({doc['baseline']}) − "
              f"{doc['fa_margin']:g}:", "", "| variant | HS | FA | FA baseline | at | eligible points |",
              "|---|---|---|---|---|---|"]
    for var, w in doc["worst_case"].items():
        if w.get("point") is None:
            lines.append(f"| {var} | – | – | – | {w.get('note')} | 0/{w['points']} |")
        else:
            label = _label(w.get("cell") or {}) if w.get("cell") else w["point"]
            lines.append(f"| {var} | {_f(w['harmful_score'])} ({_f(w['harmful_score_lo'], 0)}–"
                         f"{_f(w['harmful_score_hi'], 0)}) | {_f(w['finetune_accuracy'])} | "
                         f"{_f(w['baseline_finetune_accuracy'])} | {label} | {w['eligible']}/{w['points']} |")
    held = holds(doc)
    labels = {e["point"]: _label(e["cell"]) for e in entries}
    every = [var for var, h in held.items() if h["of"] and len(h["held"]) == len(h["of"])]
    some = [var for var, h in held.items() if h["held"] and len(h["held"]) < len(h["of"])]
    none = [var for var, h in held.items() if h["of"] and not h["held"]]
    lines += ["", f"Where each defense holds (its HS interval entirely below {doc['baseline']}'s HS at the same "
              f"point, with FA within {doc['fa_margin']:g} points of {doc['baseline']}'s): "
              + "; ".join(filter(None, [
                  f"at every point of the grid: {', '.join(every)}" if every else "",
                  "only at some points: " + ", ".join(
                      f"{var} ({'; '.join(labels[p] for p in held[var]['held'])}; {len(held[var]['held'])} of "
                      f"{len(held[var]['of'])})" for var in some) if some else "",
                  f"at no point: {', '.join(none)}" if none else ""])) + "."]
    return lines
