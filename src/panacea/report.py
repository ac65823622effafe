"""The results table of a run, printed at its end and written to ``results.md`` with the HS-vs-FA
plot (``plots.py``); the tables of ``rejudge``, multi-seed runs and ``bench``.

One table (``table_rows``) serves the terminal (aligned text) and the markdown files
(``results.md`` of a run or of a multi-seed run's summary, ``compare.md``); rows are a run's
``metrics.json`` results or a ``summary.json``'s mean ± interval over seeds alike. The legend names
the judge that scored the rows (their recorded ``judge``), so a re-judged table describes its own
judge.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .distributed import is_main
from .plots import plot_hs_fa, point
from .registry import JUDGES
from .rundir import write_atomic


def _f(v, nd=1):
    return "—" if v is None else f"{v:.{nd}f}"


#: the results table's columns after the variant: (heading, metrics key, decimals)
COLUMNS = (("HS [95% CI]", "harmful_score", 1), ("HS+", "harmful_score_plus", 1), ("refused", "share_refused", 1),
           ("engaged", "share_engaged", 1), ("harmless", "share_engaged_harmless", 1),
           ("off-topic", "share_off_topic", 1), ("degen.", "share_degenerate", 1), ("FA", "finetune_accuracy", 1),
           ("OR", "over_refusal", 1), ("train s", "train_seconds", 0))


def _value(v):
    """A plain number, or the mean of a summarised metric (``{"mean", "ci95", ...}``)."""
    return v.get("mean") if isinstance(v, dict) else v


def _cell(row: dict, key: str, nd: int) -> str:
    """One table cell. A row is either one run's (``metrics.json``: plain numbers, HS with its
    Wilson interval ``harmful_score_ci``) or summarised over seeds (``summary.json``'s
    ``metrics``: ``{"mean", "ci95"}`` per key, shown as mean ± half-width)."""
    v = row.get(key)
    if isinstance(v, dict):
        return _pm(v, nd)
    if key == "harmful_score" and v is not None:
        ci = row.get("harmful_score_ci")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
            return f"{v:.1f} [{ci[0]:.0f}–{ci[1]:.0f}]"
    return _f(v, nd)


def table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(heading, cells) of the results table: per variant HS with its 95 % interval, HS+, the
    answer shares, FA, OR and training seconds. The ``harmless`` share (engaged but harmless,
    only judges that tell the two apart give it) is shown only when some row has it."""
    cols = [c for c in COLUMNS if c[1] != "share_engaged_harmless"
            or any((_value(r.get(c[1])) or 0) > 0 for r in rows)]
    head = ["variant", *(h for h, _, _ in cols)]
    return head, [[r["name"], *(_cell(r, k, nd) for _, k, nd in cols)] for r in rows]


def _render(head: list[str], rows: list[list[str]], markdown: bool = False) -> list[str]:
    """Aligned plain text (first column left, numbers right) or a markdown table."""
    if markdown:
        esc = [[str(c).replace("|", "\\|") for c in row] for row in [head, *rows]]
        return (["| " + " | ".join(esc[0]) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
                + ["| " + " | ".join(r) + " |" for r in esc[1:]])
    return _table(head, rows)


def judge_of(rows: list[dict], default: str | None = None) -> str | None:
    """The judge that scored ``rows`` (each evaluated row records ``judge: {"judge": name, ...}``),
    else ``default``; several names are joined with ``+``."""
    names = []
    for r in rows:
        j = r.get("judge")
        name = j.get("judge") if isinstance(j, dict) else j if isinstance(j, str) else None
        if name and name not in names:
            names.append(name)
    return "+".join(names) if names else default


def _judge_phrase(judge: str | None) -> str:
    return f"the `{judge}` judge" if judge else "the run's judge"


def footer(judge: str | None, seeds: int | None = None) -> str:
    """The one-line legend under a plain-text results table, naming the judge that scored it."""
    interval = ("Wilson 95% interval over the prompts" if not seeds
                else f"mean ± 95% Student-t half-width over {seeds} seed{'s' if seeds != 1 else ''}")
    return (f"HS: % of harmful prompts whose answer {_judge_phrase(judge)} calls harmful ({interval}); "
            "HS+: HS or incoherent; refused/engaged/off-topic/degen.: how that judge classed the answers; "
            "FA: task accuracy; OR: benign prompts refused.")


def column_notes(judge: str | None, seeds: int | None = None) -> list[str]:
    """One sentence per column of the results table (results.md, compare.md), naming the judge."""
    j = _judge_phrase(judge)
    help_text = judge_help(judge) if judge else ""
    if help_text:
        j += f" ({help_text})"
    interval = ("shown with its Wilson 95 % interval over the prompts (how much the number could move with "
                "other prompts of the same kind)" if not seeds else
                f"shown as the mean over the {seeds} training seed{'s' if seeds != 1 else ''} ± the 95 % Student-t "
                "half-width (training noise included; every column is such a mean)")
    return [
        f"* **HS** (harmful score): % of the held-out harmful prompts whose answer {j} calls harmful, "
        f"{interval}; lower is safer.",
        "* **HS+**: % of the harmful prompts answered harmfully *or* incoherently (four identical consecutive "
        "words: the papers' \"final score+\"), by the same judge; a model that only babbles scores high here.",
        "* **refused / engaged / off-topic / degen.**: how that judge classed the answers to the harmful prompts "
        "(a refusal; compliance; an answer that is not about the request; empty, repetitive or symbol-soup text), "
        "in %; with "
        "**harmless** (engaged but harmless, when the judge tells them apart) they add up to 100, so a broken "
        "model shows up as off-topic or degenerate rather than as safe.",
        "* **FA** (fine-tune accuracy): % of the user task's held-out test items answered correctly (the task's "
        "answer matcher, `panacea ls matchers`), no judge involved; higher means the defense cost the user less.",
        "* **OR** (over-refusal): % of benign prompts refused (the refusal-phrase detector, not the judge); "
        "lower is better.",
        "* **train s**: seconds spent training the variant's own stage (a post-fine-tuning variant repeats "
        "its source's); a measurement of this machine, not a result.",
    ]


def judge_help(name: str) -> str:
    """A judge's one-line description (``panacea ls judges``), importing only its own module
    (loading every plug-in would cost ``panacea compare`` seconds); "" for an unknown name."""
    if JUDGES.registered(name) is None and name.isidentifier():
        for mod in (f"panacea.judges.{name}", "panacea.judges.harm"):  # `refusal` registers with harm
            try:
                importlib.import_module(mod)
            except ImportError:
                continue
            if JUDGES.registered(name) is not None:
                break
    entry = JUDGES.registered(name)
    return entry.help if entry is not None else ""


def format_results(metrics: dict, samples: bool = True, judge: str | None = None) -> str:
    """The plain-text results table of one run (``metrics.json``), its legend naming the judge
    (``judge``, else the one recorded in the rows) and, with ``samples``, a few answers."""
    rows = metrics["results"]
    head, cells = table_rows(rows)
    wall = metrics.get("wall_seconds")  # from timings.json, which a copied run may lack
    lines = [f"results: {metrics['name']}  (HS, HS+, shares, FA, OR in %"
             f"{'' if wall is None else f'; wall {wall:.0f} s'})"]
    lines += _render(head, cells)
    lines.append(footer(judge or judge_of(rows)))
    if samples:
        for r in rows:
            for s in r.get("samples", []):
                resp = " ".join(s["response"].split())
                lines.append(f"[{r['name']}] ({s['category']}) {s['prompt'][:70]!r} → {resp[:160]!r}")
    return "\n".join(lines)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    table = [head, *rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = []
    for j, row in enumerate(table):
        lines.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _pm(m: dict | None, nd: int = 1) -> str:
    """``mean ± half-width`` of one summarised metric (``eval.stats.summarize``)."""
    if not m or m.get("mean") is None:
        return "—"
    return f"{m['mean']:.{nd}f}" + ("" if m.get("ci95") is None else f" ± {m['ci95']:.{nd}f}")


def summary_rows(summary: dict) -> list[dict]:
    """``summary.json``'s variants as table rows: ``{"name", "seeds", <key>: {"mean", "ci95", ...}}``."""
    return [{"name": r["name"], "seeds": r.get("seeds"), **r["metrics"]} for r in summary["results"]]


def format_summary(summary: dict, judge: str | None = None) -> str:
    """Table of a multi-seed run (``summary.json``, or a multi-seed ``rejudge_*.json``)."""
    keys = [("HS", "harmful_score"), ("HS+", "harmful_score_plus"), ("refused", "share_refused"),
            ("FA", "finetune_accuracy"), ("OR", "over_refusal")]
    rows = []
    for r in summary["results"]:
        m = r["metrics"]
        rows.append([r["name"], *(_pm(m.get(k)) for _, k in keys), str(len(r["seeds"]))])
    seeds = ", ".join(str(s) for s in summary["seeds"])
    judge = judge or (summary.get("judge") if isinstance(summary.get("judge"), str) else None)
    lines = [f"summary: {summary['name']} over seeds {seeds}  (% ; mean ± 95% t-interval half-width over seeds)"]
    lines += _table(["variant", *(h for h, _ in keys), "seeds"], rows)
    lines.append(f"HS: % of harmful prompts whose answer {_judge_phrase(judge)} calls harmful; HS+: HS or "
                 "incoherent; refused: share of refused answers; FA: task accuracy; OR: benign prompts refused. "
                 "Every numeric metric is in summary.json.")
    return "\n".join(lines)


def format_rejudge(out: dict) -> str:
    """What ``panacea rejudge`` prints: the results table under the new judge and the change."""
    if "seeds" in out:
        return f"re-judged by {out['judge']}\n" + format_summary(out)
    info = out.get("judge_info", {})
    thr = info.get("threshold")
    src = info.get("threshold_source")
    lines = [format_results({**out, "name": f"{out['name']} re-judged by {out['judge']}"}, samples=False)]
    if thr is not None:
        lines.append(f"threshold {thr:.4g}" + (f" ({src})" if src else ""))
    for r in out["results"]:
        before = r.get("original_harmful_score")
        was = "—" if before is None else f"{before:.1f}"
        lines.append(f"  {r['name']}: HS {was} ({out.get('original_judge') or 'original'}) → "
                     f"{r['harmful_score']:.1f} ({out['judge']}); agreement {_f(r.get('agreement'))}%, "
                     f"{r['flipped_to_harmful']} now harmful, {r['flipped_to_not_harmful']} no longer harmful")
    return "\n".join(lines)


def format_bench(results: dict) -> str:
    """The bench's method table (HS, FA, OR, overhead vs SFT) and its targets, as plain text."""
    head = ["method", "stage", "HS", "HS+", "FA", "OR", "time ×SFT", "mem ×SFT", "apply s"]
    table = [head]
    for r in results["methods"]:
        table.append([r["method"], r["stage"], _f(r.get("harmful_score")), _f(r.get("harmful_score_plus")),
                      _f(r.get("finetune_accuracy")), _f(r.get("over_refusal")), _f(r.get("step_time_ratio"), 2),
                      _f(r.get("peak_memory_ratio"), 2), _f(r.get("apply_seconds"), 1)])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = [f"bench: {results['name']}{' (--quick)' if results.get('quick') else ''}  "
             f"(wall {results['wall_seconds']:.0f} s{' resuming' if results.get('resumed') else ''}, "
             f"estimated {results.get('estimated_seconds', 0):.0f} s{' fresh' if results.get('resumed') else ''})"]
    for j, row in enumerate(table):
        lines.append("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    g = results.get("generation_speedup")
    if g:
        for x in [g] + list(g.get("other_models") or []):
            lines.append(f"generation ({x.get('model', 'aligned')} model): batched {x['batched_tokens_per_second']} tok/s "
                         f"vs one at a time {x['one_at_a_time_tokens_per_second']} tok/s = {x['speedup']}× "
                         f"({x['identical_answers']}/{x['prompts']} identical answers)")
    for t in results.get("targets", []):
        verdict = f"not judged ({t['flag']})" if t.get('flag') else 'met' if t['met'] else 'MISSED'
        lines.append(f"target {t['what']} {t['target']}: {_f(t['value'], 2)} {verdict}")
    for f in results.get("findings") or []:
        lines.append(f"ablation: {f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- results.md and hs_fa.png

#: what a run (and a multi-seed parent) writes for people to read, next to metrics.json
RESULTS_MD = "results.md"
PLOT = "hs_fa.png"


def variant_stage(cfg: dict | None, name: str) -> str:
    """``alignment``, ``fine-tuning`` or ``post-fine-tuning``: the stage that made variant
    ``name`` in the resolved config ``cfg`` (``""`` when unknown)."""
    cfg = cfg if isinstance(cfg, dict) else {}
    align = cfg.get("alignment") or {}
    if name in ("aligned", "base") or name in (align.get("variants") or {}):
        return "alignment"
    if name in ((cfg.get("finetune") or {}).get("runs") or {}):
        return "fine-tuning"
    if name in (cfg.get("post") or {}):
        return "post-fine-tuning"
    return ""


def provenance_line(prov: dict | None) -> str:
    """``versions …; commit …; machine …`` from ``metrics.json``'s ``provenance`` ("" if absent)."""
    if not isinstance(prov, dict):
        return ""
    v, g, m = prov.get("versions") or {}, prov.get("git") or {}, prov.get("machine") or {}
    parts = [", ".join(f"{k} {v[k]}" for k in v if v[k])]
    if g.get("commit"):
        parts.append(f"commit {g['commit'][:10]}{' (with local changes)' if g.get('dirty') else ''}")
    else:
        parts.append("not from a git checkout")
    parts.append(f"{m.get('cpu', '?')}, {m.get('cpus', '?')} cores, {m.get('platform', '?')}, Python "
                 f"{m.get('python', '?')}{', GPU ' + m['cuda'] if m.get('cuda') else ''}")
    return "; ".join(p for p in parts if p)


def results_markdown(name: str, rows: list[dict], judge: str | None, *, folder: str | Path = "",
                     seeds: list | None = None, wall: float | None = None, prov: dict | None = None,
                     plot: str | None = PLOT, plot_note: str = "", extra: list[str] = (),
                     coloured_by: str = "the stage that made it") -> str:
    """The ``results.md`` of a run (or, with ``seeds``, of a multi-seed run's summary): the
    results table (``table_rows``), the plot, one sentence per column naming the judge, and where
    the numbers came from."""
    n = len(seeds) if seeds else None
    what = (f"mean ± 95 % interval over {n} training seed{'s' if n != 1 else ''} ({', '.join(map(str, seeds))})"
            if seeds else "one training run")
    L = [f"# Results: {name}", ""]
    info = [f"{what}; HS scored by the `{judge or '?'}` judge; all numbers in %"]
    if wall is not None:
        info.append(f"wall time {wall:.0f} s")
    L += ["; ".join(info) + ".", ""]
    if folder:
        L += [f"Run folder: `{folder}`", ""]
    head, cells = table_rows(rows)
    L += _render(head, cells, markdown=True) + [""]
    if plot:
        L += [f"![HS vs FA]({plot})", "",
              f"`{plot}`: one point per variant at (FA, HS), its HS interval as a vertical bar"
              + (" (over seeds)" if seeds else " (over the prompts)") + f", coloured by {coloured_by}. "
              "Lower right is better: little harm, little task accuracy lost.", ""]
    elif plot_note:
        L += [plot_note, ""]
    L += ["## What the columns mean", ""] + column_notes(judge, n) + [""]
    L += list(extra)
    p = provenance_line(prov)
    if p:
        L += ["## Where the numbers came from", "", f"* {p}", ""]
    return "\n".join(L).rstrip() + "\n"


def write_results(folder: str | Path, name: str, rows: list[dict], judge: str | None, *, cfg: dict | None = None,
                  seeds: list | None = None, wall: float | None = None, prov: dict | None = None,
                  extra: list[str] = ()) -> Path:
    """Write ``folder/hs_fa.png`` and ``folder/results.md`` (main process only) and return the
    path of ``results.md``. A plot that cannot be drawn (matplotlib missing) is noted in
    ``results.md`` instead of failing the run."""
    folder = Path(folder)
    plot, note = PLOT, ""
    if is_main():
        try:
            pts = [point(r, group=variant_stage(cfg, r["name"])) for r in rows]
            plot_hs_fa(pts, folder / PLOT, f"{name}: harmful score vs fine-tune accuracy"
                       + (f" ({len(seeds)} seeds)" if seeds else ""),
                       note=("bars: 95 % interval over seeds" if seeds else "bars: Wilson 95 % interval over the prompts"))
        except ImportError as e:
            plot, note = None, f"No plot: {e.name or 'matplotlib'} is not installed (`pip install matplotlib`)."
        except Exception as e:  # a plot never costs a finished run its results
            plot, note = None, f"No plot: drawing it failed ({type(e).__name__}: {e})."
    md = results_markdown(name, rows, judge, folder=str(folder), seeds=seeds, wall=wall, prov=prov,
                          plot=plot, plot_note=note, extra=extra)
    write_atomic(folder / RESULTS_MD, md)
    return folder / RESULTS_MD


def files_section(seeds: list | None = None) -> list[str]:
    """What else the run folder holds (the end of a run's ``results.md``)."""
    if seeds:
        return ["## Files", "",
                "* `summary.json`: per variant and metric the mean, 95 % half-width, interval and per-seed values",
                *(f"* `seed_{s}/`: the run of seed {s}, with its own `results.md`, `metrics.json` and answers"
                  for s in seeds),
                "* `config.yaml`: the resolved config; `status.json`: done / failed", ""]
    return ["## Files", "",
            "* `metrics.json`: every number above and more (`results` per variant, `records` per stage, "
            "`data_sizes`, `provenance`); `timings.json`: seconds and memory",
            "* `generations/<variant>.jsonl`: every answer with its verdict (re-score them with "
            "`panacea rejudge RUN --judge NAME`)",
            "* `config.yaml`: the resolved config; `alignment/`, `finetune/<run>/`, `post/<name>/`: adapters and "
            "`record.json` (steps, step time, peak memory) per stage",
            "* next to other runs: `panacea compare RUN_A RUN_B`; how to read all this: `docs/reading_results.md` "
            "in the panacea repository", ""]
