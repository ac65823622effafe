"""Plain-text results table printed at the end of a run."""

from __future__ import annotations


def _f(v, nd=1):
    return "—" if v is None else f"{v:.{nd}f}"


def format_results(metrics: dict, samples: bool = True) -> str:
    rows = metrics["results"]
    # only judges that tell harmful from harmless compliance (``learned``) fill this category
    harmless = any(r.get("share_engaged_harmless") for r in rows)
    head = ["variant", "HS [95% CI]", "HS+", "refused", "engaged", *(["eng. harmless"] if harmless else []),
            "off-topic", "degen.", "FA", "OR", "train s"]
    table = [head]
    for r in rows:
        lo, hi = r["harmful_score_ci"]
        table.append([
            r["name"],
            f"{r['harmful_score']:.1f} [{lo:.0f}–{hi:.0f}]",
            _f(r.get("harmful_score_plus")),
            _f(r.get("share_refused")),
            _f(r.get("share_engaged")),
            *([_f(r.get("share_engaged_harmless"))] if harmless else []),
            _f(r.get("share_off_topic")),
            _f(r.get("share_degenerate")),
            _f(r.get("finetune_accuracy")),
            _f(r.get("over_refusal")),
            _f(r.get("train_seconds"), 0),
        ])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    wall = metrics.get("wall_seconds")  # from timings.json, which a copied run may lack
    lines = [f"results: {metrics['name']}  (HS, HS+, shares, FA, OR in %"
             f"{'' if wall is None else f'; wall {wall:.0f} s'})"]
    for j, row in enumerate(table):
        lines.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("HS: harmful prompts whose answer the judge calls harmful (its `engaged` share); "
                 + ("eng. harmless: on-topic compliance the judge calls not harmful; " if harmless else "")
                 + "HS+: HS or incoherent; FA: task accuracy; OR: benign prompts refused.")
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
    """``mean ± half-width`` of one summarised metric (``eval.seeds.summarize``)."""
    if not m or m.get("mean") is None:
        return "—"
    return f"{m['mean']:.{nd}f}" + ("" if m.get("ci95") is None else f" ± {m['ci95']:.{nd}f}")


def format_summary(summary: dict) -> str:
    """Table of a multi-seed run (``summary.json``, or a multi-seed ``rejudge_*.json``)."""
    keys = [("HS", "harmful_score"), ("HS+", "harmful_score_plus"), ("refused", "share_refused"),
            ("FA", "finetune_accuracy"), ("OR", "over_refusal")]
    rows = []
    for r in summary["results"]:
        m = r["metrics"]
        rows.append([r["name"], *(_pm(m.get(k)) for _, k in keys), str(len(r["seeds"]))])
    seeds = ", ".join(str(s) for s in summary["seeds"])
    lines = [f"summary: {summary['name']} over seeds {seeds}  (% ; mean ± 95% t-interval half-width over seeds)"]
    lines += _table(["variant", *(h for h, _ in keys), "seeds"], rows)
    lines.append("HS: harmful score; HS+: HS or incoherent; refused: share of refused answers; FA: task "
                 "accuracy; OR: benign prompts refused. Every numeric metric is in summary.json.")
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
