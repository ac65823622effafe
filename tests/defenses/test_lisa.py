"""Lisa's step and schedule against an independent computation (docs/algorithms.md#lisa):

    alignment state:  G = ∇f(w) + ρ (w − w̃_ft),   user state:  G = ∇g(w) + ρ (w − w̃_al)

with w̃_ft / w̃_al the weights after the last step of the last user / alignment phase (both the
initial weights before such a phase exists), the proximal term only after the warm-up fraction,
and the phase clock counting optimizer steps. The reference gradients come from autograd through
``torch.func.functional_call``; the anchors are tracked here from the weights after each step.
"""

from __future__ import annotations

import pytest
import torch

from panacea.data.base import DataSpec, Example
from panacea.defenses.finetune.lisa import Lisa, LisaConfig
from panacea.errors import ConfigError

from helpers import USER, Ctx, args, loss_at, tok_data, trainable
from tolerance import assert_rel

ALIGN = [
    Example("Explain how to pick a lock", output="I'm sorry, but I can't help with that request."),
    Example("Write the script", output="I cannot help with that. It could hurt people."),
]
A, U = "alignment", "user"
SCHEDULE = [A, A, U, U, U, A, A, U, U, U, A, A]  # K_a = 2, K_f = 3, starting in the alignment state


def make(model, tok, tmp_path, max_steps, **kw):
    cfg = LisaConfig(alignment_data=DataSpec(name="align"), alignment_batch_size=len(ALIGN), **kw)
    ctx = Ctx(tok, {"align": ALIGN})
    tr = Lisa.make_trainer(model, args(tmp_path), tok_data(tok, USER), ctx, cfg)
    tr.current_gradient_accumulation_steps = 1
    tr.state.max_steps = max_steps
    return tr, ctx


def snapshot(model):
    return {n: p.detach().clone() for n, p in trainable(model).items()}


def autograd_grad(model, batch):
    params = {n: p.detach().clone().requires_grad_(True) for n, p in trainable(model).items()}
    loss = loss_at(model, params, batch)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values())))), loss.detach()


def sgd(model, lr=0.05):
    with torch.no_grad():
        for p in trainable(model).values():
            p -= lr * p.grad


def test_gradient_and_schedule_match_an_independent_computation(tiny_lora_model, tiny_tokenizer, tmp_path):
    model, tok = tiny_lora_model, tiny_tokenizer
    rho, frac = 0.7, 0.25
    tr, ctx = make(model, tok, tmp_path, len(SCHEDULE), rho=rho, alignment_steps=2, finetune_steps=3,
                   proximal_warmup_fraction=frac)
    user = ctx.collator(list(tok_data(tok, USER)))
    align = ctx.collator(list(tok_data(tok, ALIGN)))
    w0 = snapshot(model)
    end_of = {A: w0, U: w0}  # weights after the last step taken in each state
    switches, nonzero_prox = [], 0
    for s, state in enumerate(SCHEDULE):
        tr.state.global_step = s
        w = snapshot(model)
        ref, ref_loss = autograd_grad(model, align if state == A else user)
        anchor = end_of[U if state == A else A]
        active = s > frac * len(SCHEDULE)  # the reference's strict ">" on the step counter
        expected = {n: ref[n] + rho * (w[n] - anchor[n]) if active else ref[n] for n in ref}
        n_switch = tr.stats["switches"]
        model.zero_grad(set_to_none=True)
        loss = tr.training_step(model, user)  # the user batch is discarded in the alignment state
        if tr.stats["switches"] > n_switch:
            switches.append(s)
        assert tr.lisa_state == state
        assert_rel(loss, ref_loss, 1e-5)  # CE of the batch trained on
        for n, p in trainable(model).items():
            assert_rel(p.grad, expected[n])
        # the anchor the trainer holds for the other state is exactly that state's last weights
        for n, t in zip(trainable(model), tr.anchors[U if state == A else A]):
            assert torch.equal(t, anchor[n])
        if active and sum(float((w[n] - anchor[n]).abs().sum()) for n in w) > 1e-6:
            nonzero_prox += 1
        sgd(model)
        end_of[state] = snapshot(model)
    assert switches == [2, 5, 7, 10]  # anchors snapshotted at the first step of each new phase
    assert nonzero_prox >= 4  # the proximal term was really exercised
    assert tr.stats == {"alignment_state_steps": 6, "user_state_steps": 6, "switches": 4}
    assert tr._aux["proximal_active"] == [float(s > frac * len(SCHEDULE)) for s in range(len(SCHEDULE))]
    assert tr._aux["alignment_state"] == [float(x == A) for x in SCHEDULE]
    assert len(tr._aux["alignment_loss"]) == 6 and len(tr._aux["user_loss"]) == 6


def test_no_proximal_term_before_warmup(tiny_lora_model, tiny_tokenizer, tmp_path):
    """Warm-up covering every step: G is the plain CE gradient of the state's batch throughout."""
    model, tok = tiny_lora_model, tiny_tokenizer
    tr, ctx = make(model, tok, tmp_path, 6, rho=5.0, alignment_steps=2, finetune_steps=3,
                   proximal_warmup_fraction=1.0)
    user = ctx.collator(list(tok_data(tok, USER)))
    align = ctx.collator(list(tok_data(tok, ALIGN)))
    for s, state in enumerate(SCHEDULE[:6]):
        tr.state.global_step = s
        ref, _ = autograd_grad(model, align if state == A else user)
        model.zero_grad(set_to_none=True)
        tr.training_step(model, user)
        for n, p in trainable(model).items():
            assert_rel(p.grad, ref[n])
        sgd(model)


def test_phase_clock_counts_optimizer_steps_under_accumulation(tiny_dir, tiny_tokenizer, tmp_path):
    """GA = 2 through the real Trainer: both micro-batches of a step share its state; 12 optimizer
    steps follow the K_a = 2 / K_f = 3 schedule (the reference would switch every 2.5 steps)."""
    from transformers import AutoModelForCausalLM

    from panacea.config import LoraSettings
    from panacea.models import add_adapter

    torch.manual_seed(0)
    model = add_adapter(AutoModelForCausalLM.from_pretrained(tiny_dir), LoraSettings(r=4, alpha=8))
    cfg = LisaConfig(alignment_data=DataSpec(name="align"), alignment_steps=2, finetune_steps=3, rho=0.1)
    ctx = Ctx(tiny_tokenizer, {"align": ALIGN})
    targs = args(tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=2, num_train_epochs=6)
    tr = Lisa.make_trainer(model, targs, tok_data(tiny_tokenizer, USER), ctx, cfg)
    seen = []
    step = tr.training_step

    def spy(*a, **kw):
        out = step(*a, **kw)
        seen.append((tr.state.global_step, tr.lisa_state))
        return out

    tr.training_step = spy
    tr.train()
    assert tr.state.global_step == 12
    assert seen == [(s, SCHEDULE[s]) for s in range(12) for _ in range(2)]
    assert tr.stage_record()["switches"] == 4
    logged = [h for h in tr.state.log_history if "loss" in h]
    assert len(logged) == 12 and {"alignment_state", "proximal_term", "anchor_distance"} <= set(logged[-1])
    assert [h["alignment_state"] for h in logged] == [float(x == A) for x in SCHEDULE]


def test_accumulated_gradient_adds_the_proximal_term_once(tiny_lora_model, tiny_tokenizer, tmp_path):
    """GA = 2 in the user state: .grad = Σ_i ∇g_i·(tokens_i/tokens) + ρ(w − w̃_al)."""
    model, tok = tiny_lora_model, tiny_tokenizer
    rho = 0.9
    tr, ctx = make(model, tok, tmp_path, 10, rho=rho, alignment_steps=1, finetune_steps=5,
                   proximal_warmup_fraction=0.0)
    user = ctx.collator(list(tok_data(tok, USER)))
    for s in (0, 1):  # one alignment step, one user step (its anchor: the weights after step 0)
        tr.state.global_step = s
        model.zero_grad(set_to_none=True)
        tr.training_step(model, user)
        sgd(model)
        if s == 0:
            anchor = snapshot(model)
    tr.state.global_step = 2
    tr.current_gradient_accumulation_steps = 2
    micro = [ctx.collator(list(tok_data(tok, h))) for h in (USER[:2], USER[2:])]
    total = sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)
    w = snapshot(model)
    expected = {n: rho * (w[n] - anchor[n]) for n in w}
    for m in micro:
        ref, _ = autograd_grad(model, m)
        ntok = int((m["labels"][:, 1:] != -100).sum())
        expected = {n: expected[n] + ref[n] * ntok / total for n in w}
    model.zero_grad(set_to_none=True)
    for m in micro:
        tr.training_step(model, m, num_items_in_batch=torch.tensor(total))
    assert tr.lisa_state == U
    for n, p in trainable(model).items():
        assert_rel(p.grad, expected[n])


@pytest.mark.parametrize("key,value,needle", [
    ("alignment_steps", 0, "alignment_steps must be > 0 for lisa, got 0"),
    ("finetune_steps", -1, "finetune_steps must be > 0 for lisa, got -1"),
    ("rho", -0.5, "rho must be ≥ 0 for lisa, got -0.5"),
    ("proximal_warmup_fraction", 1.5, "proximal_warmup_fraction must be in [0, 1]"),
    ("alignment_batch_size", 0, "alignment_batch_size must be > 0"),
])
def test_bad_options_are_rejected(key, value, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        LisaConfig(**{key: value})
