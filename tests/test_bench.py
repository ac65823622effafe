"""`panacea bench` end to end on the tiny model: every registered defense, results.json, report, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from panacea.bench import build, check_targets, collect
from panacea.cli import main
from panacea.registry import DEFENSES, load_builtins

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
H = {"name": "pyrit_harmful", "start": 10, "n": 8}


def bench_yaml(tmp_path) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw.pop("post")
    raw["finetune"].pop("runs")
    raw["bench"] = {
        "defense_options": {
            "booster": {"harmful_batch_size": 4, "harmful_data": H},
            "repnoise": {"harmful_data": H},
            "panacea": {"harmful_batch_size": 4, "harmful_data": H},
            "panacea_avg": {"harmful_batch_size": 4, "harmful_data": H, "k": 2},
            "ascent": {"harmful_data": H},
            "antidote": {"harmful_data": H},
            "lisa": {"alignment_steps": 1, "finetune_steps": 1, "alignment_data": {"name": "refusals", "start": 100, "n": 20}},
            "safety_mix": {"mode": "mix", "samples": 2, "safety_data": {"name": "refusals", "start": 100, "n": 20}},
            "random_perturbation": {"norm": 0.5},
            "safelora": {"num_proj_layers": 2},
        },
        "generation_prompts": 4,
        "quick": ["eval.max_new_tokens=4"],
        "quick_ablations": {"panacea": {"perturb_every": [2], "rho": [0.5, 2.0]}, "ascent": {"rho": [0.5]}},
        "quick_scaling": {"methods": ["sft", "panacea"], "seq_lengths": [16, 24], "ranks": [2], "steps": 1, "warmup": 0},
        "profile": "always",
        "overhead": {"rounds": 2, "warmup": 0},
    }
    p = tmp_path / "bench.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_every_registered_defense_is_in_the_comparison(tmp_path):
    load_builtins()
    cfg, _, methods = build(yaml.safe_load(bench_yaml(tmp_path).read_text()), quick=True)
    names = {m["method"] for m in methods}
    for stage in ("alignment", "finetune", "post"):
        for e in DEFENSES[stage].entries():
            assert e.name in names or e.name == "none", e.name
    assert cfg.eval.max_new_tokens == 4
    assert cfg.finetune.runs["booster+sft"].alignment == "booster"
    assert cfg.post["sft_merged+safelora"].source == "sft_merged"


def test_missing_defense_options_name_the_bench_key(tmp_path):
    raw = yaml.safe_load(bench_yaml(tmp_path).read_text())
    del raw["bench"]["defense_options"]["random_perturbation"]
    from panacea.errors import ConfigError

    with pytest.raises(ConfigError, match="random_perturbation needs exactly one.*bench.defense_options"):
        build(raw)


def test_ratios_and_targets():
    metrics = {"results": [{"name": "sft", "harmful_score": 50.0}, {"name": "panacea", "harmful_score": 10.0}],
               "records": {"sft": {"step_seconds": 1.0, "peak_memory_gb": 2.0},
                           "panacea": {"step_seconds": 3.5, "peak_memory_gb": 2.2}, "aligned": {}}}
    rows = collect(metrics, [{"method": "sft", "stage": "finetune", "variant": "sft"},
                             {"method": "panacea", "stage": "finetune", "variant": "panacea"}])
    assert rows[1]["step_time_ratio"] == 3.5 and rows[1]["peak_memory_ratio"] == 1.1
    t = {x["what"]: x for x in check_targets(rows, {"model": "sft", "speedup": 6.0, "identical_fraction": 1.0})}
    assert not t["panacea step_time_ratio"]["met"] and t["panacea step_time_ratio"]["miss_by"] == pytest.approx(0.061, abs=1e-3)
    assert t["panacea peak_memory_ratio"]["met"] and t["generation speedup (sft model)"]["met"]


def test_bench_cli_end_to_end(tiny_dir, tmp_path, capsys):
    cfg = bench_yaml(tmp_path)
    out = tmp_path / "bench_results"
    assert main(["bench", str(cfg), f"model.name_or_path={tiny_dir}", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "expected wall time" in text and "bench: tiny (--quick)" in text
    res = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in res["methods"]}
    assert {"booster", "vaccine", "repnoise", "lisa", "panacea", "safety_mix", "safelora", "antidote"} <= set(rows)
    for m in ("booster", "panacea", "vaccine"):
        assert rows[m]["step_time_ratio"] > 0 and rows[m]["peak_memory_ratio"] > 0
        # the ratio is the interleaved measurement's, with its CPU ratio, what the passes allow and a flag
        o = res["overhead"]["methods"][m]
        assert rows[m]["step_time_ratio"] == o["step_time_ratio"] and rows[m]["ratio_flag"] == o["flag"]
        assert rows[m]["cpu_time_ratio"] > 0 and rows[m]["step_time_ratio_sequential"] > 0
    assert res["overhead"]["methods"]["sft"]["step_time_ratio"] == 1.0 and len(res["overhead"]["load_average_before"]) == 3
    for r in res["methods"]:
        assert 0 <= r["harmful_score"] <= 100
    g = res["generation_speedup"]
    assert g["prompts"] == 4 and g["speedup"] > 0 and 0 <= g["identical_fraction"] <= 1
    assert 0 < g["batched_prefill_seconds"] and 0 <= g["finished_row_steps_fraction"] < 1
    assert g["model"] == "sft" and [x["model"] for x in g["other_models"]] == ["aligned"]
    assert res["safety_coefficients"][0]["stage"] == "panacea"
    for f in ("report.md", "hs_vs_fa.png", "overhead.png", "safety_coefficients_panacea.png"):
        assert (out / f).stat().st_size > 100, f
    # ablations: one run per value, the main row as base, clamp activity and findings in the report
    abl = {(a["method"], a["option"], a["base"]): a for a in res["ablations"]}
    assert abl[("panacea", "perturb_every", True)]["value"] == 1
    assert abl[("panacea", "perturb_every", False)]["variant"] == "panacea@perturb_every-2"
    assert abl[("panacea", "perturb_every", False)]["epsilon_steps"] < abl[("panacea", "perturb_every", True)]["epsilon_steps"]
    assert {a["variant"] for a in res["ablations"] if a["option"] == "rho"} >= {"panacea@rho-0p5", "panacea@rho-2p0",
                                                                                "sft+ascent@rho-0p5"}
    assert all(0 <= a["clamp_active_fraction"] <= 1 for a in res["ablations"] if a["method"] == "panacea")
    text = (out / "report.md").read_text()
    assert "perturb_every 2 (vs 1)" in text and "ρ sweep" in text and "at the same ρ" in text and "Clamp" in text
    assert {(p["method"], p["seq_length"]) for p in res["scaling"]["points"]} == {(m, L) for m in ("sft", "panacea") for L in (16, 24)}
    assert "## Scaling" in text and (out / "scaling.png").stat().st_size > 100
    assert {p["method"] for p in res["profiles"]} >= {"panacea", "booster", "sft"} and "Where the time goes" in text
    (out / "hs_vs_fa.png").unlink()
    assert main(["plot", str(out / "results.json")]) == 0 and (out / "hs_vs_fa.png").exists()
    assert main(["bench", str(cfg), f"model.name_or_path={tiny_dir}", "--out", str(out)]) == 2
    assert "already holds bench results" in capsys.readouterr().err
    # --resume: every stage and evaluation is verified and kept, the bench's own measurements rerun
    first = json.loads((out / "results.json").read_text())
    assert main(["bench", str(cfg), f"model.name_or_path={tiny_dir}", "--quick", "--out", str(out), "--resume",
                 "bench.scaling=null", "bench.profile=never"]) == 0
    text = capsys.readouterr().out
    assert "nothing to do" in text and "--resume skips what is finished" in text
    again = json.loads((out / "results.json").read_text())
    timing = {"step_time_ratio", "cpu_time_ratio", "median_step_seconds", "ratio_flag"}  # remeasured on resume

    def results_only(rows):
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert again["resumed"] and not first["resumed"] and results_only(again["methods"]) == results_only(first["methods"])
    assert "of the resuming invocation" in (out / "report.md").read_text()
    assert main(["bench", str(cfg), "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "holds no interrupted bench" in capsys.readouterr().err


def test_bench_section_is_validated_before_anything_runs(tmp_path):
    from panacea.errors import ConfigError

    base = yaml.safe_load(bench_yaml(tmp_path).read_text())
    for bench_key, value, match in [
        ("ablations", {"nope": {"rho": [1]}}, "bench.ablations.nope: not a defense"),
        ("ablations", {"panacea": {"rho": 1.0}}, "bench.ablations.panacea.rho must be a non-empty list"),
        ("ablations", {"panacea": {"perturb_every": [0]}}, "perturb_every"),
        ("scaling", {"methods": ["sft"], "seq_lengths": [0]}, "bench.scaling.seq_lengths"),
        ("scaling", {"methods": ["nope"]}, "bench.scaling.methods"),
        ("profile", "sometimes", "bench.profile"),
        ("typo", 1, "bench.typo: unknown key"),
    ]:
        raw = {**base, "bench": {**base["bench"], bench_key: value}}
        with pytest.raises(ConfigError, match=match):
            build(raw)


def test_bench_overrides_edit_the_bench_section(tmp_path):
    raw = yaml.safe_load(bench_yaml(tmp_path).read_text())
    _, bench, methods = build(raw, quick=True, overrides=["bench.exclude=[vaccine,lisa]", "bench.quick_ablations=null"])
    assert not {"vaccine", "lisa"} & {m["method"] for m in methods} and bench["_ablations"] == []


def test_overrides_may_follow_options(tmp_path, capsys):
    cfg = bench_yaml(tmp_path)
    assert main(["bench", str(cfg), "--out", str(tmp_path / "o"), "bench.typo=1"]) == 2
    assert "bench.typo: unknown key" in capsys.readouterr().err  # the override reached the bench
    assert main(["bench", str(cfg), "--out", str(tmp_path / "o"), "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_finished_row_steps_by_hand():
    from panacea.bench import finished_row_steps

    # batch 2, longest prompts first: batches (prompt 2, prompt 0) and (prompt 1, prompt 3)
    prompt_lens, steps = [5, 3, 9, 1], [4, 10, 2, 10]
    # batch 1: max(2, 4) = 4 → 8 row-steps, 6 used; batch 2: max(10, 10) → 20, 20 used
    assert finished_row_steps(prompt_lens, steps, 2) == pytest.approx(1 - 26 / 28)
    assert finished_row_steps(prompt_lens, steps, 4) == pytest.approx(1 - 26 / 40)
    assert finished_row_steps(prompt_lens, steps, 1) == 0.0
    assert finished_row_steps([], [], 4) == 0.0


def test_ablation_findings_by_hand():
    from panacea.bench import ablation_findings

    def row(method, option, value, base, hs, fa, orr, **kw):
        return {"method": method, "option": option, "value": value, "base": base, "variant": f"{method}@{option}-{value}",
                "harmful_score": hs, "finetune_accuracy": fa, "over_refusal": orr, **kw}

    abl = [row("panacea", "perturb_every", 1, True, 40.0, 90.0, 5.0, train_seconds=100.0, step_time_ratio=1.8,
               clamp_active_fraction=0.0),
           row("panacea", "perturb_every", 4, False, 50.0, 88.0, 5.0, train_seconds=60.0, step_time_ratio=1.1,
               clamp_active_fraction=0.5),
           row("panacea", "rho", 0.8, True, 40.0, 90.0, 5.0), row("panacea", "rho", 1.6, False, 10.0, 60.0, 10.0),
           row("panacea", "rho", 3.2, False, 0.0, 30.0, 15.0), row("panacea", "rho", 6.4, False, 0.0, 20.0, 40.0),
           row("panacea", "lam", 0.001, True, 40.0, 90.0, 5.0), row("panacea", "lam", 1.0, False, 0.0, 70.0, 0.0),
           row("ascent", "rho", 1.6, False, 60.0, 90.0, 0.0)]
    rows = [{"method": "panacea", "harmful_score": 40.0, "finetune_accuracy": 90.0},
            {"method": "ascent", "harmful_score": 70.0, "finetune_accuracy": 91.0}]
    f = ablation_findings(abl, rows, {"panacea": 0.8, "ascent": 0.8})
    assert "panacea perturb_every 4 (vs 1): fine-tuning time 60 s vs 100 s (40 % saved), step 1.10× SFT vs 1.80×; " \
           "HS +10.0, FA -2.0 points." in f
    assert "panacea ρ sweep: over-refusal passes 20 % at ρ = 6.4 (OR 40.0 %, HS 0.0, FA 20.0)." in f
    assert any(x.startswith("panacea ρ sweep: task accuracy falls below half the base's at ρ = 3.2 (FA 30.0 vs 90.0")
               and x.endswith("before over-refusal passes 20 %.") for x in f)
    assert "panacea lam: 0.001 (base) → HS 40.0, FA 90.0; 1.0 → HS 0.0, FA 70.0." in f
    assert any(x.startswith("Panacea vs one-shot ascent") and "ρ 0.8: HS 40.0 vs 70.0" in x and "ρ 1.6: HS 10.0 vs 60.0" in x
               for x in f)
    assert any(x.startswith("Clamp") and "panacea@perturb_every-4 50 %" in x for x in f)


def test_dry_run_prints_the_plan_and_estimate_and_writes_nothing(tiny_dir, tmp_path, capsys, monkeypatch):
    cfg = bench_yaml(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "bench_results"
    assert main(["bench", str(cfg), f"model.name_or_path={tiny_dir}", "--quick", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[bench] plan: " in text and "panacea perturb_every=2" in text and f"output: {out} (new)" in text
    assert text.index("expected wall time") < text.index("dry run: nothing was written")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before
    # an earlier bench's folder with --force: the estimate comes first, and a dry run removes nothing
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"methods": []}))
    assert main(["bench", str(cfg), f"model.name_or_path={tiny_dir}", "--dry-run", "--force", "--out", str(out)]) == 0
    assert "replaces the bench results there (--force)" in capsys.readouterr().out
    assert (out / "results.json").exists()


def test_a_config_without_a_bench_section_is_named(tmp_path, capsys):
    assert main(["bench", str(TINY), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{TINY} has no `bench:` section" in err and "panacea run" in err
    assert not (tmp_path / "o").exists()
