"""The run directory's bookkeeping without a model: config ownership, manifests, atomic writes,
locks, token redaction, and the resumable state of checkpoints and auxiliary loaders."""

from __future__ import annotations

import json

import pytest
import torch

from panacea.checkpoint import MARKER, latest_checkpoint, load_state, save_state
from panacea.errors import UserError
from panacea.rundir import (atomic_path, config_digest, first_difference, open_run_dir, read_marker, redact,
                            verify_manifest, write_atomic, write_manifest)
from panacea.training import CyclingLoader

CFG = {"name": "x", "seed": 1, "output_dir": "a", "finetune": {"data": {"n": 16}, "runs": {"sft": {"defense": "sft"}}}}


def changed(**kw):
    import copy

    cfg = copy.deepcopy(CFG)
    cfg["finetune"]["data"].update(kw)
    return cfg


def test_a_run_directory_belongs_to_one_config(tmp_path):
    run = tmp_path / "run"
    with open_run_dir(run, CFG, force=False) as rd:
        assert rd.mode == "new" and (run / "config.yaml").exists()
        assert json.loads((run / "run.json").read_text())["config_sha256"] == config_digest(CFG)
    with open_run_dir(run, {**CFG, "output_dir": "moved"}, force=False) as rd:  # output_dir does not count
        assert rd.mode == "resume"
        rd.finish("metrics.json", {"results": []})
    with open_run_dir(run, CFG, force=False) as rd:
        assert rd.mode == "complete" and rd.completed("metrics.json") == {"results": []}
    # another config takes the run over (its stages are reused by key, stages.py): the old results go
    with open_run_dir(run, changed(n=12), force=False) as rd:
        assert rd.mode == "resume" and rd.changed == "finetune.data.n: 16 → 12"
        assert not (run / "metrics.json").exists() and not (run / "status.json").exists()
        assert read_marker(run)["config_sha256"] == config_digest(changed(n=12))
    with open_run_dir(run, changed(n=12), force=False) as rd:
        assert rd.mode == "resume" and rd.changed is None
    with open_run_dir(run, changed(n=11), force=True) as rd:
        assert rd.mode == "new" and not (run / "metrics.json").exists()
    (run / "config.yaml").write_text("name: edited\n")
    with pytest.raises(UserError, match="config.yaml was changed or damaged"):
        open_run_dir(run, changed(n=11), force=False)


def test_a_kill_while_the_config_changes_leaves_the_new_config(tmp_path):
    run = tmp_path / "run"
    with open_run_dir(run, CFG, force=False):
        pass
    import yaml

    (run / "config.yaml").write_text(yaml.safe_dump(changed(n=12)))  # written first; the marker not yet
    with open_run_dir(run, changed(n=12), force=False) as rd:
        assert rd.mode == "resume" and rd.changed == "an interrupted change of config"
    assert read_marker(run)["config_sha256"] == config_digest(changed(n=12))


def test_other_folders_and_busy_runs_are_refused(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff")
    for force in (False, True):
        with pytest.raises(UserError, match="not a panacea run"):
            open_run_dir(other, CFG, force=force)
    assert (other / "cat.jpg").exists()
    with open_run_dir(tmp_path / "run", CFG, force=False):
        with pytest.raises(UserError, match="another panacea process is using"):
            open_run_dir(tmp_path / "run", CFG, force=True)


def test_first_difference_names_the_dotted_key():
    assert first_difference(CFG, CFG) is None
    assert first_difference(CFG, changed(n=3)) == "finetune.data.n"
    assert first_difference(CFG, changed(seed=3)) == "finetune.data.seed"
    assert first_difference(CFG, {**CFG, "output_dir": "elsewhere"}) is None


def test_manifest_checks_outputs_and_inputs(tmp_path):
    run = tmp_path
    upstream = run / "alignment" / "adapter"
    write_atomic(upstream / "adapter_model.safetensors", "weights")
    stage = run / "finetune" / "sft"
    write_atomic(stage / "adapter" / "adapter_model.safetensors", "more weights")
    write_atomic(stage / "record.json", "{}")
    files = [stage / "adapter" / "adapter_model.safetensors", stage / "record.json"]
    inputs = [upstream / "adapter_model.safetensors"]
    assert not verify_manifest(run, stage, inputs)  # not done yet
    write_manifest(run, stage, files, inputs)
    assert verify_manifest(run, stage, inputs)
    assert not verify_manifest(run, stage, [])  # built from other inputs
    write_atomic(upstream / "adapter_model.safetensors", "retrained")
    assert not verify_manifest(run, stage, inputs)
    write_atomic(upstream / "adapter_model.safetensors", "weights")
    (stage / "record.json").write_text("{ }")
    assert not verify_manifest(run, stage, inputs)


def test_atomic_path_replaces_whole_folders_or_nothing(tmp_path):
    dest = tmp_path / "adapter"
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            (tmp / "a").write_text("half")
            raise RuntimeError("killed")
    assert (dest / "a").read_text() == "1"
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in dest.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporaries left


def test_tokens_in_the_environment_are_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    assert redact("url?token=hf_secret_value_123") == "url?token=<redacted>"
    write_atomic(tmp_path / "log.txt", "hf_secret_value_123")
    assert (tmp_path / "log.txt").read_text() == "<redacted>"


def test_cycling_loader_resumes_at_the_same_batch():
    data = [{"x": torch.tensor([i])} for i in range(10)]

    def collate(rows):
        return torch.cat([r["x"] for r in rows]).tolist()

    a = CyclingLoader(data, 3, seed=5, collate_fn=collate)
    for _ in range(5):  # into the second pass (4 batches per pass)
        a.next()
    state = a.state_dict()
    expected = [a.next() for _ in range(6)]
    b = CyclingLoader(data, 3, seed=5, collate_fn=collate)
    b.load_state_dict(state)
    assert [b.next() for _ in range(6)] == expected


def test_checkpoint_state_round_trip_and_newest_complete_checkpoint(tmp_path):
    state = {"epsilon": [torch.randn(3, 2), torch.zeros(4)], "stats": {"steps": 3, "rate": 0.5},
             "recent": [[torch.ones(2)]], "loader": None, "mode": "user"}
    save_state(tmp_path, state)
    back = load_state(tmp_path)
    assert back["stats"] == state["stats"] and back["mode"] == "user" and back["loader"] is None
    assert all(torch.equal(x, y) for x, y in zip(back["epsilon"], state["epsilon"]))
    assert torch.equal(back["recent"][0][0], torch.ones(2))

    from panacea.rundir import sha256_file

    stage = tmp_path / "stage"
    for step in (2, 4, 6):
        ckpt = stage / f"checkpoint-{step}"
        write_atomic(ckpt / "optimizer.pt", f"state {step}")
        if step != 6:  # checkpoint-6 was being written when the run was killed
            write_atomic(ckpt / MARKER, json.dumps({"step": step, "files": {"optimizer.pt": sha256_file(ckpt / "optimizer.pt")}}))
    (stage / "checkpoint-4" / "optimizer.pt").write_text("truncat")  # damaged after it was completed
    assert latest_checkpoint(stage) == stage / "checkpoint-2"
    assert sorted(p.name for p in stage.iterdir()) == ["checkpoint-2"]
