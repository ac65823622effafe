"""Booster (arXiv 2409.01586): attenuate how much one harmful step can lower the harmful loss.

    min_w  f(w) + λ [ h(w) − h(w − α ∇h(w)/‖∇h(w)‖) ]                      (paper, Eq. 2)
    G = ∇f(w) + λ ∇h(w) − λ ∇h(w − α ĝ_h(w))                               (first order)

f is the alignment (refusal) loss, h the harmful loss on the defender's harmful set, ĝ_h the
harmful gradient normalised by the global ℓ2 norm over every trainable tensor; the Jacobian of the
inner step is ignored, as in the paper and ``git-disl/Booster:trainer.py``
(``BoosterAlignmentTrainer.training_step``). Three forward and three backward passes per step:
harmful at w, the same harmful batch at w − αĝ, alignment at w.

Deliberate departures from the reference code (docs/algorithms.md#booster and
docs/algorithms.md#shared-rules):
  * the harmful batch size is a config field (hard-coded 10 there) and its loader is seeded;
  * gradient accumulation adds each micro-batch's combined gradient scaled by 1/GA;
  * the weights are restored from a saved copy after the simulated step, not by subtraction;
  * f is the logged loss; h(w), h(w − αĝ) and their difference are logged too;
  * on several processes (DDP, FSDP2) every gradient is averaged over them and h is token-weighted
    over their harmful batches, so ĝ_h and the simulated step are the same on every process and
    N processes × batch b equal one process × batch N·b (``panacea.training.process_gradients``);
    the reference's ``torch.stack`` norm and ``param.data`` writes are per device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch.profiler import record_function
from transformers import Trainer

from ...data.base import DataSpec
from ...errors import ConfigError
from ...registry import DEFENSES
from ..base import DefenseSpec
from ...training import (AuxiliaryMixin, accumulate_grads, check_finite, micro_batch_scale, process_gradients, process_mean,
                         require_gradient_access)
from ...weights import perturbed


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


class BoosterTrainer(AuxiliaryMixin, Trainer):
    """``Trainer`` whose step writes G = ∇f + λ∇h(w) − λ∇h(w − αĝ_h)."""

    def __init__(self, *args, booster: BoosterConfig, harmful_dataset, **kwargs):
        super().__init__(*args, **kwargs)
        self.booster = booster
        self._init_auxiliary(harmful_dataset, booster.harmful_batch_size)  # seeded, cycled harmful loader
        require_gradient_access(self, "booster")

    def training_step(self, model, inputs, num_items_in_batch=None):
        cfg = self.booster
        model.train()
        inputs = self._prepare_inputs(inputs)
        params = [p for p in model.parameters() if p.requires_grad]
        ga = self.current_gradient_accumulation_steps

        # pass 1: harmful loss h(w) and its normalised gradient ĝ_h. Every gradient is averaged
        # over processes (token-weighted for h), so ĝ_h and the simulated step are the same on
        # every process (docs/algorithms.md#shared-rules, rule 2); on one process these are plain
        # autograd.grad
        hb, share, h_w, grad_h, norm_h = self._harmful_gradient(model, params, "booster")  # the defender's batch
        step = cfg.alpha / (norm_h + 1e-7)

        # pass 2: the same harmful batch after one simulated normalised harmful step
        with record_function("booster/stepped_pass"), perturbed(params, [-step * g.float() for g in grad_h]):
            with self.compute_loss_context_manager():
                loss_hs = model(**hb).loss
            h_step = process_mean(loss_hs, share)
            check_finite(self, "h(w−αĝ)", h_step)
            grad_hs = process_gradients(loss_hs * share, params, model)

        # pass 3: the alignment loss f(w) (token-weighted across micro-batches as the Trainer does)
        with record_function("booster/alignment_pass"):
            with self.compute_loss_context_manager():
                loss_f = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            check_finite(self, "f(w)", process_mean(loss_f))
            grad_f = process_gradients(loss_f, params, model)
        f_scale = micro_batch_scale(self, num_items_in_batch)
        accumulate_grads(params, (a * f_scale + (cfg.lam / ga) * (b - c) for a, b, c in zip(grad_f, grad_h, grad_hs)))

        self._aux["harmful_loss"].append(h_w.item())
        self._aux["harmful_loss_after_step"].append(h_step.item())
        self._aux["harmful_loss_drop"].append(h_w.item() - h_step.item())
        return loss_f.detach() * f_scale


Booster = DEFENSES["alignment"].register_trainer(  # the registry entry
    "booster", BoosterTrainer,
    help="Booster (arXiv 2409.01586): penalise the harmful-loss drop of one simulated step (3F+3B)",
    spec=DefenseSpec(stage="alignment", config_cls=BoosterConfig, passes_per_step=3,
                     defender_data_keys=("harmful_data",), overhead_target=True),
)
