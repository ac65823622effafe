"""panacea record / panacea tables: what is kept, what is refused, the search rule, and that the
committed docs/results.md and README.md blocks are what the command writes from results/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from panacea.cli import main
from panacea.errors import UserError
from panacea.results import load, record, select, tables

ROOT = Path(__file__).parents[1]

CONFIG = {
    "name": "toy", "seed": 1, "seeds": [1, 2, 3],
    "alignment": {"defense": "sft"},
    "finetune": {"runs": {"sft": {"defense": "sft"},
                          "panacea@rho1": {"defense": "panacea", "rho": 1.0, "harmful_batch_size": 10},
                          "panacea@rho2": {"defense": "panacea", "rho": 2.0, "harmful_batch_size": 10},
                          "panacea@rho3": {"defense": "panacea", "rho": 3.0, "harmful_batch_size": 10},
                          "avg@rho1": {"defense": "panacea_avg", "rho": 1.0, "average": "last", "k": 20}}},
    "post": {"sft+random": {"from": "sft", "defense": "random_perturbation", "norm": 80}},
    "eval": {"harmful": {"name": "strongreject", "part": "validation"},
             "utility": {"name": "sentiment", "split": "test", "part": "validation"},
             "benign": {"name": "benign_prompts", "part": "validation"}, "max_new_tokens": 32},
}
#: (HS, FA) per variant and seed; sft FA ≈ 90 → the rule keeps FA ≥ 87
SCORES = {
    "aligned": [(2, 0), (4, 0), (3, 0)],
    "sft": [(80, 90), (84, 91), (82, 89)],
    "panacea@rho1": [(60, 90), (62, 88), (58, 89)],   # FA 89 ok, HS 60
    "panacea@rho2": [(40, 88), (42, 87), (41, 88)],   # FA 87.67 ok, HS 41 → chosen
    "panacea@rho3": [(10, 60), (12, 58), (11, 61)],   # FA too low
    "avg@rho1": [(30, 80), (30, 80), (30, 80)],       # FA too low: none qualifies
    "sft+random": [(70, 20), (71, 21), (72, 22)],
}


def make_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    for i, seed in enumerate(CONFIG["seeds"]):
        d = run / f"seed_{seed}"
        (d / "generations").mkdir(parents=True)
        (d / "finetune" / "sft" / "adapter").mkdir(parents=True)
        (d / "finetune" / "sft" / "adapter" / "adapter_model.safetensors").write_bytes(b"x" * 100)
        (d / "config.yaml").write_text(yaml.safe_dump({**CONFIG, "seeds": None, "seed": seed,
                                                       "output_dir": str(d), "cache_dir": str(tmp_path / "cache")}))
        rows = []
        for v, s in SCORES.items():
            hs, fa = s[i]
            rows.append({"name": v, "harmful_score": hs, "harmful_score_ci": [hs - 5, hs + 5],
                         "finetune_accuracy": fa, "over_refusal": 5.0, "share_refused": 100 - hs})
            (d / "generations" / f"{v}.jsonl").write_text(json.dumps({"set": "harmful", "prompt": "p", "response": "r"}) + "\n")
        (d / "metrics.json").write_text(json.dumps({"name": "toy", "results": rows}))
        (d / "timings.json").write_text(json.dumps({"wall_seconds": 10.0, "machine": {"cpu": "Test CPU", "cpus": 2}}))
    (run / "summary.json").write_text(json.dumps({"runs": {str(s): f"seed_{s}" for s in CONFIG["seeds"]},
                                                  "wall_seconds": 31.0}))
    return run


def test_record_keeps_configs_metrics_answers_and_provenance_but_no_adapters(tmp_path):
    run = make_run(tmp_path)
    out = record(run, tmp_path / "results" / "toy", command="panacea run toy.yaml")
    assert (out / "seed_1" / "timings.json").is_file() and (out / "summary.json").is_file()
    meta = json.loads((out / "result.json").read_text())
    assert meta["seeds"] == [1, 2, 3] and meta["command"] == "panacea run toy.yaml"
    assert meta["wall_seconds"] == 31.0 and meta["machine"]["cpu"] == "Test CPU"  # the parent's wall time
    assert set(meta["versions"]) >= {"panacea", "torch", "transformers", "peft", "accelerate"}
    assert meta["versions"]["torch"] and "commit" in meta["git"]
    assert meta["eval"]["harmful"]["part"] == "validation"
    for s in (1, 2, 3):
        assert (out / f"seed_{s}" / "metrics.json").is_file()
        # the seed's config without the paths of the machine it ran on
        kept = yaml.safe_load((out / f"seed_{s}" / "config.yaml").read_text())
        assert kept["seed"] == s and "output_dir" not in kept and "cache_dir" not in kept
        assert len(list((out / f"seed_{s}" / "generations").glob("*.jsonl"))) == len(SCORES)
    assert not list(out.rglob("*.safetensors"))
    assert str(tmp_path) not in "".join(p.read_text() for p in out.rglob("*.yaml"))


def test_record_never_replaces_what_it_did_not_write(tmp_path):
    run = make_run(tmp_path)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(UserError, match="not a recorded result"):
            record(run, foreign, force=force)
    assert (foreign / "notes.txt").read_text() == "keep me"
    out = record(run, tmp_path / "kept")
    with pytest.raises(UserError, match="--force"):
        record(run, out)
    record(run, out, force=True)  # its own result: replaced
    assert (out / "result.json").is_file()


def test_search_rule_picks_lowest_hs_within_the_fa_margin(tmp_path):
    res = load(record(make_run(tmp_path), tmp_path / "r"))
    picks = {s["family"]: (s["chosen"], s["within_margin"]) for s in select(res)}
    assert picks == {"panacea": ("panacea@rho2", True), "avg": ("avg@rho1", False)}  # avg: none within, highest FA


def test_tables_mean_and_interval_over_seeds_and_labels(tmp_path):
    record(make_run(tmp_path), tmp_path / "results" / "toy")
    doc = tables(tmp_path / "results")
    row = next(line for line in doc.splitlines() if line.startswith("| panacea@rho2 |"))
    # HS 40, 42, 41: mean 41, sd 1, t(0.975, 2) = 4.303 → ± 2.5; one seed's prompt half-width 5
    assert "| 41.0 ± 2.5 | ± 5.0 |" in row and "panacea (harmful_batch_size 10, rho 2)" in row
    avg = next(line for line in doc.splitlines() if line.startswith("| avg@rho1 |"))
    assert "beyond the paper" in avg and "beyond the paper" not in row
    assert "(search on validation prompts)" in doc and "**panacea@rho2**" in doc and "avg: **avg@rho1**" in doc and "highest FA" in doc
    assert "random_perturbation on sft (norm 80)" in doc


def test_tables_write_check_and_readme_blocks(tmp_path):
    record(make_run(tmp_path), tmp_path / "results" / "toy")
    doc_path, readme = tmp_path / "results.md", tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:toy -->\nold numbers\n<!-- /results:toy -->\nend\n")
    assert main(["tables", str(tmp_path / "results"), "--write", str(doc_path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old numbers" not in text and "| panacea@rho2 |" in text and text.endswith("end\n")
    assert main(["tables", str(tmp_path / "results"), "--write", str(doc_path), "--readme", str(readme), "--check"]) == 0
    doc_path.write_text(doc_path.read_text().replace("41.0", "14.0"))
    assert main(["tables", str(tmp_path / "results"), "--write", str(doc_path), "--check"]) == 2


def test_tables_with_a_judge_needs_its_rejudging(tmp_path, capsys):
    record(make_run(tmp_path), tmp_path / "results" / "toy")
    assert main(["tables", str(tmp_path / "results"), "--judge", "nope"]) == 2
    assert "rejudge_nope.json is missing" in capsys.readouterr().err


def test_committed_results_docs_are_generated(monkeypatch):
    """docs/results.md and the README's result blocks are exactly what `panacea tables results
    --write docs/results.md --readme README.md` writes from the committed results/."""
    assert list((ROOT / "results").glob("*/result.json")), "results/ holds no recorded result"
    monkeypatch.chdir(ROOT)
    tables("results", write="docs/results.md", readme="README.md", check=True)


def test_record_joins_separate_seed_runs_of_one_config(tmp_path):
    """Seeds run as separate processes become one result; a run of another config is refused."""
    run = make_run(tmp_path)
    singles = []
    for s in (1, 2, 3):
        d = tmp_path / f"single_{s}"
        (run / f"seed_{s}").rename(d)
        singles.append(d)
    out = record(singles, tmp_path / "joined")
    meta = json.loads((out / "result.json").read_text())
    assert meta["seeds"] == [1, 2, 3] and meta["seed_dirs"] == {"1": "seed_1", "2": "seed_2", "3": "seed_3"}
    assert meta["wall_seconds"] == 30.0
    res = load(out)
    assert next(r for r in res["summary"] if r["name"] == "panacea@rho2")["metrics"]["harmful_score"]["mean"] == 41.0
    other = yaml.safe_load((singles[2] / "config.yaml").read_text())
    other["finetune"]["runs"]["sft"]["defense"] = "lisa"
    (singles[2] / "config.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(UserError, match="finetune.runs.sft.defense differs"):
        record(singles, tmp_path / "joined2")
    with pytest.raises(UserError, match="seed 1 is in both"):
        record([singles[0], singles[0]], tmp_path / "joined3")


def test_tables_show_each_rejudging_next_to_the_recorded_judge(tmp_path):
    """Re-scored answers (rejudge_<judge>.json in every seed folder) get their own HS columns, the
    order reversals are named (ties are not reversals), and a search says what the rule picks
    under the other judge. A judge missing from one seed folder is not shown."""
    out = record(make_run(tmp_path), tmp_path / "results" / "toy")
    # the new judge halves every HS except panacea@rho1's, which it drops below panacea@rho2's
    for i, seed in enumerate(CONFIG["seeds"]):
        rows = []
        for v, s in SCORES.items():
            hs = s[i][0] / 2 if v != "panacea@rho1" else 5.0
            rows.append({"name": v, "harmful_score": hs, "share_engaged_harmless": 10.0 + i})
        (out / f"seed_{seed}" / "rejudge_strict.json").write_text(json.dumps({"judge": "strict", "results": rows}))
    (out / "seed_1" / "rejudge_partial.json").write_text(json.dumps({"judge": "partial", "results": []}))
    doc = tables(tmp_path / "results")
    assert "| variant | HS `harm` | HS `strict` | engaged harmless `strict` |" in doc and "partial" not in doc
    row = next(line for line in doc.splitlines() if line.startswith("| panacea@rho2 | 41.0"))
    assert row == "| panacea@rho2 | 41.0 ± 2.5 | 20.5 ± 1.2 | 11.0 ± 2.5 |"
    rev = next(line for line in doc.splitlines() if line.startswith("* order by mean HS"))
    assert "panacea@rho1 / panacea@rho2" in rev and "panacea@rho1 / panacea@rho3" in rev
    assert "sft / panacea@rho2" not in rev   # halving keeps every other order
    pick = next(line for line in doc.splitlines() if line.startswith("* the selection rule under `strict`"))
    assert "panacea@rho1," in pick   # FA unchanged, the lowest HS within the margin is now ρ 1


def test_record_joins_seeds_run_before_and_after_a_defaulted_key_existed(tmp_path):
    """A seed whose config predates a key (finetune.data.attack, at the default that reproduces the
    older behaviour) joins seeds that carry it; a real difference is still refused."""
    run = make_run(tmp_path)
    for seed, extra in ((1, {}), (2, {"attack": "poison_mix", "attack_options": {}}), (3, {"attack": "backdoor"})):
        cfg = yaml.safe_load((run / f"seed_{seed}" / "config.yaml").read_text())
        cfg["finetune"]["data"] = {"n": 10, **extra}
        (run / f"seed_{seed}" / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="finetune.data.attack differs"):
        record(run, tmp_path / "r")
    cfg = yaml.safe_load((run / "seed_3" / "config.yaml").read_text())
    cfg["finetune"]["data"]["attack"] = "poison_mix"
    (run / "seed_3" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert (record(run, tmp_path / "r") / "result.json").is_file()


def test_tables_pair_each_defense_with_its_reference_by_seed(tmp_path):
    """Test-split sections compare each defense with its reference seed by seed: the mean and
    Student-t interval of the per-seed differences (computed here independently), the
    yes / no / higher verdict from that interval, and the FA margin."""
    import math

    cfg = {**CONFIG, "eval": {k: ({**v, "part": "test"} if isinstance(v, dict) else v) for k, v in CONFIG["eval"].items()}}
    run = make_run(tmp_path)
    for f in [run / "config.yaml", *run.glob("seed_*/config.yaml")]:
        seed = yaml.safe_load(f.read_text())["seed"]
        f.write_text(yaml.safe_dump({**cfg, **({"seeds": None, "seed": seed} if f.parent != run else {})}))
    record(run, tmp_path / "results" / "toy")
    doc = tables(tmp_path / "results")
    assert "(search on validation prompts)" not in doc

    def paired(v, ref, k):
        d = [a[k] - b[k] for a, b in zip(SCORES[v], SCORES[ref])]
        m = sum(d) / 3
        sd = math.sqrt(sum((x - m) ** 2 for x in d) / 2)
        return m, 4.303 * sd / math.sqrt(3)

    block = doc.split("Each defense against the same attack without it")[1].split("\n\n")[1].splitlines()[2:]
    lines = {line.split(" | ")[0][2:]: line for line in block}
    hs, half = paired("panacea@rho1", "sft", 0)          # −22, −22, −24: lower, interval excludes 0
    fa, fhalf = paired("panacea@rho1", "sft", 1)
    assert lines["panacea@rho1"] == f"| panacea@rho1 | sft | {hs:.1f} ± {half:.1f} | {fa:.1f} ± {fhalf:.1f} | yes | yes |"
    hs, half = paired("sft+random", "sft", 0)             # the post defense's reference is its `from`
    assert lines["sft+random"].startswith(f"| sft+random | sft | {hs:.1f} ± {half:.1f} |") and lines["sft+random"].endswith("| yes | no |")
    assert "aligned" not in lines   # the aligned model has no reference
    assert "* lower HS under every judge, FA within the margin: panacea@rho1 (vs sft), panacea@rho2 (vs sft)." in doc
    assert "at a cost in FA beyond the margin: panacea@rho3 (vs sft), avg@rho1 (vs sft), sft+random (vs sft)." in doc


def test_record_names_where_the_commit_comes_from(tmp_path):
    """A run that recorded no provenance gets the commit given with --commit, else the recording
    checkout's, labelled as such; a malformed commit is refused before anything is written."""
    run = make_run(tmp_path)
    meta = json.loads((record(run, tmp_path / "a", commit="115deefd21") / "result.json").read_text())
    assert meta["git"] == {"commit": "115deefd21", "dirty": None, "source": "--commit (the run recorded none)"}
    meta = json.loads((record(run, tmp_path / "b") / "result.json").read_text())
    assert meta["git"]["source"] == "recording checkout (the run recorded none)"
    with pytest.raises(UserError, match="--commit must be a git commit"):
        record(run, tmp_path / "c", commit="main")
    assert not (tmp_path / "c").exists()
    record(run, tmp_path / "results" / "toy", commit="115deefd21")
    assert "; commit 115deefd21 (--commit (the run recorded none))" in tables(tmp_path / "results")


def test_tables_say_when_the_recorded_invocation_reused_stages(tmp_path):
    """A run assembled from stages computed elsewhere (a shared cache_dir) has the wall time of an
    invocation that computed little: the section says how many stages it computed and reused."""
    out = record(make_run(tmp_path), tmp_path / "results" / "toy")
    assert "reused" not in tables(tmp_path / "results").split("* versions")[0]  # timings without stage counts
    for seed, (c, r) in zip(CONFIG["seeds"], [(0, 9), (1, 8), (0, 9)]):
        path = out / f"seed_{seed}" / "timings.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "stages": {"computed": c, "reused": r}}))
    line = next(x for x in tables(tmp_path / "results").splitlines() if x.startswith("* machine:"))
    assert "wall 1 min (that invocation computed 1 stage and reused 26) (the seeds' runs summed" in line
