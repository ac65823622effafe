"""The Python API (docs/api.md): a light ``import panacea``, ``load_config`` as ``panacea validate``,
and examples/api_trainer.py, Panacea's Trainer in a script of one's own, on the tiny model.
``run_experiment`` runs configs/examples/own_task.yaml in tests/test_own_task.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import panacea
from panacea.errors import ConfigError, DataError

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def test_import_is_light_and_names_resolve_lazily():
    code = ("import sys, panacea; heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
            "print(heavy, 'PanaceaTrainer' in dir(panacea))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "[] True", out.stderr
    from panacea.defenses.alignment.booster import BoosterTrainer
    from panacea.defenses.finetune.panacea import PanaceaConfig, PanaceaTrainer

    assert panacea.PanaceaTrainer is PanaceaTrainer and panacea.PanaceaConfig is PanaceaConfig
    assert panacea.BoosterTrainer is BoosterTrainer
    for name in panacea.__all__:
        assert getattr(panacea, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        panacea.nope  # noqa: B018


def test_load_config_resolves_and_validates(tiny_dir, tmp_path):
    model = f"model.name_or_path={tiny_dir}"
    cfg = panacea.load_config(TINY, [model, "finetune.data.n=12", "output_dir=/elsewhere"], output_dir=tmp_path / "x")
    assert cfg.finetune.data.n == 12 and cfg.output_dir == str((tmp_path / "x").resolve())  # the argument wins
    again = panacea.load_config(cfg, ["finetune.data.poison_ratio=0.5"], check_data=False)
    assert again.finetune.data.n == 12 and again.finetune.data.poison_ratio == 0.5
    assert panacea.load_config({"name": "d", "finetune": {"data": {"n": 7}}}, check_data=False).finetune.data.n == 7
    with pytest.raises(ConfigError, match="finetune.data.poison_ratio must be in"):
        panacea.load_config(TINY, [model, "finetune.data.poison_ratio=2"])
    with pytest.raises(ConfigError, match="finetune.data.task.path: the dataset 'sentiment' reads no file"):
        panacea.load_config(TINY, [model, "finetune.data.task.path=my.jsonl"])
    # check_data=False reads no data file; the default does, as `panacea validate`
    missing = [model, "eval.harmful={name: jsonl, path: /nonexistent/h.jsonl}"]
    assert panacea.load_config(TINY, missing, check_data=False).eval.harmful.path == "/nonexistent/h.jsonl"
    with pytest.raises(DataError, match="/nonexistent/h.jsonl"):
        panacea.load_config(TINY, missing)
    with pytest.raises(ConfigError, match="overrides must be a list"):
        panacea.load_config(TINY, "finetune.data.n=3")


def test_api_trainer_example_runs_panacea_in_a_plain_script(tiny_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("api_trainer", ROOT / "examples" / "api_trainer.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "api"
    record = example.main(["--model", str(tiny_dir), "--max-steps", "3", "--harmful-n", "8", "--output-dir", str(out)])
    assert record["epsilon_steps"] == 3 and record["epsilon_applied"] is True
    assert record["epsilon_norm"] == pytest.approx(1.0, rel=1e-4)  # ‖ε‖ = ρ
    eps = load_file(out / "panacea_epsilon.safetensors")
    lora = load_file(out / "adapter" / "adapter_model.safetensors")
    assert eps and all("lora_" in k for k in eps) and len(lora) == len(eps)
    assert "adapter →" in capsys.readouterr().out
