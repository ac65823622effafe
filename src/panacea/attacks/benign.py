"""Clean task data alone: ``n`` task rows, no harmful row (``poison_ratio`` is not used).

Fine-tuning on entirely benign data already erodes safety alignment (Qi et al. 2023, arXiv
2310.03693, the benign fine-tuning case: Alpaca and Dolly raise the harmful rate of aligned
chat models). This attack asks whether a defense holds when nothing in the user's data is harmful.
The set is ``poison_mix`` at p = 0 (the same rows in the same order for the same seed), so a
``benign`` run is the clean baseline of a ``poison_mix`` experiment.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.mixing import mix_poison
from ..registry import ATTACKS


@dataclass
class BenignConfig:
    """No options: ``finetune.data.n`` task rows."""


class Benign:
    """``n`` task rows drawn and shuffled with ``Random(seed)``."""

    Config = BenignConfig

    @staticmethod
    def sizes(n, p, cfg):
        return {"task": n}

    @staticmethod
    def build(pools, n, p, seed, cfg):
        return mix_poison(pools["task"], [], n, 0.0, seed)  # p is ignored: no harmful row


ATTACKS.register("benign", Benign, uses_ratio=False,
                 help="clean task data only, p = 0 (benign fine-tuning erodes alignment; arXiv 2310.03693)")
