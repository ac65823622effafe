"""Poisoned task data: ``round(p·n)`` harmful pairs mixed into ``n − round(p·n)`` task rows.

The harmful fine-tuning attack of the papers this package reproduces (Panacea, arXiv 2501.18100;
Booster, arXiv 2409.01586; Lisa, arXiv 2405.18641; docs/protocol.md#1-the-threat-model-in-three-stages): the user uploads task data of
which a fraction p are harmful instruction → harmful answer pairs. The default attack; it is
``data.mixing.mix_poison`` unchanged, so every config written before attacks existed trains on
the same examples in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.mixing import mix_poison, n_harmful
from ..registry import ATTACKS


@dataclass
class PoisonMixConfig:
    """No options: ``finetune.data.n`` and ``poison_ratio`` set the mix."""


class PoisonMix:
    """``mix_poison(task, harmful, n, p, seed)``: harmful rows drawn first, then task rows, shuffled."""

    Config = PoisonMixConfig

    @staticmethod
    def sizes(n, p, cfg):
        k = n_harmful(n, p)
        return {"harmful": k, "task": n - k}

    @staticmethod
    def build(pools, n, p, seed, cfg):
        return mix_poison(pools["task"], pools["harmful"], n, p, seed)


ATTACKS.register("poison_mix", PoisonMix, help="harmful pairs mixed into the task at ratio p (default; the papers')")
