"""Plain refusal SFT at the alignment stage: min_w f(w), G = ∇f(w) (docs/algorithms.md#sft).

The "no defense" alignment row. Paper defaults (lr 5e-4, 20 epochs, batch 10, wd 0.1, constant
lr; ``w-yibo/Panacea:script/alignment/sft.sh``) are the ``train`` section of the paper presets;
the embedded demo uses a shorter schedule (see ``configs/demo.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Trainer

from ...registry import DEFENSES
from ..base import DefenseSpec


@dataclass
class SFTConfig:
    """SFT has no options of its own."""


class SFT:
    """Plain SFT with the stock ``transformers.Trainer`` (1 forward + 1 backward per step): refusal
    SFT at the alignment stage, the user's fine-tuning at the fine-tuning stage (finetune/sft.py)."""

    Config = SFTConfig

    @staticmethod
    def make_trainer(model, args, train_dataset, ctx, cfg):
        return Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=ctx.collator)


DEFENSES["alignment"].register(
    "sft",
    SFT,
    help="plain refusal SFT, the no-defense alignment (1F+1B)",
    spec=DefenseSpec(stage="alignment", config_cls=SFTConfig, passes_per_step=1, role="baseline"),
)


class NoAlignment:
    """Skip the alignment stage: the base model is the 'aligned' model."""

    Config = SFTConfig
    make_trainer = None


DEFENSES["alignment"].register(
    "none",
    NoAlignment,
    help="skip alignment; fine-tune the base model",
    spec=DefenseSpec(stage="alignment", config_cls=SFTConfig, role="control"),
)
