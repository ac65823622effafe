"""SafeLoRA against an independent dense computation (docs/algorithms.md#safelora): Ĉ = V Vᵀ / ‖V‖_F
is materialised here, s = cos(vec(Ĉ B A), vec(B A)) per module, the projected B is Ĉ B.

The setting mirrors the pipeline's ``merge_new`` mode: an alignment adapter saved to disk, merged
into the base model, and a new (user) adapter on top; V comes from the saved alignment adapter.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from panacea.config import LoraSettings
from panacea.defenses.post.safelora import SafeLoRA, SafeLoRAConfig, choose
from panacea.errors import ConfigError
from panacea.models import add_adapter
from panacea.pipeline import Source
from tolerance import assert_rel

LORA_B = re.compile(r"^(.*)\.lora_B\.default$")


def randomise(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)


def lora_pairs(model) -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    """module name → (lora_A, lora_B) of the 'default' adapter, found here independently by name."""
    mods = dict(model.named_modules())
    out = {}
    for name in mods:
        m = LORA_B.match(name)
        if m:
            out[m.group(1)] = (mods[f"{m.group(1)}.lora_A.default"], mods[name])
    return out


@pytest.fixture
def repaired(tiny_dir, tmp_path):
    """(model with a live user adapter, V per module from the alignment adapter, the adapter folder)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lcfg = LoraSettings(r=4, alpha=8)
    aligned = add_adapter(AutoModelForCausalLM.from_pretrained(tiny_dir), lcfg)
    randomise(aligned, 0)
    V = {n: (8 / 4) * (b.weight.detach() @ a.weight.detach()) for n, (a, b) in lora_pairs(aligned).items()}
    folder = tmp_path / "alignment_adapter"
    aligned.save_pretrained(folder, safe_serialization=True)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), folder).merge_and_unload()
    model = add_adapter(model, lcfg)
    randomise(model, 1)
    return model, V, folder


def ctx_for(folder, mode="merge_new", alignment="aligned"):
    chain = [folder] if folder is not None else []
    return SimpleNamespace(source=Source(run="ft", chain=chain + ["user"], alignment=alignment,
                                         alignment_chain=chain, adapter_mode=mode))


def dense_reference(model, V):
    """(similarity, Ĉ B) per module with Ĉ materialised."""
    out = {}
    for name, (a, b) in lora_pairs(model).items():
        A, B, v = a.weight.detach().double(), b.weight.detach().double(), V[name].double()
        C = v @ v.T / torch.linalg.matrix_norm(v)
        s = torch.nn.functional.cosine_similarity((C @ B @ A).flatten(), (B @ A).flatten(), dim=0)
        out[name] = (float(s), (C @ B).float())
    return out


def short(name):
    return name.removeprefix("base_model.model.")


def test_similarities_and_number_mode_projection(repaired):
    model, V, folder = repaired
    ref = dense_reference(model, V)
    before = {n: (a.weight.detach().clone(), b.weight.detach().clone()) for n, (a, b) in lora_pairs(model).items()}
    rec = SafeLoRA.apply(model, ctx_for(folder), SafeLoRAConfig(select="number", num_proj_layers=2))
    assert rec["modules"] == len(ref) == 6 and rec["reference"] == "alignment_adapter"
    for name, (s, _) in ref.items():
        assert rec["similarities"][short(name)] == pytest.approx(s, abs=1e-5)
    lowest = sorted(ref, key=lambda n: ref[n][0])[:2]
    assert rec["projected"] == 2 and rec["projected_modules"] == sorted(short(n) for n in lowest)
    assert rec["threshold"] == pytest.approx(ref[lowest[-1]][0], abs=1e-5)
    for name, (a, b) in lora_pairs(model).items():
        assert torch.equal(a.weight, before[name][0])  # A is never touched
        if name in lowest:
            assert_rel(b.weight.detach(), ref[name][1])
        else:
            assert torch.equal(b.weight, before[name][1])


def test_threshold_mode_projects_every_module_at_or_below_tau(repaired):
    model, V, folder = repaired
    ref = dense_reference(model, V)
    sims = sorted(s for s, _ in ref.values())
    tau = (sims[2] + sims[3]) / 2  # three modules below
    rec = SafeLoRA.apply(model, ctx_for(folder), SafeLoRAConfig(select="threshold", threshold=tau))
    expected = sorted(short(n) for n, (s, _) in ref.items() if s <= tau)
    assert rec["projected_modules"] == expected and len(expected) == 3
    assert rec["threshold"] == pytest.approx(tau)


def test_base_and_aligned_folders_give_the_same_v(repaired, tiny_dir, tmp_path):
    """V = W_aligned − W_base read from two model folders equals the merged adapter's (α/r)·B·A."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, V, folder = repaired
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), folder).merge_and_unload()
    merged.save_pretrained(tmp_path / "aligned_model", safe_serialization=True)
    ref = dense_reference(model, V)
    cfg = SafeLoRAConfig(num_proj_layers=3, base_model=str(tiny_dir), aligned_model=str(tmp_path / "aligned_model"))
    rec = SafeLoRA.apply(model, ctx_for(None, alignment="base"), cfg)  # folders need no alignment adapter
    assert rec["reference"] == "folders" and rec["projected"] == 3
    for name, (s, CB) in ref.items():
        assert rec["similarities"][short(name)] == pytest.approx(s, abs=1e-4)
        if short(name) in rec["projected_modules"]:
            assert_rel(lora_pairs(model)[name][1].weight.detach(), CB)


def test_number_mode_takes_exactly_k_and_breaks_ties_by_name():
    sims = {"m.c": 0.1, "m.a": 0.1, "m.b": 0.1, "m.d": -0.3, "m.e": 0.9}
    picked, tau = choose(sims, SafeLoRAConfig(num_proj_layers=3))
    assert picked == ["m.d", "m.a", "m.b"] and tau == 0.1  # the reference's "≤ K-th" would take 4
    picked, _ = choose(sims, SafeLoRAConfig(num_proj_layers=10))
    assert len(picked) == 5  # fewer modules than K: all of them


def test_continue_mode_is_refused(repaired):
    model, _, folder = repaired
    with pytest.raises(ConfigError, match=r"finetune\.runs\.ft\.adapter_mode=merge_new"):
        SafeLoRA.apply(model, ctx_for(folder, mode="continue"), SafeLoRAConfig())


def test_missing_reference_is_refused(repaired):
    model, _, _ = repaired
    with pytest.raises(ConfigError, match="base_model and aligned_model: safelora needs base and aligned weights"):
        SafeLoRA.apply(model, ctx_for(None, alignment="base"), SafeLoRAConfig())


@pytest.mark.parametrize("kw,needle", [
    ({"select": "top"}, "select must be number or threshold"),
    ({"num_proj_layers": 0}, "num_proj_layers must be > 0"),
    ({"threshold": 1.5}, r"threshold must be in \[-1, 1\]"),
    ({"base_model": "/x"}, "base_model and aligned_model: safelora needs both folders or neither"),
    ({"base_model": "/nonexistent/a", "aligned_model": "/nonexistent/b"}, "base_model must be a local model folder"),
])
def test_bad_options_are_rejected(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        SafeLoRAConfig(**kw)
