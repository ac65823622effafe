"""Stages as cached, content-addressed steps (stages.py, docs/stages.md), on the tiny model.

One finished run of configs/tiny.yaml (with one fine-tuning run and one post defense to keep it
short) is re-run with changed evaluation prompts, an added post defense, a shared cache and a
moved run directory; ``panacea plan`` prints the graph. The stage keys are checked without any model.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from panacea.cli import main

ROOT = Path(__file__).parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")
SMALL = ["finetune.runs={sft: {defense: sft}}", "post={sft+random: {from: sft, defense: random_perturbation, norm: 0.5}}"]
ASCENT = "post.sft+ascent={from: sft, defense: ascent, rho: 1.0, harmful_data: {name: pyrit_harmful, start: 10, n: 8}}"
TIMING = {"train_seconds", "step_seconds", "peak_memory_gb", "eval_seconds"}


def run(tiny_dir, out, *extra, capsys=None):
    code = main(["run", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={out}", *SMALL, *extra])
    printed = capsys.readouterr() if capsys is not None else None
    return code, printed


def keys(tiny_dir, *extra) -> dict[str, str]:
    """Every stage's key for configs/tiny.yaml with ``extra`` overrides (no model loaded)."""
    from panacea.config import load_config
    from panacea.pipeline import Context, Plan
    from panacea.stages import build_graph

    cfg, _ = load_config(TINY, [f"model.name_or_path={tiny_dir}", *extra])
    plan = Plan(cfg)
    ctx = Context(cfg)
    plan.check_data(ctx)
    return {name: st.key for name, st in build_graph(cfg, plan, ctx).items()}


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("stages") / "run"
    code, _ = run(tiny_dir, out)
    assert code == 0
    return out


def copy_run(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns(".lock"))
    return dest


@pytest.mark.parametrize("override,changed", [
    ("seed=44", "all"),
    ("finetune.train.learning_rate=0.002", {"sft", "panacea", "sft+random", "sft+ascent", "eval/sft", "eval/panacea",
                                            "eval/sft+random", "eval/sft+ascent"}),
    ("finetune.runs.panacea.rho=2.0", {"panacea", "eval/panacea"}),
    ("finetune.data.poison_ratio=0.5", {"sft", "panacea", "sft+random", "sft+ascent", "eval/sft", "eval/panacea",
                                        "eval/sft+random", "eval/sft+ascent"}),
    ("alignment.train.learning_rate=0.002", "all"),
    ("alignment.data.n=15", "all"),
    ("post.sft+random.norm=0.25", {"sft+random", "eval/sft+random"}),
    ("eval.harmful.n=5", {"eval/aligned", "eval/sft", "eval/panacea", "eval/sft+random", "eval/sft+ascent"}),
    ("eval.max_new_tokens=9", {"eval/aligned", "eval/sft", "eval/panacea", "eval/sft+random", "eval/sft+ascent"}),
    ("lora.r=8", "all"),
    ("model.max_length=200", "all"),
    ("output_dir=/elsewhere", set()),
    ("cache_dir=/elsewhere", set()),
])
def test_a_setting_changes_the_keys_of_the_stages_it_reaches(tiny_dir, override, changed):
    before, after = keys(tiny_dir), keys(tiny_dir, override)
    assert list(before) == list(after)
    differ = {name for name in before if before[name] != after[name]}
    assert differ == (set(before) if changed == "all" else changed), override


def part_keys(tiny_dir, *extra) -> dict[str, str]:
    """The key of every part (prompt set) of every evaluation, as ``<variant>:<set>``."""
    from panacea.config import load_config
    from panacea.pipeline import Context, Plan
    from panacea.stages import build_graph

    cfg, _ = load_config(TINY, [f"model.name_or_path={tiny_dir}", *extra])
    plan = Plan(cfg)
    ctx = Context(cfg)
    plan.check_data(ctx)
    return {f"{st.name}:{part}": pst.key for st in build_graph(cfg, plan, ctx).values()
            for part, pst in st.parts.items()}


@pytest.mark.parametrize("override,changed", [
    ("eval.harmful.n=5", {"harmful"}),
    ("eval.judge=refusal", {"harmful"}),
    ("eval.utility.n=7", {"task"}),
    ("eval.utility_max_new_tokens=3", {"task"}),
    ("eval.benign.n=3", {"benign"}),
    ("eval.max_new_tokens=9", {"harmful", "benign"}),
    ("eval.batch_size=3", {"harmful", "task", "benign"}),
    ("eval.samples=1", set()),
    ("finetune.runs.panacea.rho=2.0", "panacea"),
])
def test_a_setting_changes_only_the_prompt_sets_it_reaches(tiny_dir, override, changed):
    before, after = part_keys(tiny_dir), part_keys(tiny_dir, override)
    assert list(before) == list(after) and {k.split(":")[1] for k in before} == {"harmful", "task", "benign"}
    differ = {k for k in before if before[k] != after[k]}
    if isinstance(changed, str):  # one variant's every set
        assert differ == {k for k in before if k.split(":")[0] == changed}, override
    else:
        assert differ == {k for k in before if k.split(":")[1] in changed}, override


def test_changed_eval_prompts_reevaluate_without_training(finished, tiny_dir, tmp_path, capsys, monkeypatch):
    import panacea.pipeline as pipeline  # the names the pipeline calls (imported at its top)

    def must_not_run(*a, **k):
        raise AssertionError("a prompt set whose settings did not change was generated again")

    out = copy_run(finished, tmp_path / "run")
    monkeypatch.setattr(pipeline, "evaluate_task", must_not_run)
    monkeypatch.setattr(pipeline, "evaluate_benign", must_not_run)
    code, printed = run(tiny_dir, out, "eval.harmful.n=5", capsys=capsys)
    monkeypatch.undo()
    assert code == 0, printed.err
    log = printed.out
    assert "the config changed (eval.harmful.n: 6 → 5)" in log
    for stage in ("alignment aligned", "fine-tuning sft", "post-fine-tuning sft+random"):
        assert f"{stage}: done (outputs verified)" in log, log
    assert "steps in" not in log  # nothing trained
    assert log.count("task, benign reused from the cache") == 3, log  # only the harmful prompts are generated
    gens = [json.loads(g) for g in (out / "generations" / "sft.jsonl").read_text().splitlines()]
    before = [json.loads(g) for g in (finished / "generations" / "sft.jsonl").read_text().splitlines()]
    assert sum(g["set"] == "harmful" for g in gens) == 5
    assert [g["set"] for g in gens] == ["harmful"] * 5 + [g["set"] for g in before if g["set"] != "harmful"]
    assert [g for g in gens if g["set"] != "harmful"] == [g for g in before if g["set"] != "harmful"]
    new, old = (json.loads((d / "eval" / "sft" / "result.json").read_text()) for d in (out, finished))
    assert list(new) == list(old)  # the same keys in the same order as an evaluation of every set
    assert {k: new[k] for k in ("finetune_accuracy", "over_refusal")} == \
        {k: old[k] for k in ("finetune_accuracy", "over_refusal")}
    # back to the first config: its evaluations are in the cache, nothing is computed
    code, printed = run(tiny_dir, out, capsys=capsys)
    assert code == 0 and not re.search(r"\] \S+: HS \d", printed.out)  # no variant evaluated
    assert printed.out.count("reused from the cache (outputs verified)") == 3, printed.out
    assert _same_results(out, finished)


def _same_results(a: Path, b: Path) -> bool:
    def rows(p):
        return [{k: v for k, v in r.items() if k not in TIMING}
                for r in json.loads((p / "metrics.json").read_text())["results"]]

    return rows(a) == rows(b)


def test_an_added_post_defense_runs_only_itself(finished, tiny_dir, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    code, printed = run(tiny_dir, out, ASCENT, capsys=capsys)
    assert code == 0, printed.err
    log = printed.out
    assert "post-fine-tuning sft+ascent: ascent on sft" in log
    for stage in ("alignment aligned", "fine-tuning sft", "post-fine-tuning sft+random"):
        assert f"{stage}: done (outputs verified)" in log
    for v in ("aligned", "sft", "sft+random"):
        assert f"{v}: done (outputs verified)" in log
    assert "sft+ascent: HS" in log
    assert [r["name"] for r in json.loads((out / "metrics.json").read_text())["results"]] == \
        ["aligned", "sft", "sft+random", "sft+ascent"]


def test_a_shared_cache_computes_identical_stages_once_and_a_moved_run_resumes(finished, tiny_dir, tmp_path, capsys):
    a = copy_run(finished, tmp_path / "a")
    cache = a / "cache"  # the cache of run a, shared with run b
    code, printed = run(tiny_dir, tmp_path / "b", f"cache_dir={cache}", "eval.max_new_tokens=6", capsys=capsys)
    assert code == 0
    assert printed.out.count("reused from the cache (outputs verified)") == 3, printed.out  # every training stage
    assert "steps in" not in printed.out
    # a moved run directory (no absolute path in what resumes it) still reuses its stages, without the cache
    for p in (tmp_path / "b").rglob("*"):  # (config.yaml keeps output_dir and results.md names the folder, as before)
        if p.is_file() and p.suffix in (".json", ".jsonl") or p.name == "stage_key":
            assert str(tmp_path) not in p.read_text(), p
    moved = tmp_path / "moved"
    (tmp_path / "b").rename(moved)
    shutil.rmtree(a)
    code = main(["plan", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={moved}", *SMALL, f"cache_dir={cache}",
                 "eval.max_new_tokens=6"])
    printed = capsys.readouterr()
    assert code == 0 and "6 stages: 6 reused, 0 to compute" in printed.out, printed.out
    assert printed.out.count("reuse (run directory)") == 6


def test_a_damaged_cache_entry_is_recomputed(finished, tiny_dir, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    shutil.rmtree(out / "finetune")  # only the cache has the fine-tuning run now
    entries = list((out / "cache" / "finetune").glob("*/adapter/adapter_model.safetensors"))
    assert len(entries) == 1
    data = bytearray(entries[0].read_bytes())
    data[-1] ^= 1
    entries[0].unlink()  # a hard link: break it, then write the damaged copy
    entries[0].write_bytes(bytes(data))
    code, printed = run(tiny_dir, out, "eval.max_new_tokens=6", capsys=capsys)  # not complete: stages are checked
    assert code == 0, printed.err
    assert "fine-tuning sft: sft from aligned" in printed.out  # recomputed, not reused
    assert "post-fine-tuning sft+random: done (outputs verified)" in printed.out  # the same weights again
    assert (out / "finetune" / "sft" / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (finished / "finetune" / "sft" / "adapter" / "adapter_model.safetensors").read_bytes()


def test_plan_prints_the_graph_without_a_model(finished, tiny_dir, tmp_path, capsys, monkeypatch):
    import panacea.models as models

    def no_model(*a, **k):
        raise AssertionError("plan loaded a model")

    monkeypatch.setattr(models, "build", no_model)
    monkeypatch.setattr(models, "load_model", no_model)  # (its tokenizer is checked, as by validate)
    code = main(["plan", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={finished}", *SMALL, "eval.harmful.n=5",
                 ASCENT])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    lines = printed.out.splitlines()
    assert any(ln.split()[0] == "alignment" and "reuse (run directory)" in ln for ln in lines)
    assert any(ln.split()[0] == "post/sft+ascent" and "time unknown" in ln for ln in lines)  # never measured
    assert any(ln.split()[0] == "eval/sft" and "compute (≈" in ln for ln in lines)  # measured evaluations
    assert "8 stages: 3 reused, 5 to compute" in printed.out
    code = main(["plan", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={finished}", *SMALL, "--force"])
    assert code == 0 and "6 stages: 0 reused, 6 to compute" in capsys.readouterr().out
    code = main(["plan", TINY, f"model.name_or_path={tiny_dir}", f"output_dir={tmp_path / 'new'}"])
    printed = capsys.readouterr()
    assert code == 0 and "time unknown" in printed.out and not (tmp_path / "new").exists()


def test_plan_names_a_bad_value(tiny_dir, capsys):
    code = main(["plan", TINY, f"model.name_or_path={tiny_dir}", "finetune.data.poison_ratio=2"])
    err = capsys.readouterr().err
    assert code == 2 and "finetune.data.poison_ratio" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- the cache, without a model


def _stage(**settings):
    from panacea.stages import Stage

    return Stage("finetune", "sft", "finetune/sft", [], {"lr": 1e-3, **settings})


def test_a_cache_entry_is_used_only_when_every_checksum_and_input_matches(tmp_path):
    from panacea.stages import Cache

    run = tmp_path / "run"
    (run / "finetune/sft/adapter").mkdir(parents=True)
    (run / "finetune/sft/adapter/w.safetensors").write_bytes(b"weights")
    (run / "finetune/sft/record.json").write_text("{}")
    (run / "alignment/adapter").mkdir(parents=True)
    (run / "alignment/adapter/a.safetensors").write_bytes(b"aligned")
    inputs = [run / "alignment/adapter"]
    cache, st = Cache(tmp_path / "cache"), _stage()
    files = {"adapter/w.safetensors": run / "finetune/sft/adapter/w.safetensors",
             "record.json": run / "finetune/sft/record.json"}
    cache.publish(st, files, inputs)
    entry = cache.lookup(st, inputs)
    assert entry == tmp_path / "cache" / "finetune" / st.key and cache.files(entry) == sorted(files)
    assert cache.lookup(_stage(lr=2e-3), inputs) is None  # another key
    assert cache.lookup(st, []) is None  # other inputs
    assert Cache(tmp_path / "cache", read=False).lookup(st, inputs) is None  # --force reads nothing
    (entry / "adapter/w.safetensors").unlink()  # a damaged entry (its link broken first)
    (entry / "adapter/w.safetensors").write_bytes(b"weightz")
    assert cache.lookup(st, inputs) is None
    assert (run / "finetune/sft/adapter/w.safetensors").read_bytes() == b"weights"
    cache.publish(st, files, inputs)  # published again: replaced as a whole
    assert cache.lookup(st, inputs) is not None


def test_a_second_process_computing_the_same_stage_waits_for_the_first(tmp_path):
    import threading
    import time

    from panacea.stages import Cache

    cache, st, said, order = Cache(tmp_path / "cache"), _stage(), [], []

    def first():
        with cache.lock(st, said.append):
            order.append("first in")
            time.sleep(0.5)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    while not order:
        time.sleep(0.01)
    with cache.lock(st, said.append):  # flock: another open file description, so it waits here
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
    assert len(said) == 1 and "another process is computing this stage" in said[0]


def test_a_stage_whose_inputs_are_missing_names_them(tmp_path):
    from panacea.errors import UserError
    from panacea.pipeline import StageStore
    from panacea.stages import Cache

    store = StageStore(tmp_path, {}, Cache(tmp_path / "cache"), legacy=False)
    with pytest.raises(UserError, match=r"fine-tuning sft: its input alignment/adapter is missing"):
        store.prepare(_stage(), tmp_path / "finetune" / "sft", [tmp_path / "alignment" / "adapter"])


def test_a_cache_dir_that_is_a_file_is_one_line(tiny_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, printed = run(tiny_dir, tmp_path / "run", f"cache_dir={tmp_path / 'file'}", capsys=capsys)
    assert code == 2 and printed.err.strip().count("\n") == 0 and "cache_dir" in printed.err
    assert not (tmp_path / "run").exists()


def test_a_run_made_before_stage_keys_reuses_its_unchanged_stages(finished, tiny_dir, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    shutil.rmtree(out / "cache")
    for m in out.rglob("done.json"):  # manifests as panacea wrote them before stage keys
        data = json.loads(m.read_text())
        del data["key"]
        data["files"] = {k: v for k, v in data["files"].items() if not k.endswith("stage_key")}
        m.write_text(json.dumps(data))
    for k in out.rglob("stage_key"):
        k.unlink()
    code, printed = run(tiny_dir, out, "post.sft+random.norm=0.25", capsys=capsys)
    assert code == 0, printed.err
    for stage in ("alignment aligned", "fine-tuning sft"):
        assert f"{stage}: done (outputs verified)" in printed.out
    assert "post-fine-tuning sft+random: random_perturbation on sft" in printed.out
    assert "key" in json.loads((out / "finetune" / "sft" / "done.json").read_text())  # adopted
