"""Plain (possibly poisoned) fine-tuning on the user's data: min_w g(w), G = ∇g(w)
(docs/algorithms.md#sft). The "no defense" fine-tuning row; Panacea's baseline "SFT"."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Trainer

from ...registry import DEFENSES
from ..base import DefenseSpec


@dataclass
class SFTConfig:
    """SFT has no options of its own."""


class SFT:
    """User fine-tuning with the stock ``transformers.Trainer`` (1 forward + 1 backward per step)."""

    Config = SFTConfig

    @staticmethod
    def make_trainer(model, args, train_dataset, ctx, cfg):
        return Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=ctx.collator)


DEFENSES["finetune"].register(
    "sft",
    SFT,
    help="plain fine-tuning on the user's data, no defense (1F+1B)",
    spec=DefenseSpec(stage="finetune", config_cls=SFTConfig, passes_per_step=1, role="baseline"),
)
