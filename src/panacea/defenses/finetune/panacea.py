"""Panacea (arXiv 2501.18100): an adaptive perturbation optimised during fine-tuning.

    max_w max_{‖ε‖≤ρ} λ[h(w+ε) − h(w)] − g(w)                      (paper, Eq. 1 / Algorithm 1)

    ε_t = ρ ∇h(w_t) / ‖∇h(w_t)‖                                    (first-order inner solution)
    G_t = ∇g(w_t) − λ ∇min(h(w_t + ε_t), c) + λ ∇h(w_t)             (written into .grad)
    output: w_T + ε_{T−1}                                           (ε of the last step, added once)

g is the user's (possibly poisoned) loss, h the harmful loss on the defender's own harmful set,
‖·‖ the global ℓ2 norm over every trainable tensor. Three forward and three backward passes per
step (user batch at w, harmful batch at w, the same harmful batch at w+ε); with
``perturb_every: k`` (beyond the paper) only every k-th optimizer step does all three, the others
are plain SFT steps on g. The passes carry ``torch.profiler`` labels ``panacea/…``. The paper calls Panacea
a post-fine-tuning defense because ε is *applied* after training; it is *optimised* here, during
the user's fine-tuning, so this file lives in ``defenses/finetune``. The post stage of a Panacea
run stays ``none`` and ε is added exactly once (``train()`` below).

Deliberate departures from ``w-yibo/Panacea`` (docs/algorithms.md#panacea, defects 1–10):
  * ε is an owned fp32 copy, never an alias of ``param.grad``;
  * the clamped harmful loss is the one differentiated (the released code's ``clip_loss_h`` is
    undefined);
  * gradient accumulation adds each micro-batch's combined gradient scaled by 1/GA;
  * the harmful batch size is a config field; the harmful loader is seeded and cycled;
  * the returned (logged) loss is the user loss g; h(w), h(w+ε), ‖∇h‖ and the clamp are logged
    under their own keys;
  * weights are restored from a saved copy after the perturbed pass, not by subtraction;
  * on several processes (DDP, FSDP2) every gradient is averaged over them and h is token-weighted
    over their harmful batches, so ε, ‖∇h‖ and the clamp decision are the same on every process and
    N processes × batch b equal one process × batch N·b (``panacea.training.process_gradients``);
    under FSDP2 ε lives on the parameter shards and is gathered only to be saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.profiler import record_function
from transformers import Trainer

from ...data.base import DataSpec
from ...errors import ConfigError
from ...registry import DEFENSES
from ..base import Counterpart, DefenseSpec
from ...rundir import atomic_path
from ...distributed import is_main
from ...training import (AuxiliaryMixin, accumulate_grads, check_finite, full_tensors, micro_batch_scale, process_gradients,
                         process_mean, require_gradient_access)
from ...weights import global_l2, perturbed


@dataclass
class PanaceaConfig:
    rho: float = 1.0
    """‖ε‖. w-yibo/Panacea:train.py (--eps_rho default 1.0), script/finetune/panacea_gsm8k.sh."""
    lam: float = 1e-3
    """λ. w-yibo/Panacea:script/finetune/panacea_gsm8k.sh (lamb=0.001), also the train.py default."""
    harmful_loss_clamp: float = 5.0
    """c in min(h(w+ε), c). Hard-coded 5 in w-yibo/Panacea:trainer.py (Panacea.training_step)."""
    harmful_batch_size: int = 10
    """Defender harmful batch. Hard-coded 10 in the reference (BoosterAlignmentTrainer)."""
    harmful_data: DataSpec = field(default_factory=lambda: DataSpec(name="pyrit_harmful", start=100, n=100))
    """The defender's harmful (prompt, harmful answer) set; must be disjoint from the user's
    harmful samples and from the evaluation prompts (checked by the pipeline). Paper: 1000
    BeaverTails rows (panacea_gsm8k.sh, bad_sample_num=1000)."""
    perturb_every: int = 1
    """k: recompute ε every k optimizer steps (k = 1 is the paper: every step). On the other steps
    the update is plain SFT on g (one forward and one backward pass) and ε keeps its last value,
    so a step costs on average (3 + (k − 1))/k SFT steps. Beyond the paper, for providers who pay
    per GPU hour; its HS/FA cost is measured by ``panacea bench`` (``bench.ablations``)."""
    apply_epsilon: bool = True
    """Add ε to the weights after training (the paper's output model)."""
    save_epsilon: bool = True
    """Write ε to ``panacea_epsilon.safetensors`` for the per-layer analysis."""

    def __post_init__(self):
        for k in ("rho", "harmful_loss_clamp", "harmful_batch_size"):
            if not getattr(self, k) > 0:
                raise ConfigError(f"{k} must be > 0 for panacea, got {getattr(self, k)}")
        if self.lam < 0:
            raise ConfigError(f"lam must be ≥ 0 for panacea, got {self.lam}")
        if isinstance(self.perturb_every, bool) or not isinstance(self.perturb_every, int) or self.perturb_every < 1:
            raise ConfigError(f"perturb_every must be an integer ≥ 1 for panacea, got {self.perturb_every!r}")


class PanaceaTrainer(AuxiliaryMixin, Trainer):
    """``Trainer`` whose step writes G_t = ∇g − λ(∇min(h(w+ε), c) − ∇h(w)) and keeps ε_t."""

    def __init__(self, *args, panacea: PanaceaConfig, harmful_dataset, **kwargs):
        super().__init__(*args, **kwargs)
        self.panacea = panacea
        # defender harmful batches: seeded sampler, cycled with a fresh iterator when exhausted
        self._init_auxiliary(harmful_dataset, panacea.harmful_batch_size)
        self.epsilon: list[torch.Tensor] | None = None  # ε of the latest step (fp32 copies)
        self.stats = {"micro_steps": 0, "epsilon_steps": 0, "clamp_active_steps": 0}
        self.epsilon_applied = False
        require_gradient_access(self, "panacea")

    def _params(self, model):
        return [p for p in model.parameters() if p.requires_grad]

    def training_step(self, model, inputs, num_items_in_batch=None):
        cfg = self.panacea
        model.train()
        inputs = self._prepare_inputs(inputs)
        params = self._params(model)
        ga = self.current_gradient_accumulation_steps

        # Every gradient below is averaged over processes (h token-weighted over their harmful
        # batches), so ε and the clamp decision are the same on every process
        # (docs/algorithms.md#shared-rules, rule 2); on one process these are plain autograd.grad calls.
        # pass 1: user loss g(w) (token-weighted across micro-batches exactly as the Trainer does)
        with record_function("panacea/user_pass"), self.compute_loss_context_manager():
            loss_g = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        check_finite(self, "g(w)", process_mean(loss_g))
        g_scale = micro_batch_scale(self, num_items_in_batch)
        with record_function("panacea/user_backward"):
            grad_g = process_gradients(loss_g, params, model)
        self.stats["micro_steps"] += 1

        # perturb_every = k: ε is recomputed on optimizer steps 0, k, 2k, … (every micro-batch of
        # such a step); the other steps are plain SFT and keep the last ε
        if self.state.global_step % cfg.perturb_every != 0:
            accumulate_grads(params, (a * g_scale for a in grad_g))
            return loss_g.detach() * g_scale

        # pass 2: harmful loss h(w) on the defender's batch, and ε = ρ ∇h / ‖∇h‖
        hb, share, h_w, grad_h, norm_h = self._harmful_gradient(model, params, "panacea")
        scale = cfg.rho / (norm_h + 1e-7)
        eps = [(scale * t.float()).detach() for t in grad_h]  # owned copies, never .grad aliases

        # pass 3: the same harmful batch at w + ε, clamped at c (zero gradient when clamped)
        with record_function("panacea/perturbed_pass"), perturbed(params, eps):
            with self.compute_loss_context_manager():
                loss_hp = model(**hb).loss
            h_eps = process_mean(loss_hp, share)  # h(w+ε) of the whole (global) harmful batch
            check_finite(self, "h(w+ε)", h_eps)
            clamped = bool(h_eps > cfg.harmful_loss_clamp)  # torch.clamp: the gradient passes at h = c
            if clamped:  # d/dw min(h, c) = 0 there: skip the backward pass, same result
                grad_hp = [torch.zeros_like(p) for p in params]
            else:  # below c, ∇min(h, c) = ∇h (clamping a process's own share would be wrong)
                grad_hp = process_gradients(loss_hp * share, params, model)

        accumulate_grads(params, (a * g_scale - (cfg.lam / ga) * (b - c) for a, b, c in zip(grad_g, grad_hp, grad_h)))

        self.epsilon = eps
        self._keep(eps)
        self.stats["epsilon_steps"] += 1
        self.stats["clamp_active_steps"] += int(clamped)
        self._aux["harmful_loss"].append(h_w.item())
        self._aux["harmful_loss_perturbed"].append(h_eps.item())
        self._aux["harmful_grad_norm"].append(norm_h.item())
        self._aux["clamp_active"].append(float(clamped))
        return loss_g.detach() * g_scale

    def _keep(self, eps: list[torch.Tensor]) -> None:
        """The paper keeps only the latest ε (``self.epsilon``); ``PanaceaAvgTrainer`` keeps more."""

    # -- resume (checkpoint.CheckpointState): ε, the stats, the harmful loader's position
    def extra_state(self) -> dict:
        return {"epsilon": self.epsilon, "stats": self.stats, **super().extra_state()}

    def load_extra_state(self, state: dict) -> None:
        params = self._params(self.model)
        if state["epsilon"] is not None:
            self.epsilon = [e.to(p.device) for e, p in zip(state["epsilon"], params)]
        self.stats.update(state["stats"])
        super().load_extra_state(state)

    def final_epsilon(self) -> list[torch.Tensor]:
        """The output ε: the last step's (paper, Algorithm 1: w_T + ε_{T−1})."""
        if self.epsilon is None:
            raise RuntimeError("panacea: no training step ran, so there is no ε to apply")
        return self.epsilon

    def train(self, *args, **kwargs):
        out = super().train(*args, **kwargs)
        model = self.model
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        eps = self.final_epsilon()
        if self.panacea.save_epsilon:
            whole = full_tensors(eps)  # FSDP2: gathered from the shards, on every process
            if is_main():
                with atomic_path(Path(self.args.output_dir) / "panacea_epsilon.safetensors") as tmp:
                    save_file({n: e.detach().cpu().contiguous() for n, e in zip(names, whole)}, str(tmp))
        if self.panacea.apply_epsilon and not self.epsilon_applied:
            with torch.no_grad():
                for p, e in zip(self._params(model), eps):
                    p.add_(e.to(p.dtype))
            self.epsilon_applied = True
        self.stats["epsilon_norm"] = float(global_l2(eps))
        self.stats["epsilon_applied"] = self.epsilon_applied
        return out

    def stage_record(self) -> dict:
        s = dict(self.stats)
        # of the micro-steps that computed ε (all of them when perturb_every = 1)
        s["clamp_active_fraction"] = round(s["clamp_active_steps"] / max(1, s["epsilon_steps"]), 4)
        return s


Panacea = DEFENSES["finetune"].register_trainer(  # the registry entry
    "panacea", PanaceaTrainer,
    help="Panacea (arXiv 2501.18100): optimise ε during fine-tuning, add it at the end (3F+3B)",
    spec=DefenseSpec(
        stage="finetune", config_cls=PanaceaConfig, passes_per_step=3, defender_data_keys=("harmful_data",),
        overhead_target=True, strength_option="rho", step_interval_option="perturb_every",
        counterpart=Counterpart("ascent", "Panacea vs one-shot ascent (ε from the fine-tuned model's harmful "
                                          "gradient, no training term)"),
        safety_coefficients=True,
    ),
)


# --------------------------------------------------------------------------- beyond the paper
# ``panacea_avg``: the same training step, a different output ε. Not in arXiv 2501.18100 nor in
# w-yibo/Panacea; every table names it ``panacea_avg`` so that it is never read as the paper's method.


@dataclass
class PanaceaAvgConfig(PanaceaConfig):
    """Panacea's options plus which steps' ε are averaged into the output ε (beyond the paper)."""

    average: str = "last"
    """``last`` (the last ``k`` ε-steps), ``first`` (the first ``k``) or ``all`` (every ε-step,
    ``k`` ignored). Our addition: the paper outputs the last step's ε, computed on one harmful
    batch, whose direction varies with that batch."""
    k: int = 20
    """Steps averaged for ``first``/``last``. 20 = every step of the CPU demo's one epoch
    (n = 200, batch 10), the setting first measured in configs/demo.yaml."""

    def __post_init__(self):
        super().__post_init__()
        if self.average not in ("first", "last", "all"):
            raise ConfigError(f"average must be first, last or all for panacea_avg, got {self.average!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"k must be an integer ≥ 1 for panacea_avg, got {self.k!r}")


class PanaceaAvgTrainer(PanaceaTrainer):
    """Panacea's step; output ε = ρ · ε̄ / ‖ε̄‖, ε̄ the mean of the chosen steps' ε.

    Every ε_t has norm ρ, so ε̄ is shorter than ρ when the ε_t disagree; rescaling keeps the
    output at the paper's budget ‖ε‖ = ρ. ``first``/``last`` keep up to ``k`` ε in memory
    (k LoRA-sized fp32 buffers); ``all`` keeps a running sum (one buffer).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._window: list[list[torch.Tensor]] = []  # first/last: the kept ε, oldest first
        self._sum: list[torch.Tensor] | None = None  # all: Σ ε_t
        self._count = 0

    def _keep(self, eps: list[torch.Tensor]) -> None:
        cfg = self.panacea
        self._count += 1
        if cfg.average == "all":
            self._sum = [e.clone() for e in eps] if self._sum is None else [a + e for a, e in zip(self._sum, eps)]
        elif cfg.average == "last":
            self._window = (self._window + [eps])[-cfg.k :]
        elif len(self._window) < cfg.k:  # first
            self._window.append(eps)

    def extra_state(self) -> dict:
        return {"window": self._window, "sum": self._sum, "count": self._count, **super().extra_state()}

    def load_extra_state(self, state: dict) -> None:
        params = self._params(self.model)
        self._window = [[e.to(p.device) for e, p in zip(eps, params)] for eps in state["window"]]
        if state["sum"] is not None:
            self._sum = [e.to(p.device) for e, p in zip(state["sum"], params)]
        self._count = state["count"]
        super().load_extra_state(state)

    def final_epsilon(self) -> list[torch.Tensor]:
        super().final_epsilon()  # raises when no step ran
        if self._sum is not None:
            mean = [t / self._count for t in self._sum]
        else:
            mean = [torch.stack(ts).mean(0) for ts in zip(*self._window)]
        s = self.panacea.rho / (global_l2(mean) + 1e-7)
        return [m * s for m in mean]

    def stage_record(self) -> dict:
        kept = self._count if self.panacea.average == "all" else len(self._window)
        return {**super().stage_record(), "epsilon_averaged_steps": kept}


PanaceaAvg = DEFENSES["finetune"].register_trainer(  # the registry entry
    "panacea_avg", PanaceaAvgTrainer,
    option="panacea",
    help="beyond the paper: Panacea's training, output ε = mean of the first/last k or all steps' ε, rescaled to ρ",
    spec=DefenseSpec(stage="finetune", config_cls=PanaceaAvgConfig, passes_per_step=3,
                     defender_data_keys=("harmful_data",), beyond_paper=True, strength_option="rho",
                     step_interval_option="perturb_every", profile_label="panacea"),
)
