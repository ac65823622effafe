"""RepNoise's step against an independent autograd computation of its loss (docs/algorithms.md#repnoise):

    L = CE(align) + β (1/L) Σ_l MMD(a_l[answer tokens], N(0, I)) − α log(T/(L+2) + 1)
    T = CE(logits) + Σ_{i<L} CE(lm_head(norm(h_i))) + CE(lm_head(h_L)),   h_L already normed

The reference recomputes everything from ``model(..., output_hidden_states=True)`` through
``torch.func.functional_call``, hooks the MLPs by their module paths with plain
``register_forward_hook``, takes CE on the full logits with ``ignore_index=-100`` and has its own
MMD (explicit pairwise differences); it shares no code with the trainer. The noise is drawn from
the documented generator seed ``1_000_003 · seed + global_step``, one N×H draw per layer.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from panacea.data.base import DataSpec, Example
from panacea.defenses.alignment.repnoise import RepNoise, RepNoiseConfig
from panacea.errors import ConfigError
from panacea.hooks import hooked_modules_count, resolve

from helpers import HARM, USER, Ctx, args, loss_at, tok_data, trainable
from tolerance import assert_rel

A = [Example("Analyze the sentiment", input="The film was wonderful.", output="positive"),
     Example("Analyze the sentiment", input="The plot was boring.", output="negative")]
B = [Example("Analyze the sentiment", input="The acting was great, really.", output="positive"),
     Example("Analyze the sentiment", input="The soundtrack was lovely but long.", output="negative")]


@pytest.fixture
def model(tiny_lora_model):
    """The tiny model with a non-trivial final-norm weight: with the init weight (ones) RMSNorm is
    idempotent, and normalising h_L twice would go unnoticed."""
    torch.manual_seed(5)
    with torch.no_grad():
        tiny_lora_model.base_model.model.model.norm.weight.normal_(1.0, 0.5)
    return tiny_lora_model


def make(model, tok, tmp_path, seed=0, **kw):
    kw.setdefault("harmful_batch_size", len(HARM))  # the whole set: every step sees the same rows
    cfg = RepNoiseConfig(harmful_data=DataSpec(name="harm"), **kw)
    tr = RepNoise.make_trainer(model, args(tmp_path), tok_data(tok, USER), Ctx(tok, {"harm": HARM}), cfg)
    tr.args.seed = seed  # helpers.args always seeds 0
    tr.current_gradient_accumulation_steps = 1
    return tr


def collate(tok, exs):
    return Ctx(tok).collator(list(tok_data(tok, exs)))


def n_tokens(batch):
    return int((batch["labels"][:, 1:] != -100).sum())


def mmd_ref(x, y):
    z = torch.cat([x, y])
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    n = z.shape[0]
    b = d2[~torch.eye(n, dtype=torch.bool)].mean().detach()
    K = sum(torch.exp(-d2 / (b * 2.0**e)) for e in (-2, -1, 0, 1, 2))
    m = x.shape[0]
    return K[:m, :m].mean() + K[m:, m:].mean() - 2 * K[:m, m:].mean()


def reference(model, align, harm, alpha, beta, noise_seed, lens_tokens=None):
    """(G, parts) for L above, by plain autograd. ``lens_tokens``: the logit-lens terms over a
    uniform subset of that many answer positions, drawn first from the step's generator."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in trainable(model).items()}
    inner = model.base_model.model
    mlps = [layer.mlp for layer in inner.model.layers]
    acts = []
    handles = [m.register_forward_hook(lambda m, a, o: acts.append(o)) for m in mlps]
    try:
        out = functional_call(model, params, args=(), kwargs={**harm, "output_hidden_states": True})
    finally:
        for h in handles:
            h.remove()
    labels = harm["labels"]
    V = out.logits.shape[-1]

    def ce(logits):
        return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)

    hs = out.hidden_states
    assert len(hs) == len(mlps) + 1
    gen = torch.Generator().manual_seed(noise_seed)
    if lens_tokens is None:
        lens = [ce(inner.lm_head(inner.model.norm(h))) for h in hs[:-1]]
    else:  # answer positions t (predicting labels[t + 1]) in row-major order, then a subset
        pos = (labels[:, 1:] != -100).nonzero()
        pos = pos[torch.randperm(len(pos), generator=gen)[:lens_tokens]]
        tgt = labels[pos[:, 0], pos[:, 1] + 1]
        lens = [F.cross_entropy(inner.lm_head(inner.model.norm(h[pos[:, 0], pos[:, 1]])), tgt) for h in hs[:-1]]
    terms = [ce(out.logits), *lens, ce(inner.lm_head(hs[-1]))]  # hs[-1] is not normed again
    T = sum(terms) / len(terms)
    mask = (labels != -100) & harm["attention_mask"].bool()
    mmds = []
    for a in acts:
        x = a[mask]
        mmds.append(mmd_ref(x, torch.randn(x.shape, generator=gen)))
    mmd = sum(mmds) / len(mmds)
    ce_align = loss_at(model, params, align)
    total = ce_align + beta * mmd - alpha * torch.log(T + 1)
    G = torch.autograd.grad(total, list(params.values()))
    parts = {"ce_align": ce_align.item(), "ce_harm": terms[0].item(), "T": T.item(), "mmd": mmd.item()}
    return dict(zip(params, G)), parts


def grads(model):
    return {n: p.grad.clone() for n, p in trainable(model).items()}


def total_abs(g):
    return sum(float(t.abs().sum()) for t in g.values())


@pytest.mark.parametrize("alpha,beta,seed,step", [(0.1, 0.001, 0, 0), (0.5, 100.0, 3, 7)])
def test_written_gradient_matches_autograd(model, tiny_tokenizer, tmp_path, alpha, beta, seed, step):
    tok = tiny_tokenizer
    tr = make(model, tok, tmp_path, seed=seed, alpha=alpha, beta=beta)
    tr.state.global_step = step
    align, harm = collate(tok, USER), collate(tok, HARM)
    G_ref, parts = reference(model, align, harm, alpha, beta, 1_000_003 * seed + step)
    before = {n: p.detach().clone() for n, p in trainable(model).items()}
    model.zero_grad(set_to_none=True)
    loss = tr.training_step(model, align)
    for n, p in trainable(model).items():
        assert_rel(p.grad, G_ref[n])
        assert torch.equal(p.detach(), before[n])
    # the returned loss is the alignment CE; the harmful terms are logged on their own keys
    assert float(loss) == pytest.approx(parts["ce_align"], rel=1e-5)
    assert tr._aux["harmful_loss"] == [pytest.approx(parts["ce_harm"], rel=1e-5)]
    assert tr._aux["harmful_loss_layers_mean"] == [pytest.approx(parts["T"], rel=1e-5)]
    assert tr._aux["mmd"] == [pytest.approx(parts["mmd"], rel=1e-4)]
    assert hooked_modules_count(resolve(model, "mlp_output")) == 0
    # not vacuous: the written gradient is not plain ∇CE(align)
    G_f, _ = reference(model, align, harm, 0.0, 0.0, 0)
    assert total_abs({n: G_ref[n] - G_f[n] for n in G_f}) > 1e-3 * total_abs(G_f)


def test_each_term_moves_the_gradient(model, tiny_tokenizer):
    """At α = 0.5, β = 100 both the noise term and the log-CE term change G by a few percent, far
    above the tolerance of the test above, so its match checks both terms (on the random tiny
    model the MMD gradient is small: the kernels are nearly saturated, hence the large β)."""
    tok = tiny_tokenizer
    align, harm = collate(tok, USER), collate(tok, HARM)
    G, _ = reference(model, align, harm, 0.5, 100.0, 0)
    for a, b in ((0.0, 100.0), (0.5, 0.0)):
        G_without, _ = reference(model, align, harm, a, b, 0)
        assert total_abs({n: G[n] - G_without[n] for n in G}) > 1e-2 * total_abs(G)


def test_last_hidden_state_is_already_normed(model, tiny_tokenizer):
    """transformers 5 returns hidden_states[-1] after model.norm: lm_head(h_L) are the logits and
    normalising again (the reference code's defect) gives different logits."""
    batch = collate(tiny_tokenizer, HARM)
    inner = model.base_model.model
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        torch.testing.assert_close(inner.lm_head(out.hidden_states[-1]), out.logits)
        assert not torch.allclose(inner.lm_head(inner.model.norm(out.hidden_states[-1])), out.logits, atol=1e-3)


def test_noise_is_seeded_per_step(model, tiny_tokenizer, tmp_path):
    """Same optimizer step → same noise (up to float summation order: each draw of the fixed
    harmful set comes in a new shuffled order); next step → new noise."""
    tok = tiny_tokenizer
    tr = make(model, tok, tmp_path, alpha=0.5, beta=100.0)
    align = collate(tok, USER)
    runs = []
    for step in (0, 0, 1):
        tr.state.global_step = step
        model.zero_grad(set_to_none=True)
        tr.training_step(model, align)
        runs.append(grads(model))
    for n in runs[0]:
        assert_rel(runs[1][n], runs[0][n], 1e-5)
    assert total_abs({n: runs[2][n] - runs[0][n] for n in runs[0]}) > 1e-3 * total_abs(runs[0])


def test_gradient_accumulation(model, tiny_tokenizer, tmp_path):
    """GA = 2 over A and B (equal token counts) adds up to the mean of the two single steps; with a
    fixed harmful batch (set size = harmful batch size) and the noise seeded per optimizer step,
    GA 2×bs equals 1×2bs."""
    tok = tiny_tokenizer
    tr = make(model, tok, tmp_path, alpha=0.5, beta=1.0)
    a, b = collate(tok, A), collate(tok, B)
    assert n_tokens(a) == n_tokens(b)
    singles = []
    for m in (a, b):
        model.zero_grad(set_to_none=True)
        tr.training_step(model, m)
        singles.append(grads(model))

    tr.current_gradient_accumulation_steps = 2
    model.zero_grad(set_to_none=True)
    for m in (a, b):
        tr.training_step(model, m, num_items_in_batch=torch.tensor(n_tokens(a) + n_tokens(b)))
    for n, p in trainable(model).items():
        assert_rel(p.grad, (singles[0][n] + singles[1][n]) / 2)
    ga = grads(model)

    tr.current_gradient_accumulation_steps = 1
    model.zero_grad(set_to_none=True)
    tr.training_step(model, collate(tok, A + B))
    for n, p in trainable(model).items():
        assert_rel(p.grad, ga[n])


def test_accumulation_through_the_trainer_loop(tiny_lora_model, tiny_tokenizer, tmp_path):
    """The same through ``Trainer.train()`` (its own num_items_in_batch and global_step): one SGD
    step with GA 2 × batch 2 equals one with GA 1 × batch 4 on the same four examples."""
    finals = []
    for bs, ga in ((2, 2), (4, 1)):
        model = copy.deepcopy(tiny_lora_model)
        cfg = RepNoiseConfig(alpha=0.5, beta=100.0, harmful_batch_size=len(HARM), harmful_data=DataSpec(name="harm"))
        a = args(tmp_path / f"{bs}x{ga}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=1,
                 learning_rate=0.1, optim="sgd", max_grad_norm=0.0, train_sampling_strategy="sequential")
        tr = RepNoise.make_trainer(model, a, tok_data(tiny_tokenizer, USER), Ctx(tiny_tokenizer, {"harm": HARM}), cfg)
        tr.train()
        finals.append({n: p.detach().clone() for n, p in trainable(model).items()})
    start = {n: p.detach() for n, p in trainable(tiny_lora_model).items()}
    assert total_abs({n: finals[1][n] - start[n] for n in start}) > 1e-4
    for n in start:
        assert_rel(finals[0][n], finals[1][n])


def test_bf16_step_is_finite(tiny_lora_model, tiny_tokenizer, tmp_path):
    model = tiny_lora_model.to(torch.bfloat16)
    tr = make(model, tiny_tokenizer, tmp_path)
    tr.training_step(model, collate(tiny_tokenizer, USER))
    for p in trainable(model).values():
        assert p.grad is not None and p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all()


def test_hooks_are_removed_even_when_the_step_raises(model, tiny_tokenizer, tmp_path, monkeypatch):
    tok = tiny_tokenizer
    tr = make(model, tok, tmp_path)
    mlps = resolve(model, "mlp_output")
    (norm,) = resolve(model, "final_norm")
    orig = norm.forward

    def boom(*a, **k):  # the final norm runs after every MLP: the hooks are attached here
        assert hooked_modules_count(mlps) == len(mlps)
        raise RuntimeError("boom in the harmful pass")

    monkeypatch.setattr(norm, "forward", boom)
    with pytest.raises(RuntimeError, match="boom in the harmful pass"):
        tr.training_step(model, collate(tok, USER))
    assert hooked_modules_count(mlps) == 0
    monkeypatch.setattr(norm, "forward", orig)


def test_train_logs_the_auxiliary_losses(model, tiny_tokenizer, tmp_path):
    tr = make(model, tiny_tokenizer, tmp_path, harmful_batch_size=None)
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert logs and all({"harmful_loss", "harmful_loss_layers_mean", "mmd"} <= set(h) for h in logs)
    # None = the alignment batch size
    assert tr._aux_loader.loader.batch_size == tr.args.per_device_train_batch_size


@pytest.mark.parametrize("key", ["alpha", "beta", "harmful_batch_size"])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_options_are_rejected(key, value):
    with pytest.raises(ConfigError, match=re.escape(f"{key} must be > 0 for repnoise, got {value}")):
        RepNoiseConfig(**{key: value})


def test_defaults():
    cfg = RepNoiseConfig()
    assert (cfg.alpha, cfg.beta, cfg.harmful_batch_size) == (0.1, 0.001, None)  # git-disl/Booster repNoise.sh


def test_lens_tokens_subset_matches_autograd(model, tiny_tokenizer, tmp_path):
    """lens_tokens = 3: the layer terms of T use a seeded subset of 3 answer positions (checked
    against the reference drawing the same subset); the result differs from the full lens."""
    tok = tiny_tokenizer
    align, harm = collate(tok, USER), collate(tok, HARM)
    assert n_tokens(harm) > 3
    tr = make(model, tok, tmp_path, seed=2, alpha=0.5, beta=1.0, lens_tokens=3)
    tr.state.global_step = 4
    tr._aux_batch = lambda: harm  # the subset indexes the batch's rows in this order
    G_ref, parts = reference(model, align, harm, 0.5, 1.0, 1_000_003 * 2 + 4, lens_tokens=3)
    model.zero_grad(set_to_none=True)
    tr.training_step(model, align)
    assert tr._aux["harmful_loss_layers_mean"] == [pytest.approx(parts["T"], rel=1e-5)]
    for n, p in trainable(model).items():
        assert_rel(p.grad, G_ref[n])
    _, full = reference(model, align, harm, 0.5, 1.0, 1_000_003 * 2 + 4)
    assert abs(full["T"] - parts["T"]) > 1e-4
    with pytest.raises(ConfigError, match="lens_tokens"):
        RepNoiseConfig(lens_tokens=0)
