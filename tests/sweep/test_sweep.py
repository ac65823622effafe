"""``panacea sweep``: a grid on the local engine (resume, table, plots, worst case), bad input
(one line, exit 2, nothing written), an Optuna search of 2 trials, a 2-worker local Ray cluster
with a failing point, and submitit's local executor. All on the tiny random model, lean settings."""

from __future__ import annotations

import csv
import json
import re
import socket
from pathlib import Path

import pytest

from panacea.cli import main

ROOT = Path(__file__).parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")
# one optimizer step per stage, three prompts per evaluation: a point takes a few seconds
LEAN = ["post={}", "eval.benign=null", "eval.harmful.n=3", "eval.utility.n=3", "eval.max_new_tokens=4",
        "finetune.data.n=8", "alignment.data.n=8", "alignment.benign=null"]
P_GRID = "sweep.grid={finetune.data.poison_ratio: [0.25, 0.5]}"


def sweep(tiny_dir, out, *extra):
    return ["sweep", TINY, f"model.name_or_path={tiny_dir}", *LEAN, "--out", str(out), *extra]


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("panacea: error:")]
    assert len(err) == 1, err
    return err[0]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grid_local_table_plots_worst_case_and_resume(tiny_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "grid"
    grid = ("sweep.grid=[{finetune.data.poison_ratio: [0.25, 0.5]}, "
            "{finetune.data.attack: [poison_mix, benign]}]")
    assert main(sweep(tiny_dir, out, grid, "sweep.variants=[sft, panacea]")) == 0
    # attack=poison_mix at the base ratio is the experiment of poison_ratio=0.25: one run for both
    assert sorted(p.name for p in (out / "points").iterdir()) == ["attack-benign", "poison_ratio-0.25",
                                                                  "poison_ratio-0.5"]
    rows = read_csv(out / "table.csv")
    assert len(rows) == 4 * 2  # 4 grid points × 1 seed × 2 variants
    assert {r["variant"] for r in rows} == {"sft", "panacea"} and {r["status"] for r in rows} == {"done"}
    cols = list(rows[0])
    for c in ("finetune.data.poison_ratio", "finetune.data.attack", "seed", "harmful_score", "harmful_score_lo",
              "harmful_score_hi", "finetune_accuracy", "finetune_accuracy_lo", "finetune_accuracy_hi"):
        assert c in cols
    assert cols.index("harmful_score_lo") < cols.index("harmful_score_hi")
    table = json.loads((out / "table.json").read_text())
    assert len(table["rows"]) == 8
    summary = json.loads((out / "summary.json").read_text())
    worst = summary["worst_case"]
    assert set(worst) == {"sft", "panacea"} and summary["fa_margin"] == 3.0
    for w in worst.values():
        assert w["point"] in {"poison_ratio-0.25", "poison_ratio-0.5", "attack-poison_mix", "attack-benign"}
        assert w["eligible"] >= 1 and w["fa_checked"] is True
    assert (out / "plots" / "poison_ratio.png").stat().st_size > 0 and (out / "plots" / "attack.png").exists()
    assert "Worst case per variant" in (out / "sweep.md").read_text()
    # each point's line says its own run time and the time into the sweep (not one for the other)
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sweep: [")]
    assert len(done) == 3 and all(re.search(r": done \(its run \d+ s, \d+ s into the sweep\)$", d) for d in done), done

    # the same command again: every point is read back, none is run
    import panacea.sweep.engines as engines

    def no_run(*a, **k):
        raise AssertionError("a finished point was run again")

    monkeypatch.setattr(engines, "run_point", no_run)
    assert main(sweep(tiny_dir, out, grid, "sweep.variants=[sft, panacea]")) == 0
    assert "every point is finished; nothing to run" in capsys.readouterr().out
    assert read_csv(out / "table.csv") == rows
    # another sweep in the same folder is refused, naming the key
    assert main(sweep(tiny_dir, out, P_GRID)) == 2
    assert "sweep.grid" in one_line_error(capsys)
    check_recorded(out, tmp_path, summary, capsys)


def check_recorded(out: Path, tmp_path: Path, summary: dict, capsys) -> None:
    """A finished sweep recorded (``panacea record SWEEP results/NAME``) and rendered by ``panacea tables``."""
    from panacea.sweep.record import holds

    st = summary["stages"]  # every stage of the three runs (one manifest each), each computed or reused
    manifests = [m for m in (out / "points").rglob("done.json") if "cache" not in m.relative_to(out / "points").parts]
    assert st["computed"] + st["reused"] == len(manifests) > 3 and summary["points_seconds"] > 0
    results = tmp_path / "results"
    assert main(["record", str(out), str(results / "grid"), "--command", "panacea sweep tiny"]) == 0
    kept = results / "grid"
    assert (kept / "plots" / "poison_ratio.png").is_file() and (kept / "table.csv").is_file()
    assert sorted(p.name for p in (kept / "points").iterdir()) == sorted(p.name for p in (out / "points").iterdir())
    assert not list(kept.rglob("*.safetensors"))  # no adapters
    meta = json.loads((kept / "result.json").read_text())
    assert meta["schema"] == "panacea-sweep/1" and meta["stages"] == st and meta["points"] == 3
    assert main(["record", str(out), str(results / "grid")]) == 2  # kept results are never replaced silently
    assert "--force" in one_line_error(capsys)
    doc_path = tmp_path / "docs" / "results.md"
    doc_path.parent.mkdir()
    assert main(["tables", str(results), "--write", str(doc_path)]) == 0
    doc = doc_path.read_text()
    assert "## grid (sweep)" in doc and "`panacea sweep tiny`" in doc
    assert "| variant | poison_ratio 0.25 | poison_ratio 0.5 |" in doc and "| variant | attack poison_mix | attack benign |" in doc
    assert "![HS and FA against poison_ratio](../results/grid/plots/poison_ratio.png)" in doc
    assert f"{st['computed']} stages computed, {st['reused']} reused" in doc
    held = holds(summary)
    assert set(held) == {"panacea"} and len(held["panacea"]["of"]) == 4
    assert "Where each defense holds" in doc and "panacea" in doc.split("Where each defense holds")[1]
    assert main(["tables", str(results), "--write", str(doc_path), "--check"]) == 0


def test_holds_needs_the_whole_interval_below_the_baseline_and_fa_within_the_margin():
    from panacea.sweep.record import holds

    def entry(point, variant, hs, lo, hi, fa):
        return {"point": point, "variant": variant, "status": "done", "cell": {"k": point},
                "metrics": {"harmful_score": {"mean": hs, "lo": lo, "hi": hi},
                            "finetune_accuracy": {"mean": fa, "lo": None, "hi": None}}}

    doc = {"baseline": "sft", "fa_margin": 3.0, "summary": [
        entry("a", "sft", 80, 70, 90, 95), entry("a", "d", 50, 40, 79.9, 92.5),  # held
        entry("b", "sft", 80, 70, 90, 95), entry("b", "d", 50, 40, 80.0, 95),    # upper bound touches: not held
        entry("c", "sft", 80, 70, 90, 95), entry("c", "d", 10, 5, 20, 91.9)]}    # FA beyond the margin
    assert holds(doc) == {"d": {"held": ["a"], "of": ["a", "b", "c"]}}


@pytest.mark.parametrize("extra, expected", [
    (["sweep.grid={finetune.data.poison_ration: [0.1]}"],
     "sweep.grid.finetune.data.poison_ration: unknown config key 'finetune.data.poison_ration' (did you mean poison_ratio?)"),
    (["sweep.grid={finetune.runs.panacae.rho: [1, 2]}"], "'finetune.runs.panacae' is not in the config (did you mean panacea?)"),
    (["sweep.grid={finetune.data.poison_ratio: []}"], "sweep.grid.finetune.data.poison_ratio: empty list of values"),
    (["sweep.grid={}"], "sweep.grid is empty"),
    (["sweep.search=optuna", "sweep.space={finetune.train.learning_rate: {low: 1.0e-3, high: 1.0e-5, log: true}}"],
     "sweep.space.finetune.train.learning_rate: low 0.001 > high 1e-05"),
    # benign takes no poison ratio: a run that sets one cannot face it
    (["sweep.grid={finetune.data.attack: [poison_mix, benign]}", "finetune.runs.sft.poison_ratio=0.5"],
     "finetune.runs.sft.poison_ratio: attack benign takes no poison ratio"),
    ([P_GRID, "--engine", "ray", "--address", "127.0.0.1:{port}"], "--address 127.0.0.1:{port}: no Ray cluster reachable"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tiny_dir, tmp_path, capsys, extra, expected):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = [e.replace("{port}", str(port)) for e in extra]
    out = tmp_path / "bad"
    assert main(sweep(tiny_dir, out, *extra)) == 2
    assert expected.replace("{port}", str(port)) in one_line_error(capsys)
    assert not out.exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_dir, tmp_path, capsys):
    out = tmp_path / "dry"
    assert main(sweep(tiny_dir, out, P_GRID, "sweep.seeds=[43, 44]", "--dry-run")) == 0
    text = capsys.readouterr().out
    assert "2 grid point(s) × 2 seed(s) = 4 point(s)" in text
    assert "points/poison_ratio-0.5__seed-44: to run" in text
    assert not out.exists()


def test_optuna_search_two_trials_resumes_and_writes_a_runnable_best_attack(tiny_dir, tmp_path, capsys):
    out = tmp_path / "search"
    args = sweep(tiny_dir, out, "sweep.search=optuna", "sweep.trials=2", "sweep.target=panacea",
                 "sweep.space={finetune.data.poison_ratio: {low: 0.0, high: 0.5}, "
                 "finetune.train.num_train_epochs: {low: 1, high: 2, type: int}}")
    assert main(args) == 0
    import optuna

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)
    rows = read_csv(out / "table.csv")
    assert {r["trial"] for r in rows} == {"0", "1"} and {r["variant"] for r in rows} >= {"sft", "panacea"}
    best = out / "best_attack.yaml"
    assert best.is_file()
    from panacea.config import load_config

    cfg, _ = load_config(best)
    summary = json.loads((out / "summary.json").read_text())
    params = summary["best_trial"]["params"]
    assert cfg.finetune.data.poison_ratio == params["finetune.data.poison_ratio"]
    assert cfg.finetune.train.num_train_epochs == params["finetune.train.num_train_epochs"]
    assert main(["validate", str(best)]) == 0
    # `panacea run` on it reproduces the best trial's point
    assert main(["run", str(best), f"output_dir={tmp_path / 'worst'}"]) == 0
    rerun = {r["name"]: r for r in json.loads((tmp_path / "worst" / "metrics.json").read_text())["results"]}
    assert rerun["panacea"]["harmful_score"] == summary["best_trial"]["value"]
    capsys.readouterr()
    # again: the study holds its 2 trials, nothing more runs
    assert main(args) == 0
    assert len(optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}").trials) == 2
    # a trial cut off by an interruption (left RUNNING) is failed and its values are tried first when
    # the budget grows; they are trial 0's, whose point is finished: read back, not recomputed
    study.enqueue_trial(study.trials[0].params)
    cut = study.ask()
    assert main([*args, "sweep.trials=3"]) == 0
    trials = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert trials[cut.number].user_attrs["interrupted"] is True
    assert trials[3].params == trials[0].params and trials[3].value == trials[0].value
    assert "every point is finished; nothing to run" in capsys.readouterr().out


def _home_listing():
    home = Path.home()
    return sorted(p.name for p in home.iterdir()) if home.is_dir() else []


def test_ray_two_workers_a_failing_point_is_reported_and_the_other_finishes(tiny_dir, tmp_path, capsys):
    pytest.importorskip("ray")
    before = _home_listing()
    out = tmp_path / "ray"
    # lr 1e30 turns the loss non-finite: that point fails at training time, the other finishes
    code = main(sweep(tiny_dir, out, "sweep.grid={finetune.train.learning_rate: [1.0e-3, 1.0e+30]}",
                      "sweep.parallel=2", "sweep.variants=[sft]", "finetune.runs={sft: {defense: sft}}",
                      "finetune.train.per_device_train_batch_size=4", "finetune.train.num_train_epochs=2",
                      "--engine", "ray"))
    text = capsys.readouterr().out
    assert code == 1
    assert "a local Ray cluster (2 CPUs, 0 GPUs); per point 1 CPU, 0 GPU; 2 at a time" in text
    rows = read_csv(out / "table.csv")
    by = {r["finetune.train.learning_rate"]: r for r in rows}
    assert by["0.001"]["status"] == "done" and by["0.001"]["harmful_score"] != ""
    assert by["1e+30"]["status"] == "failed" and "non-finite" in by["1e+30"]["error"]
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    assert "FAILED" in text and "1 point(s) failed" in text
    assert _home_listing() == before


def test_submitit_local_executor(tiny_dir, tmp_path, capsys):
    pytest.importorskip("submitit")
    before = _home_listing()
    out = tmp_path / "slurm"
    code = main(sweep(tiny_dir, out, "sweep.grid={finetune.data.poison_ratio: [0.25]}", "sweep.variants=[sft]",
                      "finetune.runs={sft: {defense: sft}}", "sweep.slurm={cluster: local, timeout_min: 10}",
                      "--engine", "slurm"))
    text = capsys.readouterr().out
    assert code == 0, text
    assert "local processes (submitit's local executor)" in text
    rows = read_csv(out / "table.csv")
    assert [r["status"] for r in rows] == ["done"]
    assert (out / "points" / "poison_ratio-0.25" / "metrics.json").is_file()
    assert any((out / "slurm").iterdir())  # submitit's job folders (logs, pickles)
    assert _home_listing() == before


def test_points_get_the_shared_stage_cache_when_the_config_has_cache_dir(tmp_path, monkeypatch):
    """The stage cache switches on by itself once ExperimentConfig has a top-level cache_dir."""
    import panacea.sweep as sweep_mod
    from panacea.sweep.spec import parse

    base = {"name": "x", "finetune": {"data": {"poison_ratio": 0.1}}}
    spec = parse({"grid": {"finetune.data.poison_ratio": [0.1, 0.2]}}, base)
    planner = sweep_mod.Planner(base, spec, tmp_path)
    has = sweep_mod._has_cache_dir()
    assert ("cache_dir" in planner.raw_config({"finetune.data.poison_ratio": 0.2}, 43)[2]) == has
    monkeypatch.setattr(sweep_mod, "_has_cache_dir", lambda: True)
    cid, pid, raw = planner.raw_config({"finetune.data.poison_ratio": 0.2}, 43)
    assert raw["cache_dir"] == str(tmp_path / "cache") and pid == cid == "poison_ratio-0.2"
    assert raw["output_dir"] == str(tmp_path / "points" / "poison_ratio-0.2")
    assert raw["finetune"]["data"]["poison_ratio"] == 0.2 and raw["seed"] == 43
