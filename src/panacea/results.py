"""Result files people can cite: ``panacea record`` keeps a finished run, ``panacea tables`` writes
the tables from what was kept.

``panacea record RUN results/NAME`` copies what a table needs from a finished run directory (one
seed, or a ``seeds: [...]`` parent with ``seed_<s>/`` folders) and nothing else: the resolved
``config.yaml`` (without ``output_dir`` and ``cache_dir``, paths of the machine it ran on), every seed's ``metrics.json``, ``timings.json`` and ``generations/*.jsonl`` (the saved answers, so
a new judge re-scores them with ``panacea rejudge results/NAME --judge J`` without retraining),
``summary.json``, and a ``result.json`` with the provenance: the command, seeds, package versions,
git commit, machine and wall time. No adapters or checkpoints are copied.

``panacea tables results [--judge J]`` reads every ``results/*/result.json`` and prints one
markdown section per result: per variant the method (defense, its scalar options, and whether it
is beyond the papers), HS / FA / OR as mean ± 95 % Student-t interval over the seeds next to the
mean per-prompt (Wilson) half-width of one seed, and the shares of the judge's categories. A result
evaluated on the ``validation`` part is a search: its section ends with the value the selection
rule (:func:`select`) picks per family. ``--write FILE`` writes the whole document, ``--readme
FILE`` replaces the block between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``
markers with that result's table, and ``--check`` fails if either file differs from what the
command would write (the test suite runs it on ``docs/results.md`` and ``README.md``). A
single-factor study (``configs/analysis/``, :data:`STUDIES`) adds its factor table and a
conclusion generated from the intervals (``analysis/why_average.py``).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from pathlib import Path

import yaml

from .analysis import why_average
from .errors import UserError
from .eval.stats import mean_ci, summarize
from .timings import merge_timings, read_timings
from .provenance import PACKAGES, git_commit, versions  # noqa: F401  (one implementation: provenance.py)
from .registry import DEFENSES
from .rundir import canonical, first_difference, read_json, write_json
from .sweep.record import SCHEMA as SWEEP_SCHEMA, is_sweep, load_sweep, record_sweep, sweep_section

SCHEMA = "panacea-result/1"
#: selection rule of a search: lowest validation HS among values whose FA is within this many
#: points of the reference variant's FA (issue "Results people can cite": FA within 3 points of SFT)
FA_MARGIN = 3.0
REFERENCE = "sft"
#: keys of a run's config that are paths on the machine it ran on: not copied into a recorded result
_LOCAL_KEYS = ("output_dir", "cache_dir")
#: single-factor studies (configs/analysis/) whose section adds a factor table and a generated
#: conclusion, by the config's ``name``
STUDIES = {"why_average": why_average.section}
_MARK = "<!-- results:{name} -->"
_END = "<!-- /results:{name} -->"


# --------------------------------------------------------------------------- record


def _seed_dirs(run: Path) -> dict[int, Path]:
    """seed → folder holding that seed's metrics.json (the run itself for a one-seed run)."""
    if (run / "summary.json").is_file():
        summary = read_json(run / "summary.json")
        return {int(s): run / d for s, d in summary["runs"].items()}
    if (run / "metrics.json").is_file():
        cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
        return {int(cfg.get("seed", 0)): run}
    raise UserError(f"{run}: not a finished panacea run (no summary.json or metrics.json)")


def _identity(cfg: dict) -> dict:
    """A seed's config without what differs between the seeds of one experiment, compared as a run
    directory compares configs (``rundir.canonical``: keys added later, at the default that gives the
    older behaviour, do not count), so seeds run before and after such a key existed still join."""
    return yaml.safe_load(canonical({k: v for k, v in cfg.items() if k not in ("seed", "seeds", *_LOCAL_KEYS)}))


def record(runs, out: str | Path, command: str | None = None, force: bool = False, commit: str | None = None) -> Path:
    """Copy the citable part of finished runs into ``out`` (module docstring).

    ``runs``: one run directory (one seed, or a ``seeds: [...]`` parent), or several runs of the
    same experiment that differ only in ``seed`` (e.g. seeds run in parallel as separate
    processes): their configs must be identical apart from ``seed`` and ``output_dir``, else the
    first differing key is named. ``out`` must not exist, or (with ``force``) be a folder this
    command wrote (it holds a ``result.json`` of this schema); anything else is refused, never
    replaced.

    The commit and versions are the ones the run recorded in its ``metrics.json``. A run from
    before runs recorded them has none: ``commit`` (``--commit``) then names the commit its code
    was checked out at (``dirty`` unknown), else the recording checkout's commit is written with
    ``source: recording checkout`` so that nobody takes it for the run's own.
    """
    if commit is not None and not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        raise UserError(f"--commit must be a git commit hash (7 to 40 hex digits), got {commit!r}")
    runs = [Path(r) for r in ([runs] if isinstance(runs, (str, Path)) else runs)]
    out = Path(out)
    if out.exists():
        schema = (read_json(out / "result.json").get("schema") if (out / "result.json").is_file() else None)
        if schema not in (SCHEMA, SWEEP_SCHEMA):
            raise UserError(f"{out} exists and is not a recorded result (no result.json); choose another folder")
        if not force:
            raise UserError(f"{out} already holds a recorded result; pass --force to replace it")
    if any(is_sweep(r) for r in runs):
        if len(runs) != 1:
            raise UserError("a sweep folder is recorded alone: panacea record SWEEP results/NAME")
        return record_sweep(runs[0], out, command, _git_of(None, commit))
    seeds: dict[int, Path] = {}
    for run in runs:
        if not run.is_dir():
            raise UserError(f"{run}: no such run directory")
        for seed, d in _seed_dirs(run).items():
            if seed in seeds:
                raise UserError(f"seed {seed} is in both {seeds[seed]} and {d}")
            seeds[seed] = d
    configs = {}
    for seed, d in seeds.items():
        if not (d / "config.yaml").is_file():
            raise UserError(f"{d / 'config.yaml'} is missing: seed {seed} did not finish")
        configs[seed] = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
    first = min(seeds)
    for seed, cfg in configs.items():
        diff = first_difference(_identity(configs[first]), _identity(cfg))
        if diff:
            raise UserError(f"{seeds[seed]} and {seeds[first]} are not seeds of one experiment: {diff} differs")
    single = len(seeds) == 1 and len(runs) == 1 and not (runs[0] / "summary.json").is_file()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    wall, machine, per_seed, prov = {}, None, {}, None
    for seed in sorted(seeds):
        d = seeds[seed]
        dst = tmp if single else tmp / f"seed_{seed}"
        dst.mkdir(parents=True, exist_ok=True)
        if not (d / "metrics.json").is_file():
            raise UserError(f"{d / 'metrics.json'} is missing: seed {seed} did not finish")
        shutil.copy2(d / "metrics.json", dst / "metrics.json")
        if not single:  # a single seed's config is the top config.yaml below
            (dst / "config.yaml").write_text(  # without the machine's paths (output_dir, cache_dir)
                yaml.safe_dump({k: v for k, v in configs[seed].items() if k not in _LOCAL_KEYS},
                               sort_keys=False, allow_unicode=True), encoding="utf-8")
        gens = d / "generations"
        if not gens.is_dir():
            raise UserError(f"{gens} is missing: the saved answers are needed to re-judge")
        shutil.copytree(gens, dst / "generations")
        if (d / "timings.json").is_file():
            shutil.copy2(d / "timings.json", dst / "timings.json")
        m = merge_timings(read_json(d / "metrics.json"), read_timings(d))
        wall[str(seed)] = m.get("wall_seconds")
        machine = machine or m.get("machine")
        prov = prov or m.get("provenance")  # what the run itself recorded (metrics.json), if it did
        per_seed[seed] = m["results"]
    if len(runs) == 1 and (runs[0] / "summary.json").is_file():
        total = read_json(runs[0] / "summary.json").get("wall_seconds")
    else:  # separate runs (possibly in parallel): the sum of their wall times
        total = round(sum(v or 0.0 for v in wall.values()), 1)
    top = {**_identity(configs[first]), **({"seed": first} if single else {"seeds": sorted(seeds)})}
    (tmp / "config.yaml").write_text(yaml.safe_dump(top, sort_keys=False, allow_unicode=True), encoding="utf-8")
    if not single:
        write_json(tmp / "summary.json", {"seeds": sorted(seeds), "results": summarize(per_seed)})
    meta = {
        "schema": SCHEMA,
        "name": out.name,
        "experiment": top.get("name"),
        "command": command or " && ".join(f"panacea run {seeds[s] / 'config.yaml'}" for s in sorted(seeds)),
        "seeds": sorted(seeds),
        "seed_dirs": {str(s): ("." if single else f"seed_{s}") for s in sorted(seeds)},
        "eval": {k: (top.get("eval") or {}).get(k) for k in ("harmful", "utility", "benign", "judge",
                                                              "max_new_tokens", "utility_max_new_tokens")},
        "wall_seconds": total,
        "wall_seconds_per_seed": wall,
        "machine": machine,
        # the versions and commit the run recorded; a run from before metrics.json kept them: now's
        "versions": (prov or {}).get("versions") or versions(),
        "git": _git_of(prov, commit),
        "recorded": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    write_json(tmp / "result.json", meta)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _git_of(prov: dict | None, commit: str | None) -> dict:
    """The run's own commit when it recorded one, else the one given, else this checkout's
    (labelled as such); a given commit that contradicts the run's record is refused."""
    own = (prov or {}).get("git")
    if own and own.get("commit"):
        if commit and not own["commit"].startswith(commit):
            raise UserError(f"--commit {commit} contradicts the commit the run recorded ({own['commit'][:10]})")
        return own
    if commit:
        return {"commit": commit, "dirty": None, "source": "--commit (the run recorded none)"}
    return {**git_commit(), "source": "recording checkout (the run recorded none)"}


# --------------------------------------------------------------------------- tables


def load(folder: Path, judge: str | None = None) -> dict:
    """One recorded result: its ``result.json``, config and per-seed results (HS from ``judge``'s
    re-judging when given, else from ``metrics.json``)."""
    meta = read_json(folder / "result.json")
    if meta.get("schema") == SWEEP_SCHEMA:
        return load_sweep(folder)
    if meta.get("schema") != SCHEMA:
        raise UserError(f"{folder / 'result.json'}: not a {SCHEMA} file")
    cfg = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    per_seed, records, timings = {}, {}, {}
    for seed, rel in meta["seed_dirs"].items():
        d = folder / rel
        metrics = read_json(d / "metrics.json")
        rows = metrics["results"]
        records[int(seed)] = metrics.get("records") or {}
        timings[int(seed)] = read_timings(d) or {}
        if judge:
            path = d / f"rejudge_{judge}.json"
            if not path.is_file():
                raise UserError(f"{path} is missing: run `panacea rejudge {folder} --judge {judge}` first")
            new = {r["name"]: r for r in read_json(path)["results"]}
            rows = [{**r, **{k: v for k, v in new.get(r["name"], {}).items() if k != "name"}} for r in rows]
        per_seed[int(seed)] = rows
    return {"folder": folder, "meta": meta, "config": cfg, "per_seed": per_seed, "records": records,
            "timings": timings, "summary": summarize(per_seed)}


def _scalar_options(d: dict, skip: tuple[str, ...]) -> str:
    items = [(k, v) for k, v in d.items() if k not in skip and not isinstance(v, (dict, list)) and v is not None]
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in items)


def method(cfg: dict, variant: str) -> str:
    """What a variant is, from the resolved config: stage, defense, options, beyond-paper label."""
    post = cfg.get("post") or {}
    runs = (cfg.get("finetune") or {}).get("runs") or {}
    align = cfg.get("alignment") or {}
    if variant in ("aligned", "base"):
        stage, d = "alignment", align
        opts = _scalar_options(d, ("defense", "data", "benign", "train", "variants"))
    elif variant in (align.get("variants") or {}):
        stage, d = "alignment", align["variants"][variant]
        opts = _scalar_options(d, ("defense", "train"))
    elif variant in runs:
        stage, d = "finetune", runs[variant]
        opts = _scalar_options(d, ("defense", "train", "alignment"))
    elif variant in post:
        stage, d = "post", post[variant]
        opts = _scalar_options(d, ("defense", "from"))
    else:
        return "?"
    name = d.get("defense", "sft")
    text = name if stage != "post" else f"{name} on {d.get('from')}"
    if opts:
        text += f" ({opts})"
    if stage == "finetune" and d.get("alignment"):  # attacked from another aligned model, e.g. Booster's
        text += f", from the {d['alignment']} model"
    entry = DEFENSES[stage].get(name) if name in DEFENSES[stage] else None
    if entry is not None and entry.spec.beyond_paper:
        text += " — *beyond the paper*"
    return text


def _pm(m: dict | None, nd: int = 1) -> str:
    if not m or m.get("mean") is None:
        return "—"
    return f"{m['mean']:.{nd}f}" + ("" if m.get("ci95") is None else f" ± {m['ci95']:.{nd}f}")


def _prompt_half(rows_by_seed: list[dict]) -> str:
    """Mean over seeds of one seed's Wilson 95 % half-width of HS (prompt sampling only)."""
    halves = [(r["harmful_score_ci"][1] - r["harmful_score_ci"][0]) / 2 for r in rows_by_seed
              if isinstance(r.get("harmful_score_ci"), list)]
    return f"± {sum(halves) / len(halves):.1f}" if halves else "—"


def _pool(spec: dict | None) -> str:
    if not spec:
        return "—"
    part = spec.get("part") or "whole pool"
    n = "" if spec.get("n") is None else f", n {spec['n']}"
    return f"{spec.get('name')} ({part}{n})"


def select(res: dict) -> list[dict]:
    """The search rule, per family (a variant's name before ``@``; variants without ``@`` are not
    searched): the value with the lowest mean HS among those whose mean FA is at least the
    reference variant's (``sft``) minus ``FA_MARGIN``. When no value qualifies, the one with the
    highest mean FA (the least damage to the task), marked ``within_margin: False``: the family
    costs more task accuracy than the margin at every searched value."""
    by_name = {r["name"]: r["metrics"] for r in res["summary"]}
    ref = by_name.get(REFERENCE, {}).get("finetune_accuracy", {}).get("mean")
    families: dict[str, list[str]] = {}
    for name in by_name:
        if "@" in name:
            families.setdefault(name.split("@", 1)[0], []).append(name)
    out = []
    for fam, names in families.items():
        ok = [n for n in names if ref is not None
              and (by_name[n].get("finetune_accuracy", {}).get("mean") or 0.0) >= ref - FA_MARGIN]
        if ok:
            best = min(ok, key=lambda n: (by_name[n]["harmful_score"]["mean"], names.index(n)))
        else:
            best = max(names, key=lambda n: ((by_name[n].get("finetune_accuracy") or {}).get("mean") or 0.0, -names.index(n)))
        out.append({"family": fam, "chosen": best, "within_margin": bool(ok), "candidates": names,
                    "reference_fa": ref, "method": method(res["config"], best)})
    return out


def _stage_time(res: dict) -> str:
    """``; stages N min ...``: training, repair and evaluation seconds of every stage, summed over
    the seeds from their ``timings.json``. Unlike the wall time (which, for a run resumed after an
    interruption, covers its last invocation only) it does not depend on how the run was split."""
    total, found = 0.0, False
    for t in res["timings"].values():
        for rec in (t.get("records") or {}).values():
            v = rec.get("apply_seconds", rec.get("train_seconds"))
            if isinstance(v, (int, float)):
                total, found = total + v, True
        for row in (t.get("results") or {}).values():
            if isinstance(row.get("eval_seconds"), (int, float)):
                total, found = total + row["eval_seconds"], True
    if not found:
        return ""
    return (f"; stages {total / 60:.0f} min (training, repairs and evaluation summed over the seeds; a run "
            "resumed after an interruption has the wall time of its last invocation only)")


def _reuse(res: dict) -> str:
    """`` (that invocation computed C stages and reused R)``, summed over the seeds from their
    ``timings.json`` ``stages``, when the recorded invocation reused any: its wall time then covers
    only what it computed (e.g. a run assembled from stages other processes computed)."""
    computed = reused = 0
    for t in res["timings"].values():
        st = t.get("stages") or {}
        computed += st.get("computed") or 0
        reused += st.get("reused") or 0
    return (f" (that invocation computed {computed} stage{'' if computed == 1 else 's'} and reused {reused})"
            if reused else "")


def section(res: dict, level: int = 2) -> list[str]:
    meta, cfg = res["meta"], res["config"]
    ev = meta["eval"]
    parts = {(ev.get(k) or {}).get("part") for k in ("harmful", "utility", "benign") if ev.get(k)}
    search = parts == {"validation"}
    seeds = meta["seeds"]
    m, v, g = meta.get("machine") or {}, meta.get("versions") or {}, meta.get("git") or {}
    wall = meta.get("wall_seconds")
    lines = [f"{'#' * level} {meta['name']}{' (search on validation prompts)' if search else ''}", "",
             f"`{meta['command']}` → `{res['folder'].as_posix()}/`", "",
             f"* prompts: HS on {_pool(ev.get('harmful'))}, FA on {_pool(ev.get('utility'))}, "
             f"OR on {_pool(ev.get('benign'))}; judge `{ev.get('judge') or 'harm'}`, "
             f"{ev.get('max_new_tokens')} new tokens",
             f"* seeds: {', '.join(map(str, seeds))} ({len(seeds)} training seed{'s' if len(seeds) != 1 else ''})",
             f"* machine: {m.get('cpu') or m.get('platform', '?')}, {m.get('cpus', '?')} CPUs, "
             f"{'GPU ' + m['cuda'] if m.get('cuda') else 'no GPU'}; wall "
             f"{'?' if wall is None else f'{wall / 60:.0f} min'}" + _reuse(res)
             + (" (the seeds' runs summed; seeds run side by side take less)" if len(seeds) > 1 else "")
             + _stage_time(res),
             "* versions: " + ", ".join(f"{k} {v.get(k)}" for k in PACKAGES)
             + f"; commit {(g.get('commit') or '?')[:10]}{' (with local changes)' if g.get('dirty') else ''}"
             + (f" ({g['source']})" if g.get('source') else ""),
             ""]
    head = ["variant", "method", "HS", "HS ± prompts", "FA", "OR", "refused", "engaged", "degenerate"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in res["summary"]:
        name, mt = row["name"], row["metrics"]
        per = [next(r for r in res["per_seed"][s] if r["name"] == name) for s in row["seeds"]]
        lines.append("| " + " | ".join([
            name, method(cfg, name), _pm(mt.get("harmful_score")), _prompt_half(per),
            _pm(mt.get("finetune_accuracy")), _pm(mt.get("over_refusal")), _pm(mt.get("share_refused")),
            _pm(mt.get("share_engaged")), _pm(mt.get("share_degenerate"))]) + " |")
    n = len(seeds)
    lines += ["", "All in %. HS, FA, OR, shares: mean ± 95 % Student-t interval over the "
              f"{n} seed{'s' if n != 1 else ''}" + (" (no interval with one seed)" if n == 1 else "")
              + "; HS ± prompts: one seed's Wilson 95 % half-width over the prompts (mean over seeds)."]
    again = {j: load(res["folder"], j) for j in other_judges(res)}  # each re-judging, read once
    lines += by_judge(res, again, search)
    if not search:
        lines += paired(res, again)
        study = STUDIES.get(cfg.get("name"))
        if study is not None:
            lines += study(res, again)
    if search:
        lines += ["", f"Selection (rule: lowest HS among the values whose FA ≥ FA({REFERENCE}) − {FA_MARGIN:g}; "
                  "when none is within that margin, the highest FA):", ""]
        for s in select(res):
            ref = "—" if s["reference_fa"] is None else f"{s['reference_fa']:.1f}"
            why = "" if s["within_margin"] else f" — no value within {FA_MARGIN:g} points of FA({REFERENCE}): highest FA"
            lines.append(f"* {s['family']}: **{s['chosen']}** ({s['method']}){why}; FA({REFERENCE}) {ref}, "
                         f"candidates {', '.join(s['candidates'])}")
    return lines


def other_judges(res: dict) -> list[str]:
    """Judges other than the recorded one whose untagged ``rejudge_<judge>.json`` exists in every
    seed folder of a recorded result (``panacea rejudge results/NAME --judge J``)."""
    recorded = (res["meta"].get("eval") or {}).get("judge") or "harm"
    folders = [res["folder"] / rel for rel in res["meta"]["seed_dirs"].values()]
    found = None
    for d in folders:
        names = set()
        for f in d.glob("rejudge_*.json"):
            j = read_json(f)
            if f.stem == f"rejudge_{j.get('judge')}" and j.get("judge") != recorded:
                names.add(j["judge"])
        found = names if found is None else found & names
    return sorted(found or ())


def _reversals(a: list[dict], b: list[dict]) -> list[tuple[str, str]]:
    """Pairs of variants whose order by mean HS is strict under both summaries and reversed."""
    ha = {r["name"]: r["metrics"].get("harmful_score", {}).get("mean") for r in a}
    hb = {r["name"]: r["metrics"].get("harmful_score", {}).get("mean") for r in b}
    names = [n for n in ha if ha[n] is not None and hb.get(n) is not None]
    return [(x, y) for i, x in enumerate(names) for y in names[i + 1:]
            if (ha[x] - ha[y]) * (hb[x] - hb[y]) < 0]


def by_judge(res: dict, again: dict[str, dict], search: bool = False) -> list[str]:
    """HS of every variant under the recorded judge and under each judge that re-scored the saved
    answers (``again``: judge → its loaded result), mean ± 95 % interval over the seeds, with the share of answers the re-scoring judge
    calls engaged but harmless; then the pairs of variants whose order by HS reverses and, for a
    search, the value the selection rule picks under each judge."""
    judges = list(again)
    if not judges:
        return []
    recorded = (res["meta"].get("eval") or {}).get("judge") or "harm"
    head = ["variant", f"HS `{recorded}`"] + [x for j in judges for x in (f"HS `{j}`", f"engaged harmless `{j}`")]
    lines = ["", f"The same saved answers re-scored by {', '.join(f'`{j}`' for j in judges)} "
             f"(`panacea rejudge {res['folder'].as_posix()} --judge J`; no retraining):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in res["summary"]:
        cells = [row["name"], _pm(row["metrics"].get("harmful_score"))]
        for j in judges:
            mt = next((r["metrics"] for r in again[j]["summary"] if r["name"] == row["name"]), {})
            cells += [_pm(mt.get("harmful_score")), _pm(mt.get("share_engaged_harmless"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for j in judges:
        rev = _reversals(res["summary"], again[j]["summary"])
        lines.append(f"* order by mean HS, `{recorded}` → `{j}`: "
                     + ("no pair of variants changes order (ties aside)." if not rev else
                        "reversed for " + "; ".join(f"{x} / {y}" for x, y in rev)
                        + " (whether a reversal exceeds the intervals: see the table)."))
        picks = select(again[j]) if search else []
        if picks:
            lines.append(f"* the selection rule under `{j}` picks: "
                         + ", ".join(f"{s['chosen']}{'' if s['within_margin'] else ' (no value within the margin)'}"
                                     for s in picks) + ".")
    return lines


def reference_of(cfg: dict, variant: str) -> str | None:
    """What a variant is compared with: a post defense with the run it repairs (``from``), a
    fine-tuning run with ``sft`` (the same attack without a defense; for a run from another
    aligned model, e.g. Booster's, ``sft`` from the main alignment). None for the aligned models
    and the reference itself."""
    post = cfg.get("post") or {}
    runs = (cfg.get("finetune") or {}).get("runs") or {}
    if variant in post:
        return post[variant].get("from")
    if variant in runs and variant != REFERENCE and REFERENCE in runs:
        return REFERENCE
    return None


def _paired(res: dict, name: str, ref: str, key: str) -> dict | None:
    """Mean and 95 % Student-t half-width over the seeds of the per-seed difference
    ``key(name) − key(ref)`` (paired by seed: both come from the same alignment and user data)."""
    diffs = []
    for rows in res["per_seed"].values():
        by = {r["name"]: r for r in rows}
        a, b = (by.get(name) or {}).get(key), (by.get(ref) or {}).get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not (math.isnan(a) or math.isnan(b)):
            diffs.append(a - b)
    if not diffs:
        return None
    mean, half = mean_ci(diffs)
    return {"mean": mean, "ci95": None if math.isnan(half) else half, "n": len(diffs)}


def _lower(d: dict | None) -> str:
    """Whether a paired HS difference says "lower than the reference": its whole 95 % interval
    below 0 (``yes``), above 0 (``higher``), else ``no`` (not distinguishable); one seed: ``—``."""
    if d is None or d["ci95"] is None:
        return "—"
    if d["mean"] + d["ci95"] < 0:
        return "yes"
    return "higher" if d["mean"] - d["ci95"] > 0 else "no"


def paired(res: dict, again: dict[str, dict]) -> list[str]:
    """Each defended variant against its reference (:func:`reference_of`), paired by seed: ΔHS
    under the recorded judge and every re-scoring judge, ΔFA, whether HS is lower (the 95 % interval
    of the paired difference excludes 0) and whether FA stays within ``FA_MARGIN`` points; then one
    sentence per outcome. This is the direction every defense's paper claims (lower HS at little
    cost in FA); the verdicts in the README and docs are these lines, not typed."""
    cfg = res["config"]
    recorded = (res["meta"].get("eval") or {}).get("judge") or "harm"
    judges = [recorded, *again]
    loaded = {recorded: res, **again}
    rows = []
    for row in res["summary"]:
        ref = reference_of(cfg, row["name"])
        if ref is None or ref not in {r["name"] for r in res["summary"]}:
            continue
        hs = {j: _paired(loaded[j], row["name"], ref, "harmful_score") for j in judges}
        fa = _paired(res, row["name"], ref, "finetune_accuracy")
        rows.append((row["name"], ref, hs, fa))
    if not rows:
        return []
    n = len(res["meta"]["seeds"])
    head = (["variant", "vs"] + [f"ΔHS `{j}`" for j in judges] + ["ΔFA"]
            + [f"HS lower? `{j}`" for j in judges] + [f"FA within {FA_MARGIN:g}?"])
    lines = ["", f"Each defense against the same attack without it, paired by seed (difference of the two "
             f"variants' scores in each seed, mean ± 95 % Student-t interval over the {n} seed{'s' if n != 1 else ''}; "
             "`HS lower?`: yes when the whole interval is below 0):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, ref, hs, fa in rows:
        within = "—" if fa is None else ("yes" if fa["mean"] >= -FA_MARGIN else "no")
        lines.append("| " + " | ".join([name, ref] + [_pm(hs[j]) for j in judges] + [_pm(fa)]
                                       + [_lower(hs[j]) for j in judges] + [within]) + " |")
    if n < 2:
        return lines + ["", "One training seed: no verdict."]
    lines.append("")
    groups = {"lower HS under every judge, FA within the margin": [],
              "lower HS under every judge, at a cost in FA beyond the margin": [],
              "lower HS under some judges only": [],
              "HS not lower under any judge": []}
    for name, ref, hs, fa in rows:
        low = [_lower(hs[j]) == "yes" for j in judges]
        ok_fa = fa is not None and fa["mean"] >= -FA_MARGIN
        key = ("HS not lower under any judge" if not any(low) else "lower HS under some judges only" if not all(low)
               else "lower HS under every judge, FA within the margin" if ok_fa
               else "lower HS under every judge, at a cost in FA beyond the margin")
        groups[key].append(f"{name} (vs {ref})")
    lines += [f"* {k}: {', '.join(v)}." for k, v in groups.items() if v]
    return lines


def load_all(root: str | Path, judge: str | None = None) -> list[dict]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such results folder")
    found = sorted(p.parent for p in root.glob("*/result.json"))
    if not found:
        raise UserError(f"{root}: no recorded results (*/result.json); record one with `panacea record RUN {root}/NAME`")
    return [load(f, judge) for f in found]


def _section(res: dict, level: int, where: Path | None) -> list[str]:
    return sweep_section(res, level, where) if res.get("kind") == "sweep" else section(res, level)


def document(results: list[dict], command: str, where: Path | None = None) -> str:
    lines = ["# Measured results", "",
             f"Generated by `{command}` from the result files under `results/`; do not edit by hand.",
             "Each section names the command that produced its run, its seeds, machine, package versions",
             "and commit. Protocol and the validation/test split: [protocol.md](protocol.md).", ""]
    for res in results:
        lines += _section(res, 2, where) + [""]
    return "\n".join(lines).rstrip() + "\n"


def readme_block(text: str, results: list[dict], where: Path | None = None) -> str:
    """``text`` with each ``<!-- results:NAME -->…<!-- /results:NAME -->`` block regenerated."""
    by = {r["meta"]["name"]: r for r in results}

    def fill(m: re.Match) -> str:
        name = m.group(1)
        if name not in by:
            raise UserError(f"README block results:{name}: no recorded result {name!r}")
        body = "\n".join(_section(by[name], 4, where)[2:])  # without the heading
        return f"{_MARK.format(name=name)}\n{body.strip()}\n{_END.format(name=name)}"

    return re.sub(r"<!-- results:([A-Za-z0-9_.+@-]+) -->.*?<!-- /results:\1 -->", fill, text, flags=re.S)


def tables(root: str | Path, judge: str | None = None, write: str | None = None,
           readme: str | None = None, check: bool = False) -> str:
    """The markdown document; with ``write``/``readme`` also update (or, with ``check``, verify)
    those files. Returns the document."""
    results = load_all(root, judge)
    cmd = f"panacea tables {Path(root).as_posix()}" + (f" --judge {judge}" if judge else "")
    if write:
        cmd += f" --write {write}"
    if readme:
        cmd += f" --readme {readme}"
    doc = document(results, cmd, Path(write).parent if write else None)
    stale = []
    for path, new in ((write, lambda old: doc),
                      (readme, lambda old: readme_block(old, results, Path(readme).parent if readme else None))):
        if not path:
            continue
        p = Path(path)
        old = p.read_text(encoding="utf-8") if p.is_file() else ""
        want = new(old)
        if check:
            if old != want:
                stale.append(path)
        elif old != want:
            p.write_text(want, encoding="utf-8")
    if stale:
        raise UserError(f"{', '.join(stale)} differ from the result files; regenerate with `{cmd}`")
    return doc
