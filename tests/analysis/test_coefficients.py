"""Per-layer safety coefficients of ε (docs/algorithms.md#per-layer-safety-coefficients) against a
direct computation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from panacea.analysis.coefficients import analyze_run, coefficients


@pytest.fixture
def stage(tiny_lora_model, tmp_path):
    """A Panacea stage folder: ε saved, the adapter saved with ε already added (as the trainer does)."""
    model = tiny_lora_model
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    gen = torch.Generator().manual_seed(0)
    eps = {n: torch.randn(p.shape, generator=gen) * (0.1 if ".layers.0." in n else 0.3) for n, p in named.items()}
    w_T = {n: p.detach().clone() for n, p in named.items()}
    st = tmp_path / "run" / "finetune" / "panacea"
    with torch.no_grad():
        for n, p in named.items():
            p.add_(eps[n])
    model.save_pretrained(str(st / "adapter"), safe_serialization=True)
    save_file({n: e.contiguous() for n, e in eps.items()}, str(st / "panacea_epsilon.safetensors"))
    (st / "record.json").write_text(json.dumps({"epsilon_applied": True}))
    return st, eps, w_T


def test_statistics_match_a_direct_computation(stage):
    st, eps, w_T = stage
    c = coefficients(st)
    assert [r["layer"] for r in c["layers"]] == [0, 1]
    for r in c["layers"]:
        es = [e for n, e in eps.items() if f".layers.{r['layer']}." in n]
        ws = [w for n, w in w_T.items() if f".layers.{r['layer']}." in n]
        norm = float(torch.cat([e.reshape(-1) for e in es]).norm())
        assert r["norm"] == pytest.approx(norm, rel=1e-5)
        assert r["mean_abs"] == pytest.approx(float(torch.cat([e.reshape(-1) for e in es]).abs().mean()), rel=1e-5)
        assert r["relative"] == pytest.approx(norm / float(torch.cat([w.reshape(-1) for w in ws]).norm()), rel=1e-4)
    total = float(torch.cat([e.reshape(-1) for e in eps.values()]).norm())
    assert c["epsilon_norm"] == pytest.approx(total, rel=1e-5)  # Σ s_i² = ‖ε‖²
    assert sum(r["share"] for r in c["layers"]) == pytest.approx(1.0)
    assert c["layers"][1]["share"] > c["layers"][0]["share"]  # layer 0's ε was drawn 3× smaller
    # effective-weight change of one module: (α/r)·‖(B+ε_B)(A+ε_A) − BA‖_F, α/r = 8/4
    q = next(r for r in c["modules"] if r["layer"] == 1 and r["module"] == "q_proj")
    pre = "base_model.model.model.layers.1.self_attn.q_proj"
    A, B = w_T[f"{pre}.lora_A.default.weight"], w_T[f"{pre}.lora_B.default.weight"]
    eA, eB = eps[f"{pre}.lora_A.default.weight"], eps[f"{pre}.lora_B.default.weight"]
    assert q["delta_w"] == pytest.approx(2.0 * float(((B + eB) @ (A + eA) - B @ A).norm()), rel=1e-4)


def test_analyze_run_writes_csv_and_plot(stage):
    st, _, _ = stage
    (summary,) = analyze_run(st.parents[1])
    dest = st.parents[1] / "analysis" / "panacea"
    lines = (dest / "safety_coefficients_layers.csv").read_text().splitlines()
    assert lines[0].startswith("layer,norm,mean_abs,relative,delta_w,share") and len(lines) == 3
    assert (dest / "safety_coefficients_modules.csv").exists()
    assert (dest / "safety_coefficients.png").stat().st_size > 1000
    assert summary["top_layers"][0][0] == 1


def test_a_run_without_panacea_is_a_clear_error(tmp_path):
    from panacea.errors import UserError

    with pytest.raises(UserError, match="has no Panacea stage with a saved ε"):
        analyze_run(tmp_path)


def test_cli_analyze(stage, capsys):
    from panacea.cli import main

    st, _, _ = stage
    assert main(["analyze", str(st.parents[1]), "--no-plot"]) == 0
    assert "panacea: ‖ε‖" in capsys.readouterr().out
    assert main(["analyze", str(st.parents[1] / "finetune")]) == 2
