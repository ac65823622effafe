"""The whole pipeline through the CLI on the tiny random model, and bad input → one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from panacea.cli import main
from panacea.judges.base import CATEGORIES

TINY = str(Path(__file__).parents[1] / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def tiny_run(tiny_dir, tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("run") / "tiny"
    printed, progress = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(progress):
        code = main(["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={out}"])
    TINY_RUN_OUTPUT[out] = (printed.getvalue(), progress.getvalue())
    return code, out


#: what the tiny run printed (stdout, stderr), by run directory
TINY_RUN_OUTPUT: dict = {}


def test_smoke_run_writes_everything(tiny_run, capsys):
    code, out = tiny_run
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    names = [r["name"] for r in metrics["results"]]
    assert names == ["aligned", "sft", "panacea", "sft+random", "sft+ascent"]
    timings = json.loads((out / "timings.json").read_text())  # seconds and memory live apart from results
    assert "wall_seconds" not in metrics and timings["wall_seconds"] > 0 and timings["machine"]["python"]
    for r in metrics["results"]:
        for key in ("harmful_score", "finetune_accuracy", "over_refusal", "harmful_score_plus"):
            assert isinstance(r[key], (int, float)), key
        assert "train_seconds" not in r and isinstance(timings["results"][r["name"]]["train_seconds"], (int, float))
        assert 0 <= r["harmful_score"] <= 100
        lo, hi = r["harmful_score_ci"]
        assert lo <= r["harmful_score"] <= hi
        shares = sum(r[f"share_{c}"] for c in CATEGORIES)
        assert shares == pytest.approx(100, abs=0.1)
    assert json.loads((out / "status.json").read_text())["state"] == "done"
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["finetune"]["runs"]["panacea"]["rho"] == 1.0
    for stage in ("alignment", "finetune/sft", "finetune/panacea", "post/sft+random", "post/sft+ascent"):
        assert (out / stage / "adapter" / "adapter_model.safetensors").exists(), stage
    assert (out / "finetune/panacea/panacea_epsilon.safetensors").exists()
    rec = json.loads((out / "finetune/panacea/record.json").read_text())
    assert rec["epsilon_applied"] is True and rec["epsilon_norm"] == pytest.approx(1.0, rel=1e-4)
    assert json.loads((out / "finetune/sft/record.json").read_text())["harmful_samples"] == 4
    lines = (out / "generations" / "panacea.jsonl").read_text().splitlines()
    assert {json.loads(x)["set"] for x in lines} == {"harmful", "task", "benign"}
    # a post-fine-tuning stage records its peak memory as the training stages do
    post = json.loads((out / "post/sft+ascent/record.json").read_text())
    assert post["peak_memory_gb"] > 0 and post["memory_kind"] in ("process_peak_rss", "cuda_max_allocated")
    assert timings["results"]["sft+ascent"]["peak_memory_gb"] == post["peak_memory_gb"]


def test_run_says_where_its_results_are(tiny_run):
    _, out = tiny_run
    printed, progress = TINY_RUN_OUTPUT[out]
    assert printed.strip().splitlines()[-1] == f"results: {out / 'results.md'}"
    md = (out / "results.md").read_text()
    for text in ("| variant | HS [95% CI] | HS+ | refused | engaged | off-topic | degen. | FA | OR | train s |",
                 "| panacea | ", "![HS vs FA](hs_fa.png)", "## What the columns mean",
                 "whose answer the `learned` judge", "**FA** (fine-tune accuracy)", "**OR** (over-refusal)",
                 "torch 2.", "commit "):
        assert text in md, text
    png = (out / "hs_fa.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # the Trainer's progress bars name their stage
    assert "alignment: 100%" in progress and "finetune/panacea: 100%" in progress and "finetune/sft:" in progress
    # panacea plot RUN redraws them (e.g. for a run finished before they existed)
    (out / "hs_fa.png").unlink()
    assert main(["plot", str(out)]) == 0 and (out / "hs_fa.png").exists()


def test_metrics_record_versions_commit_and_machine(tiny_run):
    _, out = tiny_run
    prov = json.loads((out / "metrics.json").read_text())["provenance"]
    assert set(prov["versions"]) == {"panacea", "torch", "transformers", "peft", "accelerate"}
    assert prov["versions"]["torch"] and prov["versions"]["transformers"]
    assert set(prov["git"]) == {"commit", "dirty"}
    if (Path(__file__).parents[1] / ".git").exists():  # a checkout (CI clones one): the commit is known
        assert len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool)
    assert {"cpu", "cpus", "platform", "python"} <= set(prov["machine"]) and prov["machine"]["cpus"] >= 1


def test_compare_two_runs(tiny_run, tmp_path, capsys):
    import shutil

    _, out = tiny_run
    copy = tmp_path / "again" / "tiny"  # the same run under another folder: the rows are told apart
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.safetensors", ".lock"))
    dest = tmp_path / "cmp"
    assert main(["compare", str(out), str(copy), "--out", str(dest)]) == 0
    text = capsys.readouterr().out
    assert text.strip().splitlines()[-1] == f"compare: {dest / 'compare.md'}"
    md = (dest / "compare.md").read_text()
    for run in (out.parent.name, "again"):
        assert f"| {run}/tiny/panacea | " in md and f"{run}/tiny/sft+ascent " in text
    assert (dest / "compare.png").stat().st_size > 5000
    # a folder with other files is not written into without --force
    assert main(["compare", str(out), "--out", str(dest)]) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
    assert main(["compare", str(out), "--out", str(dest), "--force"]) == 0
    # a run that did not finish is named, one line, exit 2, nothing written
    (copy / "metrics.json").unlink()
    assert main(["compare", str(out), str(copy), "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"panacea: error: {copy}: not a finished panacea run (no metrics.json or summary.json)"
    assert not (tmp_path / "never").exists()


def test_existing_run_dir_is_not_overwritten(tiny_run, tiny_dir, capsys):
    _, out = tiny_run
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    # the same config: the run is complete, nothing is retrained or rewritten
    code = main(["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={out}"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "is complete" in printed and printed.strip().splitlines()[-1] == f"results: {out / 'results.md'}"
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    # another config is no longer refused: it reuses the stages its keys allow (tests/pipeline/test_stages.py)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["finetune.data.poison_ratio=2"], "finetune.data.poison_ratio must be in [0, 1]"),
        (["finetune.data.n=100000"], "finetune.data.n"),
        (["finetune.runs.sft.defense=nope"], "choices: lisa, panacea, panacea_avg, safety_mix, sft"),
        (["finetune.data.task.name=jsonl", "finetune.data.task.path=/nonexistent.jsonl"], "/nonexistent.jsonl"),
        (["eval.harmful.n=100000"], "eval.harmful"),
        (["finetune.data.harmful.start=5", "finetune.runs.panacea.harmful_data.start=0"], "finetune.data.harmful"),
    ],
)
def test_bad_input_is_one_line_exit_2(tiny_dir, tmp_path, capsys, args, needle):
    out = tmp_path / "bad"
    code = main(["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={out}", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("panacea: error:")
    assert needle in err
    assert not (out / "metrics.json").exists()


def test_missing_config_file(capsys):
    assert main(["run", "/nonexistent/config.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_ls_lists_every_stage(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in ("panacea", "random_perturbation", "ascent", "sft", "sentiment", "strongreject", "harm"):
        assert name in out


def test_validate(tiny_dir, capsys):
    assert main(["validate", TINY, f"model.name_or_path={tiny_dir}"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out
    assert "does not divide" not in out  # tiny.yaml: Panacea's batch 4 of 8 samples


def test_validate_warns_when_a_defender_batch_does_not_divide_its_set(tiny_dir, capsys):
    """8 samples in batches of 3: each pass over them ends with a batch of 2 (one line, still valid)."""
    assert main(["validate", TINY, f"model.name_or_path={tiny_dir}", "finetune.runs.panacea.harmful_batch_size=3"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out
    assert ("warning: finetune.runs.panacea.harmful_batch_size 3 does not divide the 8 samples of "
            "finetune.runs.panacea.harmful_data: on one process each pass over them ends with a batch of 2") in out


def test_merge_new_mode_and_alpaca_template(tiny_dir, tmp_path):
    out = tmp_path / "merge"
    code = main(["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={out}",
                 "finetune.adapter_mode=merge_new", "model.template=alpaca", "eval.variants=[sft, sft+random]"])
    assert code == 0
    names = [r["name"] for r in json.loads((out / "metrics.json").read_text())["results"]]
    assert names == ["sft", "sft+random"]


def test_booster_alignment_runs_and_checks_its_harmful_set(tiny_dir, tmp_path, capsys):
    out = tmp_path / "booster"
    base = ["run", TINY, f"model.name_or_path={tiny_dir}", "alignment.defense=booster",
            "alignment.harmful_batch_size=4", "alignment.harmful_data.name=pyrit_harmful",
            "alignment.harmful_data.start=20", "alignment.harmful_data.n=8", "eval.variants=[aligned]"]
    assert main([*base, f"output_dir={out}"]) == 0
    assert (out / "alignment" / "adapter" / "adapter_model.safetensors").exists()
    # the defender's set may not overlap the user's harmful rows
    code = main([*base, "alignment.harmful_data.start=0", f"output_dir={tmp_path / 'overlap'}"])
    assert code == 2
    assert "alignment.harmful_data" in capsys.readouterr().err
    assert main([*base, "alignment.lam=0", f"output_dir={tmp_path / 'lam'}"]) == 2
    assert "alignment.lam must be > 0" in capsys.readouterr().err
