"""One-shot harmful ascent: Panacea's ε without Panacea's training term.

    ε = ρ ∇h(w_T) / ‖∇h(w_T)‖,   w' = w_T + ε

h is the mean token cross-entropy over the *whole* defender harmful set (not one batch), at the
finished fine-tuned weights; ‖·‖ is the global ℓ2 norm over every trainable tensor. It is what
Panacea's final step adds, computed once after training: no extra passes during fine-tuning.
A pilot on the embedded model found this one step did as much as Panacea (docs/embedded.md#pilot);
the demo shows both side by side so a user can check whether Panacea's training term matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...data.base import DataSpec
from ...errors import ConfigError
from ...registry import DEFENSES
from ..base import DefenseSpec
from ...weights import global_l2


@dataclass
class AscentConfig:
    rho: float = 1.0
    """‖ε‖, the same meaning and default as Panacea's ρ (w-yibo/Panacea:train.py)."""
    harmful_data: DataSpec = field(default_factory=lambda: DataSpec(name="pyrit_harmful", start=100, n=100))
    """The defender's harmful set (disjoint from the user's harmful samples and the eval prompts)."""
    batch_size: int = 10
    """Batch size of the gradient accumulation over the set (does not change the result)."""

    def __post_init__(self):
        if not self.rho > 0:
            raise ConfigError(f"rho must be > 0 for ascent, got {self.rho}")
        if not self.batch_size > 0:
            raise ConfigError(f"batch_size must be > 0 for ascent, got {self.batch_size}")


def harmful_gradient(model, dataset, collator, batch_size: int) -> list[torch.Tensor]:
    """∇ of the token-mean CE over the whole dataset, w.r.t. the trainable tensors."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    # the causal-LM loss scores labels[1:] (shifted): count those positions
    n_tokens = sum(sum(1 for x in f["labels"][1:] if x != -100) for f in dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    device = params[0].device
    was_training = model.training
    model.eval()  # no dropout: the gradient of the model as it will be served
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        k = int((batch["labels"][:, 1:] != -100).sum())
        if k == 0:
            continue
        loss = model(**batch).loss * (k / n_tokens)  # token-weighted → mean over the whole set
        for t, g in zip(total, torch.autograd.grad(loss, params)):
            t += g.float()
    model.train(was_training)
    return total


class Ascent:
    """Registry entry for the one-shot ascent step."""

    Config = AscentConfig

    @staticmethod
    def apply(model, ctx, cfg: AscentConfig) -> dict:
        data = ctx.dataset(cfg.harmful_data, "harmful_data")
        grad = harmful_gradient(model, data, ctx.collator, cfg.batch_size)
        norm = global_l2(grad)
        params = [p for p in model.parameters() if p.requires_grad]
        with torch.no_grad():
            for p, g in zip(params, grad):
                p.add_((cfg.rho / (norm + 1e-7) * g).to(p.dtype))
        return {"harmful_grad_norm": float(norm), "epsilon_norm": cfg.rho, "samples": len(data)}


DEFENSES["post"].register(
    "ascent",
    Ascent,
    help="one-shot harmful ascent ε = ρ∇h/‖∇h‖ over the defender set (Panacea without training)",
    spec=DefenseSpec(stage="post", config_cls=AscentConfig, defender_data_keys=("harmful_data",),
                     strength_option="rho"),
)
