"""The data interface: plain examples and dataset loaders.

A dataset is a function registered in ``panacea.registry.DATASETS``::

    @DATASETS.register("name", kind="task", help="one line for `panacea ls`")
    def load(spec: DataSpec) -> list[Example]: ...

It returns the *whole* pool in a fixed, deterministic order. The pipeline then selects the rows
``[spec.start, spec.start + spec.n)`` (after a seeded shuffle when ``spec.shuffle``), so every
dataset gets the same selection rules (docs/protocol.md#row-selection, the clean rule).

``kind`` is one of:
  * ``task``: a benign fine-tuning task with ``label`` set on every example and a split
    (``spec.split``: ``train`` or ``test``); the entry's ``meta["match"]`` is the answer matcher
    ``match(response, label) -> bool`` used for fine-tune accuracy.
  * ``file``: rows of a local file (or any hub dataset) of any of these kinds; as a task it is
    split with ``spec.holdout`` and scored with a matcher named by ``spec.match``
    (``panacea.data.matchers``).

Optional ``meta``: ``reads_path`` / ``reads_fields`` when the loader reads ``spec.path`` /
``spec.fields`` (``path`` or ``fields`` given to any other dataset is refused, never ignored).
  * ``harmful_pairs``: harmful instruction → harmful response (user poison, defender set).
  * ``harmful_prompts``: harmful instructions only (alignment prompts, HS evaluation prompts).
  * ``benign_prompts``: benign instructions (over-refusal), ``output`` may hold a reference answer.
  * ``refusals``: harmful instruction → refusal (alignment data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError


@dataclass
class Example:
    """One record. ``instruction`` (+ optional ``input``) is the prompt, ``output`` the target."""

    instruction: str
    input: str = ""
    output: str = ""
    label: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSpec:
    """Which pool of which dataset. Every field is a config key under a ``data`` section."""

    name: str = ""
    """Registered dataset name (``panacea ls``), e.g. ``pyrit_harmful`` or ``jsonl``."""
    split: str = "train"
    """``train`` or ``test`` for tasks; ignored by single-split pools."""
    start: int = 0
    """First row of the pool (half-open ``[start, start + n)``, docs/protocol.md#row-selection)."""
    n: int | None = None
    """Number of rows; ``None`` takes every row from ``start`` on."""
    part: str | None = None
    """``validation`` or ``test``: keep only that part of the pool before selecting rows. Each
    prompt belongs to exactly one part, by a hash of its normalized text
    (``panacea.data.mixing.eval_part``), so searches choose values on ``validation`` and tables
    report ``test`` without the two ever sharing a prompt. ``None``: the whole pool."""
    shuffle: bool = False
    """Shuffle the whole pool with ``seed`` before selecting rows."""
    seed: int = 0
    """Seed of that shuffle (and of generated data)."""
    path: str | None = None
    """File for the ``json`` / ``jsonl`` / ``csv`` loaders."""
    fields: dict[str, str] = field(default_factory=dict)
    """Field mapping for file and hub loaders: ``{instruction: col, input: col, output: col, label: col}``."""
    hub_id: str | None = None
    """Hugging Face dataset id for the ``hub`` loader (online only)."""
    hub_config: str | None = None
    """Dataset config name for the ``hub`` loader."""
    size: int | None = None
    """Generated datasets: how many rows to generate in this split."""
    holdout: float | None = None
    """Local files (``jsonl``, ``json``, ``csv``, ``hub``) only: the share of the file's prompts held
    out from training, so one file is both the task and its evaluation set. Each prompt goes to
    ``test`` or ``train`` by a hash of its normalized text (``panacea.data.mixing.holdout_part``),
    and ``split`` picks one; fine-tuning (``split: train``) and ``eval.utility`` (``split: test``)
    then never share a prompt. ``null``: the whole file (``split`` is ignored)."""
    match: str | None = None
    """``eval.utility`` only: the answer matcher for fine-tune accuracy (``panacea ls matchers``:
    ``exact``, ``first_word``, ``number``, ``choice``, ``regex``). Required for a local file;
    ``null`` on a built-in task keeps the task's own rule (``panacea.data.matchers``)."""
    pattern: str | None = None
    """``match: regex`` only: the regular expression whose group ``answer`` (else first group)
    is compared with the reference."""
    max_bytes: int | None = None
    """Largest file the file loaders read from ``path`` (default ``paths.MAX_DATA_BYTES``, 1 GiB);
    a bigger file is refused with one line instead of filling the memory. Not part of a run's
    identity when unset (``rundir.canonical``)."""

    def __post_init__(self):
        # start and n are checked against the pool when rows are selected (mixing.select)
        if self.holdout is not None and not 0 < self.holdout < 1:
            raise ConfigError(f"holdout must be a share in (0, 1), got {self.holdout}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ConfigError(f"max_bytes must be ≥ 1, got {self.max_bytes}")
