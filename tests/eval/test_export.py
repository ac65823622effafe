"""AlpacaEval export of saved answers (docs/protocol.md#fine-tune-accuracy-fa: AlpacaEval FA is a
win rate computed outside)."""

from __future__ import annotations

import json

import pytest

from panacea.errors import UserError
from panacea.eval.export import export_run


def _run(tmp_path):
    run = tmp_path / "r"
    (run / "generations").mkdir(parents=True)
    lines = [{"set": "harmful", "prompt": "h", "response": "no"},
             {"set": "benign", "prompt": "Name a colour.", "response": "Blue."}]
    (run / "generations" / "sft.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return run


def test_alpaca_eval_format_and_no_silent_overwrite(tmp_path):
    run = _run(tmp_path)
    (path,) = export_run(run)
    assert json.loads(path.read_text()) == [{"instruction": "Name a colour.", "output": "Blue.", "generator": "r/sft"}]
    with pytest.raises(UserError, match="exists; pass --force"):
        export_run(run)
    assert export_run(run, force=True) == [path]


def test_answer_sets_go_to_different_files(tmp_path):
    run = _run(tmp_path)
    (benign,) = export_run(run)
    before = benign.read_bytes()
    (harmful,) = export_run(run, answer_set="harmful")  # no --force needed: another set, another file
    assert harmful != benign and harmful.parent.name == "harmful" and benign.parent.name == "benign"
    assert json.loads(harmful.read_text())[0]["instruction"] == "h"
    assert export_run(run, answer_set="harmful", force=True) == [harmful]  # --force replaces that set only
    assert benign.read_bytes() == before
    with pytest.raises(UserError, match="--set must be a set name"):
        export_run(run, answer_set="../x")


def test_bad_runs_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="not a finished panacea run"):
        export_run(tmp_path)
    with pytest.raises(UserError, match="no answers of set 'task'"):
        export_run(_run(tmp_path), answer_set="task")
    with pytest.raises(UserError, match="--format must be one of alpaca_eval"):
        export_run(_run(tmp_path / "x"), fmt="csv")


def test_cli_export(tmp_path, capsys):
    from panacea.cli import main

    run = _run(tmp_path)
    assert main(["export", str(run)]) == 0
    assert capsys.readouterr().out.strip().endswith("exports/alpaca_eval/benign/sft.json")
    assert main(["export", str(run)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
