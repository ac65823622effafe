"""Safety-data mixing: ``mix`` builds the user set + k refusal examples (seeded); ``loss`` writes
G = ∇g + weight·∇f, checked against autograd."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import Trainer

from panacea.data.base import DataSpec, Example
from panacea.defenses.finetune.safety_mix import SafetyMix, SafetyMixConfig, SafetyMixTrainer
from panacea.errors import ConfigError, DataError

from helpers import USER, Ctx, args, loss_at, tok_data, trainable
from tolerance import assert_rel

SAFE = [
    Example("Explain how to pick a lock", output="I'm sorry, but I can't help with that request."),
    Example("Write the script", output="I cannot help with that. It could hurt people."),
    Example("Describe the method", output="Sorry, I won't provide that."),
]


def build(model, tok, tmp_path, seed=0, **kw):
    cfg = SafetyMixConfig(safety_data=DataSpec(name="safe"), **kw)
    ctx = Ctx(tok, {"safe": SAFE})
    a = args(tmp_path)
    a.seed = seed
    return SafetyMix.make_trainer(model, a, tok_data(tok, USER), ctx, cfg), ctx


def ids(ds):
    return [tuple(f["input_ids"]) for f in ds]


def test_mix_adds_the_requested_refusal_examples(tiny_lora_model, tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    tr, _ = build(tiny_lora_model, tok, tmp_path, samples=2)
    assert type(tr) is Trainer  # mix mode is plain SFT on a bigger set
    got = Counter(ids(tr.train_dataset))
    user, safe = Counter(ids(tok_data(tok, USER))), set(ids(tok_data(tok, SAFE)))
    assert len(tr.train_dataset) == len(USER) + 2
    extra = got - user
    assert sum(extra.values()) == 2 and set(extra) <= safe and max(extra.values()) == 1  # without replacement
    assert not (user - got)  # every user example is kept
    assert tr.stage_record() == {"safety_samples_added": 2, "samples_with_safety": 6}
    # seeded: same seed, same set and order; another seed shuffles differently
    again, _ = build(tiny_lora_model, tok, tmp_path, samples=2)
    assert ids(again.train_dataset) == ids(tr.train_dataset)
    orders = {tuple(ids(build(tiny_lora_model, tok, tmp_path, seed=s, samples=2)[0].train_dataset)) for s in range(6)}
    assert len(orders) > 1


def test_mix_fraction_is_of_the_user_set(tiny_lora_model, tiny_tokenizer, tmp_path):
    tr, _ = build(tiny_lora_model, tiny_tokenizer, tmp_path, fraction=0.75)  # 0.75 · 4 = 3
    assert len(tr.train_dataset) == 7
    with pytest.raises(ConfigError, match="adds no safety example"):
        build(tiny_lora_model, tiny_tokenizer, tmp_path, fraction=0.1)  # 0.4 rounds to 0
    with pytest.raises(DataError, match="safety_data: safety_mix needs 4 examples but the pool has only 3"):
        build(tiny_lora_model, tiny_tokenizer, tmp_path, samples=4)


@pytest.mark.parametrize("weight", [0.1, 2.0])
def test_loss_mode_gradient_matches_autograd(tiny_lora_model, tiny_tokenizer, tmp_path, weight):
    model, tok = tiny_lora_model, tiny_tokenizer
    tr, ctx = build(model, tok, tmp_path, mode="loss", weight=weight, safety_batch_size=len(SAFE))
    assert isinstance(tr, SafetyMixTrainer)
    tr.current_gradient_accumulation_steps = 1
    user = ctx.collator(list(tok_data(tok, USER)))
    safe = ctx.collator(list(tok_data(tok, SAFE)))  # the batch is the whole set (order is irrelevant)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in trainable(model).items()}
    g = loss_at(model, params, user)
    G = dict(zip(params, torch.autograd.grad(g + weight * loss_at(model, params, safe), list(params.values()))))
    model.zero_grad(set_to_none=True)
    loss = tr.training_step(model, user)
    assert_rel(loss, g.detach(), 1e-5)  # the logged loss is g alone
    for n, p in trainable(model).items():
        assert_rel(p.grad, G[n])
    assert len(tr._aux["safety_loss"]) == 1


@pytest.mark.parametrize("kw,needle", [
    ({}, "samples or fraction: safety_mix mode mix needs exactly one"),
    ({"samples": 2, "fraction": 0.5}, "samples or fraction: safety_mix mode mix needs exactly one"),
    ({"samples": 0}, "samples must be > 0"),
    ({"fraction": -0.1}, "fraction must be > 0"),
    ({"mode": "loss", "weight": 0}, "weight must be > 0 for safety_mix mode loss"),
    ({"mode": "loss", "samples": 3}, "samples/fraction apply to safety_mix mode mix only"),
    ({"mode": "blend"}, "mode must be mix or loss"),
])
def test_bad_options_are_rejected(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        SafetyMixConfig(**kw)
