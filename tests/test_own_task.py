"""A task of your own (docs/own_task.md): configs/examples/own_task.yaml on the tiny random model
fine-tunes on the training side of examples/my_task.jsonl and measures FA on its held-out side with
the `number` matcher; a run whose FA task is not its fine-tuning task warns first and records it;
keys a dataset would ignore (a `path` on a built-in task, …) are refused with one line, exit 2."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

import panacea
from panacea.cli import main
from panacea.data.base import Example
from panacea.data.matchers import Number
from panacea.data.mixing import prompt_key

ROOT = Path(__file__).parents[1]
CONFIG = str(ROOT / "configs" / "examples" / "own_task.yaml")
DATA = str(ROOT / "examples" / "my_task.jsonl")


def tiny(tiny_dir) -> list[str]:
    """The example config at test scale: the tiny model, two steps per stage, a few prompts, the
    fine-tuning runs of interest evaluated."""
    return [f"model.name_or_path={tiny_dir}", "model.max_length=256", "model.system_prompt=null",
            "alignment.data.n=8", "alignment.benign.n=4", "finetune.train.max_steps=2",
            "finetune.runs.panacea.harmful_batch_size=2", "eval.harmful.n=3", "eval.benign.n=2",
            "eval.utility.n=4", "eval.max_new_tokens=4", "eval.utility_max_new_tokens=6",
            f"finetune.data.task.path={DATA}", f"eval.utility.path={DATA}"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("panacea: error:"), err
    return err


@pytest.fixture(scope="module")
def own_run(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("own") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run = panacea.run_experiment(CONFIG, [*tiny(tiny_dir), "eval.variants=[sft, panacea]"], output_dir=out)
    return run, out, printed.getvalue()


def test_fa_is_measured_on_the_held_out_part_of_the_own_file(own_run):
    run, out, printed = own_run
    assert run.run_dir == out.resolve() and "warning" not in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["utility"] == {"task": f"jsonl:{DATA}", "finetune_task": f"jsonl:{DATA}", "same_task": True,
                                  "matcher": "number", "holdout": 0.3}
    assert list(run.results) == ["sft", "panacea"]
    for r in metrics["results"]:
        assert r["n_task_items"] == 4 and 0 <= r["finetune_accuracy"] <= 100
    train = {prompt_key(e) for e in panacea.load_data("jsonl", path=DATA, holdout=0.3, split="train")}
    held_out = {e.instruction: e.output for e in panacea.load_data("jsonl", path=DATA, holdout=0.3, split="test",
                                                                    part="test")}
    match = Number()
    for variant in run.results:
        rows = [json.loads(x) for x in (out / "generations" / f"{variant}.jsonl").read_text().splitlines()]
        task = [r for r in rows if r["set"] == "task"]
        assert len(task) == 4
        for r in task:
            assert held_out[r["prompt"]] == r["label"]  # a held-out row; no label column: its output
            assert prompt_key(Example(r["prompt"])) not in train
            assert r["correct"] == match(r["response"], r["label"])


def test_a_different_fa_task_warns_first_and_is_recorded(tiny_dir, tmp_path, capsys):
    out = tmp_path / "mismatch"
    sentiment = ["eval.utility={name: sentiment, split: test, part: test, n: 2, size: 20}"]
    small = ["alignment.defense=none", "finetune.runs={sft: {defense: sft}}", "post={}", "eval.benign=null",
             "finetune.train.max_steps=1"]
    assert main(["validate", CONFIG, *tiny(tiny_dir), *sentiment]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "valid" in lines[0] and lines[1].startswith("warning: fine-tune accuracy is measured on eval.utility")
    assert main(["run", CONFIG, *tiny(tiny_dir), *sentiment, *small, f"output_dir={out}"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (f"warning: fine-tune accuracy is measured on eval.utility = sentiment, but the runs "
                     f"fine-tune on finetune.data.task = jsonl:{DATA} (docs/own_task.md)")
    utility = json.loads((out / "metrics.json").read_text())["utility"]
    assert utility["same_task"] is False and utility["matcher"] == "sentiment (built in: match_sentiment)"


def test_the_example_validates_as_written_from_the_repository_root(tiny_dir, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # its data path is relative to the root (nothing is written by validate)
    assert main(["validate", CONFIG, f"model.name_or_path={tiny_dir}"]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # no warning: FA is the fine-tuning task's


@pytest.mark.parametrize("args,needle", [
    (["finetune.data.task={name: sentiment, path: my.jsonl}"], "finetune.data.task.path: the dataset 'sentiment' reads no file"),
    (["eval.utility={name: sentiment, split: test, path: my.jsonl}"], "eval.utility.path: the dataset 'sentiment'"),
    (["finetune.runs.panacea.harmful_data.path=x.jsonl"], "finetune.runs.panacea.harmful_data.path: the dataset"),
    (["finetune.data.harmful.fields={instruction: q}"], "finetune.data.harmful.fields: the dataset 'pyrit_harmful'"),
    (["finetune.data.task={name: sentiment, holdout: 0.3}"], "finetune.data.task.holdout: 'sentiment' has its own"),
    (["finetune.data.harmful.match=exact"], "finetune.data.harmful.match: only eval.utility"),
    (["eval.utility.match=null"], "eval.utility.match: 'jsonl' has no answer matcher of its own; choose one of"),
    (["eval.utility.match=regex"], "eval.utility.pattern is required with match: regex"),
    (["eval.utility.match=choice"], "gives no choice letter"),
    (["eval.utility.holdout=null", "eval.utility.split=train", "finetune.data.task.holdout=null"],
     "split one file with the same holdout"),
    (["eval.utility.holdout=0.5"], "finetune.data.task and eval.utility must be disjoint"),
    (["eval.utility.holdout=null"], "eval.utility.split: a jsonl file has no splits of its own; set eval.utility.holdout"),
])
def test_ignored_or_unusable_keys_are_refused(tiny_dir, capsys, args, needle):
    assert main(["validate", CONFIG, *tiny(tiny_dir), *args]) == 2
    assert needle in one_line_error(capsys)


def test_the_walk_through_names_every_matcher():
    from panacea.registry import MATCHERS

    doc = (ROOT / "docs" / "own_task.md").read_text(encoding="utf-8")
    for name in MATCHERS.names():
        assert f"| `{name}` |" in doc, name
