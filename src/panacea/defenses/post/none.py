"""The identity post-fine-tuning defense (a control: must leave every weight unchanged)."""

from __future__ import annotations

from dataclasses import dataclass

from ...registry import DEFENSES
from ..base import DefenseSpec


@dataclass
class NoneConfig:
    """No options."""


class NoDefense:
    """Leave the fine-tuned model as it is."""

    Config = NoneConfig

    @staticmethod
    def apply(model, ctx, cfg) -> dict:
        return {}


DEFENSES["post"].register(
    "none", NoDefense, help="identity (control)", spec=DefenseSpec(stage="post", config_cls=NoneConfig, role="control")
)
