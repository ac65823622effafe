"""Lisa (arXiv 2405.18641): bi-state optimisation with a proximal term during user fine-tuning.

Alternate K_a optimizer steps on the defender's alignment (refusal) data and K_f steps on the
user's data, starting in the alignment state; each state is pulled towards the weights the
*other* state ended with (docs/algorithms.md#lisa):

    alignment state:  G = ∇f(w) + ρ (w − w̃_ft),   w̃_ft = weights at the end of the last user phase
    user state:       G = ∇g(w) + ρ (w − w̃_al),   w̃_al = weights at the end of the last alignment phase

(the gradient of f + ρ/2‖w − w̃_ft‖², resp. g + ρ/2‖w − w̃_al‖²). Both anchors start as the
initial weights. The anchors follow the shipped ``ADMMTrainer`` (``git-disl/Lisa:trainer.py``,
``switch_model``), not the ``git-disl/Lisa`` README snippet, which writes them the other way
round. Because the phases alternate, the anchor of a step is the weights at the start of its own
phase. The proximal term is switched on only after ``proximal_warmup_fraction`` of all optimizer
steps (reference: "proximal term will hurt convergence" on GSM8K). Cost: one forward and one
backward per step plus an O(#trainable) proximal term; one extra copy of the trainable weights
per anchor.

Deliberate departures from the reference code (docs/algorithms.md#lisa and
docs/algorithms.md#shared-rules):
  * the phase clock and the warm-up count *optimizer* steps (``state.global_step``), so every
    micro-batch of one accumulated step is in the same state and the proximal term is added
    once per optimizer step (scaled 1/GA per micro-batch); the reference counts
    ``training_step`` calls, which equals optimizer steps only at GA = 1;
  * the alignment batch size is a config field (the reference uses the user batch size, which
    stays the default) and its loader is seeded and cycled;
  * the returned (logged) loss is the cross-entropy of the batch the step trained on (f in the
    alignment state, g in the user state) without the proximal term, which the reference adds;
    f, g, the state and the proximal term are logged under their own keys;
  * the anchors are owned copies taken at each switch.
As in the reference, the user batch the Trainer draws during an alignment step is discarded
(the user set is seen ≈ K_a/(K_a+K_f) less), and the final model is the weights after the last
step, whichever state it was in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import Trainer

from ...data.base import DataSpec
from ...errors import ConfigError
from ...registry import DEFENSES
from ..base import DefenseSpec
from ...training import AuxiliaryMixin, accumulate_grads, check_finite, micro_batch_scale, require_gradient_access, token_share

ALIGNMENT, USER = "alignment", "user"


@dataclass
class LisaConfig:
    rho: float = 1.0
    """ρ, the proximal weight. git-disl/Lisa:script/finetune/lisa_poison_ratio.sh (rho=1);
    git-disl/Booster:script/finetune/lisa_poison_ratio.sh runs Lisa with 0.01."""
    alignment_steps: int = 100
    """K_a, optimizer steps per alignment phase. git-disl/Lisa:script/finetune/lisa_poison_ratio.sh."""
    finetune_steps: int = 900
    """K_f, optimizer steps per user phase. git-disl/Lisa:script/finetune/lisa_poison_ratio.sh."""
    proximal_warmup_fraction: float = 0.1
    """No proximal term up to this fraction of all optimizer steps. Hard-coded 0.1 in
    git-disl/Lisa:trainer.py (ADMMTrainer.training_step)."""
    alignment_data: DataSpec = field(default_factory=lambda: DataSpec(name="refusals"))
    """The defender's guide data: harmful prompt → refusal (default: the package's alignment pool,
    shared with the alignment stage). Reference: 10000 BeaverTails refusal rows from row 5001
    (git-disl/Lisa:script/finetune/lisa_poison_ratio.sh, guide_data_num), i.e. rows 5001–14999,
    which contain the alignment stage's rows 5001–9999 (docs/protocol.md)."""
    alignment_batch_size: int | None = None
    """Alignment batch; ``null`` = the user batch size (as the reference, ``_train_batch_size``)."""

    def __post_init__(self):
        for k in ("alignment_steps", "finetune_steps"):
            if not getattr(self, k) > 0:
                raise ConfigError(f"{k} must be > 0 for lisa, got {getattr(self, k)}")
        if not self.rho >= 0:
            raise ConfigError(f"rho must be ≥ 0 for lisa, got {self.rho}")
        if not 0 <= self.proximal_warmup_fraction <= 1:
            raise ConfigError(
                f"proximal_warmup_fraction must be in [0, 1] for lisa, got {self.proximal_warmup_fraction}")
        if self.alignment_batch_size is not None and not self.alignment_batch_size > 0:
            raise ConfigError(f"alignment_batch_size must be > 0 for lisa, got {self.alignment_batch_size}")


class LisaTrainer(AuxiliaryMixin, Trainer):
    """``Trainer`` alternating alignment / user phases with G = ∇loss + ρ(w − anchor of the other state)."""

    aux_state_key = "alignment"

    def __init__(self, *args, lisa: LisaConfig, alignment_dataset, **kwargs):
        super().__init__(*args, **kwargs)
        self.lisa = lisa
        # seeded, cycled alignment loader; batch None = the user batch size
        self._init_auxiliary(alignment_dataset, lisa.alignment_batch_size, "alignment_data")
        self.lisa_state: str | None = None  # state of the current optimizer step
        self.anchors: dict[str, list[torch.Tensor]] | None = None  # {ALIGNMENT: w̃_al, USER: w̃_ft}
        self._step = None  # global_step of the latest training_step call
        self._micro, self._step_loss = 0, 0.0  # micro-batches and CE so far in this optimizer step
        self.stats = {"alignment_state_steps": 0, "user_state_steps": 0, "switches": 0}
        require_gradient_access(self, "lisa")  # the proximal term is written into .grad

    def state_at(self, step: int) -> str:
        """The state of optimizer step ``step`` (0-based): K_a alignment steps, then K_f user steps, …"""
        period = self.lisa.alignment_steps + self.lisa.finetune_steps
        return ALIGNMENT if step % period < self.lisa.alignment_steps else USER

    def proximal_active(self, step: int) -> bool:
        # reference: `self.steps > 0.1 * len(train_dataloader) * num_train_epochs` (strict)
        return self.lisa.rho > 0 and step > self.lisa.proximal_warmup_fraction * self.state.max_steps

    def _begin_step(self, step: int, params) -> None:
        """First micro-batch of optimizer step ``step``: switch state, snapshot the finished phase."""
        state = self.state_at(step)
        if self.anchors is None:  # both anchors start at the initial weights (reference init())
            w0 = [p.detach().clone() for p in params]
            self.anchors = {ALIGNMENT: w0, USER: [t.clone() for t in w0]}
        elif state != self.lisa_state:  # the phase that just ended leaves its weights as its anchor
            self.anchors[self.lisa_state] = [p.detach().clone() for p in params]
            self.stats["switches"] += 1
        self.lisa_state = state
        self.stats[f"{state}_state_steps"] += 1

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        ga = self.current_gradient_accumulation_steps
        step = self.state.global_step
        first_micro = step != self._step
        if first_micro:
            self._begin_step(step, params)
            self._step = step
        state = self.lisa_state

        if state == ALIGNMENT:  # the Trainer's user batch is discarded, as in the reference
            batch = self._aux_batch()  # the defender's alignment batch
            with self.compute_loss_context_manager():
                loss = model(**batch).loss
            check_finite(self, "f(w)", loss)
            # num_items_in_batch counts the discarded user tokens: not ours. token_share (1.0 on
            # one process) makes DDP's average the token mean over all processes' batches
            scale = float(token_share(batch)) / ga
        else:
            inputs = self._prepare_inputs(inputs)
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            check_finite(self, "g(w)", loss)
            scale = micro_batch_scale(self, num_items_in_batch)
        self.accelerator.backward(loss * scale)

        active = self.proximal_active(step)
        anchor = self.anchors[USER if state == ALIGNMENT else ALIGNMENT]  # the *other* state's anchor
        with torch.no_grad():
            diffs = [p.detach().float() - a.float() for p, a in zip(params, anchor)]
            if active:  # ρ(w − w̃) once per optimizer step: 1/GA of it per micro-batch
                accumulate_grads(params, (self.lisa.rho / ga * d for d in diffs))
            dist2 = float(sum(d.pow(2).sum() for d in diffs))

        if first_micro:
            self._aux["alignment_state"].append(float(state == ALIGNMENT))
            self._aux["proximal_active"].append(float(active))
            self._aux["proximal_term"].append(self.lisa.rho / 2 * dist2 if active else 0.0)
            self._aux["anchor_distance"].append(dist2**0.5)
        # the step's CE (mean over micro-batches, or token-weighted like the Trainer's own loss)
        self._micro = 1 if first_micro else self._micro + 1
        self._step_loss = (0.0 if first_micro else self._step_loss) + loss.item() * scale
        if self._micro == ga:
            self._aux[f"{state}_loss"].append(self._step_loss)
        return loss.detach() * scale

    # -- resume (checkpoint.CheckpointState): state, anchors, stats, the alignment loader's position
    def extra_state(self) -> dict:
        return {"lisa_state": self.lisa_state, "anchors": self.anchors, "step": self._step, "stats": self.stats,
                **super().extra_state()}

    def load_extra_state(self, state: dict) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.lisa_state, self._step, self.stats = state["lisa_state"], state["step"], dict(state["stats"])
        if state["anchors"] is not None:
            self.anchors = {k: [a.to(p.device) for a, p in zip(v, params)] for k, v in state["anchors"].items()}
        super().load_extra_state(state)

    def stage_record(self) -> dict:
        return {**self.stats, "final_state": self.lisa_state}


Lisa = DEFENSES["finetune"].register_trainer(  # the registry entry
    "lisa", LisaTrainer,
    data_key="alignment_data", data_kwarg="alignment_dataset",
    help="Lisa (arXiv 2405.18641): alternate alignment / user phases with a proximal term (1F+1B)",
    spec=DefenseSpec(stage="finetune", config_cls=LisaConfig, passes_per_step=1,
                     safety_data_keys=("alignment_data",), strength_option="rho"),
)
