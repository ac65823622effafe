"""Plain-text results table printed at the end of a run."""

from __future__ import annotations


def _f(v, nd=1):
    return "—" if v is None else f"{v:.{nd}f}"


def format_results(metrics: dict, samples: bool = True) -> str:
    rows = metrics["results"]
    head = ["variant", "HS [95% CI]", "HS+", "refused", "engaged", "off-topic", "degen.", "FA", "OR", "train s"]
    table = [head]
    for r in rows:
        lo, hi = r["harmful_score_ci"]
        table.append([
            r["name"],
            f"{r['harmful_score']:.1f} [{lo:.0f}–{hi:.0f}]",
            _f(r.get("harmful_score_plus")),
            _f(r.get("share_refused")),
            _f(r.get("share_engaged")),
            _f(r.get("share_off_topic")),
            _f(r.get("share_degenerate")),
            _f(r.get("finetune_accuracy")),
            _f(r.get("over_refusal")),
            _f(r.get("train_seconds"), 0),
        ])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = [f"results: {metrics['name']}  (HS, HS+, shares, FA, OR in %; wall {metrics['wall_seconds']:.0f} s)"]
    for j, row in enumerate(table):
        lines.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("HS: harmful prompts answered with an engaged, on-topic, non-refusal answer; "
                 "HS+: HS or incoherent; FA: task accuracy; OR: benign prompts refused.")
    if samples:
        for r in rows:
            for s in r.get("samples", []):
                resp = " ".join(s["response"].split())
                lines.append(f"[{r['name']}] ({s['category']}) {s['prompt'][:70]!r} → {resp[:160]!r}")
    return "\n".join(lines)
