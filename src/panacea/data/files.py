"""Local file loaders: ``jsonl``, ``json`` and ``csv`` (any kind of pool, from ``data.path``).

Each row becomes an :class:`~panacea.data.base.Example` through the field mapping ``data.fields``
(``{instruction: column, input: column, output: column, label: column}``). Without a mapping:
instruction ← ``instruction`` or else ``prompt``, input ← ``input``, output ← ``output`` or
else ``response``, label ← ``label``. This covers Alpaca-style files and the BeaverTails refusal
file of docs/protocol.md#data-sources (``prompt``/``response``). Every problem raises a one-line
:class:`~panacea.errors.DataError` naming the file and, where it applies, the line and field.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError, DataError
from ..paths import MAX_DATA_BYTES, expand_path, read_regular
from ..registry import DATASETS
from .base import DataSpec, Example

FIELDS = ("instruction", "input", "output", "label")
DEFAULT_COLUMNS = {
    "instruction": ("instruction", "prompt"),
    "input": ("input",),
    "output": ("output", "response"),
    "label": ("label",),
}


def rows_to_examples(
    rows: Iterable[tuple[str, Any]], fields: dict[str, str], where: str, source: str
) -> list[Example]:
    """Map ``(location, row)`` pairs to examples with the ``data.fields`` mapping.

    Args:
        rows: ``(location, row)``, where location reads like ``"line 3"`` and row should be a dict.
        fields: ``data.fields``; a mapped column must exist in every row.
        where: the file (or hub id) named in errors.
        source: ``Example.source`` of every row.

    Raises:
        ConfigError: ``fields`` has a key other than instruction/input/output/label.
        DataError: a row is not an object, lacks the instruction or a mapped field, or holds a
            non-string value (a numeric label is converted with ``str``); no rows at all.
    """
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ConfigError(f"data.fields: unknown key {unknown[0]!r} (choices: {', '.join(FIELDS)})")
    columns = {k: (fields[k],) if k in fields else DEFAULT_COLUMNS[k] for k in FIELDS}
    out = []
    for loc, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where} {loc}: expected an object, got {type(row).__name__}")
        values: dict[str, Any] = {}
        for key, cols in columns.items():
            col = next((c for c in cols if row.get(c) is not None), None)
            if col is None:
                if key == "instruction" or key in fields:
                    names = " or ".join(repr(c) for c in cols)
                    raise DataError(f"{where} {loc}: missing field {names} (data.fields.{key})")
                continue
            value = row[col]
            if key == "label" and isinstance(value, (int, float, bool)):
                value = str(value)
            if not isinstance(value, str):
                kind = type(value).__name__
                raise DataError(f"{where} {loc}: field {col!r} must be a string, got {kind}")
            values[key] = value
        if not values["instruction"].strip():
            raise DataError(f"{where} {loc}: empty instruction")
        out.append(Example(source=source, **values))
    if not out:
        raise DataError(f"{where} has no rows")
    return out


def _read_text(spec: DataSpec, loader: str) -> tuple[Path, str]:
    """The file ``data.path`` (``~`` and ``$VARS`` expanded, paths.py) and its text: a regular file
    only (never a FIFO or a device, which would hang or never end) of at most ``data.max_bytes``."""
    if spec.path is None:
        raise ConfigError(f"data.path is required for the {loader} loader")
    try:
        path = expand_path(spec.path, "data.path")
    except ConfigError as e:
        raise DataError(str(e)) from None
    data = read_regular(path, spec.max_bytes or MAX_DATA_BYTES, "data file")
    try:
        return path, data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from e


def _why(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return e.msg
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e).split(":")[0][:80]  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"


def _parse_json(text: str, where: str):
    """``json.loads`` whose every failure is a one-line DataError naming ``where``."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, an int of > 4300 digits, deep nesting
        raise DataError(f"{where}: invalid JSON ({_why(e)})") from None


@DATASETS.register("jsonl", kind="file", reads_path=True, reads_fields=True,
                   help="local JSON-lines file (data.path, data.fields)")
def load_jsonl(spec: DataSpec) -> list[Example]:
    path, text = _read_text(spec, "jsonl")

    def rows():
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield f"line {i}", _parse_json(line, f"{path} line {i}")

    return rows_to_examples(rows(), spec.fields, str(path), path.name)


@DATASETS.register("json", kind="file", reads_path=True, reads_fields=True,
                   help="local JSON file: a list of objects or {data: [...]}")
def load_json(spec: DataSpec) -> list[Example]:
    path, text = _read_text(spec, "json")
    if not text.strip():
        raise DataError(f"{path} has no rows")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: invalid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: invalid JSON ({_why(e)})") from None
    if isinstance(doc, dict) and "data" in doc:
        doc = doc["data"]
    if not isinstance(doc, list):
        kind = type(doc).__name__
        raise DataError(f'{path}: expected a list of objects or {{"data": [...]}}, got {kind}')
    rows = ((f"item {i}", r) for i, r in enumerate(doc))
    return rows_to_examples(rows, spec.fields, str(path), path.name)


@DATASETS.register("csv", kind="file", reads_path=True, reads_fields=True,
                   help="local CSV file with a header row")
def load_csv(spec: DataSpec) -> list[Example]:
    path, text = _read_text(spec, "csv")
    reader = csv.DictReader(io.StringIO(text, newline=""))

    def rows():
        try:
            for row in reader:
                yield f"line {reader.line_num}", row
        except csv.Error as e:
            raise DataError(f"{path} line {reader.line_num}: {e}") from e

    return rows_to_examples(rows(), spec.fields, str(path), path.name)


def read_rows(spec: DataSpec, loader: str) -> list[dict]:
    """The raw rows (column → value) of a local ``.jsonl``, ``.json`` or ``.csv`` file, so the online
    loaders (``sst2``, ``gsm8k``, …) can read a local export of their dataset with the same columns."""
    path, text = _read_text(spec, loader)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = [_parse_json(line, f"{path} line {i}") for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif suffix == ".json":
        doc = _parse_json(text, str(path))
        rows = doc["data"] if isinstance(doc, dict) and "data" in doc else doc
    elif suffix == ".csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise DataError(f"{path}: {e}") from None
    else:
        raise DataError(f"{path}: {loader} reads .jsonl, .json or .csv files, not {suffix or 'no extension'!r}")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: expected rows of column → value")
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows
