"""Booster's step against an independent autograd computation of its formula
(docs/algorithms.md#booster):

    G = ∇[ f(w) + λ h(w) − λ h(w − sg(α ĝ_h(w))) ],   ĝ_h = ∇h/‖∇h‖ (global ℓ2)
"""

from __future__ import annotations

import pytest
import torch

from panacea.data.base import DataSpec
from panacea.defenses.alignment.booster import Booster, BoosterConfig
from panacea.errors import ConfigError

from helpers import HARM, HARM6, USER, Ctx, ForwardLog, args, flat_norm, loss_at, same_batch, tok_data, trainable
from tolerance import assert_rel


def make(model, tok, tmp_path, harm=HARM, **kw):
    kw.setdefault("harmful_batch_size", len(harm))
    cfg = BoosterConfig(harmful_data=DataSpec(name="harm"), **kw)
    ctx = Ctx(tok, {"harm": harm})
    tr = Booster.make_trainer(model, args(tmp_path), tok_data(tok, USER), ctx, cfg)
    tr.current_gradient_accumulation_steps = 1
    return tr, ctx


def reference(model, align, harm, lam, alpha):
    params = {n: p.detach().clone().requires_grad_(True) for n, p in trainable(model).items()}
    names = list(params)
    gh = torch.autograd.grad(loss_at(model, params, harm), [params[n] for n in names])
    step = {n: (alpha * g / flat_norm(gh)).detach() for n, g in zip(names, gh)}
    moved = {n: params[n] - step[n] for n in names}
    objective = loss_at(model, params, align) + lam * (loss_at(model, params, harm) - loss_at(model, moved, harm))
    return dict(zip(names, torch.autograd.grad(objective, [params[n] for n in names])))


@pytest.mark.parametrize("lam,alpha", [(5.0, 0.1), (0.5, 1.0)])
def test_written_gradient_matches_autograd(tiny_lora_model, tiny_tokenizer, tmp_path, lam, alpha):
    model, tok = tiny_lora_model, tiny_tokenizer
    tr, ctx = make(model, tok, tmp_path, lam=lam, alpha=alpha)
    align = ctx.collator(list(tok_data(tok, USER)))
    harm = ctx.collator(list(tok_data(tok, HARM)))
    G_ref = reference(model, align, harm, lam, alpha)
    before = {n: p.detach().clone() for n, p in trainable(model).items()}
    model.zero_grad(set_to_none=True)
    tr.training_step(model, align)
    for n, p in trainable(model).items():
        assert_rel(p.grad, G_ref[n])
        assert torch.equal(p.detach(), before[n])  # the simulated step is undone exactly
    # not vacuous: the λ-terms move the gradient away from ∇f
    params = {n: p.detach().clone().requires_grad_(True) for n, p in trainable(model).items()}
    gf = torch.autograd.grad(loss_at(model, params, align), list(params.values()))
    assert sum(float((p.grad - g).abs().sum()) for p, g in zip(trainable(model).values(), gf)) > 1e-5


@pytest.mark.parametrize("key", ["lam", "alpha", "harmful_batch_size"])
def test_non_positive_options_are_rejected(key):
    with pytest.raises(ConfigError, match=f"{key} must be > 0"):
        BoosterConfig(**{key: 0})


def test_stepped_pass_reuses_the_batch_of_h_w(tiny_lora_model, tiny_tokenizer, tmp_path):
    """A defender set of two batches: pass 2 (h after the simulated step) runs on exactly the
    batch of pass 1 (h at w), and the written gradient equals the reference on that batch, over two
    steps that draw the set's two halves."""
    model, tok = tiny_lora_model, tiny_tokenizer
    tr, ctx = make(model, tok, tmp_path, harm=HARM6, harmful_batch_size=3, lam=0.5, alpha=1.0)
    align = ctx.collator(list(tok_data(tok, USER)))
    seen = []
    for _ in range(2):
        log = ForwardLog(model)
        model.zero_grad(set_to_none=True)
        tr.training_step(model, align)
        log.close()
        assert len(log.batches) == 3  # harmful at w, harmful after the step, alignment at w
        harm = log.batches[0]
        assert same_batch(harm, log.batches[1]), "pass 2 must reuse pass 1's harmful batch"
        assert same_batch(log.batches[2], align) and harm["input_ids"].shape[0] == 3
        G_ref = reference(model, align, harm, 0.5, 1.0)
        for n, p in trainable(model).items():
            assert_rel(p.grad, G_ref[n])
        seen.append(harm["input_ids"])
        with torch.no_grad():
            for p in trainable(model).values():
                p.sub_(0.05 * p.grad)
    assert not torch.equal(seen[0], seen[1])
