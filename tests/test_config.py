"""Config loading: every shipped YAML validates; bad keys and values name the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from panacea.config import load_config, to_dict
from panacea.errors import ConfigError
from panacea.pipeline import Plan

ROOT = Path(__file__).parents[1] / "configs"
#: experiment configs (configs/accelerate/ holds accelerate launcher presets, tested elsewhere)
CONFIGS = sorted(p for p in ROOT.rglob("*.yaml") if "accelerate" not in p.relative_to(ROOT).parts)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    if path.name == "bench.yaml":  # a base experiment + a bench section (panacea.bench)
        from panacea.bench import build
        from panacea.config import read_yaml

        for quick in (False, True):
            Plan(build(read_yaml(path), quick=quick)[0])
        return
    from panacea.config import read_yaml

    if "sweep" in read_yaml(path):
        from panacea.sweep import validate_sweep  # an experiment (or sweep.base) + a sweep section

        assert validate_sweep(path)  # every point's config, names and options (no data: GPU presets)
        return
    cfg, _ = load_config(path)
    Plan(cfg)  # defenses, options and judge resolve
    again, _ = load_config(None, [])  # defaults validate too
    assert again.name


def test_overrides_and_float_strings(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nfinetune:\n  runs:\n    p: {defense: panacea}\n")
    cfg, _ = load_config(p, ["finetune.runs.p.lam=1e-2", "finetune.data.poison_ratio=0.3", "seed=7"])
    plan = Plan(cfg)
    assert plan.runs["p"].options.lam == 0.01
    assert cfg.finetune.data.poison_ratio == 0.3 and cfg.seed == 7


def test_resolved_config_round_trips(tmp_path):
    cfg, _ = load_config(Path(__file__).parents[1] / "configs" / "demo.yaml")
    import yaml

    p = tmp_path / "resolved.yaml"
    p.write_text(yaml.safe_dump(to_dict(cfg)))
    again, _ = load_config(p)
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["finetune.data.poison_ratio=1.5"], r"finetune\.data\.poison_ratio must be in \[0, 1\]"),
        (["finetune.data.poison_ratio=-0.1"], r"finetune\.data\.poison_ratio"),
        (["finetune.data.nn=3"], r"unknown config key 'finetune\.data\.nn'"),
        (["modle.dtype=float32"], r"unknown config key 'modle'"),
        (["model.dtype=int8"], r"model\.dtype must be one of"),
        (["lora.r=abc"], r"lora\.r must be an integer"),
        (["seed"], r"must look like dotted\.key=value"),
        (["finetune.runs.sft.defense=panacae"], r"unknown finetune defense 'panacae' \(did you mean panacea( or panacea_avg)?\?\)"),
        (["finetune.runs.sft.rho=2"], r"unknown config key 'finetune\.runs\.sft\.rho'"),
        (["finetune.runs.sft.poison_ratio=2"], r"finetune\.runs\.sft\.poison_ratio must be in \[0, 1\]"),
        (["eval.judge=gpt"], r"unknown judge 'gpt'"),
        (["post.x.from=nope"], r"post\.x\.from: 'nope' is not a fine-tuning run"),
        (["finetune.runs.p.defense=panacea", "finetune.runs.p.rho=0"], r"finetune\.runs\.p\.rho must be > 0 for panacea"),
        (["finetune.train.learning_rate=0"], r"finetune\.train\.learning_rate must be > 0"),
        (["finetune.runs.sft.train.learning_rate=-1"], r"finetune\.runs\.sft\.train\.learning_rate must be > 0"),
        (["post.r.defense=random_perturbation"], r"post\.r\.std or norm"),
    ],
)
def test_bad_values_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        cfg, _ = load_config(None, overrides)
        Plan(cfg)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(empty)
