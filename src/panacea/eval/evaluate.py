"""Evaluate one model variant: harmful score (HS, HS+), answer shares, fine-tune accuracy (FA)
and over-refusal (OR), each with its binomial 95% interval (Wilson).

* HS  = 100 · #harmful / #prompts under the configured judge.
* HS+ = 100 · #(harmful or incoherent) / #prompts, the papers' "final score+"
  (both: docs/protocol.md#harmful-score-hs-and-hs).
* shares: % of answers refused / engaged / off-topic / degenerate (judge categories).
* FA  = 100 · #correct / #items with the task's own matcher (docs/protocol.md#fine-tune-accuracy-fa),
  or the one ``eval.utility.match`` names (``panacea.data.matchers``; a task of your own, docs/own_task.md).
* OR  = 100 · #refused / #benign prompts (the refusal detector).
"""

from __future__ import annotations

from ..data.base import Example
from ..data.matchers import reference
from ..distributed import map_sharded
from ..judges.base import CATEGORIES, Verdict
from ..judges.refusal import is_refusal
from .generate import generate
from ..judges.calibration import judge_info
from .stats import wilson_interval


def _pct(k: int, n: int) -> float:
    return round(100.0 * k / n, 2) if n else float("nan")


def _ci(k: int, n: int) -> list[float]:
    if not n:
        return [float("nan"), float("nan")]
    lo, hi = wilson_interval(k, n)
    return [round(lo, 2), round(hi, 2)]


def harm_metrics(verdicts: list[Verdict]) -> dict:
    """HS with its Wilson interval, HS+, the category shares and the prompt count."""
    n = len(verdicts)
    k = sum(v.harmful for v in verdicts)
    k_plus = sum(v.harmful or v.incoherent for v in verdicts)
    return dict(
        harmful_score=_pct(k, n),
        harmful_score_ci=_ci(k, n),
        harmful_score_plus=_pct(k_plus, n),
        **{f"share_{c}": _pct(sum(v.category == c for v in verdicts), n) for c in CATEGORIES},
        n_harmful_prompts=n,
    )


def verdict_row(prompt: str, response: str, v: Verdict) -> dict:
    """One line of ``generations/<variant>.jsonl``: the answer, its verdict and the judge's detail
    (e.g. beaver-dam's 14 category probabilities), so it can be audited and re-judged."""
    row = {"prompt": prompt, "response": response, "harmful": v.harmful, "score": round(v.score, 4),
           "category": v.category, "incoherent": v.incoherent}
    if v.detail:
        row["detail"] = v.detail
    return row


#: The prompt sets of one evaluation, in the order their metrics and answers are written; each is
#: its own cached part of the evaluation stage (stages.py), so a changed set re-runs only itself.
PARTS = ("harmful", "task", "benign")


def evaluate_harmful(model, tokenizer, fmt, judge, ecfg, harmful: list[Example], name: str) -> tuple[dict, list[dict]]:
    """HS, HS+, the answer shares and the judge's description, and the judged answers."""

    def answer_and_judge(exs):
        answers = generate(model, tokenizer, [fmt(ex) for ex in exs], ecfg.max_new_tokens, ecfg.batch_size,
                           desc=f"{name}: harmful")
        return list(zip(answers, judge([ex.instruction for ex in exs], answers)))

    pairs = map_sharded(answer_and_judge, harmful)
    answers, verdicts = [a for a, _ in pairs], [v for _, v in pairs]
    metrics = {**harm_metrics(verdicts), "judge": judge_info(judge)}
    return metrics, [verdict_row(ex.instruction, a, v) for ex, a, v in zip(harmful, answers, verdicts)]


def evaluate_task(model, tokenizer, fmt, ecfg, utility: list[Example], match, name: str) -> tuple[dict, list[dict]]:
    """FA with its interval on the task's test items (``match(answer, reference)``), and the answers."""
    answers = map_sharded(lambda exs: generate(model, tokenizer, [fmt(ex) for ex in exs], ecfg.utility_max_new_tokens,
                                               ecfg.batch_size, desc=f"{name}: task"), utility)
    refs = [reference(ex) for ex in utility]  # the label, else the output (a file without labels)
    ok = [bool(match(a, r)) for r, a in zip(refs, answers)]
    metrics = dict(finetune_accuracy=_pct(sum(ok), len(ok)), finetune_accuracy_ci=_ci(sum(ok), len(ok)),
                   n_task_items=len(ok))
    return metrics, [{"prompt": ex.input or ex.instruction, "response": a, "label": r, "correct": c}
                     for ex, a, r, c in zip(utility, answers, refs, ok)]


def evaluate_benign(model, tokenizer, fmt, ecfg, benign: list[Example], name: str) -> tuple[dict, list[dict]]:
    """OR with its interval on benign prompts (the refusal detector), and the answers."""
    answers = map_sharded(lambda exs: generate(model, tokenizer, [fmt(ex) for ex in exs], ecfg.max_new_tokens,
                                               ecfg.batch_size, desc=f"{name}: benign"), benign)
    ref = [is_refusal(a) for a in answers]
    metrics = dict(over_refusal=_pct(sum(ref), len(ref)), over_refusal_ci=_ci(sum(ref), len(ref)),
                   n_benign_prompts=len(ref))
    return metrics, [{"prompt": ex.instruction, "response": a, "refused": r} for ex, a, r in zip(benign, answers, ref)]


def evaluate_variant(model, tokenizer, fmt, judge, ecfg, harmful: list[Example],
                     utility: list[Example] | None, match, benign: list[Example] | None,
                     name: str) -> tuple[dict, dict[str, list[dict]]]:
    """Return (metrics, generations by set) for one model; ``fmt(example)`` formats a prompt.

    On several processes each one generates (and judges) its share of every prompt list and the
    answers are gathered in the original order (``distributed.map_sharded``); every process
    returns the same result. On one process that is a single call on the whole list.
    """
    metrics, rows = evaluate_harmful(model, tokenizer, fmt, judge, ecfg, harmful, name)
    gens = {"harmful": rows}
    if utility:
        m, gens["task"] = evaluate_task(model, tokenizer, fmt, ecfg, utility, match, name)
        metrics.update(m)
    if benign:
        m, gens["benign"] = evaluate_benign(model, tokenizer, fmt, ecfg, benign, name)
        metrics.update(m)
    return metrics, gens
