"""Launching on several processes: the accelerate presets, ``panacea run --launcher accelerate``
(its one-line errors, exit code 2) and one real two-process run of the tiny pipeline (CPU, gloo).

Preset coverage on this CPU-only machine: ddp.yaml is launched for real below (2 processes through
torchrun; without a GPU each process uses the CPU and gloo); single_gpu.yaml was launched by hand
(one process); fsdp.yaml, zero2.yaml and zero3.yaml are only checked for validity (accelerate's own
config loader and launch-argument validation, and for FSDP the plugin it builds from them) —
accelerate enables FSDP only on GPU devices and DeepSpeed is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from panacea.cli import main

ROOT = Path(__file__).parents[2]
PRESETS = ROOT / "configs" / "accelerate"
TINY = str(ROOT / "configs" / "tiny.yaml")
EXPECTED = {
    "single_gpu.yaml": "NO",
    "ddp.yaml": "MULTI_GPU",
    "fsdp.yaml": "FSDP",
    "zero2.yaml": "DEEPSPEED",
    "zero3.yaml": "DEEPSPEED",
}


def test_every_preset_is_listed():
    assert sorted(p.name for p in PRESETS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_is_a_valid_accelerate_config(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = str(PRESETS / name)
    cfg = load_config_from_file(path)
    assert cfg.distributed_type.value == EXPECTED[name]
    argv = ["--config_file", path, "--num_processes", "2", "-m", "panacea", "run", "x"]
    args = launch_command_parser().parse_args(argv)
    args, _, _ = _validate_launch_command(args)
    assert args.num_processes == 2  # the command line overrides the preset's count
    if name == "fsdp.yaml":
        assert args.use_fsdp and int(args.fsdp_version) == 2
        assert args.fsdp_auto_wrap_policy == "TRANSFORMER_BASED_WRAP"
        assert args.fsdp_transformer_layer_cls_to_wrap == "LlamaDecoderLayer"
        assert args.fsdp_reshard_after_forward in (True, "true", "FULL_SHARD")
    if name.startswith("zero"):
        assert args.use_deepspeed and int(args.zero_stage) == int(name[4])


def test_fsdp_preset_builds_an_fsdp2_plugin(monkeypatch):
    """The environment `accelerate launch` derives from fsdp.yaml gives accelerate's FSDP2 plugin."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(PRESETS / "fsdp.yaml"), "-m", "panacea"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    for k, v in env.items():
        if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP")):
            monkeypatch.setenv(k, v)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert "LlamaDecoderLayer" in plugin.transformer_cls_names_to_wrap


def _run_cli(capsys, *argv):
    code = main(["run", TINY, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_missing_preset_is_one_line_exit_2(capsys):
    code, err = _run_cli(capsys, "--launcher", "accelerate", "--num-processes", "2",
                         "--accelerate-config", "configs/accelerate/nope.yaml")
    assert code == 2 and len(err) == 1
    assert "--accelerate-config: no such file 'configs/accelerate/nope.yaml'" in err[0]


def test_world_size_not_dividing_the_global_batch_is_one_line_exit_2(capsys):
    code, err = _run_cli(capsys, "alignment.train.global_batch_size=10", "--launcher", "accelerate",
                         "--num-processes", "4")
    assert code == 2 and len(err) == 1
    assert "alignment.train.global_batch_size: 10 is not divisible by 4 processes" in err[0]


def test_process_flags_need_the_launcher(capsys):
    code, err = _run_cli(capsys, "--num-processes", "2")
    assert code == 2 and len(err) == 1 and "need --launcher accelerate" in err[0]


def test_one_process_preset_refuses_several_processes(capsys):
    code, err = _run_cli(capsys, "--launcher", "accelerate", "--num-processes", "2",
                         "--accelerate-config", str(PRESETS / "single_gpu.yaml"))
    assert code == 2 and len(err) == 1 and "runs one process" in err[0]


def test_global_batch_size_sets_the_per_process_batch():
    from panacea.config import TrainSettings
    from panacea.errors import ConfigError
    from panacea.training import per_device_batch_size

    t = TrainSettings(global_batch_size=16, gradient_accumulation_steps=2)
    assert [per_device_batch_size(t, n) for n in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ConfigError, match=r"train.global_batch_size: 16 is not divisible by 3 processes"):
        per_device_batch_size(t, 3)
    assert per_device_batch_size(TrainSettings(per_device_train_batch_size=5), 8) == 5


def test_launch_command_reruns_the_same_arguments():
    from panacea.cli import _parser, launch_command

    args = _parser().parse_args(["run", "c.yaml", "seed=1", "--force", "--launcher", "accelerate",
                                 "--num-processes", "8", "--accelerate-config", "configs/accelerate/fsdp.yaml"])
    cmd = launch_command(args, 8)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "8"
    assert cmd[cmd.index("--config_file") + 1] == "configs/accelerate/fsdp.yaml"
    assert cmd[cmd.index("-m", 3):] == ["-m", "panacea", "run", "c.yaml", "seed=1", "--force"]


def test_two_process_run_of_the_tiny_pipeline(tiny_dir, tmp_path, capfd, monkeypatch):
    """`panacea run --launcher accelerate --num-processes 2` end to end: every stage on 2 processes,
    one results table, run files written once (by the main process), evaluation split and gathered."""
    out = tmp_path / "run"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    code = main(["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={out}", "post={}",
                 "alignment.data.n=8", "alignment.benign=null", "finetune.data.n=8",
                 "eval.harmful.n=3", "eval.utility.n=2", "eval.benign=null",
                 "alignment.train.global_batch_size=8", "finetune.train.global_batch_size=8",
                 "--launcher", "accelerate", "--num-processes", "2", "--accelerate-config", str(PRESETS / "ddp.yaml")])
    stdout, stderr = capfd.readouterr()
    assert code == 0, stderr[-3000:]
    assert stdout.count("results: tiny") == 1  # one table, from the main process
    assert stdout.count("[1/3] alignment aligned") == 1
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "done"
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "timings.json").read_text())["machine"]["processes"] == 2  # machine facts apart
    assert [r["name"] for r in metrics["results"]] == ["aligned", "sft", "panacea"]
    assert all(r["n_harmful_prompts"] == 3 and r["n_task_items"] == 2 for r in metrics["results"])
    for stage in ("alignment", "finetune/sft", "finetune/panacea"):
        assert (out / stage / "adapter" / "adapter_model.safetensors").is_file()
        assert (out / stage / "done.json").is_file()
    assert (out / "finetune" / "panacea" / "panacea_epsilon.safetensors").is_file()
    lines = (out / "generations" / "panacea.jsonl").read_text().splitlines()
    assert len(lines) == 3 + 2  # harmful + task answers, gathered from both processes, once
    assert not [p for p in out.rglob(".*") if p.name != ".lock"]  # no temporaries left behind
