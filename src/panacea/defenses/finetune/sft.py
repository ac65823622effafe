"""Plain (possibly poisoned) fine-tuning on the user's data: min_w g(w), G = ∇g(w)
(docs/algorithms.md#sft). The "no defense" fine-tuning row; Panacea's baseline "SFT".

The same entry as the alignment stage's SFT (``defenses/alignment/sft.py``: the stock
``transformers.Trainer``, 1 forward + 1 backward per step), registered for this stage.
"""

from __future__ import annotations

from ...registry import DEFENSES
from ..alignment.sft import SFT, SFTConfig
from ..base import DefenseSpec

DEFENSES["finetune"].register(
    "sft",
    SFT,
    help="plain fine-tuning on the user's data, no defense (1F+1B)",
    spec=DefenseSpec(stage="finetune", config_cls=SFTConfig, passes_per_step=1, role="baseline"),
)
