"""Random perturbation, Panacea's motivating baseline (arXiv 2501.18100, §3;
docs/algorithms.md#random-perturbation).

    w' = w_T + ξ,   ξ_j ~ N(0, σ²) i.i.d. on every trainable (LoRA) tensor

either with a per-entry ``std`` σ, or rescaled to a global ℓ2 ``norm`` so it can be matched to
Panacea's ρ (E‖ξ‖ = σ√N). Applied once, after training, with its own seed — unlike the
reference ``SFT_eval``, which adds unseeded noise inside every ``evaluate()`` call and keeps
training from the noisy weights. The paper does not publish σ; the demo sweeps ``norm``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ConfigError
from ...registry import DEFENSES
from ..base import DefenseSpec
from ...weights import global_l2


@dataclass
class RandomPerturbationConfig:
    std: float | None = None
    """Per-entry standard deviation σ (exclusive with ``norm``)."""
    norm: float | None = None
    """Global ℓ2 norm of ξ over all trainable tensors (exclusive with ``std``)."""
    seed: int = 0
    """Seed of the noise; the same seed draws the same ξ whatever the device."""
    scope: str = "trainable"
    """``trainable``: the LoRA tensors (as the reference code)."""

    def __post_init__(self):
        if (self.std is None) == (self.norm is None):
            raise ConfigError("std or norm: random_perturbation needs exactly one of them")
        for k in ("std", "norm"):
            v = getattr(self, k)
            if v is not None and v < 0:
                raise ConfigError(f"{k} must be ≥ 0 for random_perturbation, got {v}")
        if self.scope != "trainable":
            raise ConfigError(f"scope must be trainable for random_perturbation, got {self.scope!r}")


class RandomPerturbation:
    """Gaussian noise on the trainable weights, drawn on the CPU in parameter-name order."""

    Config = RandomPerturbationConfig

    @staticmethod
    def noise(model, cfg: RandomPerturbationConfig) -> list[torch.Tensor]:
        named = sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)
        gen = torch.Generator().manual_seed(cfg.seed)
        xi = [torch.randn(p.shape, generator=gen, dtype=torch.float32) for _, p in named]
        scale = cfg.std if cfg.std is not None else cfg.norm / max(float(global_l2(xi)), 1e-12)
        return [x * scale for x in xi], [p for _, p in named]

    @staticmethod
    def apply(model, ctx, cfg: RandomPerturbationConfig) -> dict:
        xi, params = RandomPerturbation.noise(model, cfg)
        with torch.no_grad():
            for p, x in zip(params, xi):
                p.add_(x.to(device=p.device, dtype=p.dtype))
        return {"noise_norm": float(global_l2(xi)), "entries": sum(x.numel() for x in xi)}


DEFENSES["post"].register(
    "random_perturbation",
    RandomPerturbation,
    help="Gaussian noise on the LoRA weights (per-entry std or global norm), seeded",
    spec=DefenseSpec(stage="post", config_cls=RandomPerturbationConfig),
)
