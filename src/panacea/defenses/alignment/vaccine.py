"""Vaccine (arXiv 2402.01109): perturbation-aware alignment on the attention outputs.

    min_w  max_{‖E‖ ≤ ρ}  f(w; E),     E = (e_1, …, e_L), e_l added to attention output o_l
    e_l = ρ ∇_{o_l} f(w) / (‖(∇_{o_1} f, …, ∇_{o_L} f)‖ + 1e-7)      (first-order inner max)
    G   = ∇_w f(w; E)                                                   (E held fixed)

f is the alignment (refusal) loss; o_l the hidden-state output (``output[0]``) of the attention
module of decoder layer l, found through the ``attn_output`` anchor of ``panacea.hooks``; ‖E‖ the
global ℓ2 norm over all layers. Two forward and two backward passes per step, both on the
Trainer's alignment batch: pass 1 at E = 0 gives f(w) and ∇_o f (no weight gradient is taken),
pass 2 with o_l ← o_l + e_l gives G. The weights are never modified. Reference:
``git-disl/Vaccine:trainer.py`` (``VaccineTrainer``), repeated in ``git-disl/Booster`` and
``w-yibo/Panacea``.

Deliberate departures from the reference code (docs/algorithms.md#vaccine and
docs/algorithms.md#shared-rules):
  * ∇_o f is taken with ``torch.autograd.grad`` on the attention outputs captured by a scoped
    forward hook, not with the deprecated ``register_backward_hook`` (unreliable ``grad_output``
    on modules that return tuples);
  * pass 2's hook returns a new output tuple ``(o_l + e_l, …)`` instead of writing
    ``output[0].data`` in place;
  * hooked modules come from the per-architecture anchor map (an unknown model type is a config
    error), not from an ``isinstance`` list of six attention classes; hooks live only inside a
    ``with`` block and are removed in ``finally``, also when the step raises;
  * gradient accumulation adds each micro-batch's G (token-weighted like the Trainer's loss)
    into ``.grad`` instead of overwriting it (rule 4); the norm of E is ``global_l2`` (rule 2);
  * f(w) is the returned (logged) loss; f(w; E) is logged as ``perturbed_loss``;
  * on several processes ‖E‖ is reduced over the processes' shares of the batch and G averaged
    over them (``panacea.training.process_gradients``), so N processes × batch b equal one process
    × batch N·b (with the Trainer's token-weighted loss, ``average_tokens_across_devices``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Trainer

from ...errors import ConfigError
from ...hooks import first_output, forward_hooks, replace_first, resolve
from ...registry import DEFENSES
from ..base import DefenseSpec
from ...training import AuxiliaryMixin, accumulate_grads, micro_batch_scale, process_gradients, require_gradient_access
from ...weights import global_l2


@dataclass
class VaccineConfig:
    rho: float = 2.0
    """ρ, the norm of the hidden-state perturbation E (global over layers). git-disl/Vaccine README
    (``sbatch Vaccine.sh 2``; ``script/alignment/Vaccine.sh``: lr 1e-3, 50 epochs, batch 5); the
    fine-tune scripts of git-disl/Booster load this ρ = 2 adapter. Other released values:
    ``git-disl/Booster:script/alignment/vaccine.sh`` trains ρ = 5,
    ``w-yibo/Panacea:script/alignment/vaccine.sh`` ρ = 20."""

    def __post_init__(self):
        if not self.rho > 0:
            raise ConfigError(f"rho must be > 0 for vaccine, got {self.rho}")


class VaccineTrainer(AuxiliaryMixin, Trainer):
    """``Trainer`` whose step writes G = ∇_w f(w; E), E = ρ ∇_o f / ‖∇_o f‖ on the attention outputs."""

    def __init__(self, *args, vaccine: VaccineConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.vaccine = vaccine
        self._init_auxiliary()  # auxiliary logs only: no data besides the alignment set
        require_gradient_access(self, "vaccine")

    def _perturbation(self, model, attn, inputs, num_items_in_batch):
        """Pass 1: f(w) and E = (e_1, …, e_L) on this batch."""
        outs = [None] * len(attn)

        def record(i, module, args, output):
            if outs[i] is not None:  # a second call in the same pass: keep the first output
                return None
            o = first_output(output)
            if not o.requires_grad:  # nothing trainable upstream of this layer: make o a leaf
                o = o.detach().requires_grad_(True)
                outs[i] = o
                return replace_first(output, o)
            outs[i] = o
            return None

        with forward_hooks(attn, record):
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            missing = [i for i, o in enumerate(outs) if o is None]
            if missing:
                raise RuntimeError(f"vaccine: the attention modules of layers {missing} did not run")
            grads = torch.autograd.grad(loss, outs, allow_unused=True)
        grads = [torch.zeros_like(o) if g is None else g for o, g in zip(outs, grads)]
        # the token weighting of the loss only rescales ∇_o f; the normalisation removes it. On
        # several processes each holds the activations of its own share of the batch: ‖E‖ is
        # reduced over them (sharded), so E is the one a single process computes on the whole batch
        scale = self.vaccine.rho / (global_l2(grads, sharded=True) + 1e-7)
        E = [(g.float() * scale.to(g.device)).to(g.dtype) for g in grads]
        return loss.detach(), E

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        params = [p for p in model.parameters() if p.requires_grad]
        ga = self.current_gradient_accumulation_steps
        attn = resolve(model, "attn_output")

        # pass 1: f(w) and the worst-case hidden perturbation E (norm ρ) for this batch
        loss_f, E = self._perturbation(model, attn, inputs, num_items_in_batch)

        def add_perturbation(i, module, args, output):
            return replace_first(output, first_output(output) + E[i])  # a new tuple, never in place

        # pass 2: the same batch with o_l ← o_l + e_l; its weight gradient is G
        with forward_hooks(attn, add_perturbation):
            with self.compute_loss_context_manager():
                loss_p = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            grads = process_gradients(loss_p, params, model)  # averaged over processes
        # token-weighted across micro-batches as the Trainer does (as in booster.py)
        f_scale = micro_batch_scale(self, num_items_in_batch)
        accumulate_grads(params, (g * f_scale for g in grads))  # GA > 1 adds micro-batches

        # per micro-batch value on the scale of the logged loss
        self._aux["perturbed_loss"].append(loss_p.item() * f_scale * ga)
        return loss_f * f_scale


class Vaccine:
    """Registry entry: builds a ``VaccineTrainer`` on the alignment set (no other data)."""

    Config = VaccineConfig

    @staticmethod
    def make_trainer(model, args, train_dataset, ctx, cfg: VaccineConfig):
        return VaccineTrainer(model=model, args=args, train_dataset=train_dataset,
                              data_collator=ctx.collator, vaccine=cfg)


DEFENSES["alignment"].register(
    "vaccine",
    Vaccine,
    help="Vaccine (arXiv 2402.01109): align under a worst-case ρ-perturbation of attention outputs (2F+2B)",
    spec=DefenseSpec(stage="alignment", config_cls=VaccineConfig, passes_per_step=2, strength_option="rho"),
)
