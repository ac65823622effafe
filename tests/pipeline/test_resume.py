"""Runs that survive: kill-and-resume, determinism, NaN stops, free-space check, no token leaks.

All on the tiny random model and configs/tiny.yaml. The fine-tuning runs get 12 steps (batch 4,
3 epochs) so a run can be killed between checkpoints; Panacea averages its last 3 ε so the
resumed ε window is exercised too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from panacea.checkpoint import is_complete
from panacea.cli import main

ROOT = Path(__file__).parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")
STEPS = ["finetune.train.per_device_train_batch_size=4", "finetune.train.num_train_epochs=3",
         "finetune.runs.panacea.defense=panacea_avg", "finetune.runs.panacea.k=3"]
TOKEN = "hf_planted_" + "Zq7" * 12  # a fake hub token in the environment; it must never reach the run
TIMING = {"train_seconds", "step_seconds", "peak_memory_gb", "eval_seconds"}


def args(tiny_dir, out, *extra):
    return ["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={out}", *STEPS, *extra]


def results(out: Path) -> list[dict]:
    """metrics.json results without the timing and memory fields."""
    rows = json.loads((out / "metrics.json").read_text())["results"]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def tensors(out: Path) -> dict:
    """Every saved adapter and ε of a run (checkpoints and the cache's links to them excluded), by relative path."""
    found = {}
    for p in sorted(out.rglob("*.safetensors")):
        rel = p.relative_to(out)
        if not any(part.startswith("checkpoint-") for part in rel.parts) and rel.parts[0] != "cache":
            found[str(rel)] = load_file(p)
    return found


def assert_same_run(a: Path, b: Path, adapters: int = 6) -> None:
    assert results(a) == results(b)
    ta, tb = tensors(a), tensors(b)
    assert sorted(ta) == sorted(tb) and len(ta) >= adapters
    for rel in ta:
        assert sorted(ta[rel]) == sorted(tb[rel]), rel
        for k in ta[rel]:
            assert torch.equal(ta[rel][k], tb[rel][k]), (rel, k)
    for g in sorted((a / "generations").glob("*.jsonl")):
        assert g.read_text() == (b / "generations" / g.name).read_text(), g.name


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory):
    """configs/tiny.yaml, uninterrupted, a checkpoint after every fine-tuning step, all kept."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(args(tiny_dir, out, "finetune.train.save_steps=1", "finetune.train.keep_checkpoints=true")) == 0
    return out


def test_same_config_and_seed_give_identical_results(reference, tiny_dir, tmp_path):
    out = tmp_path / "again"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", TOKEN)
        assert main(args(tiny_dir, out, "finetune.train.save_steps=1", "finetune.train.keep_checkpoints=true")) == 0
    assert_same_run(reference, out)
    # the checkpoints were kept (keep_checkpoints), complete, and nothing in the run holds the token
    assert [c.name for c in sorted((out / "finetune" / "panacea").glob("checkpoint-*"))] == ["checkpoint-12"]
    assert is_complete(out / "finetune" / "panacea" / "checkpoint-12")
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 40
    leaks = [str(p) for p in files if TOKEN.encode() in p.read_bytes()]
    assert not leaks


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PANACEA_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_TOKEN=TOKEN, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    return env


@pytest.fixture(scope="module")
def resumed(reference, tiny_dir, tmp_path_factory):
    """A run SIGKILLed in the middle of Panacea's fine-tuning, then resumed in this process."""
    out = tmp_path_factory.mktemp("killed") / "run"
    cmd = [sys.executable, "-m", "panacea", *args(tiny_dir, out, "finetune.train.save_steps=2")]
    log = open(out.parent / "killed.log", "w")
    proc = subprocess.Popen(cmd, env=_subprocess_env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    stage = out / "finetune" / "panacea"
    deadline, killed = time.monotonic() + 240, False
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if any(stage.glob("checkpoint-*/panacea_checkpoint.json")):  # a complete checkpoint
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and not killed:
            proc.kill()
        proc.wait()
        log.close()
    assert killed and proc.returncode == -signal.SIGKILL, (out.parent / "killed.log").read_text()[-2000:]
    assert (out / "finetune" / "sft" / "done.json").exists()  # a finished stage survives
    assert not (stage / "done.json").exists() and not (out / "metrics.json").exists()
    assert json.loads((out / "status.json").read_text())["state"] == "running"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", TOKEN)
        code = main(args(tiny_dir, out, "finetune.train.save_steps=2"))
    assert code == 0
    return out


def test_killed_run_resumes_to_the_same_result(reference, resumed):
    record = json.loads((resumed / "finetune" / "panacea" / "record.json").read_text())
    assert record["resumed_from_step"] >= 2 and record["steps"] == 12
    assert_same_run(reference, resumed)
    assert json.loads((resumed / "status.json").read_text())["state"] == "done"
    assert not list(resumed.rglob("checkpoint-*"))  # deleted once each stage was done
    assert not [p for p in resumed.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]


def test_damaged_stage_is_redone_and_the_rest_skipped(reference, resumed, tiny_dir, capsys):
    adapter = resumed / "post" / "sft+random" / "adapter" / "adapter_model.safetensors"
    data = bytearray(adapter.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in a finished stage's output
    adapter.write_bytes(bytes(data))
    (resumed / "metrics.json").unlink()
    capsys.readouterr()
    assert main(args(tiny_dir, resumed, "finetune.train.save_steps=2")) == 0
    out = capsys.readouterr().out
    assert "fine-tuning panacea: done (outputs verified)" in out
    assert "post-fine-tuning sft+random: random_perturbation on sft" in out  # redone
    assert "sft+ascent: done (outputs verified)" in out
    assert_same_run(reference, resumed)


# --------------------------------------------------------------------------- numerical faults

LEAN = ["alignment.defense=none", "post={}", "eval.variants=[base]", "finetune.train.per_device_train_batch_size=4",
        "finetune.train.num_train_epochs=2"]


def one_line_error(capsys) -> str:
    """The error line (training prints progress bars to stderr before it)."""
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("panacea: error:"), err
    return err


def test_nan_in_panaceas_perturbed_loss_stops_with_the_term(tiny_dir, tmp_path, monkeypatch, capsys):
    import panacea.defenses.finetune.panacea as method

    real, calls = method.perturbed, []

    @contextlib.contextmanager
    def nan_at_step_3(params, deltas):
        calls.append(1)
        if len(calls) == 3:
            deltas = [torch.full_like(d, float("nan")) for d in deltas]
        with real(params, deltas):
            yield

    monkeypatch.setattr(method, "perturbed", nan_at_step_3)
    out = tmp_path / "nan"
    code = main(["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={out}", *LEAN,
                 "finetune.runs={panacea: {defense: panacea, harmful_batch_size: 4, "
                 "harmful_data: {name: pyrit_harmful, start: 10, n: 8}}}", "finetune.train.save_steps=2"])
    assert code == 2
    err = one_line_error(capsys)
    ckpt = out / "finetune" / "panacea" / "checkpoint-2"
    assert f"error: fine-tuning panacea: non-finite h(w+ε) = nan at step 3; last good checkpoint: {ckpt} " in err
    assert is_complete(ckpt)
    assert all(torch.isfinite(t).all() for t in load_file(ckpt / "adapter_model.safetensors").values())
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "h(w+ε)" in status["error"]
    assert not (out / "metrics.json").exists() and not (out / "finetune" / "panacea" / "done.json").exists()


def test_exploding_sft_stops_before_the_weights_turn_nan(tiny_dir, tmp_path, capsys):
    out = tmp_path / "lr"
    code = main(["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={out}", *LEAN,
                 "finetune.runs={sft: {defense: sft}}", "finetune.train.learning_rate=1e30"])
    assert code == 2
    err = one_line_error(capsys)
    assert "fine-tuning sft: non-finite" in err and "at step 2; last good checkpoint:" in err, err
    ckpt = out / "finetune" / "sft" / "checkpoint-1"  # saved on the spot (save_steps is 0)
    assert is_complete(ckpt)
    assert all(torch.isfinite(t).all() for t in load_file(ckpt / "adapter_model.safetensors").values())


# --------------------------------------------------------------------------- disk


def test_too_little_disk_fails_before_training(tiny_dir, tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 2**20, 2**20))
    out = tmp_path / "full"
    code = main(["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={out}", *LEAN,
                 "finetune.runs={sft: {defense: sft}}", "finetune.train.save_steps=1"])
    assert code == 2
    err = one_line_error(capsys)
    assert f"not enough free disk space in '{out / 'finetune' / 'sft'}' for fine-tuning sft: need ~16 MB, have 1 MB" in err
    assert not (out / "finetune" / "sft" / "adapter").exists()
    assert json.loads((out / "status.json").read_text())["state"] == "failed"


# --------------------------------------------------------------------------- other trainers' state

RESUMABLE = {
    # Booster: the harmful loader's position (6 alignment steps)
    "booster": ["alignment.defense=booster", "alignment.harmful_batch_size=4", "alignment.lam=1",
                "alignment.harmful_data={name: pyrit_harmful, start: 20, n: 8}",
                "alignment.train.per_device_train_batch_size=4", "alignment.train.save_steps=1",
                "finetune.runs={sft: {defense: sft}}", "eval.variants=[aligned]"],
    # Lisa: phase, both anchors, stats and the alignment loader (8 steps, phases of 2)
    "lisa": ["alignment.defense=none", "finetune.train.per_device_train_batch_size=4", "finetune.train.num_train_epochs=2",
             "finetune.train.save_steps=1", "finetune.runs={lisa: {defense: lisa, alignment_steps: 2, finetune_steps: 2, "
             "proximal_warmup_fraction: 0, alignment_batch_size: 4, alignment_data: {name: refusals, n: 16}}}",
             "eval.variants=[lisa]"],
}


@pytest.mark.parametrize("defense", sorted(RESUMABLE))
def test_interrupted_stage_resumes_exactly(defense, tiny_dir, tmp_path, monkeypatch, capsys):
    from panacea.checkpoint import CheckpointState

    common = ["run", TINY, f"model.name_or_path={tiny_dir}", "post={}", "eval.benign=null", *RESUMABLE[defense]]
    assert main([*common, f"output_dir={tmp_path / 'ref'}"]) == 0
    real = CheckpointState.on_save

    def interrupt_after_step_3(self, args, state, control, **kw):
        real(self, args, state, control, **kw)
        if state.global_step == 3:
            raise KeyboardInterrupt  # Ctrl-C right after checkpoint-3 is complete

    monkeypatch.setattr(CheckpointState, "on_save", interrupt_after_step_3)
    assert main([*common, f"output_dir={tmp_path / 'cut'}"]) == 130
    monkeypatch.setattr(CheckpointState, "on_save", real)
    capsys.readouterr()
    assert main([*common, f"output_dir={tmp_path / 'cut'}"]) == 0
    assert "resuming from checkpoint-3" in capsys.readouterr().out
    assert_same_run(tmp_path / "ref", tmp_path / "cut", adapters=1)
