"""Antidote against an independent computation (docs/algorithms.md#antidote): LoRA-linear inputs are
captured here one example at a time (no padding at all), the score is |W_ij|·‖X_j‖₂ over every
token, and per row exactly cols − ⌊cols·(1−d)⌋ of the top-scored entries must be zeroed."""

from __future__ import annotations

import re

import pytest
import torch

from panacea.data.base import DataSpec
from panacea.defenses.post.antidote import (Antidote, AntidoteConfig, input_statistics, lora_linears,
                                            wanda_scores)
from panacea.errors import ConfigError
from panacea.hooks import hooked_modules_count

from helpers import HARM, USER, Ctx, tok_data
from tolerance import assert_rel

CALIB = HARM + USER  # prompts of different lengths: batches of 3 are padded
LORA = re.compile(r"\.lora_[AB]\.default$")


def captured_column_norms(model, tok):
    """‖X_j‖₂ over all tokens of every LoRA linear's input, one unpadded example per forward."""
    mods = {n: m for n, m in model.named_modules() if LORA.search(n)}
    xs = {n: [] for n in mods}
    handles = [m.register_forward_pre_hook(lambda mod, a, n=n: xs[n].append(a[0].detach().reshape(-1, a[0].shape[-1])))
               for n, m in mods.items()]
    try:
        with torch.no_grad():
            model.eval()
            for f in tok_data(tok, CALIB):
                model(input_ids=torch.tensor([f["input_ids"]]))
    finally:
        for h in handles:
            h.remove()
    tokens = sum(len(f["input_ids"]) for f in tok_data(tok, CALIB))
    return {n: torch.cat(x).norm(dim=0) for n, x in xs.items()}, mods, tokens


def test_scores_match_an_independent_computation(tiny_lora_model, tiny_tokenizer):
    model, tok = tiny_lora_model, tiny_tokenizer
    norms, mods, tokens = captured_column_norms(model, tok)
    ctx = Ctx(tok, {"calib": CALIB})
    found = lora_linears(model)
    assert [n for n, _ in found] == sorted(mods)  # lora_A and lora_B of q/k/v in both layers
    stats, used = input_statistics(model, found, ctx.dataset(DataSpec(name="calib"), "c"), ctx.collator, 3)
    assert used == tokens  # padding excluded
    for (name, m), n in zip(found, stats):
        ref = m.weight.detach().abs() * norms[name][None, :]  # |W|·‖X_j‖ = |W|·√n_j·√tokens
        assert_rel(wanda_scores(m.weight, n) * tokens**0.5, ref)


@pytest.mark.parametrize("d", [0.1, 0.5])
def test_exactly_the_top_scored_entries_of_each_row_are_zeroed(tiny_lora_model, tiny_tokenizer, d):
    model, tok = tiny_lora_model, tiny_tokenizer
    norms, mods, _ = captured_column_norms(model, tok)
    scores = {n: m.weight.detach().abs() * norms[n][None, :] for n, m in mods.items()}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    ctx = Ctx(tok, {"calib": CALIB})
    rec = Antidote.apply(model, ctx, AntidoteConfig(dense_ratio=d, batch_size=3, harmful_data=DataSpec(name="calib")))
    for name, m in mods.items():
        rows, cols = m.weight.shape
        k = cols - int(cols * (1 - d) + 1e-9)
        zero = m.weight.detach() == 0
        assert (zero.sum(1) == k).all()  # exact count in every row
        top = torch.topk(scores[name], k, dim=1).indices
        expected = torch.zeros_like(zero).scatter_(1, top, True)
        assert torch.equal(zero, expected)
        assert rec["effective_ratio_per_tensor"][name.removeprefix("base_model.model.")] == pytest.approx(k / cols)
    # on r = 4 columns (lora_B) any d ≤ 0.25 zeroes 1/4; on 32 columns (lora_A) d = 0.1 zeroes 4/32
    if d == 0.1:
        ratios = rec["effective_ratio_per_tensor"]
        assert {v for n, v in ratios.items() if "lora_B" in n} == {0.25}
        assert {v for n, v in ratios.items() if "lora_A" in n} == {0.125}
    assert rec["tokens"] == sum(len(f["input_ids"]) for f in tok_data(tok, CALIB)) and rec["samples"] == len(CALIB)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n])  # only the live adapter is pruned
    assert hooked_modules_count(mods.values()) == 0  # every hook removed


def test_random_prune_is_a_seeded_exact_fraction(tiny_lora_model, tiny_tokenizer):
    model, tok = tiny_lora_model, tiny_tokenizer
    ctx = Ctx(tok, {"calib": CALIB})
    before = {n: m.weight.detach().clone() for n, m in lora_linears(model)}
    cfg = AntidoteConfig(dense_ratio=0.3, random_prune=True, seed=5, harmful_data=DataSpec(name="calib"))
    rec = Antidote.apply(model, ctx, cfg)
    assert rec["mode"] == "random" and rec["tokens"] == 0
    masks = {}
    for n, m in lora_linears(model):
        masks[n] = m.weight.detach() == 0
        assert int(masks[n].sum()) == int(m.weight.numel() * 0.3)
    for n, m in lora_linears(model):  # same seed on the same weights: the same mask
        m.weight.data.copy_(before[n])
    Antidote.apply(model, ctx, cfg)
    assert all(torch.equal(m.weight.detach() == 0, masks[n]) for n, m in lora_linears(model))


@pytest.mark.parametrize("d", [0.0, 1.0, 1.5, -0.1])
def test_dense_ratio_outside_the_open_interval_is_rejected(d):
    with pytest.raises(ConfigError, match=r"dense_ratio must be in \(0, 1\) for antidote"):
        AntidoteConfig(dense_ratio=d)
