"""Checks inside a training step, before it writes any gradient.
"""

from __future__ import annotations

import torch

from ..errors import NonFiniteError


def check_finite(trainer, term: str, value: torch.Tensor) -> None:
    """Raise ``NonFiniteError`` if ``value`` (a loss term or a gradient norm) is NaN or ±inf.

    Called inside ``training_step`` before the step writes any gradient, so the weights are still
    those of the last good step; ``term`` names the value in the error (e.g. ``h(w+ε)``) and the
    step is the optimizer step being computed (1-based).
    """
    v = value.detach()
    if not bool(torch.isfinite(v).all()):
        shown = str(v.item()) if v.numel() == 1 else ("nan" if bool(torch.isnan(v).any()) else "inf")
        raise NonFiniteError(term, trainer.state.global_step + 1, shown)
