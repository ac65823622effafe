"""Panacea's step against an independent autograd computation of its formula
(docs/algorithms.md#panacea):

    ε = ρ ∇h(w)/‖∇h(w)‖,   G = ∇[ g(w) − λ( min(h(w + sg(ε)), c) − h(w) ) ]

computed here with ``torch.func.functional_call`` on a copy of the trainable tensors, with no
code shared with the trainer.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from panacea.data.base import DataSpec
from panacea.defenses.finetune.panacea import Panacea, PanaceaAvg, PanaceaAvgConfig, PanaceaConfig
from panacea.errors import ConfigError

from helpers import HARM, HARM6, USER, Ctx, ForwardLog, args, flat_norm, loss_at, same_batch, tok_data, trainable
from tolerance import assert_rel


def make(model, tok, tmp_path, harm=HARM, entry=Panacea, **cfg_kw):
    cfg_kw.setdefault("harmful_batch_size", len(harm))
    cfg = entry.Config(harmful_data=DataSpec(name="harm"), **cfg_kw)
    ctx = Ctx(tok, {"harm": harm})
    tr = entry.make_trainer(model, args(tmp_path), tok_data(tok, USER), ctx, cfg)
    tr.current_gradient_accumulation_steps = 1
    return tr, ctx


def batches(tr, ctx, tok):
    user = ctx.collator(list(tok_data(tok, USER)))
    harm = ctx.collator(list(tok_data(tok, HARM)))
    return user, harm


def reference(model, user, harm, rho, lam, clamp):
    params = {n: p.detach().clone().requires_grad_(True) for n, p in trainable(model).items()}
    names = list(params)
    gh = torch.autograd.grad(loss_at(model, params, harm), [params[n] for n in names])
    eps = {n: (rho * g / flat_norm(gh)).detach() for n, g in zip(names, gh)}
    shifted = {n: params[n] + eps[n] for n in names}
    surrogate = loss_at(model, params, user) - lam * (
        torch.clamp(loss_at(model, shifted, harm), max=clamp) - loss_at(model, params, harm)
    )
    G = torch.autograd.grad(surrogate, [params[n] for n in names])
    return dict(zip(names, G)), eps


@pytest.mark.parametrize("lam,clamp", [(1e-3, 5.0), (0.5, 100.0), (0.5, 1e-3)])
def test_written_gradient_matches_autograd(tiny_lora_model, tiny_tokenizer, tmp_path, lam, clamp):
    model, tok = tiny_lora_model, tiny_tokenizer
    tr, ctx = make(model, tok, tmp_path, rho=0.7, lam=lam, harmful_loss_clamp=clamp)
    user, harm = batches(tr, ctx, tok)
    G_ref, eps_ref = reference(model, user, harm, 0.7, lam, clamp)
    before = {n: p.detach().clone() for n, p in trainable(model).items()}
    model.zero_grad(set_to_none=True)
    tr.training_step(model, user)
    for n, p in trainable(model).items():
        assert_rel(p.grad, G_ref[n])
        torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0)  # weights restored exactly
    for e, (n, r) in zip(tr.epsilon, eps_ref.items()):
        assert_rel(e, r)
    if clamp < 1:  # clamped: G reduces to ∇g + λ∇h(w)
        assert tr.stats["clamp_active_steps"] == 1


def test_lambda_terms_change_the_gradient(tiny_lora_model, tiny_tokenizer, tmp_path):
    """With λ = 0.5 the written gradient differs from plain ∇g (the test above is not vacuous)."""
    model, tok = tiny_lora_model, tiny_tokenizer
    tr, ctx = make(model, tok, tmp_path, lam=0.5, harmful_loss_clamp=100.0)
    user, _ = batches(tr, ctx, tok)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in trainable(model).items()}
    g = torch.autograd.grad(loss_at(model, params, user), list(params.values()))
    tr.training_step(model, user)
    diff = sum(float((p.grad - gi).abs().sum()) for p, gi in zip(trainable(model).values(), g))
    assert diff > 1e-4


def test_epsilon_norm_is_rho(tiny_lora_model, tiny_tokenizer, tmp_path):
    tr, ctx = make(tiny_lora_model, tiny_tokenizer, tmp_path, rho=2.5)
    user, _ = batches(tr, ctx, tiny_tokenizer)
    tr.training_step(tiny_lora_model, user)
    assert float(flat_norm(tr.epsilon)) == pytest.approx(2.5, rel=1e-5)
    # ε is an owned tensor, not an alias of .grad
    assert all(e.data_ptr() != p.grad.data_ptr() for e, p in zip(tr.epsilon, trainable(tiny_lora_model).values()))


def test_epsilon_added_exactly_once(tiny_dir, tiny_tokenizer, tmp_path):
    """Two identical runs, one with apply_epsilon off: their weights differ by exactly the saved ε."""
    from transformers import AutoModelForCausalLM

    from panacea.config import LoraSettings
    from panacea.models import add_adapter

    finals = []
    for apply in (False, True):
        torch.manual_seed(0)
        model = add_adapter(AutoModelForCausalLM.from_pretrained(tiny_dir), LoraSettings(r=4, alpha=8))
        out = tmp_path / str(apply)
        tr, _ = make(model, tiny_tokenizer, out, apply_epsilon=apply)
        tr.train()
        finals.append({n: p.detach().clone() for n, p in trainable(model).items()})
        if apply:
            assert tr.epsilon_applied
            eps = load_file(str(out / "panacea_epsilon.safetensors"))
    for n in finals[0]:
        assert_rel(finals[1][n] - finals[0][n], eps[n], 1e-5)
    assert float(flat_norm(list(eps.values()))) == pytest.approx(1.0, rel=1e-5)


def test_gradient_accumulation_adds_micro_batches(tiny_lora_model, tiny_tokenizer, tmp_path):
    """GA = 2: .grad after two micro-steps = Σ_i [∇g_i·(tokens_i/tokens) − (λ/2)(∇ĥ_i(w+ε_i) − ∇h_i)]."""
    model, tok = tiny_lora_model, tiny_tokenizer
    tr, ctx = make(model, tok, tmp_path, lam=0.5, harmful_loss_clamp=100.0)
    tr.current_gradient_accumulation_steps = 2
    halves = [USER[:2], USER[2:]]
    micro = [ctx.collator(list(tok_data(tok, h))) for h in halves]
    harm = ctx.collator(list(tok_data(tok, HARM)))
    total = sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)
    expected = None
    for m in micro:
        ntok = int((m["labels"][:, 1:] != -100).sum())
        G_g, _ = reference(model, m, harm, 1.0, 0.0, 100.0)  # λ = 0: ∇g alone
        G_full, _ = reference(model, m, harm, 1.0, 0.5, 100.0)
        part = {n: G_g[n] * ntok / total + (G_full[n] - G_g[n]) / 2 for n in G_g}
        expected = part if expected is None else {n: expected[n] + part[n] for n in part}
    model.zero_grad(set_to_none=True)
    for m in micro:
        tr.training_step(model, m, num_items_in_batch=torch.tensor(total))
    for n, p in trainable(model).items():
        assert_rel(p.grad, expected[n])


def test_perturb_every_recomputes_epsilon_only_every_k_steps(tiny_lora_model, tiny_tokenizer, tmp_path):
    """perturb_every = 3: optimizer steps 0 and 3 write the Panacea gradient (checked against the
    autograd reference) and compute ε; steps 1 and 2 write plain ∇g and keep ε (no harmful batch)."""
    model, tok = tiny_lora_model, tiny_tokenizer
    tr, ctx = make(model, tok, tmp_path, rho=0.7, lam=0.5, harmful_loss_clamp=100.0, perturb_every=3)
    user, harm = batches(tr, ctx, tok)
    kept = None
    for step in range(4):
        tr.state.global_step = step
        params = {n: p.detach().clone().requires_grad_(True) for n, p in trainable(model).items()}
        if step % 3 == 0:
            G_ref, eps_ref = reference(model, user, harm, 0.7, 0.5, 100.0)
        else:
            G_ref = dict(zip(params, torch.autograd.grad(loss_at(model, params, user), list(params.values()))))
        drawn = tr._aux_loader.state_dict()["taken"] if tr._aux_loader is not None else None
        model.zero_grad(set_to_none=True)
        tr.training_step(model, user)
        for n, p in trainable(model).items():
            assert_rel(p.grad, G_ref[n])
        if step % 3 == 0:
            for e, r in zip(tr.epsilon, eps_ref.values()):
                assert_rel(e, r)
            kept = [e.clone() for e in tr.epsilon]
        else:  # ε and the defender's loader untouched
            assert all(torch.equal(a, b) for a, b in zip(tr.epsilon, kept))
            assert tr._aux_loader.state_dict()["taken"] == drawn
        with torch.no_grad():  # move the weights so that each step's reference differs
            for p in trainable(model).values():
                p.sub_(0.05 * p.grad)
    assert tr.stats["micro_steps"] == 4 and tr.stats["epsilon_steps"] == 2


def test_perturb_every_must_be_a_positive_integer():
    from panacea.errors import ConfigError

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="perturb_every"):
            PanaceaConfig(perturb_every=bad)


def test_perturbed_pass_reuses_the_batch_of_h_w(tiny_lora_model, tiny_tokenizer, tmp_path):
    """A defender set of two batches: pass 3 (h at w+ε) runs on exactly the batch of pass 2 (h at
    w), and the written gradient equals the reference on that batch, over two steps (so that the
    second step's batch is the set's other half)."""
    model, tok = tiny_lora_model, tiny_tokenizer
    tr, ctx = make(model, tok, tmp_path, harm=HARM6, harmful_batch_size=3, rho=0.7, lam=0.5,
                   harmful_loss_clamp=100.0)
    user = ctx.collator(list(tok_data(tok, USER)))
    seen = []
    for _ in range(2):
        log = ForwardLog(model)
        params = {n: p.detach().clone() for n, p in trainable(model).items()}
        model.zero_grad(set_to_none=True)
        tr.training_step(model, user)
        log.close()
        assert len(log.batches) == 3  # user at w, harmful at w, harmful at w + ε
        assert same_batch(log.batches[0], user)
        harm = log.batches[1]
        assert same_batch(harm, log.batches[2]), "pass 3 must reuse pass 2's harmful batch"
        assert harm["input_ids"].shape[0] == 3
        G_ref, eps_ref = reference(model, user, harm, 0.7, 0.5, 100.0)
        for n, p in trainable(model).items():
            assert_rel(p.grad, G_ref[n])
            assert torch.equal(p.detach(), params[n])
        for e, r in zip(tr.epsilon, eps_ref.values()):
            assert_rel(e, r)
        seen.append(harm["input_ids"])
        with torch.no_grad():
            for p in trainable(model).values():
                p.sub_(0.05 * p.grad)
    assert not torch.equal(seen[0], seen[1])  # the two steps drew the two different halves


def test_clamp_boundary_is_torch_clamp(tiny_lora_model, tiny_tokenizer, tmp_path):
    """min(h, c) as torch.clamp: at h(w+ε) = c exactly the gradient of h(w+ε) still passes; just
    above h(w+ε) it passes, just below it is cut (G = ∇g + λ∇h(w))."""
    model, tok = tiny_lora_model, tiny_tokenizer
    grads, active = {}, {}
    for case in ("open", "equal", "below"):
        tr, ctx = make(model, tok, tmp_path / case, rho=0.7, lam=0.5, harmful_loss_clamp=100.0)
        if case != "open":
            c = h_eps if case == "equal" else float(torch.nextafter(torch.tensor(h_eps), torch.tensor(0.0)))
            tr.panacea.harmful_loss_clamp = c
        user = ctx.collator(list(tok_data(tok, USER)))
        model.zero_grad(set_to_none=True)
        tr.training_step(model, user)
        if case == "open":
            h_eps = tr._aux["harmful_loss_perturbed"][-1]  # the float32 value, exactly
        grads[case] = [p.grad.clone() for p in trainable(model).values()]
        active[case] = tr.stats["clamp_active_steps"]
    assert active == {"open": 0, "equal": 0, "below": 1}
    assert all(torch.equal(a, b) for a, b in zip(grads["open"], grads["equal"]))
    assert not all(torch.equal(a, b) for a, b in zip(grads["open"], grads["below"]))


@pytest.mark.parametrize("average,k,pick", [("last", 3, slice(2, 5)), ("first", 3, slice(0, 3)),
                                            ("all", 3, slice(0, 5)), ("last", 9, slice(0, 5))])
def test_panacea_avg_output_is_the_mean_of_the_chosen_steps_rescaled_to_rho(
        tiny_lora_model, tiny_tokenizer, tmp_path, average, k, pick):
    """panacea_avg: output ε = ρ · mean(ε_t, t ∈ chosen steps) / ‖mean‖ against ε_t computed
    independently at each step's weights and harmful batch (two different halves of the set)."""
    model, tok = tiny_lora_model, tiny_tokenizer
    rho = 0.7
    tr, ctx = make(model, tok, tmp_path, harm=HARM6, harmful_batch_size=3, entry=PanaceaAvg, rho=rho,
                   lam=0.5, harmful_loss_clamp=100.0, average=average, k=k)
    user = ctx.collator(list(tok_data(tok, USER)))
    refs = []
    for _ in range(5):
        log = ForwardLog(model)
        model.zero_grad(set_to_none=True)
        tr.training_step(model, user)
        log.close()
        _, eps_ref = reference(model, user, log.batches[1], rho, 0.5, 100.0)
        refs.append(list(eps_ref.values()))
        with torch.no_grad():
            for p in trainable(model).values():
                p.sub_(0.2 * p.grad)
    chosen = refs[pick]
    mean = [torch.stack(ts).mean(0) for ts in zip(*chosen)]
    expected = [m * rho / flat_norm(mean) for m in mean]
    out = tr.final_epsilon()
    for e, r in zip(out, expected):
        assert_rel(e, r)
    assert float(flat_norm(out)) == pytest.approx(rho, rel=1e-5)
    # not vacuous: the steps' ε differ, so the mean is shorter than ρ and other windows differ
    assert float(flat_norm(mean)) < rho * (1 - 1e-3)
    assert tr.stage_record()["epsilon_averaged_steps"] == len(chosen)


def test_panacea_is_the_papers_last_step_epsilon(tiny_lora_model, tiny_tokenizer, tmp_path):
    """``panacea`` outputs the last step's ε and has no averaging option."""
    model, tok = tiny_lora_model, tiny_tokenizer
    tr, ctx = make(model, tok, tmp_path, harm=HARM6, harmful_batch_size=3, rho=0.7)
    user = ctx.collator(list(tok_data(tok, USER)))
    for _ in range(2):
        tr.training_step(model, user)
        last = [e.clone() for e in tr.epsilon]
        with torch.no_grad():
            for p in trainable(model).values():
                p.sub_(0.2 * p.grad)
    assert all(torch.equal(a, b) for a, b in zip(tr.final_epsilon(), last))
    with pytest.raises(TypeError):
        PanaceaConfig(average="last")


@pytest.mark.parametrize("bad", [{"average": "middle"}, {"k": 0}, {"k": 2.5}])
def test_panacea_avg_rejects_bad_options(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        PanaceaAvgConfig(**bad)
