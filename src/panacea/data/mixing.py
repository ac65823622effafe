"""Selecting rows from pools, building the poisoned user set, checking pools are disjoint.

Implements the selection rule of docs/protocol.md#row-selection: half-open ranges
``[start, start + n)`` after an optional seeded shuffle (and, for a local file, its hashed hold-out
side, ``holdout_part``); a user set of ``n`` rows with ``round(n · p)`` harmful rows drawn by a
seeded RNG; and a prompt-level overlap check between pools that must be disjoint (user harmful vs
defender harmful vs evaluation prompts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import string

from ..errors import ConfigError, DataError
from .base import DataSpec, Example

_END_PUNCT = string.punctuation + string.whitespace + "“”‘’"


def normalize_prompt(text: str) -> str:
    """Canonical form of a prompt for duplicate checks.

    Lowercases, collapses every run of whitespace to one space and strips punctuation and
    whitespace at both ends: ``"  Write a POEM!\\n"`` → ``"write a poem"``.
    """
    return " ".join(text.lower().split()).strip(_END_PUNCT)


def prompt_key(ex: Example) -> str:
    """The normalized prompt of an example: instruction, plus input when there is one."""
    return normalize_prompt(f"{ex.instruction}\n{ex.input}" if ex.input else ex.instruction)


#: Share of every pool's prompts in the ``validation`` part (the rest is ``test``). A third keeps
#: two thirds of each pool for the reported numbers (the parts' sizes:
#: docs/protocol.md#validation-and-test-parts).
VALIDATION_SHARE = 1 / 3
PARTS = ("validation", "test")


def eval_part(ex: Example) -> str:
    """``validation`` or ``test``: the part of every pool that this prompt belongs to.

    The rule, fixed once for all pools and seeds: the first 8 bytes of
    ``sha256("panacea-eval-part-v1\n" + prompt_key(ex))``, read as a big-endian integer and
    divided by 2**64, below ``VALIDATION_SHARE`` → ``validation``, else ``test``. It depends on
    the prompt alone (not on the pool's order, size or the experiment seed), so a prompt never
    moves between parts, and duplicates of a prompt land in the same part.
    """
    digest = hashlib.sha256(f"panacea-eval-part-v1\n{prompt_key(ex)}".encode("utf-8")).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < VALIDATION_SHARE else "test"


def holdout_part(ex: Example, share: float) -> str:
    """``test`` or ``train``: the side of a local file's hold-out split (``data.holdout``) a prompt is on.

    The rule, like :func:`eval_part` but with its own salt: the first 8 bytes of
    ``sha256("panacea-holdout-v1\n" + prompt_key(ex))`` as a big-endian integer divided by 2**64,
    below ``share`` → ``test``, else ``train``. It depends on the prompt alone (not on the seed or
    the file's order), so duplicates land on one side and a prompt never moves between the sides;
    the two hashes are independent, so ``part: validation|test`` then splits the held-out rows in
    the usual proportions.
    """
    digest = hashlib.sha256(f"panacea-holdout-v1\n{prompt_key(ex)}".encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < share else "train"


def select(pool: list[Example], spec: DataSpec, key: str) -> list[Example]:
    """Rows ``[spec.start, spec.start + spec.n)`` of ``pool`` (of its ``spec.split`` side of the
    ``spec.holdout`` split, then of its ``spec.part``, when set), after a seeded shuffle if asked.

    Args:
        pool: the whole pool, as returned by the dataset loader.
        spec: the data section (``start``, ``n``, ``shuffle``, ``seed``, ``name``).
        key: the config key of that section, e.g. ``finetune.data.harmful``, named in errors.

    Raises:
        DataError: the pool is empty, ``start`` or ``n`` is negative, or the range runs past the
            end of the pool.
    """
    name = spec.name or "?"
    if not pool:
        raise DataError(f"{key}: the pool {name} is empty")
    if spec.holdout is not None:
        if spec.split not in ("train", "test"):
            raise ConfigError(f"{key}.split must be train or test with {key}.holdout, got {spec.split!r}")
        pool = [ex for ex in pool if holdout_part(ex, spec.holdout) == spec.split]
        name = f"{name} ({spec.split} side of holdout {spec.holdout:g})"
        if not pool:
            raise DataError(f"{key}: the {spec.split} side of {key}.holdout={spec.holdout:g} holds no row "
                            f"of the pool {spec.name or '?'}; add rows or change the share")
    if spec.part is not None:
        if spec.part not in PARTS:
            raise ConfigError(f"{key}.part must be validation, test or null, got {spec.part!r}")
        pool = [ex for ex in pool if eval_part(ex) == spec.part]
        name = f"{name} ({spec.part} part)"
    n = len(pool) - spec.start if spec.n is None else spec.n
    if spec.start < 0 or n < 0 or spec.start + n > len(pool):
        end = "end" if spec.n is None else spec.start + spec.n
        raise DataError(
            f"{key}: asked for rows [{spec.start}, {end}) but the pool {name} "
            f"has only {len(pool)} rows"
        )
    rows = list(pool)
    if spec.shuffle:
        random.Random(spec.seed).shuffle(rows)
    return rows[spec.start : spec.start + n]


def n_harmful(n: int, poison_ratio: float) -> int:
    """Harmful rows in a user set of ``n`` at ratio ``p``: ``int(n · p + 0.5)`` (half rounds up)."""
    return int(n * poison_ratio + 0.5)


def mix_poison(
    benign: list[Example], harmful: list[Example], n: int, poison_ratio: float, seed: int
) -> list[Example]:
    """The user's fine-tuning set: ``n`` rows of which ``int(n · p + 0.5)`` are harmful.

    Rows are drawn without replacement with ``random.Random(seed)`` (harmful first, then
    benign) and the mix is shuffled with the same RNG. Harmful rows are copies marked
    ``meta["poison"] = True``; the input lists are not modified.

    Raises:
        ConfigError: ``poison_ratio`` outside [0, 1] or ``n`` < 1.
        DataError: either list has fewer rows than needed.
    """
    if not 0.0 <= poison_ratio <= 1.0:
        raise ConfigError(f"finetune.data.poison_ratio must be in [0, 1], got {poison_ratio}")
    if n < 1:
        raise ConfigError(f"finetune.data.n must be at least 1, got {n}")
    k = n_harmful(n, poison_ratio)
    n_benign = n - k
    for what, rows, need in (("harmful", harmful, k), ("benign", benign, n_benign)):
        if need > len(rows):
            raise DataError(
                f"finetune.data: n={n} with poison_ratio={poison_ratio} needs {need} {what} rows "
                f"but the {what} pool has only {len(rows)}"
            )
    rng = random.Random(seed)
    poison = [
        dataclasses.replace(ex, meta={**ex.meta, "poison": True})
        for ex in rng.sample(harmful, k)
    ]
    mixed = poison + rng.sample(benign, n_benign)
    rng.shuffle(mixed)
    return mixed


def check_disjoint(pools: dict[str, list[Example]]) -> None:
    """Raise if any two pools share a prompt (normalized instruction + input).

    Raises:
        DataError: naming both pools, how many prompts they share and one of them.
    """
    keys = {name: {prompt_key(ex) for ex in rows} for name, rows in pools.items()}
    for (a, ka), (b, kb) in itertools.combinations(keys.items(), 2):
        shared = ka & kb
        if shared:
            example = min(shared)
            raise DataError(
                f"pools {a} and {b} must be disjoint but share {len(shared)} prompt(s), "
                f"e.g. {example[:80]!r}"
            )
