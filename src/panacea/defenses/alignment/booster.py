"""Booster (arXiv 2409.01586): attenuate how much one harmful step can lower the harmful loss.

    min_w  f(w) + λ [ h(w) − h(w − α ∇h(w)/‖∇h(w)‖) ]                      (paper, Eq. 2)
    G = ∇f(w) + λ ∇h(w) − λ ∇h(w − α ĝ_h(w))                               (first order)

f is the alignment (refusal) loss, h the harmful loss on the defender's harmful set, ĝ_h the
harmful gradient normalised by the global ℓ2 norm over every trainable tensor; the Jacobian of the
inner step is ignored, as in the paper and ``git-disl/Booster:trainer.py``
(``BoosterAlignmentTrainer.training_step``). Three forward and three backward passes per step:
harmful at w, the same harmful batch at w − αĝ, alignment at w.

Deliberate departures from the reference code (algorithms.md §4 "Do not copy", §0 rules):
  * the harmful batch size is a config field (hard-coded 10 there) and its loader is seeded;
  * gradient accumulation adds each micro-batch's combined gradient scaled by 1/GA;
  * the weights are restored from a saved copy after the simulated step, not by subtraction;
  * f is the logged loss; h(w), h(w − αĝ) and their difference are logged too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers import Trainer

from ...data.base import DataSpec
from ...errors import ConfigError
from ...registry import DEFENSES
from ...training import CyclingLoader, add_auxiliary_logs
from ...weights import global_l2, perturbed


@dataclass
class BoosterConfig:
    lam: float = 5.0
    """λ. Paper Table 6; git-disl/Booster:script/alignment/smooth_align.sh (lamb=5). GSM8K: 25
    (the author, git-disl/Booster issue #3)."""
    alpha: float = 0.1
    """α, the simulated harmful step size. Paper Table 7; smooth_align.sh (alpha=0.1)."""
    harmful_batch_size: int = 10
    """Harmful batch. Hard-coded 10 in git-disl/Booster:trainer.py."""
    harmful_data: DataSpec = field(default_factory=lambda: DataSpec(name="pyrit_harmful", start=100, n=100))
    """The defender's harmful (prompt, harmful answer) set; disjoint from the evaluation prompts.
    Paper: 5000 BeaverTails harmful rows."""

    def __post_init__(self):
        for k in ("lam", "alpha", "harmful_batch_size"):
            if not getattr(self, k) > 0:
                raise ConfigError(f"{k} must be > 0 for booster, got {getattr(self, k)}")


class BoosterTrainer(Trainer):
    """``Trainer`` whose step writes G = ∇f + λ∇h(w) − λ∇h(w − αĝ_h)."""

    def __init__(self, *args, booster: BoosterConfig, harmful_dataset, **kwargs):
        super().__init__(*args, **kwargs)
        self.booster = booster
        self.harmful_dataset = harmful_dataset
        self._harmful = None
        self._aux = defaultdict(list)

    def _harmful_batch(self):
        if self._harmful is None:
            self._harmful = CyclingLoader(self.harmful_dataset, self.booster.harmful_batch_size,
                                          self.args.seed, self.data_collator)
        return self._prepare_inputs(self._harmful.next())

    def training_step(self, model, inputs, num_items_in_batch=None):
        cfg = self.booster
        model.train()
        inputs = self._prepare_inputs(inputs)
        params = [p for p in model.parameters() if p.requires_grad]
        ga = self.current_gradient_accumulation_steps

        # pass 1: harmful loss h(w) and its normalised gradient ĝ_h
        hb = self._harmful_batch()
        with self.compute_loss_context_manager():
            loss_h = model(**hb).loss
        grad_h = torch.autograd.grad(loss_h, params)
        step = cfg.alpha / (global_l2(grad_h) + 1e-7)

        # pass 2: the same harmful batch after one simulated normalised harmful step
        with perturbed(params, [-step * g.float() for g in grad_h]):
            with self.compute_loss_context_manager():
                loss_hs = model(**hb).loss
            grad_hs = torch.autograd.grad(loss_hs, params)

        # pass 3: the alignment loss f(w) (token-weighted across micro-batches as the Trainer does)
        with self.compute_loss_context_manager():
            loss_f = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        f_scale = 1.0 if scaled else 1.0 / ga
        grad_f = torch.autograd.grad(loss_f, params)

        with torch.no_grad():
            for p, a, b, c in zip(params, grad_f, grad_h, grad_hs):
                G = a * f_scale + (cfg.lam / ga) * (b - c)
                p.grad = G.to(p.dtype) if p.grad is None else p.grad + G.to(p.dtype)

        self._aux["harmful_loss"].append(loss_h.item())
        self._aux["harmful_loss_after_step"].append(loss_hs.item())
        self._aux["harmful_loss_drop"].append(loss_h.item() - loss_hs.item())
        return loss_f.detach() * f_scale

    def log(self, logs, *args, **kwargs):
        add_auxiliary_logs(logs, self._aux)
        super().log(logs, *args, **kwargs)


class Booster:
    """Registry entry: builds a ``BoosterTrainer`` with the defender's harmful set."""

    Config = BoosterConfig

    @staticmethod
    def make_trainer(model, args, train_dataset, ctx, cfg: BoosterConfig):
        harmful = ctx.dataset(cfg.harmful_data, "alignment.harmful_data")
        return BoosterTrainer(model=model, args=args, train_dataset=train_dataset,
                              data_collator=ctx.collator, booster=cfg, harmful_dataset=harmful)


DEFENSES["alignment"].register(
    "booster",
    Booster,
    help="Booster (arXiv 2409.01586): penalise the harmful-loss drop of one simulated step (3F+3B)",
    harmful_keys=("harmful_data",),
)
