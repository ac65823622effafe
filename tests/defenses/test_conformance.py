"""One conformance check over every registered defense (docs/contributing.md#habits, habit 9).

Each defense is built from its default options (plus the few a defense cannot do without, below)
on the tiny model and run once: one training step (twice from the same weights and seed, with the
same result bit for bit), or one ``apply`` for a post defense. Its adapter is saved and reloaded
bit for bit, a trainer with resume state (``Resumable``) gets it back through the checkpoint files, ``none`` leaves every weight untouched, and every ``DefenseSpec`` is checked
against its options class. A new registration is picked up without editing this file.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from panacea.checkpoint import load_state, save_state
from panacea.data.base import DataSpec
from panacea.defenses.base import ChecksSource, DefenseSpec, RecordsStage, Resumable
from panacea.registry import DEFENSES, STAGES
from panacea.models import save_adapter

from helpers import HARM6, USER, Ctx, args, tok_data, trainable

#: options a defense has no default for (random perturbation: std or norm; safety mixing: samples or fraction)
REQUIRED = {("post", "random_perturbation"): {"norm": 0.1}, ("finetune", "safety_mix"): {"samples": 2}}

ALL = [(stage, name) for stage in STAGES for name in DEFENSES[stage].names()]


def entry_of(stage, name):
    return DEFENSES[stage].get(name)


def options(stage, name):
    spec = entry_of(stage, name).spec
    return spec.config_cls(**REQUIRED.get((stage, name), {}))


class AnyPool(Ctx):
    """Every data option reads the same small set (defender harmful and refusal data alike)."""

    def examples(self, spec, key):
        return HARM6


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainable(model).items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def reloaded(tiny_dir, folder, merged=None) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``folder`` loaded on a fresh base (or on ``merged``), by parameter name."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = merged if merged is not None else AutoModelForCausalLM.from_pretrained(tiny_dir)
    model = PeftModel.from_pretrained(base, folder)
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def equal_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(equal_state, a, b))
    return a == b


# --------------------------------------------------------------------------- the specs


@pytest.mark.parametrize("stage,name", ALL)
def test_spec_is_consistent_with_the_defense(stage, name):
    entry = entry_of(stage, name)
    spec = entry.spec
    assert isinstance(spec, DefenseSpec) and spec.stage == stage and spec.config_cls is entry.obj.Config
    assert not entry.meta  # everything a defense says is in its spec
    fields = {f.name: f for f in dataclasses.fields(spec.config_cls)}
    for key in spec.option_keys():
        assert key in fields, f"{name}: {key} is not an option of {spec.config_cls.__name__}"
    data = spec.defender_data_keys + spec.safety_data_keys
    assert len(set(data)) == len(data), f"{name}: a data option is declared twice"
    # every data option is declared, as defender data or as safety data, and only data options
    cfg = options(stage, name)
    holds_data = {k for k in fields if isinstance(getattr(cfg, k), DataSpec)}
    assert holds_data == set(data), f"{name}: data options {sorted(holds_data)} vs declared {sorted(data)}"
    if stage == "post":
        assert callable(entry.obj.apply)
        assert spec.passes_per_step == 2 and spec.step_interval_option is None  # training-only fields unset
    else:
        assert spec.passes_per_step >= 1 and not spec.needs_merge_new and not isinstance(entry.obj, ChecksSource)
        assert callable(entry.obj.make_trainer) or (spec.role == "control" and entry.obj.make_trainer is None)
    if spec.counterpart is not None:
        other = entry_of("post", spec.counterpart.name).spec
        assert spec.strength_option and other.strength_option, f"{name}: compared at equal strength, so both need one"
    if spec.needs_merge_new:
        assert isinstance(entry.obj, ChecksSource), f"{name}: a merge_new-only defense checks its source"
    if spec.profile_label is not None:
        assert spec.profile_label.replace("_", "").isalnum()


@pytest.mark.parametrize("stage", ["alignment", "finetune"])
def test_each_training_stage_has_one_baseline(stage):
    assert DEFENSES[stage].baseline() in DEFENSES[stage]


def test_registration_checks_the_spec():
    from panacea.defenses.post.ascent import Ascent, AscentConfig
    from panacea.registry import DefenseRegistry

    reg = DefenseRegistry("post")
    with pytest.raises(ValueError, match="declare harmful_keys in its DefenseSpec"):
        reg.register("x", Ascent, harmful_keys=("harmful_data",))
    with pytest.raises(ValueError, match="spec=DefenseSpec"):
        reg.register("x", Ascent)
    with pytest.raises(ValueError, match="stage 'finetune'"):
        reg.register("x", Ascent, spec=DefenseSpec(stage="finetune", config_cls=AscentConfig))
    with pytest.raises(ValueError, match="no option 'harmful'"):
        reg.register("x", Ascent, spec=DefenseSpec(stage="post", config_cls=AscentConfig, defender_data_keys=("harmful",)))
    with pytest.raises(ValueError, match="role"):
        DefenseSpec(stage="post", config_cls=AscentConfig, role="other")


# --------------------------------------------------------------------------- running them


TRAINING = [(s, n) for s, n in ALL if s != "post"]
POST = [(s, n) for s, n in ALL if s == "post"]


def build_trainer(model, tok, stage, name, out):
    entry = entry_of(stage, name)
    ctx = AnyPool(tok)
    targs = args(out, max_steps=1, per_device_train_batch_size=2)
    return entry.obj.make_trainer(model, targs, tok_data(tok, USER), ctx, options(stage, name))


@pytest.mark.parametrize("stage,name", TRAINING)
def test_training_defense_one_step_save_reload_resume(stage, name, tiny_lora_model, tiny_tokenizer, tiny_dir, tmp_path):
    entry = entry_of(stage, name)
    before = weights(tiny_lora_model)
    if entry.obj.make_trainer is None:  # alignment ``none``: skips the stage, the model is untouched
        assert entry.spec.role == "control"
        return
    twin = copy.deepcopy(tiny_lora_model)
    trainer = build_trainer(tiny_lora_model, tiny_tokenizer, stage, name, tmp_path / "out")
    trainer.train()
    assert trainer.state.global_step == 1
    after = weights(trainer.model)
    assert not same(before, after), f"{name}: one step changed no weight"
    again = build_trainer(twin, tiny_tokenizer, stage, name, tmp_path / "again")
    again.train()
    assert same(weights(again.model), after), f"{name}: the same seed gave other weights"
    if isinstance(trainer, RecordsStage):
        json.dumps(trainer.stage_record())  # goes into record.json as it is
    save_adapter(trainer.model, tmp_path / "adapter", trainer)
    back = reloaded(tiny_dir, tmp_path / "adapter")
    assert back.keys() == after.keys() and same(back, after)
    if isinstance(trainer, Resumable):
        state = trainer.extra_state()
        (tmp_path / "ckpt").mkdir()  # a Trainer checkpoint folder exists when its state is added
        save_state(tmp_path / "ckpt", {"trainer": state})
        fresh = build_trainer(tiny_lora_model, tiny_tokenizer, stage, name, tmp_path / "fresh")
        loaded = load_state(tmp_path / "ckpt")["trainer"]
        if loaded is not None:
            fresh.load_extra_state(loaded)
        assert equal_state(fresh.extra_state(), state)


def merge_new_setting(tiny_dir, tmp_path):
    """A user adapter on a base with a saved, merged alignment adapter (``adapter_mode: merge_new``)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from panacea.config import LoraSettings
    from panacea.models import add_adapter
    from panacea.pipeline import Source

    torch.manual_seed(0)
    lcfg = LoraSettings(r=4, alpha=8)
    aligned = add_adapter(AutoModelForCausalLM.from_pretrained(tiny_dir), lcfg)
    with torch.no_grad():
        for n, p in aligned.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    folder = tmp_path / "alignment_adapter"
    aligned.save_pretrained(folder, safe_serialization=True)

    def merged():
        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), folder).merge_and_unload()

    model = add_adapter(merged(), lcfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    source = Source(run="ft", chain=[folder, "user"], alignment="aligned", alignment_chain=[folder],
                    adapter_mode="merge_new")
    return model, source, merged


@pytest.mark.parametrize("stage,name", POST)
def test_post_defense_apply_save_reload(stage, name, tiny_lora_model, tiny_tokenizer, tiny_dir, tmp_path):
    entry = entry_of(stage, name)
    cfg = options(stage, name)
    if entry.spec.needs_merge_new:
        model, source, base = merge_new_setting(tiny_dir, tmp_path)
    else:
        model, source, base = tiny_lora_model, None, lambda: None
    if isinstance(entry.obj, ChecksSource):
        entry.obj.check_source(cfg, source)
    ctx = AnyPool(tiny_tokenizer)
    ctx.source = source
    before = weights(model)
    info = entry.obj.apply(model, ctx, cfg)
    json.dumps(info)  # goes into the stage record as it is
    after = weights(model)
    if entry.spec.role == "control":
        assert same(before, after), f"{name}: the control must be an exact no-op"
    else:
        assert not same(before, after), f"{name}: apply changed no weight"
    model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    back = reloaded(tiny_dir, tmp_path / "adapter", base())
    assert back.keys() == after.keys() and same(back, after)


def test_none_alignment_and_none_post_are_controls():
    roles = {(s, n): entry_of(s, n).spec.role for s, n in ALL}
    assert [k for k, r in roles.items() if r == "control"] == [("alignment", "none"), ("post", "none")]
