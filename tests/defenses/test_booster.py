"""Booster's step against an independent autograd computation of its formula (algorithms.md §4):

    G = ∇[ f(w) + λ h(w) − λ h(w − sg(α ĝ_h(w))) ],   ĝ_h = ∇h/‖∇h‖ (global ℓ2)
"""

from __future__ import annotations

import pytest
import torch

from panacea.data.base import DataSpec
from panacea.defenses.alignment.booster import Booster, BoosterConfig
from panacea.errors import ConfigError

from helpers import HARM, USER, Ctx, args, flat_norm, loss_at, tok_data, trainable


def make(model, tok, tmp_path, **kw):
    cfg = BoosterConfig(harmful_batch_size=len(HARM), harmful_data=DataSpec(name="harm"), **kw)
    ctx = Ctx(tok, {"harm": HARM})
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
        torch.testing.assert_close(p.grad, G_ref[n], rtol=1e-4, atol=1e-7)
        assert torch.equal(p.detach(), before[n])  # the simulated step is undone exactly
    # not vacuous: the λ-terms move the gradient away from ∇f
    params = {n: p.detach().clone().requires_grad_(True) for n, p in trainable(model).items()}
    gf = torch.autograd.grad(loss_at(model, params, align), list(params.values()))
    assert sum(float((p.grad - g).abs().sum()) for p, g in zip(trainable(model).values(), gf)) > 1e-5


@pytest.mark.parametrize("key", ["lam", "alpha", "harmful_batch_size"])
def test_non_positive_options_are_rejected(key):
    with pytest.raises(ConfigError, match=f"{key} must be > 0"):
        BoosterConfig(**{key: 0})
