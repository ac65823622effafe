"""Post-fine-tuning defenses: random perturbation (docs/algorithms.md#random-perturbation) and
one-shot ascent."""

from __future__ import annotations

import pytest
import torch

from panacea.data.base import DataSpec
from panacea.defenses.post.ascent import Ascent, AscentConfig
from panacea.defenses.post.none import NoDefense
from panacea.defenses.post.random_perturbation import RandomPerturbation, RandomPerturbationConfig
from panacea.errors import ConfigError

from helpers import HARM, Ctx, flat_norm, loss_at, tok_data, trainable
from tolerance import assert_rel


def snapshot(model):
    return {n: p.detach().clone() for n, p in trainable(model).items()}


@pytest.mark.parametrize("norm", [0.0, 0.3, 5.0])
def test_random_perturbation_global_norm(tiny_lora_model, norm):
    before = snapshot(tiny_lora_model)
    info = RandomPerturbation.apply(tiny_lora_model, None, RandomPerturbationConfig(norm=norm, seed=3))
    delta = [p.detach() - before[n] for n, p in trainable(tiny_lora_model).items()]
    assert float(flat_norm(delta)) == pytest.approx(norm, rel=1e-5, abs=1e-6)
    assert info["noise_norm"] == pytest.approx(norm, rel=1e-5, abs=1e-6)


def test_random_perturbation_std_and_seed(tiny_lora_model):
    cfg = RandomPerturbationConfig(std=0.01, seed=7)
    xi1, _ = RandomPerturbation.noise(tiny_lora_model, cfg)
    xi2, _ = RandomPerturbation.noise(tiny_lora_model, cfg)
    xi3, _ = RandomPerturbation.noise(tiny_lora_model, RandomPerturbationConfig(std=0.01, seed=8))
    flat = torch.cat([x.reshape(-1) for x in xi1])
    assert flat.std().item() == pytest.approx(0.01, rel=0.05)  # thousands of entries
    assert all(torch.equal(a, b) for a, b in zip(xi1, xi2))
    assert not all(torch.equal(a, b) for a, b in zip(xi1, xi3))


def test_random_perturbation_needs_one_of_std_norm():
    with pytest.raises(ConfigError, match="std or norm: random_perturbation needs exactly one"):
        RandomPerturbationConfig()
    with pytest.raises(ConfigError, match="std or norm: random_perturbation needs exactly one"):
        RandomPerturbationConfig(std=0.1, norm=1.0)


def test_none_is_an_exact_noop(tiny_lora_model):
    before = snapshot(tiny_lora_model)
    NoDefense.apply(tiny_lora_model, None, None)
    for n, p in trainable(tiny_lora_model).items():
        assert torch.equal(p, before[n])


def test_ascent_matches_autograd(tiny_lora_model, tiny_tokenizer):
    """ε = ρ∇h/‖∇h‖ with h the token-mean CE over the whole set, whatever the batch size."""
    model, tok = tiny_lora_model, tiny_tokenizer
    ctx = Ctx(tok, {"harm": HARM})
    params = {n: p.detach().clone().requires_grad_(True) for n, p in trainable(model).items()}
    whole = ctx.collator(list(tok_data(tok, HARM)))
    g = torch.autograd.grad(loss_at(model, params, whole), list(params.values()))
    expected = {n: params[n].detach() + 0.8 * gi / flat_norm(g) for n, gi in zip(params, g)}
    Ascent.apply(model, ctx, AscentConfig(rho=0.8, batch_size=2, harmful_data=DataSpec(name="harm")))
    for n, p in trainable(model).items():
        assert_rel(p.detach(), expected[n])
