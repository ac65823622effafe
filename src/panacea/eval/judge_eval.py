"""How far to trust a judge: score it against a labelled file (``panacea judge-eval``).

A labelled file is CSV (with a header row) or JSON lines, one (prompt, response, label) per row:

* ``prompt``   the harmful (or benign) request, as the judge sees it;
* ``response`` the model's answer;
* ``label``    1 if the answer is harmful, else 0. Accepted spellings: ``0``/``1`` (number or
  string), ``true``/``false`` (JSON boolean or string, any case). Anything else is an error.

Other column names are mapped with ``fields`` (``panacea judge-eval --fields
prompt=question,response=answer,label=is_harmful``), and a label column that marks *safe* answers
(``is_safe``) is flipped with ``invert`` (``--invert-labels``).

The file extension picks the reader: ``.csv`` → CSV; ``.jsonl``/``.json``/``.ndjson`` → JSON lines.
Every problem (no file, missing column, empty value, non-binary label, a single class where two
are needed) raises a one-line :class:`~panacea.errors.DataError` naming the file and the line.

Numbers reported by :func:`judge_report`:

* AUROC of ``Verdict.score`` against the labels (threshold-free; ties count ½) with the
  Hanley–McNeil (1982) 95 % interval;
* accuracy (with its Wilson 95 % interval), precision, recall, F1 and balanced accuracy of
  ``Verdict.harmful``, i.e. at the judge's own decision threshold;
* the judge's threshold and where it came from (``judge.info`` when the judge has one).

The reader (:func:`~panacea.judges.calibration.read_labelled`), the ``llm`` judge's threshold rule
(:func:`~panacea.judges.calibration.best_threshold`: the ``t`` of ``score >= t`` with the highest
balanced accuracy on a labelled set) and ``judge_info`` live with the judges in
``panacea.judges.calibration``.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import DataError
from ..judges.calibration import Labelled, judge_info, read_labelled
from .human_labels import load_split
from .stats import auroc, wilson_interval

#: ``--data pyrit-human:SPLIT`` reads the pyrit human labels instead of a file (load_labelled)
PYRIT_HUMAN = "pyrit-human:"


def load_labelled(spec: str, need_both: bool = True, fields: dict[str, str] | None = None,
                  invert: bool = False) -> Labelled:
    """A labelled file, or ``pyrit-human:SPLIT`` (``train``, ``validation``, ``test`` or ``all``):
    pyrit 1.1.0's human-labelled answers, labels and prompt-disjoint split of
    ``panacea.eval.human_labels`` (rows grouped by harm category). ``fields`` and ``invert`` are
    those of :func:`read_labelled` (files only)."""
    if str(spec).startswith(PYRIT_HUMAN):
        if fields or invert:
            raise DataError(f"--fields and --invert-labels apply to files; {spec} has its own columns and labels")

        items = load_split(str(spec)[len(PYRIT_HUMAN):])
        out = Labelled([it.prompt for it in items], [it.response for it in items], [it.label for it in items],
                       str(spec), [it.category for it in items])
        if need_both and len(set(out.labels)) < 2:
            raise DataError(f"{spec}: every label is {out.labels[0]}; need both harmful and not harmful rows")
        return out
    return read_labelled(spec, need_both, fields, invert)


# --------------------------------------------------------------------------- metrics


def confusion(predicted: list[bool], labels: list[int]) -> dict[str, int]:
    tp = sum(1 for p, y in zip(predicted, labels) if p and y)
    fp = sum(1 for p, y in zip(predicted, labels) if p and not y)
    fn = sum(1 for p, y in zip(predicted, labels) if not p and y)
    return {"tp": tp, "fp": fp, "tn": len(labels) - tp - fp - fn, "fn": fn}


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def binary_metrics(predicted: list[bool], labels: list[int]) -> dict:
    """Accuracy, precision, recall, F1, balanced accuracy and the confusion counts."""
    c = confusion(predicted, labels)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
    return {
        "accuracy": _div(tp + tn, len(labels)),
        "precision": precision,
        "recall": recall,
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (recall + _div(tn, tn + fp)) / 2,
        **c,
    }


def auroc_interval(a: float, n_pos: int, n_neg: int) -> tuple[float, float]:
    """Hanley & McNeil (1982) normal-approximation 95 % interval of an AUROC, clipped to [0, 1]."""
    if math.isnan(a) or not n_pos or not n_neg:
        return math.nan, math.nan
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    half = 1.96 * math.sqrt(max(var, 0.0))
    return max(0.0, a - half), min(1.0, a + half)


def scored_metrics(scores: list[float], predicted: list[bool], labels: list[int]) -> dict:
    """AUROC with its interval and the binary metrics of one set of rows."""
    n_pos = sum(labels)
    a = auroc(scores, labels) if n_pos and n_pos < len(labels) else math.nan
    return {"n": len(labels), "n_harmful": n_pos, "auroc": a,
            "auroc_ci": list(auroc_interval(a, n_pos, len(labels) - n_pos)), **binary_metrics(predicted, labels)}


def judge_report(judge, data: Labelled) -> dict:
    """Run ``judge`` on every row of ``data`` and compare with the labels (module docstring).

    When the rows have groups (``Labelled.groups``), ``by_group`` holds the same numbers per group
    (AUROC is NaN for a group with one class)."""
    verdicts = judge(data.prompts, data.responses)
    scores = [float(v.score) for v in verdicts]
    predicted = [bool(v.harmful) for v in verdicts]
    by_group = {}
    if data.groups:
        for g in sorted(set(data.groups)):
            idx = [i for i, x in enumerate(data.groups) if x == g]
            by_group[g] = scored_metrics([scores[i] for i in idx], [predicted[i] for i in idx],
                                         [data.labels[i] for i in idx])
    n_pos = sum(data.labels)
    n_neg = len(data) - n_pos
    a = auroc(scores, data.labels)
    m = binary_metrics(predicted, data.labels)
    k = m["tp"] + m["tn"]
    lo, hi = wilson_interval(k, len(data))
    return {
        "judge": judge_info(judge),
        "data": data.path,
        "n": len(data),
        "n_harmful": n_pos,
        "n_not_harmful": n_neg,
        "auroc": a,
        "auroc_ci": list(auroc_interval(a, n_pos, n_neg)),
        **m,
        "accuracy_ci": [lo / 100, hi / 100],
        "categories": {c: sum(v.category == c for v in verdicts) for c in sorted({v.category for v in verdicts})},
        **({"by_group": by_group} if by_group else {}),
        "items": [
            {"label": y, "harmful": p, "score": round(s, 6)} for y, p, s in zip(data.labels, predicted, scores)
        ],
    }


def format_judge_report(rep: dict) -> str:
    """The plain-text summary printed by ``panacea judge-eval``."""

    def f(x, nd=3):
        return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"

    info = rep["judge"]
    thr = info.get("threshold")
    src = info.get("threshold_source", "")
    lines = [
        f"judge-eval: {info.get('judge', '?')} on {rep['data']} "
        f"(n={rep['n']}: {rep['n_harmful']} harmful, {rep['n_not_harmful']} not harmful)",
        f"  threshold  {f(thr, 4) if isinstance(thr, (int, float)) else '—'}{f'  ({src})' if src else ''}",
        f"  AUROC      {f(rep['auroc'])}  [95% CI {f(rep['auroc_ci'][0])}–{f(rep['auroc_ci'][1])}]",
        f"  accuracy   {f(rep['accuracy'])}  [95% CI {f(rep['accuracy_ci'][0])}–{f(rep['accuracy_ci'][1])}]",
        f"  F1         {f(rep['f1'])}  (precision {f(rep['precision'])}, recall {f(rep['recall'])}, "
        f"balanced accuracy {f(rep['balanced_accuracy'])})",
        f"  confusion  TP {rep['tp']}  FP {rep['fp']}  TN {rep['tn']}  FN {rep['fn']}",
    ]
    for g, m in rep.get("by_group", {}).items():
        lines.append(f"  {g:<22} n={m['n']:<3} AUROC {f(m['auroc'])}  acc {f(m['accuracy'])}  F1 {f(m['f1'])}  "
                     f"P {f(m['precision'])}  R {f(m['recall'])}")
    cal = _find_calibration(info)
    if cal and Path(cal).expanduser().resolve() == Path(rep["data"]).resolve():
        lines.append("  note: the threshold was calibrated on this same file, so accuracy and F1 are in-sample")
    return "\n".join(lines)


def _find_calibration(info: dict) -> str | None:
    """The calibration file of a judge or of a judge inside a ``gate``."""
    if isinstance(info.get("calibration"), dict):
        return info["calibration"].get("file")
    for key in ("first", "then"):
        if isinstance(info.get(key), dict):
            found = _find_calibration(info[key])
            if found:
                return found
    return None
