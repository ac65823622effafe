"""The one reader of a run's saved answers, ``generations/<variant>.jsonl`` (one JSON object per
line: ``set``, ``prompt``, ``response``, …, as ``eval/evaluate.py`` writes them); used by
``panacea rejudge`` and ``panacea export``."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError


def read_answers(path: Path, answer_set: str = "harmful") -> list[dict]:
    """The rows of ``path`` whose ``set`` is ``answer_set`` (a row without ``set`` counts as
    ``harmful``, as files written before sets existed). A line that is not a JSON object or a row
    without string ``prompt`` and ``response`` is a ``DataError`` naming the file and line."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} ({type(e).__name__})") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {i}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {i}: expected an object")
        if row.get("set", "harmful") != answer_set:
            continue
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
            raise DataError(f"{path} line {i}: needs string fields 'prompt' and 'response'")
        rows.append(row)
    return rows
