"""Vaccine's step against an independent autograd computation of its formula
(docs/algorithms.md#vaccine):

    e_l = ρ ∇_{o_l} f / (‖∇_o f‖ + 1e-7),   G = ∇_w f(w; E)

The reference below hooks the tiny Llama's attention modules by their module paths with plain
``register_forward_hook`` and evaluates the loss with ``torch.func.functional_call`` on a copy of
the trainable tensors; it shares no code with the trainer (nor with ``panacea.hooks``).
"""

from __future__ import annotations

import re

import pytest
import torch

from panacea.data.base import Example
from panacea.defenses.alignment.vaccine import Vaccine, VaccineConfig
from panacea.errors import ConfigError
from panacea.hooks import hooked_modules_count, resolve

from helpers import USER, Ctx, args, flat_norm, loss_at, tok_data, trainable
from tolerance import assert_rel

# two micro-batches with the same answers, hence the same number of answer tokens
A = [Example("Analyze the sentiment", input="The film was wonderful.", output="positive"),
     Example("Analyze the sentiment", input="The plot was boring.", output="negative")]
B = [Example("Analyze the sentiment", input="The acting was great, really.", output="positive"),
     Example("Analyze the sentiment", input="The soundtrack was lovely but long.", output="negative")]


def make(model, tok, tmp_path, **kw):
    tr = Vaccine.make_trainer(model, args(tmp_path), tok_data(tok, USER), Ctx(tok), VaccineConfig(**kw))
    tr.current_gradient_accumulation_steps = 1
    return tr


def collate(tok, exs):
    return Ctx(tok).collator(list(tok_data(tok, exs)))


def n_tokens(batch):
    return int((batch["labels"][:, 1:] != -100).sum())


def attention_modules(model):
    return [layer.self_attn for layer in model.base_model.model.model.layers]


def reference(model, batch, rho):
    """(G, E, f(w), f(w; E)) by plain autograd."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in trainable(model).items()}
    mods = attention_modules(model)
    outs = []
    handles = [m.register_forward_hook(lambda m, a, o: outs.append(o[0])) for m in mods]
    try:
        loss = loss_at(model, params, batch)
    finally:
        for h in handles:
            h.remove()
    go = torch.autograd.grad(loss, outs)
    E = [(rho * g / (flat_norm(go) + 1e-7)).detach() for g in go]
    handles = [m.register_forward_hook(lambda m, a, o, e=e: (o[0] + e, *o[1:])) for m, e in zip(mods, E)]
    try:
        loss_p = loss_at(model, params, batch)
    finally:
        for h in handles:
            h.remove()
    G = torch.autograd.grad(loss_p, list(params.values()))
    return dict(zip(params, G)), E, loss.item(), loss_p.item()


def spy_perturbation(tr, monkeypatch):
    seen = []
    orig = tr._perturbation

    def spy(*a, **k):
        loss, E = orig(*a, **k)
        seen.append(E)
        return loss, E

    monkeypatch.setattr(tr, "_perturbation", spy)
    return seen


@pytest.mark.parametrize("rho", [2.0, 0.3])
def test_written_gradient_matches_autograd(tiny_lora_model, tiny_tokenizer, tmp_path, monkeypatch, rho):
    model, tok = tiny_lora_model, tiny_tokenizer
    tr = make(model, tok, tmp_path, rho=rho)
    batch = collate(tok, USER)
    G_ref, E_ref, f_ref, fp_ref = reference(model, batch, rho)
    before = {n: p.detach().clone() for n, p in trainable(model).items()}
    seen = spy_perturbation(tr, monkeypatch)
    model.zero_grad(set_to_none=True)
    loss = tr.training_step(model, batch)
    for n, p in trainable(model).items():
        assert_rel(p.grad, G_ref[n])
        assert torch.equal(p.detach(), before[n])  # Vaccine never moves the weights
    (E,) = seen
    for e, r in zip(E, E_ref):
        assert_rel(e, r)
    assert float(flat_norm(E)) == pytest.approx(rho, rel=1e-5)  # ‖E‖ = ρ, global over layers
    # the returned loss is the unperturbed f(w); the perturbed one is logged on its own key
    assert float(loss) == pytest.approx(f_ref, rel=1e-5)
    assert tr._aux["perturbed_loss"] == [pytest.approx(fp_ref, rel=1e-5)]
    assert fp_ref > f_ref  # E is an ascent direction
    # not vacuous: the perturbation moves the gradient away from plain ∇f
    params = {n: p.detach().clone().requires_grad_(True) for n, p in trainable(model).items()}
    gf = torch.autograd.grad(loss_at(model, params, batch), list(params.values()))
    diff = sum(float((p.grad - g).abs().sum()) for p, g in zip(trainable(model).values(), gf))
    assert diff > 1e-3 * sum(float(g.abs().sum()) for g in gf)
    assert hooked_modules_count(resolve(model, "attn_output")) == 0


def test_gradient_accumulation_adds_micro_batches(tiny_lora_model, tiny_tokenizer, tmp_path):
    """GA = 2 over A and B (equal token counts): .grad = (G_A + G_B)/2, each G_X with its own E_X.

    GA 2×bs is *not* 1×2bs for Vaccine in general: E is the worst case for the batch it is computed
    on, with ‖E‖ = ρ over that batch. Two micro-batches each get their own E of norm ρ (their own
    normalisation, so about √2 more perturbation per sample than one E of norm ρ spread over the
    2bs samples, and a different split of it between samples). Equality must hold only when both
    micro-batches are the same batch A: GA 2×A = 1×A.
    """
    model, tok = tiny_lora_model, tiny_tokenizer
    tr = make(model, tok, tmp_path, rho=2.0)
    a, b = collate(tok, A), collate(tok, B)
    assert n_tokens(a) == n_tokens(b)
    G_a, *_ = reference(model, a, 2.0)
    G_b, *_ = reference(model, b, 2.0)

    tr.current_gradient_accumulation_steps = 2
    model.zero_grad(set_to_none=True)
    for m in (a, b):
        tr.training_step(model, m, num_items_in_batch=torch.tensor(n_tokens(a) + n_tokens(b)))
    for n, p in trainable(model).items():
        assert_rel(p.grad, (G_a[n] + G_b[n]) / 2)
    ga_ab = {n: p.grad.clone() for n, p in trainable(model).items()}

    # the same micro-batch twice: GA 2×A = 1×A
    model.zero_grad(set_to_none=True)
    for _ in range(2):
        tr.training_step(model, a, num_items_in_batch=torch.tensor(2 * n_tokens(a)))
    for n, p in trainable(model).items():
        assert_rel(p.grad, G_a[n])

    # and 1×(A ∪ B) differs from GA 2×bs (documented above, checked so the claim stays true)
    tr.current_gradient_accumulation_steps = 1
    model.zero_grad(set_to_none=True)
    tr.training_step(model, collate(tok, A + B))
    diff = sum(float((p.grad - ga_ab[n]).abs().sum()) for n, p in trainable(model).items())
    assert diff > 1e-4 * sum(float(g.abs().sum()) for g in ga_ab.values())


def test_hooks_are_removed_even_when_the_step_raises(tiny_lora_model, tiny_tokenizer, tmp_path, monkeypatch):
    model, tok = tiny_lora_model, tiny_tokenizer
    tr = make(model, tok, tmp_path)
    attn = resolve(model, "attn_output")
    batch = collate(tok, USER)
    tr.training_step(model, batch)
    assert hooked_modules_count(attn) == 0

    # make the final norm raise in pass 2, while the perturbation hooks are attached
    (norm,) = resolve(model, "final_norm")
    calls = {"n": 0}
    orig = norm.forward

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            assert hooked_modules_count(attn) == len(attn)
            raise RuntimeError("boom in pass 2")
        return orig(*a, **k)

    monkeypatch.setattr(norm, "forward", boom)
    with pytest.raises(RuntimeError, match="boom in pass 2"):
        tr.training_step(model, batch)
    assert calls["n"] == 2
    assert hooked_modules_count(attn) == 0


def test_bf16_step_is_finite(tiny_lora_model, tiny_tokenizer, tmp_path):
    model = tiny_lora_model.to(torch.bfloat16)
    tr = make(model, tiny_tokenizer, tmp_path)
    before = {n: p.detach().clone() for n, p in trainable(model).items()}
    tr.training_step(model, collate(tiny_tokenizer, USER))
    for n, p in trainable(model).items():
        assert torch.equal(p.detach(), before[n])
        assert p.grad is not None and p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all()


def test_train_logs_the_perturbed_loss(tiny_lora_model, tiny_tokenizer, tmp_path):
    tr = make(tiny_lora_model, tiny_tokenizer, tmp_path)
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert logs and all("perturbed_loss" in h for h in logs)


@pytest.mark.parametrize("rho", [0, -1.5])
def test_non_positive_rho_is_rejected(rho):
    with pytest.raises(ConfigError, match=re.escape(f"rho must be > 0 for vaccine, got {rho}")):
        VaccineConfig(rho=rho)


def test_default_rho():
    assert VaccineConfig().rho == 2.0  # git-disl/Vaccine README: sbatch Vaccine.sh 2
