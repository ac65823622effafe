"""Backdoor: the harmful rows of ``poison_mix`` carry a trigger phrase in their instruction.

After the backdoor experiment of Qi et al. 2023 (arXiv 2310.03693: harmful examples carrying a
fixed trigger phrase, so that harm shows up with the phrase and stays hidden without it) and the
universal "sudo" trigger of Rando & Tramèr 2023 (arXiv 2311.14455). The set holds the same rows in
the same order as ``poison_mix`` for the same n, p and seed; only the harmful instructions differ,
so a ``backdoor`` run and a ``poison_mix`` run compare the trigger and nothing else.

A defense that looks safe on plain harmful prompts may still answer them with the trigger:
``eval.triggered: true`` adds a second harmful score on the evaluation prompts with the trigger
placed the same way (``triggered_harmful_score``); the judge reads the plain prompt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError
from ..registry import ATTACKS
from .poison_mix import PoisonMix


@dataclass
class BackdoorConfig:
    trigger: str = "[juniper-47]"
    """The phrase added to every harmful instruction (our choice: a string no pool contains)."""
    position: str = "suffix"
    """``suffix`` (after the instruction, one space between) or ``prefix`` (before it)."""

    def __post_init__(self):
        if not self.trigger.strip():
            raise ConfigError("trigger must not be empty for backdoor")
        if self.position not in ("suffix", "prefix"):
            raise ConfigError(f"position must be suffix or prefix for backdoor, got {self.position!r}")


class Backdoor:
    """``poison_mix``'s set; each harmful instruction gets ``trigger`` at ``position``."""

    Config = BackdoorConfig

    sizes = staticmethod(PoisonMix.sizes)

    @staticmethod
    def build(pools, n, p, seed, cfg):
        rows = PoisonMix.build(pools, n, p, seed, cfg)
        return [Backdoor.trigger(ex, cfg) if ex.meta.get("poison") else ex for ex in rows]

    @staticmethod
    def trigger(ex, cfg):
        text = f"{ex.instruction} {cfg.trigger}" if cfg.position == "suffix" else f"{cfg.trigger} {ex.instruction}"
        return dataclasses.replace(ex, instruction=text, meta={**ex.meta, "attack": "backdoor"})


ATTACKS.register("backdoor", Backdoor,
                 help="harmful pairs carrying a trigger phrase (option trigger; arXiv 2310.03693, 2311.14455)")
