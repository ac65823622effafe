"""Judge calibration, on the judges' side: reading a labelled file of (prompt, response, label)
rows (:func:`read_labelled`; the format is described in ``panacea.eval.judge_eval``, which scores
a judge against such a file), the threshold rule of the ``llm`` judge (:func:`best_threshold`), and
what a judge says about itself (:func:`judge_info`). Judges import these from here; the commands
that evaluate judges (``panacea judge-eval``) build on them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

COLUMNS = ("prompt", "response", "label")
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
