"""Issue 19's attack, end to end through the CLI, in tmp_path only: bounded reads (FIFO, oversized
files), broken model folders, bad environment variables, post-fine-tuning fault guards, empty
evaluation sets, and byte-identical ``metrics.json`` for the same seed (timings in timings.json)
with ``~`` and ``$VARS`` in output_dir landing in one place."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from panacea.cli import main
from panacea.data.base import DataSpec
from panacea.data.files import load_jsonl
from panacea.errors import DataError

TINY = str(Path(__file__).parents[2] / "configs" / "tiny.yaml")
SMALL = ["alignment.defense=none", "finetune.runs={sft: {defense: sft}}", "post={}", "eval.benign=null",
         "eval.utility=null", "eval.harmful.n=2", "eval.max_new_tokens=4", "finetune.data.n=8"]


def one_line_error(capsys) -> str:
    """The error line of a failed command (a run's progress bars may precede it on stderr)."""
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "panacea: error:" in line or "Traceback" in line]
    assert len(errors) == 1 and err.endswith(errors[0]) and errors[0].startswith("panacea: error:"), err
    return errors[0]


def within(seconds: float, fn, *args):
    """``fn(*args)`` in a thread; a call still running after ``seconds`` fails the test (no hang)."""
    out = {}

    def target():
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} blocked for more than {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


# --------------------------------------------------------------------------- bounded reads


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_is_refused_without_hanging(tmp_path, capsys):
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="FIFO"):
        within(10, load_jsonl, DataSpec(name="jsonl", path=str(fifo)))
    cfg = tmp_path / "cfg.yaml"
    os.mkfifo(cfg)
    assert within(10, main, ["validate", str(cfg)]) == 2
    assert "FIFO" in one_line_error(capsys)


def test_data_files_have_a_size_cap_a_config_can_raise(tmp_path, tiny_dir, capsys):
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"instruction": f"q{i}", "output": "a" * 40}) + "\n" for i in range(60)))
    size = big.stat().st_size
    with pytest.raises(DataError, match=f"{size} bytes, more than the limit of 1000 .*data.max_bytes"):
        load_jsonl(DataSpec(name="jsonl", path=str(big), max_bytes=1000))
    assert len(load_jsonl(DataSpec(name="jsonl", path=str(big), max_bytes=size))) == 60
    base = ["validate", TINY, f"model.name_or_path={tiny_dir}", "eval.harmful.name=jsonl", f"eval.harmful.path={big}"]
    assert main([*base, "eval.harmful.max_bytes=1000"]) == 2
    assert f"cannot read data file {big}: {size} bytes, more than the limit of 1000" in one_line_error(capsys)
    assert main([*base, "eval.harmful.max_bytes=0"]) == 2
    assert "eval.harmful.max_bytes must be ≥ 1" in one_line_error(capsys)
    folder = tmp_path / "adir"
    folder.mkdir()
    with pytest.raises(DataError, match="is a folder, not a regular file"):
        load_jsonl(DataSpec(name="jsonl", path=str(folder)))


# --------------------------------------------------------------------------- broken models, environment


def broken_copies(tiny_dir, root: Path) -> dict:
    empty = root / "empty"
    empty.mkdir()
    trunc = root / "truncated"
    shutil.copytree(tiny_dir, trunc)
    with open(trunc / "model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    garbage = root / "garbage_tokenizer"
    shutil.copytree(tiny_dir, garbage)
    (garbage / "tokenizer.json").write_bytes(bytes(range(128, 256)) * 4)
    return {empty: "is empty", trunc: "model.safetensors in the model folder .* is truncated",
            garbage: "cannot load the tokenizer from the model folder"}


def test_broken_model_folders_give_one_line_naming_the_folder(tiny_dir, tmp_path, capsys):
    import re

    for folder, what in broken_copies(tiny_dir, tmp_path).items():
        for cmd in ("validate", "run"):
            out = tmp_path / f"run-{folder.name}"
            code = main([cmd, TINY, f"model.name_or_path={folder}", f"output_dir={out}", *SMALL])
            err = one_line_error(capsys)
            assert code == 2 and str(folder) in err and re.search(what, err), err
            assert not out.exists()  # refused before a run directory is made


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1e3", "99999"])
def test_panacea_threads_is_validated(value, tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PANACEA_THREADS", value)
    out = tmp_path / "run"
    assert main(["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={out}", *SMALL]) == 2
    assert "PANACEA_THREADS must be a whole number of threads" in one_line_error(capsys)
    assert not out.exists()
    assert main(["validate", TINY, f"model.name_or_path={tiny_dir}"]) == 2
    assert f"PANACEA_THREADS must be a whole number of threads from 1 to 4096, got {value!r}" in one_line_error(capsys)


def test_panacea_cache_is_validated(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PANACEA_CACHE", "$PANACEA_TEST_UNSET_VARIABLE/cache")
    monkeypatch.delenv("PANACEA_TEST_UNSET_VARIABLE", raising=False)
    assert main(["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={tmp_path / 'run'}", *SMALL]) == 2
    assert "PANACEA_CACHE: environment variable $PANACEA_TEST_UNSET_VARIABLE" in one_line_error(capsys)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("override, needle", [
    ("eval.harmful.n=0", "eval.harmful.n must be ≥ 1, got 0; an empty evaluation set has no score"),
    ("eval.benign.n=0", "eval.benign.n must be ≥ 1"),
    ("eval.samples=-1", "eval.samples must be ≥ 0, got -1"),
])
def test_empty_evaluation_sets_and_negative_counts_are_refused(override, needle, tiny_dir, capsys):
    assert main(["validate", TINY, f"model.name_or_path={tiny_dir}", override]) == 2
    assert needle in one_line_error(capsys)


def test_an_evaluation_selection_with_no_rows_is_refused(tiny_dir, tmp_path, capsys):
    rows = tmp_path / "prompts.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"question {i}?"}) + "\n" for i in range(3)))
    assert main(["validate", TINY, f"model.name_or_path={tiny_dir}", "eval.harmful.name=jsonl",
                 f"eval.harmful.path={rows}", "eval.harmful.n=null", "eval.harmful.part=null", "eval.harmful.start=3"]) == 2
    assert "eval.harmful: selects no rows (start 3 of 3)" in one_line_error(capsys)


# --------------------------------------------------------------------------- fault guards after training


@pytest.mark.parametrize("post", ["{defense: random_perturbation, norm: 1.0e30}",
                                  "{defense: ascent, rho: 1.0e30, harmful_data: {name: pyrit_harmful, start: 10, n: 8}}"])
def test_a_post_defense_that_breaks_the_model_stops_with_one_line(post, tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={out}", *SMALL[:2],
                 f"post={{broken: {{from: sft, {post[1:-1]}}}}}", *SMALL[3:]])
    err = one_line_error(capsys)
    assert code == 2 and "post-fine-tuning broken:" in err and "nothing was saved" in err, err
    assert not (out / "metrics.json").exists() and not (out / "post" / "broken" / "adapter").exists()
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed"


def test_json_written_by_a_run_is_always_valid(tmp_path):
    from panacea.rundir import write_json

    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [None, 1.0]}


# --------------------------------------------------------------------------- reproducible outputs, one path


def test_same_seed_gives_byte_identical_metrics_and_paths_expand_once(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PANACEA_TEST_RUNS", str(tmp_path / "scratch"))
    monkeypatch.chdir(tmp_path)
    panacea = ("finetune.runs={panacea: {defense: panacea, rho: 1.0, lam: 0.001, harmful_batch_size: 4, "
               "harmful_data: {name: pyrit_harmful, start: 10, n: 8}}}")
    common = ["run", TINY, f"model.name_or_path={tiny_dir}", SMALL[0], panacea, *SMALL[2:]]
    assert main([*common, "output_dir=~/r1"]) == 0
    assert main([*common, "output_dir=$PANACEA_TEST_RUNS/r2"]) == 0
    a, b = tmp_path / "home" / "r1", tmp_path / "scratch" / "r2"
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    for run in (a, b):
        assert (run / "finetune" / "panacea" / "panacea_epsilon.safetensors").exists()
        assert json.loads((run / "timings.json").read_text())["results"]["panacea"]["train_seconds"] >= 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "scratch"]  # no literal ~ or $ folder
    # the run is complete and found again through the same spelling, with its timings
    capsys.readouterr()
    assert main([*common, "output_dir=~/r1"]) == 0
    out = capsys.readouterr().out
    assert "is complete" in out and "wall" in out
