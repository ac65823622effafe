"""Never touch what is not ours (issue 19): a folder is a run only by its marker, ``--force`` keeps
foreign files, paths are resolved once, interrupted starts rerun, stale temporaries are cleaned,
and a config holding a token is refused instead of being redacted. Everything in tmp_path."""

from __future__ import annotations

import json
import os

import pytest

from panacea.config import load_config
from panacea.errors import ConfigError, UserError
from panacea.rundir import (LOCK, SCHEMA, clean_temporaries, config_digest, open_run_dir, read_marker,
                            write_json)

CFG = {"name": "x", "seed": 1, "finetune": {"data": {"n": 16}, "runs": {"sft": {"defense": "sft"}}}}


def files(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def foreign_project(folder):
    folder.mkdir(parents=True)
    (folder / "IMPORTANT.txt").write_text("do not lose")
    (folder / "src").mkdir()
    (folder / "src" / "code.py").write_text("print(1)\n")
    (folder / "config.yaml").write_text("name: mine\n")
    return files(folder)


@pytest.mark.parametrize("names", [["IMPORTANT.txt", "src/code.py", "config.yaml"], ["status.json"],
                                   ["run.json"], ["config.yaml", "run.json", "status.json"]])
def test_force_never_touches_a_folder_without_a_valid_marker(tmp_path, names):
    folder = tmp_path / "project"
    folder.mkdir()
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        # run.json of the wrong shape, status.json saying done: names alone prove nothing
        (folder / n).write_text('{"config_sha256": "abc"}' if n == "run.json" else '{"state": "done"}')
    before = files(folder)
    for force in (False, True):
        with pytest.raises(UserError, match="not a panacea run") as e:
            open_run_dir(folder, CFG, force=force)
        assert "--force" not in str(e.value)
    assert files(folder) == before


def test_force_replaces_a_proven_run_and_keeps_foreign_files(tmp_path, capsys):
    run = tmp_path / "run"
    with open_run_dir(run, CFG, force=False) as rd:
        rd.finish("metrics.json", {"results": [1]})
    (run / "generations").mkdir()
    (run / "generations" / "x.jsonl").write_text("{}\n")
    (run / "notes.md").write_text("my notes")
    (run / "mine").mkdir()
    (run / "mine" / "data.csv").write_text("a,b\n")
    other = {**CFG, "seed": 2}
    with open_run_dir(run, other, force=True) as rd:
        assert rd.mode == "new"
    assert "kept 2 file(s)" in capsys.readouterr().out
    assert sorted(files(run)) == [".lock", "config.yaml", "mine/data.csv", "notes.md", "run.json"]
    assert read_marker(run)["config_sha256"] == config_digest(other)


def test_a_path_through_a_missing_folder_lands_where_it_says(tmp_path):
    project = tmp_path / "project"
    before = foreign_project(project)
    sneaky = tmp_path / "project" / ".." / "missing" / ".." / "project"
    for force in (False, True):
        with pytest.raises(UserError, match="not a panacea run"):
            open_run_dir(sneaky, CFG, force=force)
    assert files(project) == before and not (tmp_path / "missing").exists()
    # through a missing folder to a new one: the run is made where the path points, nothing else
    with open_run_dir(tmp_path / "missing" / ".." / "new", CFG, force=False) as rd:
        assert rd.path == tmp_path / "new" and (tmp_path / "new" / "run.json").exists()
    assert not (tmp_path / "missing").exists()
    # the same through the config loader: output_dir is resolved when the config is read
    cfg, _ = load_config(None, [f"output_dir={sneaky}"])
    assert cfg.output_dir == str(project)


def test_home_and_variables_are_expanded_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PANACEA_TEST_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.chdir(tmp_path)
    cfg, _ = load_config(None, ["output_dir=~/x"])
    assert cfg.output_dir == str(tmp_path / "home" / "x")
    with open_run_dir("~/y", CFG, force=False) as rd:
        assert rd.path == tmp_path / "home" / "y"
    with open_run_dir("$PANACEA_TEST_SCRATCH/z", CFG, force=False) as rd:
        assert rd.path == tmp_path / "scratch" / "z"
    assert not (tmp_path / "~").exists() and not (tmp_path / "$PANACEA_TEST_SCRATCH").exists()
    monkeypatch.delenv("PANACEA_TEST_SCRATCH")
    with pytest.raises(ConfigError, match=r"output_dir: environment variable \$PANACEA_TEST_SCRATCH .* is not set"):
        load_config(None, ["output_dir=$PANACEA_TEST_SCRATCH/z"])


def test_a_start_killed_before_its_marker_or_config_reruns(tmp_path):
    # killed while run.json was being written: only the lock and write_atomic's temporary are there
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text("")
    (run / ".run.json.4242.tmp").write_text('{"sch')
    with open_run_dir(run, CFG, force=False) as rd:
        assert rd.mode == "new"
    assert sorted(files(run)) == [".lock", "config.yaml", "run.json"]
    # killed after the marker, before config.yaml: the same config resumes, without --force
    (run / "config.yaml").unlink()
    with open_run_dir(run, CFG, force=False) as rd:
        assert rd.mode == "resume" and (run / "config.yaml").exists()
    (run / "config.yaml").unlink()
    with pytest.raises(UserError, match="changed or damaged; pass --force"):  # a proven run of another config
        open_run_dir(run, {**CFG, "seed": 9}, force=False)


def test_the_check_is_repeated_once_the_folder_exists(tmp_path, monkeypatch):
    import panacea.rundir as rundir

    real_lock = rundir._lock

    def racing_lock(path):  # another program fills the folder between the check and the lock
        (path / "theirs.txt").write_text("theirs")
        return real_lock(path)

    monkeypatch.setattr(rundir, "_lock", racing_lock)
    with pytest.raises(UserError, match="changed while it was being opened"):
        open_run_dir(tmp_path / "new", CFG, force=True)
    assert (tmp_path / "new" / "theirs.txt").read_text() == "theirs"
    assert not (tmp_path / "new" / "run.json").exists()


def test_stale_temporaries_of_our_naming_are_cleaned_only_inside_the_run(tmp_path):
    run = tmp_path / "run"
    with open_run_dir(run, CFG, force=False):
        pass
    stage = run / "alignment"
    (stage / "adapter").mkdir(parents=True)
    (stage / "adapter" / "adapter_model.safetensors").write_text("new")
    (stage / ".adapter.tmp-a1b2_c3d").mkdir()
    (stage / ".adapter.tmp-a1b2_c3d" / "adapter").mkdir()
    (stage / ".adapter.old-123").mkdir()
    (stage / ".adapter.old-123" / "adapter_model.safetensors").write_text("old copy")
    ft = run / "finetune" / "sft"
    ft.mkdir(parents=True)
    (ft / ".adapter.old-77").mkdir()  # killed between the two renames: the only complete copy
    (ft / ".adapter.old-77" / "adapter_model.safetensors").write_text("complete")
    for name in (".metrics.json.55.tmp", ".status.json.56.tmp"):
        (run / name).write_text("half")
    (stage / ".done.json.57.tmp").write_text("half")
    (run / ".notes.tmp").write_text("a user's file")  # not our naming
    outside = tmp_path / ".metrics.json.58.tmp"
    outside.write_text("not inside the run")
    with open_run_dir(run, CFG, force=False) as rd:
        assert rd.mode == "resume"
    assert sorted(files(run)) == [".lock", ".notes.tmp", "alignment/adapter/adapter_model.safetensors",
                                  "config.yaml", "finetune/sft/adapter/adapter_model.safetensors", "run.json"]
    assert (ft / "adapter" / "adapter_model.safetensors").read_text() == "complete"
    assert outside.exists()
    assert clean_temporaries(run) == []


def test_a_config_holding_the_environment_token_is_refused_not_redacted(tmp_path, monkeypatch):
    run = tmp_path / "run"
    token = "s3cr3tvalue42"  # not shaped like an hf_ token: only the environment says it is one
    cfg = {**CFG, "eval": {"harmful": {"name": "jsonl", "path": f"/data/{token}/x.jsonl"}}}
    with open_run_dir(run, cfg, force=False) as rd:
        rd.finish("metrics.json", {"results": []})
    before = files(run)
    monkeypatch.setenv("HF_TOKEN", token)
    for force in (False, True):
        with pytest.raises(UserError, match=r"eval.harmful.path holds the value of \$HF_TOKEN"):
            open_run_dir(run, cfg, force=force)
    assert files(run) == before
    monkeypatch.delenv("HF_TOKEN")
    with open_run_dir(run, cfg, force=False) as rd:  # the finished run is still recognised
        assert rd.mode == "complete"


@pytest.mark.parametrize("text", ["name=run_hf_" + "a1B2c3" * 6, "finetune.runs.sft_hf_" + "Zq7" * 11 + ".defense=sft",
                                  "eval.harmful.path=/x/" + "hf_" + "k" * 34 + ".jsonl"])
def test_token_looking_strings_are_refused_anywhere(text):
    with pytest.raises(ConfigError, match="looks like a Hugging Face access token"):
        load_config(None, [text])


def test_an_old_marker_counts_only_with_its_config(tmp_path):
    import yaml

    run = tmp_path / "old"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(CFG))
    write_json(run / "run.json", {"config_sha256": config_digest(CFG), "created": "then"})  # no schema
    assert read_marker(run) is not None and SCHEMA
    with open_run_dir(run, CFG, force=False) as rd:
        assert rd.mode == "resume"
    (run / "config.yaml").write_text("name: other\n")
    (run / "run.json").write_text(json.dumps({"config_sha256": config_digest(CFG)}))
    assert read_marker(run) is None
    with pytest.raises(UserError, match="not a panacea run"):
        open_run_dir(run, CFG, force=True)
    assert (run / "config.yaml").read_text() == "name: other\n" and os.path.exists(run / "run.json")


def test_bench_force_never_touches_a_foreign_folder_and_keeps_foreign_files(tmp_path, capsys):
    from pathlib import Path

    from panacea.bench import is_bench_folder, remove_bench
    from panacea.cli import main

    bench_yaml = str(Path(__file__).parents[2] / "configs" / "bench.yaml")
    project = tmp_path / "project"
    before = foreign_project(project)
    for extra in ([], ["--force"]):
        assert main(["bench", bench_yaml, "--out", str(project), *extra]) == 2
        err = capsys.readouterr().err
        assert "not a panacea bench folder" in err and "--force" not in err
    assert files(project) == before
    # a proven bench folder: --force removes the bench's files and run, and keeps the user's
    out = tmp_path / "bench"
    with open_run_dir(out / "run", CFG, force=False) as rd:
        rd.finish("metrics.json", {"results": []})
    (out / "results.json").write_text(json.dumps({"methods": []}))
    (out / "hs_vs_fa.png").write_bytes(b"png")
    (out / "notes.txt").write_text("mine")
    assert is_bench_folder(out) and not is_bench_folder(project)
    remove_bench(out)
    assert files(out) == {"notes.txt": b"mine"}


def test_run_paths_of_the_other_commands_are_expanded(tmp_path, monkeypatch, capsys):
    from panacea.cli import main

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["export", "~/nowhere"]) == 2
    assert str(tmp_path / "home" / "nowhere") in capsys.readouterr().err
    monkeypatch.delenv("PANACEA_TEST_UNSET_RUN", raising=False)
    assert main(["rejudge", "$PANACEA_TEST_UNSET_RUN/x", "--judge", "refusal"]) == 2
    assert "RUN: environment variable $PANACEA_TEST_UNSET_RUN" in capsys.readouterr().err
