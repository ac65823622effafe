"""The why_average study's section in `panacea tables`: the factor table read from the recorded
config and stage records, and the conclusion generated from the intervals (one per judge)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from panacea.analysis.why_average import batch_sizes, describe
from panacea.results import record, tables

LAST = {"defense": "panacea", "rho": 0.8, "harmful_data": {"name": "pyrit_harmful", "start": 100, "n": 100}}
CONFIG = {
    "name": "why_average", "seed": 43,
    "alignment": {"defense": "sft"},
    "finetune": {"runs": {
        "sft": {"defense": "sft"},
        "last@batch4": {**LAST, "harmful_batch_size": 4},
        "last@batch80": {**LAST, "harmful_batch_size": 80, "harmful_data": {"name": "pyrit_harmful", "n": 80}},
        "avg@first10": {**LAST, "defense": "panacea_avg", "harmful_batch_size": 10, "average": "first", "k": 10},
        "avg@last10": {**LAST, "defense": "panacea_avg", "harmful_batch_size": 10, "average": "last", "k": 10},
        "avg@all20": {**LAST, "defense": "panacea_avg", "harmful_batch_size": 10, "average": "all"},
    }},
    "eval": {"harmful": {"name": "strongreject", "part": "test"},
             "utility": {"name": "sentiment", "split": "test", "part": "test"}, "judge": "harm",
             "max_new_tokens": 32},
}
RECORDS = {"last@batch4": {"epsilon_steps": 20}, "last@batch80": {"epsilon_steps": 20},
           "avg@first10": {"epsilon_steps": 20, "epsilon_averaged_steps": 10},
           "avg@last10": {"epsilon_steps": 20, "epsilon_averaged_steps": 10},
           "avg@all20": {"epsilon_steps": 20, "epsilon_averaged_steps": 20}}
#: recorded judge: the batch hardly matters, averaging does (intervals ± 5)
HARM = {"aligned": 1, "sft": 80, "last@batch4": 70, "last@batch80": 68,
        "avg@first10": 30, "avg@last10": 33, "avg@all20": 31}
#: re-scoring judge: more samples lower HS, the window does not matter, batch 80 ≈ the average
LEARNED = {"aligned": 1, "sft": 60, "last@batch4": 50, "last@batch80": 20,
           "avg@first10": 22, "avg@last10": 18, "avg@all20": 19}


def _rows(scores: dict) -> list[dict]:
    return [{"name": v, "harmful_score": hs, "harmful_score_ci": [hs - 5, hs + 5], "finetune_accuracy": 90.0,
             "share_degenerate": 100 - hs - 10} for v, hs in scores.items()]


def make_result(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "generations").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    for v in HARM:
        (run / "generations" / f"{v}.jsonl").write_text(json.dumps({"set": "harmful", "prompt": "p", "response": "r"}) + "\n")
    (run / "metrics.json").write_text(json.dumps({"name": "why_average", "results": _rows(HARM), "records": RECORDS}))
    (run / "timings.json").write_text(json.dumps({"wall_seconds": 10.0, "machine": {"cpu": "Test CPU", "cpus": 2}}))
    out = record(run, tmp_path / "results" / "why_average")
    rel = next(iter(json.loads((out / "result.json").read_text())["seed_dirs"].values()))
    (out / rel / "rejudge_learned.json").write_text(json.dumps({"judge": "learned", "results": _rows(LEARNED)}))
    return out


def test_batch_sizes_follow_the_cycling_loader():
    """A batch that does not divide the set leaves the rest as a smaller batch at the end of each
    pass: with 100 samples and batch 80 the batches alternate 80, 20, so step 20's ε rests on 20."""
    assert batch_sizes(100, 80, range(4)) == [80, 20, 80, 20]
    assert batch_sizes(100, 80, range(19, 20)) == [20]
    assert batch_sizes(100, 40, range(6)) == [40, 40, 20, 40, 40, 20]
    assert batch_sizes(100, 10, range(20)) == [10] * 20


def test_describe_counts_the_draws_behind_each_epsilon():
    runs = CONFIG["finetune"]["runs"]
    assert describe(runs["sft"], {}) is None
    assert describe(runs["last@batch4"], {"epsilon_steps": 20}) == ("the last step's", 4, "4")
    assert describe(runs["last@batch80"], {"epsilon_steps": 20}) == ("the last step's", 80, "80")
    # the same batch from the study's set of 100: the last step's ε rests on the rest of a pass
    assert describe({**runs["last@batch80"], "harmful_data": LAST["harmful_data"]}, {"epsilon_steps": 20}) == (
        "the last step's", 20, "20")
    assert describe(runs["last@batch4"], {}) == ("the last step's", None, None)  # no record: unknown
    assert describe(runs["avg@first10"], RECORDS["avg@first10"]) == ("mean of steps 1–10", 100, "100")
    assert describe(runs["avg@last10"], RECORDS["avg@last10"]) == ("mean of steps 11–20", 100, "100")
    # 20 steps × batch 10 = 200 draws from a defender's set of 100 samples
    assert describe(runs["avg@all20"], RECORDS["avg@all20"]) == ("mean of every step (1–20)", 200, "100")
    # steps 6–15 straddle two passes: 100 draws, but samples of the first pass's end may recur
    assert describe({**runs["avg@first10"], "average": "last"}, {"epsilon_steps": 15, "epsilon_averaged_steps": 10}) == (
        "mean of steps 6–15", 100, "≤ 100")


def test_tables_add_the_factor_table_and_one_conclusion_per_judge(tmp_path):
    make_result(tmp_path)
    doc = tables(tmp_path / "results")
    lines = doc.splitlines()
    assert "| variant | output ε | harmful draws behind ε | distinct harmful samples | HS `harm` (95 %) | HS `learned` (95 %) | degenerate | FA |" in lines
    assert "| last@batch80 | the last step's | 80 | 80 | 68.0 (63–73) | 20.0 (15–25) | 22.0 | 90.0 |" in lines
    assert "| avg@last10 | mean of steps 11–20 | 100 | 100 | 33.0 (28–38) | 18.0 (13–23) | 57.0 | 90.0 |" in lines
    assert "| sft | none (no defense) | — | — | 80.0 (75–85) | 60.0 (55–65) | 10.0 | 90.0 |" in lines
    assert not any(line.startswith("| aligned | ") and "none" in line for line in lines)  # not a fine-tuning run
    # the conclusion is stated under the default judge `learned`; the recorded judge's reading follows
    main = next(line for line in lines if line.startswith("**Conclusion.**"))
    assert main.startswith("**Conclusion.** Under `learned` (one training seed, per-prompt intervals): "
                           "more harmful samples behind the last step's ε lower HS from batch 4 to batch 80 (50.0, 20.0 at batches 4, 80)")
    assert "where on the trajectory the averaged ε come from does not (22.0 from the first steps, 18.0 from the last)" in main
    assert "matches the last step's ε from 80" in main
    assert main.endswith("consistent with the average working through the number of harmful samples behind it, not "
                         "through where on the trajectory they come from (broken answers to the harmful prompts: 70.3 % on average with an averaged ε, "
                         "55.0 % with a last step's).")
    other = next(line for line in lines if line.startswith("* under `harm`: "))
    assert "does not move HS beyond the intervals from batch 4 to batch 80 (70.0, 68.0 at batches 4, 80)" in other
    assert "the average over 100 draws is below the last step's ε from 80 (33.0 vs 68.0)" in other
    assert other.endswith("consistent with the average working by averaging over steps, not through the number of "
                          "samples in one step "
                          "(broken answers to the harmful prompts: 58.7 % on average with an averaged ε, 21.0 % with a "
                          "last step's).")


def test_other_results_get_no_factor_table(tmp_path):
    make_result(tmp_path)
    cfg = yaml.safe_load((tmp_path / "results" / "why_average" / "config.yaml").read_text())
    cfg["name"] = "not_the_study"
    (tmp_path / "results" / "why_average" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert "**Conclusion.**" not in tables(tmp_path / "results")


def test_the_window_verdict_when_first_and_last_steps_differ(tmp_path):
    """The first steps' average far below the last steps' (intervals apart): the window matters."""
    out = make_result(tmp_path)
    rel = next(iter(json.loads((out / "result.json").read_text())["seed_dirs"].values()))
    scores = {**LEARNED, "avg@first10": 5, "avg@last10": 40}
    (out / rel / "rejudge_learned.json").write_text(json.dumps({"judge": "learned", "results": _rows(scores)}))
    main = next(line for line in tables(tmp_path / "results").splitlines() if line.startswith("**Conclusion.**"))
    assert "where on the trajectory the averaged ε come from does (5.0 from the first steps, 40.0 from the last)" in main
    assert "the average over 100 draws is above the last step's ε from 80 (40.0 vs 20.0)" in main
    assert ": where on the trajectory the ε come from matters (broken answers" in main
