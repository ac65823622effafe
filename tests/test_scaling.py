"""The scaling sweep and step profile (panacea.scaling) on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from panacea import models
from panacea.config import ExperimentConfig, from_dict
from panacea.pipeline import Context
from panacea.scaling import (expected_ratio, fit_growth, fixed_length, interleaved_overhead, plausible, plot_scaling,
                             profile_report, profile_step, scaling_report, scaling_sweep)

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
H = {"name": "pyrit_harmful", "start": 10, "n": 8}
METHODS = {
    "sft": ("finetune", "sft", {}),
    "booster": ("alignment", "booster", {"harmful_batch_size": 2, "harmful_data": H}),
    "panacea": ("finetune", "panacea", {"harmful_batch_size": 2, "harmful_data": H}),
}


@pytest.fixture(scope="module")
def setup(tiny_dir):
    raw = yaml.safe_load(TINY.read_text())
    raw.pop("post")
    raw["model"]["name_or_path"] = str(tiny_dir)
    raw["model"]["max_length"] = 48
    raw["finetune"]["train"]["per_device_train_batch_size"] = 2
    cfg = from_dict(ExperimentConfig, raw)
    return cfg, Context(cfg, models.load_tokenizer(cfg.model))


def test_fixed_length_pads_and_keeps_answer_tokens():
    long = {"input_ids": list(range(100)), "labels": [-100] * 70 + list(range(70, 100))}
    short = {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}
    b = fixed_length([long, short], 32, pad_id=0)
    assert all(t.shape == (2, 32) for t in b.values())
    assert (b["labels"][0] != -100).sum() == 16 and b["input_ids"][0, 0] == 54  # window from 70 − 16
    assert b["attention_mask"][0].all() and b["attention_mask"][1].tolist() == [1] * 3 + [0] * 29
    assert b["labels"][1, :3].tolist() == [-100, 6, 7] and (b["labels"][1, 3:] == -100).all()
    tail = {"input_ids": list(range(40)), "labels": [-100] * 38 + [38, 39]}
    assert fixed_length([tail], 8, 0)["labels"][0, -2:].tolist() == [38, 39]  # answer at the very end


def test_sweep_points_ratios_report_and_plot(setup, tmp_path):
    cfg, ctx = setup
    points = scaling_sweep(cfg, ctx, METHODS, [16, 32], [2, 4], steps=1, warmup=0, progress=False)
    assert len(points) == 12
    assert {(p["method"], p["seq_length"], p["lora_rank"]) for p in points} == {
        (m, L, r) for m in METHODS for L in (16, 32) for r in (2, 4)}
    for p in points:
        assert p["step_seconds"] > 0 and p["peak_memory_gb"] > 0 and p["step_memory_gb"] >= 0
        assert p["time_ratio_to_sft"] > 0 and p["memory_kind"] in ("process_peak_rss", "cuda_max_allocated")
        if p["method"] == "sft":
            assert p["time_ratio_to_sft"] == 1.0 and p["memory_ratio_to_sft"] in (1.0, None)
    by = {(p["method"], p["lora_rank"]): p["trainable_params"] for p in points if p["seq_length"] == 16}
    assert by[("sft", 4)] == 2 * by[("sft", 2)] == by[("panacea", 4)]
    growth = fit_growth(points)
    assert set(growth) == set(METHODS) and growth["sft"]["rank"] == 4 and growth["sft"]["seq_length"] == 32
    lines = scaling_report(points, growth)
    assert "| method | seq length | LoRA rank | step s | ×SFT | working memory GB | ×SFT |" in lines
    assert sum(line.startswith("| panacea |") for line in lines) == 4
    assert plot_scaling(points, tmp_path).stat().st_size > 1000


def test_fit_growth_recovers_exponents():
    pts = [{"method": "m", "seq_length": L, "lora_rank": r, "step_seconds": 3e-4 * L**2 * r**0.5,
            "step_memory_gb": 0.01 * L} for L in (64, 128, 256) for r in (8, 32)]
    g = fit_growth(pts)["m"]
    assert g["time_vs_seq"] == pytest.approx(2.0) and g["time_vs_rank"] == pytest.approx(0.5)
    assert g["memory_vs_seq"] == pytest.approx(1.0) and g["memory_vs_rank"] == pytest.approx(0.0)
    one = fit_growth([{**pts[0], "step_memory_gb": 0.0}])["m"]
    assert one["time_vs_seq"] is None and one["memory_vs_rank"] is None


@pytest.mark.parametrize("method", ["panacea", "booster"])
def test_profile_step(setup, method):
    cfg, ctx = setup
    stage, name, options = METHODS[method]
    prof = profile_step(cfg, ctx, stage, name, options, steps=1, top=10)
    assert prof["method"] == method and prof["total_seconds"] > 0 and prof["seq_length"] == 48
    ops = prof["top_ops"]
    assert 0 < len(ops) <= 10 and 0 < sum(o["share"] for o in ops) <= 1
    assert ops == sorted(ops, key=lambda o: o["self_seconds"], reverse=True)
    assert any("mm" in o["name"] or "linear" in o["name"] for o in ops)
    for p in prof["by_pass"]:  # present once the trainer labels its passes with record_function
        assert p["name"].startswith(f"{method}/") and 0 < p["share"] <= 1
    lines = profile_report(prof)
    assert any(line.startswith("| operator |") for line in lines) and len(lines) >= 4 + len(ops)


def test_expected_ratio_from_passes_and_batches():
    assert expected_ratio(3, 10, 10) == 3.0  # Panacea/Booster: (b + 2·b_h)/b
    assert expected_ratio(3, 10, 4) == pytest.approx(1.8)
    assert expected_ratio(2, 10, None) == 2.0  # Vaccine: two passes on the same batch


@pytest.mark.parametrize("ratio,cpu,expected,flagged", [
    (0.98, 0.98, 3.0, "below what"),          # three passes cannot cost less than one
    (0.98, 0.98, 1.8, "below what"),          # Panacea with a harmful batch of 4 of 10: ≥ 1.08
    (27.0, 27.0, 2.0, "above twice"),         # Vaccine at 27× on a busy machine
    (2.9, 1.9, 3.0, "disagree"),              # the wall clock measured the load
    (2.6, 2.5, 3.0, None), (1.02, 1.0, 1.0, None),
])
def test_implausible_ratios_are_flagged(ratio, cpu, expected, flagged):
    why = plausible(ratio, cpu, expected)
    assert (why is None) if flagged is None else (flagged in why)


def test_interleaved_overhead_medians_ratios_and_load(setup):
    cfg, ctx = setup
    methods = {k: METHODS[k] for k in ("sft", "panacea")}
    res = interleaved_overhead(cfg, ctx, methods, {"sft": 1.0, "panacea": 3.0}, rounds=3, warmup=1, progress=False)
    assert set(res["methods"]) == {"sft", "panacea"} and res["rounds"] == 3 and res["seq_length"] == 48
    assert len(res["load_average_before"]) == 3 and res["cpus"] >= 1
    sft, pan = res["methods"]["sft"], res["methods"]["panacea"]
    assert sft["step_time_ratio"] == 1.0 and sft["flag"] is None
    assert pan["median_step_seconds"] > 0 and pan["median_cpu_seconds"] > 0 and pan["expected_ratio"] == 3.0
    # the stored ratio (3 decimals) against the stored medians (6 decimals): equal up to their rounding
    stored = pan["median_step_seconds"] / sft["median_step_seconds"]
    rounding = stored * (5e-7 / sft["median_step_seconds"] + 5e-7 / pan["median_step_seconds"])
    assert pan["step_time_ratio"] == pytest.approx(stored, rel=0, abs=5e-4 + 2 * rounding + 1e-9)
    assert pan["flag"] == plausible(pan["step_time_ratio"], pan["cpu_time_ratio"], 3.0)
