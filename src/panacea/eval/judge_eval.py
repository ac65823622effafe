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

:func:`best_threshold` is the calibration rule of the ``llm`` judge: the threshold ``t`` of the
decision ``score >= t`` that maximises balanced accuracy on a labelled set.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .stats import auroc, wilson_interval

COLUMNS = ("prompt", "response", "label")
#: ``--data pyrit-human:SPLIT`` reads the pyrit human labels instead of a file (load_labelled)
PYRIT_HUMAN = "pyrit-human:"
_TRUE = {"1", "true"}
_FALSE = {"0", "false"}


@dataclass
class Labelled:
    """The rows of a labelled file, column by column."""

    prompts: list[str]
    responses: list[str]
    labels: list[int]
    path: str
    groups: list[str] | None = None
    """Optional group of each row (the harm category of the pyrit human labels)."""

    def __len__(self) -> int:
        return len(self.labels)


def _label(value, where: str, name: str = "label") -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return int(value.strip().lower() in _TRUE)
    raise DataError(f"{where}: {name} must be 0/1 or true/false, got {value!r}")


def load_labelled(spec: str, need_both: bool = True, fields: dict[str, str] | None = None,
                  invert: bool = False) -> Labelled:
    """A labelled file, or ``pyrit-human:SPLIT`` (``train``, ``validation``, ``test`` or ``all``):
    pyrit 1.1.0's human-labelled answers, labels and prompt-disjoint split of
    ``panacea.eval.human_labels`` (rows grouped by harm category). ``fields`` and ``invert`` are
    those of :func:`read_labelled` (files only)."""
    if str(spec).startswith(PYRIT_HUMAN):
        if fields or invert:
            raise DataError(f"--fields and --invert-labels apply to files; {spec} has its own columns and labels")
        from .human_labels import load_split

        items = load_split(str(spec)[len(PYRIT_HUMAN):])
        out = Labelled([it.prompt for it in items], [it.response for it in items], [it.label for it in items],
                       str(spec), [it.category for it in items])
        if need_both and len(set(out.labels)) < 2:
            raise DataError(f"{spec}: every label is {out.labels[0]}; need both harmful and not harmful rows")
        return out
    return read_labelled(spec, need_both, fields, invert)


def read_labelled(path: str | Path, need_both: bool = True, fields: dict[str, str] | None = None,
                  invert: bool = False) -> Labelled:
    """Read a labelled CSV / JSONL file (see the module docstring).

    Args:
        path: the file; ``.csv`` is read as CSV, anything else as JSON lines.
        need_both: raise unless both labels occur (AUROC and calibration need both classes).
        fields: the file's column for ``prompt``, ``response`` or ``label`` where it differs,
            e.g. ``{"prompt": "question"}``.
        invert: the label column marks safe answers (1/true = not harmful); flip it.
    """
    col = {c: (fields or {}).get(c, c) for c in COLUMNS}
    need = ", ".join(col.values())
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"labelled file {str(p)!r} not found")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read labelled file {str(p)!r} ({type(e).__name__})") from None
    rows: list[tuple[str, object]] = []
    if p.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [col[c] for c in COLUMNS if col[c] not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{p}: missing column(s) {', '.join(missing)} (needs {need}{_mapping_hint(fields)})")
        try:
            rows = [(f"line {reader.line_num}", r) for r in reader]
        except csv.Error as e:
            raise DataError(f"{p} line {reader.line_num}: {e}") from None
    else:
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((f"line {i}", json.loads(line)))
                except json.JSONDecodeError as e:
                    msg = f"{p} line {i}: invalid JSON ({e.msg}); expected JSON lines or a .csv file"
                    raise DataError(msg) from None
    out = Labelled([], [], [], str(p))
    for loc, row in rows:
        where = f"{p} {loc}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with {need}, got {type(row).__name__}")
        missing = [col[c] for c in COLUMNS if row.get(col[c]) is None]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)} (needs {need}{_mapping_hint(fields)})")
        for c in ("prompt", "response"):
            if not isinstance(row[col[c]], str):
                raise DataError(f"{where}: field {col[c]!r} must be a string, got {type(row[col[c]]).__name__}")
        out.prompts.append(row[col["prompt"]])
        out.responses.append(row[col["response"]])
        label = _label(row[col["label"]], where, col["label"])
        out.labels.append(1 - label if invert else label)
    if not out.labels:
        raise DataError(f"labelled file {str(p)!r} has no rows")
    if need_both and len(set(out.labels)) < 2:
        only = out.labels[0]
        raise DataError(f"{p}: every label is {only}; need both harmful (1) and not harmful (0) rows")
    return out


def _mapping_hint(fields) -> str:
    return "; map other names with --fields prompt=COL,response=COL,label=COL" if not fields else ""


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


def best_threshold(scores: list[float], labels: list[int]) -> tuple[float, float]:
    """The threshold ``t`` of ``harmful = score >= t`` with the highest balanced accuracy.

    Candidates are the lowest score (everything harmful), the midpoints between consecutive
    distinct scores, and just above the highest score (nothing harmful); a midpoint sits as far
    as possible from the scores it separates. Ties go to the lowest threshold (the one that
    counts more answers as harmful). Returns ``(threshold, balanced accuracy)``.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        raise ValueError("best_threshold needs both labels")
    distinct = sorted(set(scores))
    candidates = [distinct[0]]
    candidates += [(a + b) / 2 for a, b in zip(distinct, distinct[1:])]
    candidates.append(math.nextafter(distinct[-1], math.inf))
    best_t, best_ba = candidates[0], -1.0
    for t in candidates:
        tp = sum(1 for s, y in zip(scores, labels) if y and s >= t)
        tn = sum(1 for s, y in zip(scores, labels) if not y and s < t)
        ba = (tp / n_pos + tn / n_neg) / 2
        if ba > best_ba + 1e-12:
            best_t, best_ba = t, ba
    return best_t, best_ba


def judge_info(judge) -> dict:
    """What a judge says about itself: ``judge.info`` if it has one, else its name/threshold."""
    info = getattr(judge, "info", None)
    if isinstance(info, dict):
        return dict(info)
    out = {"judge": getattr(judge, "name", type(judge).__name__)}
    if getattr(judge, "threshold", None) is not None:
        out["threshold"] = judge.threshold
    return out


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
