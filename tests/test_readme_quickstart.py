"""Every command of the README's quick start and configuration walk-through, in order, on the
tiny model, and the walk-through's YAML against configs/quickstart.yaml: the README cannot drift.

The fenced ``bash`` blocks of the sections in ``SECTIONS`` are split into commands. Set-up lines
that the test environment has already done (``make install``, activating ``.venv``) are skipped,
each for a stated reason, and listed at the end of the pytest run; any other command must be a
``panacea`` command. A ``panacea run`` gets the tiny model and small pools as overrides and runs
in a temporary folder that sees the repository's ``configs/`` (so relative paths are the README's).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml
from conftest import SUMMARY

from panacea.cli import _parser, main, resolve_config_args
from panacea.config import load_config
from panacea.pipeline import run_dir_of

ROOT = Path(__file__).parents[1]

#: set-up lines the test does not run, and why; a new non-panacea line in the README must be added here
SKIPPED = {
    "make install": "the tests run inside the installed environment",
    "source .venv/bin/activate": "`panacea` is called in-process here",
}

#: what makes a README run small: the tiny random model and a few rows per pool; the tiny tokenizer
#: (320 tokens) spells a sample in several times the tokens, so it needs a longer max_length
SMALL = ["model.max_length=256", "alignment.data.n=8", "alignment.benign.n=4", "finetune.data.n=8", "eval.harmful.n=4",
         "eval.utility.n=4", "eval.benign.n=2", "eval.max_new_tokens=4", "eval.batch_size=4"]

#: the README sections whose commands are run, in this order
SECTIONS = ("Quick start", "Configuration, step by step")


def section(text: str, title: str) -> str:
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert found, f"README.md has no '## {title}' section"
    return found.group(1)


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def commands(text: str) -> list[str]:
    """The commands of a README section: bash blocks, comments and blank lines dropped, backslash
    continuations joined."""
    out = []
    for block in blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()  # a trailing comment
            if line and not line.startswith("#"):
                out.append(" ".join(line.split()))
    return out


README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_quickstart_section_runs_the_quickstart_config():
    assert "panacea run configs/quickstart.yaml" in commands(section(README, "Quick start"))


def contained(part, whole, key="") -> list[str]:
    """Keys of ``part`` whose value differs from ``whole`` (mappings compared key by key)."""
    if isinstance(part, dict) and isinstance(whole, dict):
        return [d for k, v in part.items() for d in
                (contained(v, whole[k], f"{key}.{k}".lstrip(".")) if k in whole else [f"{key}.{k}".lstrip(".")])]
    return [] if part == whole else [key]


def test_walkthrough_yaml_is_the_quickstart_config():
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text(encoding="utf-8"))
    shown = blocks(section(README, "Configuration, step by step"), "yaml")
    assert len(shown) >= 3
    for block in shown:
        assert contained(yaml.safe_load(block), config) == [], block


def test_readme_commands_run(tiny_dir, tmp_path, monkeypatch, request, capsys):
    text = README
    cmds = [c for title in SECTIONS for c in commands(section(text, title))]
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    skipped, ran = [], 0
    for cmd in cmds:
        if cmd in SKIPPED:
            skipped.append(f"README commands: skipped `{cmd}` ({SKIPPED[cmd]})")
            continue
        argv = shlex.split(cmd)
        assert argv[0] in ("panacea", ".venv/bin/panacea"), f"a README command the test cannot run: {cmd!r}"
        argv = argv[1:]
        if argv[0] in ("run", "validate"):
            argv += [f"model.name_or_path={tiny_dir}", *SMALL]
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0, f"{cmd!r} failed: {out.err[-500:]}"
        if argv[0] == "run":  # it wrote where the README says
            args, extra = _parser().parse_known_args(argv)
            args.overrides += extra
            resolve_config_args(args)
            run_dir = run_dir_of(load_config(args.config, args.overrides)[0])
            assert json.loads((run_dir / "metrics.json").read_text())["results"]
            assert str(run_dir.relative_to(tmp_path.resolve())) in text, run_dir
        ran += 1
    assert ran >= 1 and skipped, (ran, skipped)
    request.config.stash.setdefault(SUMMARY, []).extend(skipped)
