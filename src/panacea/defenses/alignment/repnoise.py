"""RepNoise (arXiv 2405.14577): push the harmful representations towards Gaussian noise.

    L = CE(x_align)                                                        (the Trainer's loss)
        + β · (1/L) Σ_l MMD( a_l(x_harm)[answer tokens], N(0, I) samples of the same shape )
        − α · log( T / (L + 2) + 1 ),
    T = CE(logits(x_harm)) + Σ_{i=0..L} CE(lm_head(final_norm(h_i(x_harm))))
    G = ∇_w L

as implemented in ``domenicrosati/representation-noising`` and repeated in
``git-disl/Booster:loss_func/repnoise_loss.py`` / ``w-yibo/Panacea`` (docs/algorithms.md#repnoise),
with the published defects fixed. ``a_l`` is the output of the MLP of decoder layer l
(``mlp_output`` anchor), ``h_0 … h_L`` the ``output_hidden_states`` of the harmful forward
(embeddings, then each layer), decoded by the logit lens. Every CE is the mean next-token
cross-entropy over the harmful *answer* tokens (labels ≠ −100). The MMD uses 5 Gaussian kernels with
bandwidths b·2^(k−2), k = 0…4, around b = the mean pairwise squared distance of the pooled samples
(detached), as the reference; the noise comes from a generator seeded with
``1_000_003 · args.seed + state.global_step``, so the micro-steps of one optimizer step share it.

The CE terms, counted: transformers already applies the final norm to ``h_L`` (``hidden_states[-1]``
is ``last_hidden_state``; checked for Llama in transformers 5 by the tests), so ``lm_head(h_L)``
*are* the model's logits, and the i = L term is computed as CE(logits) instead of
``lm_head(norm(norm(h_L)))`` as the reference does (using the real logits is right whether or not
a family returns h_L normed). The i = 0…L−1 terms go through ``final_norm`` and ``lm_head``.
T therefore has L + 2 terms — CE(logits) twice (the published objective's explicit term and its
i = L logit-lens term) plus L logit-lens terms — and is divided by L + 2.

Passes per step: harmful forward (all hidden states, MLP outputs hooked) and its backward, then
the alignment forward and its backward (two backward passes instead of one through both graphs:
the same work, but the harmful graph is freed before the alignment forward).

Deliberate departures from the reference code (docs/algorithms.md#repnoise and
docs/algorithms.md#shared-rules):
  * T is divided by its number of terms, L + 2, not by ``len(hidden_states)`` = L + 1
    (domenicrosati/representation-noising issue #6);
  * the last hidden state is not normed a second time (see above);
  * masks come from the real answer spans (labels ≠ −100) and the attention mask, not from
    token inequality between unpaired harmful and harmless samples (which kept prompt tokens);
    each CE uses ``ignore_index = −100`` instead of multiplying logits and labels by the mask
    (which added a constant log|V| per masked position); the alignment term is the Trainer's
    loss on the refusal answers;
  * the MMD compares answer-token activations (one sample per token, hidden size features) with
    as many N(0, I) samples, instead of per-sequence flattened activations multiplied by a mask
    (whose features depend on padding width and token position);
  * only the MLP outputs are hooked, inside a ``with`` block that removes the hooks in
    ``finally`` (the reference hooks every module and keeps every output alive); module paths
    come from the per-architecture anchor map, not LLaMA-only strings; no module-level device;
  * the harmful batch comes from a seeded, cycled loader whose batch size is a config field;
  * gradient accumulation adds each micro-batch's G (alignment term token-weighted like the
    Trainer's loss, harmful terms scaled by 1/GA) into ``.grad``;
  * the alignment CE is the returned (logged) loss; the harmful CE, the averaged CE terms and
    the MMD are logged under their own keys;
  * on several processes (DDP, FSDP2) each computes the harmful objective on its own share of the
    harmful batch and the gradients are averaged over processes (what DDP does with any
    per-process loss; ``panacea.training.process_gradients``). The MMD and the log term do not
    split over examples, so N processes × b is the mean of N objectives, not one objective on N·b.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import Trainer

from ...data.base import DataSpec
from ...errors import ConfigError
from ...hooks import first_output, forward_hooks, resolve
from ...registry import DEFENSES
from ..base import DefenseSpec
from ...training import (AuxiliaryMixin, accumulate_grads, micro_batch_scale, process_gradients, process_mean,
                         require_gradient_access)


@dataclass
class RepNoiseConfig:
    alpha: float = 0.1
    """α, weight of −log(harmful CE + 1). git-disl/Booster:script/alignment/repNoise.sh
    (``alpha=0.1``, passed as ``--rho``), the Booster paper's RepNoise baseline.
    ``w-yibo/Panacea:script/alignment/repnoise.sh`` uses α = 0.02."""
    beta: float = 0.001
    """β, weight of the MMD term. git-disl/Booster:script/alignment/repNoise.sh (``beta=0.001``,
    passed as ``--lamb``). ``w-yibo/Panacea:script/alignment/repnoise.sh`` uses β = 0.1."""
    harmful_batch_size: int | None = None
    """Harmful batch; ``None`` = the alignment batch size (``per_device_train_batch_size``), as the
    reference draws a harmful batch of the training batch's size (5 in both released scripts)."""
    harmful_data: DataSpec = field(default_factory=lambda: DataSpec(name="pyrit_harmful", start=100, n=100))
    """The defender's harmful (prompt, harmful answer) set; disjoint from the evaluation prompts.
    git-disl/Booster: 5000 BeaverTails harmful rows; w-yibo/Panacea: 1000."""
    lens_tokens: int | None = None
    """Answer tokens decoded by the logit lens (the L layer terms of T) per step; ``None`` = every
    answer token, as the reference. The lens costs L full-vocabulary projections per token (on
    SmolLM2-135M: 30 × 49k, most of a RepNoise step on a CPU); a seeded uniform subset of this many
    tokens is an unbiased estimate of each layer's mean CE at ``lens_tokens``/N of that cost.
    The model's own CE(logits) terms always use every token. Beyond the reference: a CPU knob."""

    def __post_init__(self):
        for k in ("alpha", "beta", "harmful_batch_size"):
            v = getattr(self, k)
            if v is not None and not v > 0:
                raise ConfigError(f"{k} must be > 0 for repnoise, got {v}")
        if self.lens_tokens is not None and (isinstance(self.lens_tokens, bool) or not isinstance(self.lens_tokens, int)
                                             or self.lens_tokens < 1):
            raise ConfigError(f"lens_tokens must be an integer ≥ 1 or null for repnoise, got {self.lens_tokens!r}")


def _mmd(x: torch.Tensor, y: torch.Tensor, n_kernels: int = 5, mul: float = 2.0) -> torch.Tensor:
    """Biased MMD² between the rows of ``x`` and ``y`` with a sum of Gaussian kernels.

    Bandwidths b·mul^(k − n_kernels//2), k = 0…n_kernels−1, around b = the mean squared distance
    over distinct pairs of the pooled samples (detached). Distances via the Gram matrix, so memory
    is (2n)², not (2n)²·d.
    """
    z = torch.cat([x, y]).float()
    sq = z.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)).clamp_min(0.0)
    n = z.shape[0]
    base = d2.detach().sum() / (n * n - n)
    k = sum(torch.exp(-d2 / (base * mul ** (j - n_kernels // 2))) for j in range(n_kernels))
    m = x.shape[0]
    return k[:m, :m].mean() + k[m:, m:].mean() - 2.0 * k[:m, m:].mean()


class RepNoiseTrainer(AuxiliaryMixin, Trainer):
    """``Trainer`` whose step writes G = ∇[CE(align) + β·MMD(harm, noise) − α·log(CE_terms(harm) + 1)]."""

    def __init__(self, *args, repnoise: RepNoiseConfig, harmful_dataset, **kwargs):
        super().__init__(*args, **kwargs)
        self.repnoise = repnoise
        # seeded, cycled harmful loader; batch None = the alignment batch size
        self._init_auxiliary(harmful_dataset, repnoise.harmful_batch_size)
        require_gradient_access(self, "repnoise")

    def _harmful_objective(self, model, hb):
        """β·MMD − α·log(T/(L+2) + 1) on the harmful batch, with (CE(logits), T/(L+2), MMD)."""
        cfg = self.repnoise
        mlps = resolve(model, "mlp_output")
        (norm,) = resolve(model, "final_norm")
        (head,) = resolve(model, "lm_head")
        acts = [None] * len(mlps)

        def record(i, module, args, output):
            if acts[i] is None:
                acts[i] = first_output(output)

        with forward_hooks(mlps, record):
            with self.compute_loss_context_manager():
                out = model(**hb, output_hidden_states=True)
        n_layers = len(mlps)
        hs = out.hidden_states
        if len(hs) != n_layers + 1 or any(a is None for a in acts):
            raise RuntimeError(f"repnoise: expected {n_layers + 1} hidden states and {n_layers} MLP outputs, "
                               f"got {len(hs)} and {sum(a is not None for a in acts)}")

        labels = hb["labels"]
        answer = labels != -100  # the real answer spans; padding also from the attention mask
        if "attention_mask" in hb:
            answer = answer & hb["attention_mask"].bool()
        # next-token CE over answer tokens: position t predicts labels[t + 1]
        target_pos = answer[:, 1:]
        targets = labels[:, 1:][target_pos]
        if targets.numel() == 0:
            raise RuntimeError("repnoise: the harmful batch has no answer tokens (truncated? raise model.max_length)")

        # one generator per optimizer step: the micro-steps of a step share the noise (and the
        # lens_tokens subset)
        seed = 1_000_003 * self.args.seed + self.state.global_step
        gen = torch.Generator(device=acts[0].device).manual_seed(seed)

        ce_logits = out.loss  # the model's own CE (ignore_index = −100) on its real logits
        lens_targets, pick = targets, None
        if cfg.lens_tokens is not None and targets.numel() > cfg.lens_tokens:
            pick = torch.randperm(targets.numel(), generator=gen, device=gen.device)[: cfg.lens_tokens]
            pick = pick.to(targets.device)
            lens_targets = targets[pick]
        terms = [ce_logits]
        for h in hs[:-1]:  # logit lens on embeddings and layers 1…L−1 (not yet normed)
            x = h[:, :-1][target_pos]
            lens = head(norm(x if pick is None else x[pick])).float()
            terms.append(F.cross_entropy(lens, lens_targets.to(lens.device)).to(ce_logits.device))
        terms.append(ce_logits)  # i = L: hs[-1] is already final-normed, so lm_head(hs[-1]) = logits
        ce_mean = sum(terms) / len(terms)  # L + 2 terms
        mmd = 0.0
        for a in acts:
            x = a[answer].float()  # one sample per answer token
            noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=torch.float32).to(x.device)
            mmd = mmd + _mmd(x, noise).to(ce_logits.device)
        mmd = mmd / n_layers

        objective = cfg.beta * mmd - cfg.alpha * torch.log(ce_mean + 1.0)
        return objective, ce_logits.detach(), ce_mean.detach(), mmd.detach()

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        params = [p for p in model.parameters() if p.requires_grad]
        ga = self.current_gradient_accumulation_steps

        # harmful forward (MLP outputs, all hidden states) and its backward, which frees that graph
        hb = self._aux_batch()  # the defender's harmful batch
        objective, ce_h, ce_mean, mmd = self._harmful_objective(model, hb)
        grad_h = process_gradients(objective, params, model)  # averaged over processes

        # alignment forward and backward (token-weighted across micro-batches as the Trainer does)
        with self.compute_loss_context_manager():
            loss_f = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        f_scale = micro_batch_scale(self, num_items_in_batch)
        grad_f = process_gradients(loss_f, params, model)
        accumulate_grads(params, (a * f_scale + b / ga for a, b in zip(grad_f, grad_h)))  # GA > 1 adds micro-batches

        self._aux["harmful_loss"].append(process_mean(ce_h).item())
        self._aux["harmful_loss_layers_mean"].append(process_mean(ce_mean).item())
        self._aux["mmd"].append(process_mean(mmd).item())
        return loss_f.detach() * f_scale


RepNoise = DEFENSES["alignment"].register_trainer(  # the registry entry
    "repnoise", RepNoiseTrainer,
    help="RepNoise (arXiv 2405.14577): push harmful MLP activations to noise, raise harmful CE (2F+2B)",
    spec=DefenseSpec(stage="alignment", config_cls=RepNoiseConfig, passes_per_step=2,
                     defender_data_keys=("harmful_data",)),
)
