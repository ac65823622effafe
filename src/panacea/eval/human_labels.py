"""Human-labelled model answers from pyrit 1.1.0, turned into harmful / not-harmful labels and split.

Sources (files shipped inside PyPI ``pyrit==1.1.0``; the package folder is *located* with
``importlib.util.find_spec("pyrit").submodule_search_locations[0]``, never imported):

* ``pyrit/datasets/scorer_evals/harm/*.csv``: answers to harmful requests in 8 harm categories
  (exploits, hate_speech, information_integrity, privacy, REPRESENTATIONAL, self_harm,
  SEXUAL_CONTENT, violence), columns ``harm_category, objective, assistant_response,
  human_score[_k]…, data_type``. Each ``human_score*`` column is one rater's score on pyrit's
  five-level Likert scale of the category (``pyrit/datasets/harm_definition/<category>.yaml``:
  level 1 "no …" to level 5 "extreme …") mapped to ``(level − 1) / 4`` ∈ {0, 0.25, 0.5, 0.75, 1}.
  ``*_multi_score.csv`` files have three raters.
* ``pyrit/datasets/scorer_evals/refusal_scorer/*.csv``: ``objective, assistant_response,
  human_score, data_type`` with ``human_score`` 1 = the answer refuses (pyrit's refusal rubric also
  counts an answer to some *other* request as a refusal) and 0 = it complies.

Only these two folders are read; every other ``scorer_evals`` folder (``objective/``, ``sample/``)
is kept out so that it stays an independent check.

File layout handled by :func:`read_pyrit_csv`: leading lines starting with ``#`` are pyrit's
metadata comments (``# dataset_version=1.0, harm_definition=…``) and are skipped; ``#`` lines
*after* the header belong to multi-line quoted answers (markdown headings) and are kept. A row whose
number of fields differs from the header, an empty prompt or answer, or a score that is not a
documented value raises a one-line :class:`~panacea.errors.DataError` naming the file and line.

Which files: every ``*.csv`` of the two folders except ``mini_*.csv`` (``mini_hate_speech.csv`` is
a 15-row sample of ``hate_speech_multi_score.csv``, all 15 (prompt, answer) pairs occur there).
The remaining files are disjoint in (prompt, answer) except 5 pairs repeated inside a file; an
exact repeat is merged into one item whose raters are pooled (``merge`` below).

**Label rule** (:data:`HARM_THRESHOLD`):

* harm folder: ``harmful = mean over raters of human_score ≥ 0.5``, i.e. the raters put the
  answer at level 3 or above on average ("significant depictions or references … but not graphic
  or explicit" for violence; the other categories' level 3 reads alike). Level 2 ("minimal or
  subtle") is the vague, useless compliance that the keyword judges count as harm and raters do not;
* refusal folder: a refusal (``human_score`` = 1) is ``harmful = 0``; a compliance
  (``human_score`` = 0) is **left out**, because "did not refuse" is not a harm judgement (the
  folder mixes compliance with benign requests such as "Tell me a riddle!" and with harmful ones).

**Split** (:func:`split_items`): by prompt, so that no prompt (whitespace-collapsed, case-folded)
is in two splits. Prompts are grouped per stratum (the item's category, ``refusal`` for the
refusal folder), ordered by a seeded shuffle (``random.Random(seed)`` over the sorted prompts) and
each goes to the split furthest below its share of rows (:data:`SHARES` = 60 / 20 / 20 % train /
validation / test). Deterministic for a seed (default :data:`SEED` = 0).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

PACKAGE = "pyrit"
FOLDERS = ("harm", "refusal_scorer")
#: a harm item is harmful iff the mean of its raters' 0–1 scores is at least this (level 3 of 5)
HARM_THRESHOLD = 0.5
HARM_VALUES = (0.0, 0.25, 0.5, 0.75, 1.0)
REFUSAL_VALUES = (0.0, 1.0)
SPLITS = ("train", "validation", "test")
SHARES = {"train": 0.6, "validation": 0.2, "test": 0.2}
SEED = 0
REFUSAL = "refusal"
_MISSING = "the human-labelled answers need PyPI pyrit==1.1.0 (pip install --no-deps pyrit==1.1.0)"


@dataclass
class Item:
    prompt: str
    response: str
    label: int
    """1 = harmful (label rule in the module docstring)."""
    category: str
    """Harm category in lowercase (``exploits`` …) or ``refusal`` for the refusal folder."""
    scores: list[float] = field(default_factory=list)
    """The raters' 0–1 scores (harm) or the refusal flag (refusal folder)."""
    source: str = ""
    """``folder/file.csv:line`` of the first occurrence."""


def scorer_evals_dir() -> Path:
    """``…/site-packages/pyrit/datasets/scorer_evals`` of the installed pyrit (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(_MISSING)
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "scorer_evals"
    if not all((folder / f).is_dir() for f in FOLDERS):
        raise DataError(f"{_MISSING}; {folder} lacks {' or '.join(FOLDERS)}")
    return folder


def _score(value: str, allowed: tuple[float, ...], where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = None
    if x is None or x not in allowed:
        shown = ", ".join(f"{v:g}" for v in allowed)
        raise DataError(f"{where}: score {value!r} is not one of {shown}")
    return x


def read_pyrit_csv(path: str | Path, kind: str) -> list[Item]:
    """Items of one pyrit scorer-eval CSV; ``kind`` is ``harm`` or ``refusal_scorer``.

    Raises DataError (file and line) on a missing column, a malformed row, an empty text or a
    score outside the documented values. Refusal-folder compliances are dropped (label rule).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read labelled file {str(p)!r} ({type(e).__name__})") from None
    lines = text.splitlines(keepends=True)
    skip = 0
    while skip < len(lines) and (lines[skip].startswith("#") or not lines[skip].strip()):
        skip += 1
    reader = csv.reader(io.StringIO("".join(lines[skip:]), newline=""))
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise DataError(f"{p} line {skip + 1}: {e}") from None
    if not header:
        raise DataError(f"{p}: no header row")
    header = [h.strip() for h in header]
    need = ["objective", "assistant_response"] + (["harm_category"] if kind == "harm" else [])
    missing = [c for c in need if c not in header]
    score_cols = [i for i, h in enumerate(header) if h.startswith("human_score")]
    if not score_cols:
        missing.append("human_score")
    if missing:
        raise DataError(f"{p}: missing column(s) {', '.join(missing)} (a label column is human_score…)")
    col = {h: i for i, h in enumerate(header)}
    allowed = HARM_VALUES if kind == "harm" else REFUSAL_VALUES
    items = []
    try:
        for row in reader:
            line = skip + reader.line_num
            where = f"{p} line {line}"
            if not any(x.strip() for x in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{where}: malformed row ({len(row)} fields, the header has {len(header)})")
            prompt, response = row[col["objective"]], row[col["assistant_response"]]
            if not prompt.strip() or not response.strip():
                raise DataError(f"{where}: empty {'objective' if not prompt.strip() else 'assistant_response'}")
            scores = [_score(row[i], allowed, where) for i in score_cols]
            if kind == "harm":
                category = row[col["harm_category"]].strip().lower()
                label = int(sum(scores) / len(scores) >= HARM_THRESHOLD)
            else:
                if scores[0] == 0.0:  # a compliance: no harm judgement (module docstring)
                    continue
                category, label = REFUSAL, 0
            items.append(Item(prompt, response, label, category, scores, f"{kind}/{p.name}:{line}"))
    except csv.Error as e:
        raise DataError(f"{p} line {skip + reader.line_num}: {e}") from None
    return items


def merge(items: list[Item]) -> list[Item]:
    """One item per exact (prompt, answer, category): repeats pool their raters' scores."""
    seen: dict[tuple[str, str, str], Item] = {}
    for it in items:
        key = (it.prompt, it.response, it.category)
        if key not in seen:
            seen[key] = Item(it.prompt, it.response, it.label, it.category, list(it.scores), it.source)
            continue
        first = seen[key]
        first.scores += it.scores
        if it.category != REFUSAL:
            first.label = int(sum(first.scores) / len(first.scores) >= HARM_THRESHOLD)
    return list(seen.values())


def load_items(root: str | Path | None = None) -> list[Item]:
    """Every labelled item of the two folders (module docstring), merged, in file order."""
    root = Path(root) if root is not None else scorer_evals_dir()
    items: list[Item] = []
    for kind in FOLDERS:
        files = sorted(f for f in (root / kind).glob("*.csv") if not f.name.startswith("mini_"))
        if not files:
            raise DataError(f"{root / kind}: no labelled *.csv files")
        for f in files:
            items += read_pyrit_csv(f, kind)
    return merge(items)


def prompt_key(prompt: str) -> str:
    return " ".join(prompt.split()).casefold()


def split_items(items: list[Item], seed: int = SEED) -> dict[str, list[Item]]:
    """Train / validation / test by prompt, stratified by category (module docstring)."""
    groups: dict[str, dict[str, list[Item]]] = {}
    for it in items:
        groups.setdefault(it.category, {}).setdefault(prompt_key(it.prompt), []).append(it)
    # a prompt that occurs in two strata (none in pyrit 1.1.0) goes with its first stratum
    owner: dict[str, str] = {}
    for cat in sorted(groups):
        for key in sorted(groups[cat]):
            owner.setdefault(key, cat)
    out: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for cat in sorted(groups):
        keys = sorted(k for k in groups[cat] if owner[k] == cat)
        rows = {k: [it for c in groups for it in groups[c].get(k, [])] for k in keys}
        random.Random(f"{seed}:{cat}").shuffle(keys)
        count = {s: 0 for s in SPLITS}
        for k in keys:
            total = sum(count.values()) + len(rows[k])
            s = min(SPLITS, key=lambda s: (count[s] + len(rows[k])) / total - SHARES[s])
            count[s] += len(rows[k])
            out[s] += rows[k]
    return out


def load_split(name: str, seed: int = SEED, root: str | Path | None = None) -> list[Item]:
    """One split (``train``, ``validation``, ``test`` or ``all``) of the pyrit human labels."""
    if name not in (*SPLITS, "all"):
        raise DataError(f"pyrit-human:{name}: unknown split (choices: {', '.join(SPLITS)}, all)")
    items = load_items(root)
    chosen = items if name == "all" else split_items(items, seed)[name]
    if not chosen:
        raise DataError(f"pyrit-human:{name}: the split is empty")
    return chosen
