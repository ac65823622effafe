"""Gradient accumulation in the multi-pass trainers, through the real ``Trainer.train()`` loop.

The reference trainers zero and overwrite ``.grad`` inside ``training_step``, so with
``gradient_accumulation_steps > 1`` only the last micro-batch counted
(docs/algorithms.md#shared-rules, rule 4). Here one optimizer step with GA = 2 × batch 2 must equal
one step with GA = 1 × batch 4 on the same four user examples. The harmful set has exactly
``harmful_batch_size`` rows, so every micro-step sees the same harmful batch and the λ-terms
(averaged over micro-steps) are the same in both runs; the user/alignment term must be
token-weighted over the whole accumulation window. Plain SGD makes the update linear in the
gradient, so a mis-scaled term cannot hide behind Adam's normalisation.
"""

from __future__ import annotations

import copy

import pytest
import torch

from panacea.data.base import DataSpec

from helpers import HARM, USER, Ctx, args, tok_data, trainable
from tolerance import assert_rel


def _booster():
    from panacea.defenses.alignment.booster import Booster, BoosterConfig

    return Booster, BoosterConfig(lam=0.5, alpha=0.3, harmful_batch_size=len(HARM), harmful_data=DataSpec(name="harm"))


def _panacea():
    from panacea.defenses.finetune.panacea import Panacea, PanaceaConfig

    return Panacea, PanaceaConfig(rho=0.5, lam=0.5, harmful_loss_clamp=100.0, harmful_batch_size=len(HARM),
                                  harmful_data=DataSpec(name="harm"), apply_epsilon=False, save_epsilon=False)


METHODS = {"booster": _booster, "panacea": _panacea}


def one_step(model, tok, tmp_path, method, bs, ga):
    entry, cfg = METHODS[method]()
    ctx = Ctx(tok, {"harm": HARM})
    a = args(tmp_path, per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=1,
             learning_rate=0.1, optim="sgd", max_grad_norm=0.0, train_sampling_strategy="sequential")
    tr = entry.make_trainer(model, a, tok_data(tok, USER), ctx, cfg)
    tr.train()
    return {n: p.detach().clone() for n, p in trainable(model).items()}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_micro_batches_equal_one_double_batch(tiny_lora_model, tiny_tokenizer, tmp_path, method):
    start = {n: p.detach().clone() for n, p in trainable(tiny_lora_model).items()}
    twin = copy.deepcopy(tiny_lora_model)
    ga2 = one_step(tiny_lora_model, tiny_tokenizer, tmp_path / "ga2", method, bs=2, ga=2)
    ga1 = one_step(twin, tiny_tokenizer, tmp_path / "ga1", method, bs=4, ga=1)
    moved = sum(float((ga1[n] - start[n]).abs().sum()) for n in start)
    assert moved > 1e-4  # the step did something
    for n in start:
        assert_rel(ga2[n], ga1[n])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_low_precision_weights_are_restored_exactly(tiny_lora_model, tiny_tokenizer, tmp_path, method):
    """bf16 weights: w + δ − δ ≠ w in bf16, so the perturbation must be undone from a saved copy."""
    model = tiny_lora_model.to(torch.bfloat16)
    entry, cfg = METHODS[method]()
    ctx = Ctx(tiny_tokenizer, {"harm": HARM})
    tr = entry.make_trainer(model, args(tmp_path), tok_data(tiny_tokenizer, USER), ctx, cfg)
    tr.current_gradient_accumulation_steps = 1
    before = {n: p.detach().clone() for n, p in trainable(model).items()}
    tr.training_step(model, ctx.collator(list(tok_data(tiny_tokenizer, USER))))
    for n, p in trainable(model).items():
        assert torch.equal(p.detach(), before[n]), n
        assert p.grad is not None and p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all()
