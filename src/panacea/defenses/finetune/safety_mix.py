"""Safety-data mixing during user fine-tuning (SafeInstr, arXiv 2309.07875; VLGuard-style mixing,
arXiv 2402.02207): the service provider adds its own alignment (harmful prompt → refusal)
examples to the user's job.

Two modes:

* ``mix`` — SafeInstr / VLGuard "mixed fine-tuning": ``samples`` refusal examples (or
  ``fraction`` × the user set size) are added to the user's training set, which is shuffled with
  the experiment seed. Plain SFT on a bigger set, ``G = ∇ mean-CE(user ∪ safety batch)``; the
  cost is the extra examples (1 forward + 1 backward per step, more steps per epoch).
* ``loss`` — the shared Lisa/Booster code base's ``VlguardTrainer``
  (``git-disl/Booster:trainer.py``): every step adds ``weight ×`` the CE of a refusal batch,

      G = ∇g(w) + weight · ∇f(w)

  with f on a separate, seeded, cycled alignment batch. Two forward passes and one backward
  through both graphs per step (≈ 2F+2B of compute); the user set is seen in full.

Deliberate departures from ``VlguardTrainer``: the alignment batch size is a config field (the
reference hard-codes 4), the loader is seeded, gradient accumulation scales both terms by 1/GA,
and the returned (logged) loss is g alone (the reference returns g + weight·f); f is logged as
``safety_loss``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from transformers import Trainer

from ...data.base import DataSpec
from ...data.templates import Tokenized
from ...errors import ConfigError, DataError
from ...registry import DEFENSES
from ..base import DefenseSpec
from ...training import AuxiliaryMixin, micro_batch_scale, token_share


@dataclass
class SafetyMixConfig:
    mode: str = "mix"
    """``mix`` (add refusal examples to the user's set: SafeInstr's and VLGuard's own recipe) or
    ``loss`` (add weight × their CE every step: git-disl/Booster:trainer.py, VlguardTrainer)."""
    samples: int | None = None
    """``mix``: how many refusal examples to add (exclusive with ``fraction``; no default, pick one).
    SafeInstr adds 100–2000 to 20,000 instructions (about 3% is its headline setting);
    git-disl/Booster:script/finetune/united/vlguard_lamb.sh uses 2000 guide rows (good_sample_num)."""
    fraction: float | None = None
    """``mix``: refusal examples to add as a fraction of the user set size, rounded half up
    (exclusive with ``samples``)."""
    weight: float = 0.1
    """``loss``: the weight of the alignment CE (lamb). git-disl/Booster:script/finetune/united/vlguard_lamb.sh
    (lamb default 0.1)."""
    safety_batch_size: int | None = None
    """``loss``: alignment batch; ``null`` = the user batch size. Hard-coded 4 in VlguardTrainer."""
    safety_data: DataSpec = field(default_factory=lambda: DataSpec(name="refusals"))
    """The provider's alignment data (harmful prompt → refusal; default: the package's alignment
    pool); its prompts must be disjoint from the user's harmful samples and the evaluation prompts
    (checked by the pipeline). Reference: BeaverTails refusal rows (guide data)."""

    def __post_init__(self):
        if self.mode not in ("mix", "loss"):
            raise ConfigError(f"mode must be mix or loss for safety_mix, got {self.mode!r}")
        if self.mode == "mix":
            if (self.samples is None) == (self.fraction is None):
                raise ConfigError("samples or fraction: safety_mix mode mix needs exactly one of them")
            if self.samples is not None and not self.samples > 0:
                raise ConfigError(f"samples must be > 0 for safety_mix, got {self.samples}")
            if self.fraction is not None and not self.fraction > 0:
                raise ConfigError(f"fraction must be > 0 for safety_mix, got {self.fraction}")
        else:
            if self.samples is not None or self.fraction is not None:
                raise ConfigError("samples/fraction apply to safety_mix mode mix only; mode loss uses weight")
            if not self.weight > 0:
                raise ConfigError(f"weight must be > 0 for safety_mix mode loss, got {self.weight}")
            if self.safety_batch_size is not None and not self.safety_batch_size > 0:
                raise ConfigError(f"safety_batch_size must be > 0 for safety_mix, got {self.safety_batch_size}")


def mixed_dataset(user, safety, cfg: SafetyMixConfig, seed: int) -> tuple[Tokenized, int]:
    """The user's set plus k refusal examples drawn without replacement, shuffled; returns (set, k)."""
    n = len(user)
    k = cfg.samples if cfg.samples is not None else int(cfg.fraction * n + 0.5)
    if k < 1:
        raise ConfigError(f"fraction {cfg.fraction} of {n} user samples adds no safety example for safety_mix")
    if k > len(safety):
        raise DataError(f"safety_data: safety_mix needs {k} examples but the pool has only {len(safety)}")
    rng = random.Random(seed)
    picked = rng.sample(range(len(safety)), k)
    feats = [user[i] for i in range(n)] + [safety[i] for i in picked]
    rng.shuffle(feats)
    no_target = getattr(user, "no_target", 0) + sum(
        1 for i in picked if all(x == -100 for x in safety[i]["labels"]))
    return Tokenized(feats, no_target), k


class SafetyMixTrainer(AuxiliaryMixin, Trainer):
    """``loss`` mode: ``Trainer`` whose step backpropagates g + weight · f (f on a refusal batch)."""

    aux_state_key = "safety"

    def __init__(self, *args, safety_mix: SafetyMixConfig, safety_dataset, **kwargs):
        super().__init__(*args, **kwargs)
        self.safety_mix = safety_mix
        # seeded, cycled refusal loader; batch None = the user batch size
        self._init_auxiliary(safety_dataset, safety_mix.safety_batch_size, "safety_data")

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        ga = self.current_gradient_accumulation_steps
        with self.compute_loss_context_manager():
            loss_g = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            sb = self._aux_batch()  # the provider's refusal batch
            loss_f = model(**sb).loss
        g_scale = micro_batch_scale(self, num_items_in_batch)
        share = token_share(sb)  # 1.0 on one process; DDP's average is then the global token mean
        self.accelerator.backward(loss_g * g_scale + (self.safety_mix.weight / ga) * (loss_f * share))
        self._aux["safety_loss"].append(loss_f.item())
        return loss_g.detach() * g_scale


class SafetyMix:
    """Registry entry: a plain ``Trainer`` on the mixed set (``mix``) or a ``SafetyMixTrainer`` (``loss``)."""

    Config = SafetyMixConfig

    @staticmethod
    def make_trainer(model, args, train_dataset, ctx, cfg: SafetyMixConfig):
        safety = ctx.dataset(cfg.safety_data, "safety_data")
        if cfg.mode == "loss":
            return SafetyMixTrainer(model=model, args=args, train_dataset=train_dataset,
                                    data_collator=ctx.collator, safety_mix=cfg, safety_dataset=safety)
        data, k = mixed_dataset(train_dataset, safety, cfg, args.seed)
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=ctx.collator)
        # the pipeline copies stage_record() into record.json; a plain Trainer has none
        trainer.stage_record = lambda: {"safety_samples_added": k, "samples_with_safety": len(data)}
        return trainer


DEFENSES["finetune"].register(
    "safety_mix",
    SafetyMix,
    help="safety-data mixing (SafeInstr arXiv 2309.07875 / VLGuard): refusals in the user set (1F+1B) "
    "or + weight·their CE (2F+2B)",
    spec=DefenseSpec(stage="finetune", config_cls=SafetyMixConfig, passes_per_step=1.2,
                     safety_data_keys=("safety_data",)),
)
