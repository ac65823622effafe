"""The synthetic sentiment task (panacea.data.sentiment)."""

import re

import pytest

from panacea.data.base import DataSpec
from panacea.data.sentiment import INSTRUCTION, NEGATIVE, POSITIVE, load, match_sentiment
from panacea.errors import ConfigError
from panacea.registry import DATASETS


@pytest.fixture(scope="module")
def train():
    return load(DataSpec(name="sentiment"))


def test_format_and_balance(train):
    assert len(train) == 2000
    assert INSTRUCTION == (
        "Analyze the sentiment of the input, and respond only positive or negative"
    )
    assert all(r.instruction == INSTRUCTION and r.output == r.label for r in train)
    assert sum(r.label == "positive" for r in train) == 1000
    test = load(DataSpec(split="test", size=30))
    assert len(test) == 30 and sum(r.label == "positive" for r in test) == 15


def test_deterministic(train):
    assert load(DataSpec(name="sentiment")) == train
    assert load(DataSpec(name="sentiment", seed=1))[:20] != train[:20]
    assert len({r.input for r in train}) == len(train)


def test_no_train_test_overlap(train):
    for seed in (0, 1):
        tr = train if seed == 0 else load(DataSpec(seed=seed))
        test = load(DataSpec(split="test", seed=seed))
        assert len(test) == 400
        assert not {r.input for r in tr} & {r.input for r in test}


def _last_clause(sentence: str) -> str:
    return re.split(r", (?:but|yet|and) | and |^Although [^,]*, ", sentence)[-1]


def test_negation_and_contrast_labels(train):
    seen = {"not_pos": 0, "not_neg": 0, "contrast": 0}
    for r in train:
        last = _last_clause(r.input)
        m = re.search(r"(?:was not|wasn't|was far from|was hardly) (\w+)\.$", last)
        if m and m.group(1) in POSITIVE:
            assert r.label == "negative", r.input
            seen["not_pos"] += 1
        m = re.search(r"wasn't (\w+) at all\.$|was not (\w+) in the slightest\.$", last)
        if m and (m.group(1) or m.group(2)) in NEGATIVE:
            assert r.label == "positive", r.input
            seen["not_neg"] += 1
        m = re.search(r"^The [\w' ]+ was (\w+), but the [\w' ]+ was (\w+)\.$", r.input)
        if m:
            first, second = m.groups()
            assert r.label == ("positive" if second in POSITIVE else "negative"), r.input
            assert (first in POSITIVE) != (second in POSITIVE)
            seen["contrast"] += 1
        m = re.fullmatch(r"The [\w' ]+ was (\w+)\.", r.input)
        if m:
            assert r.label == ("positive" if m.group(1) in POSITIVE else "negative"), r.input
    assert all(v > 5 for v in seen.values()), seen


def test_vocabulary_size():
    assert len(POSITIVE) >= 25 and len(NEGATIVE) >= 25 and not set(POSITIVE) & set(NEGATIVE)


def test_bad_split():
    with pytest.raises(ConfigError, match="data.split"):
        load(DataSpec(split="validation"))


@pytest.mark.parametrize(
    "response, label, ok",
    [
        (" Positive.", "positive", True),
        ("positive", "positive", True),
        ('"negative" because the plot was dull', "negative", True),
        ("NEGATIVE!", "negative", True),
        ("positively", "positive", False),
        ("negative", "positive", False),
        ("The sentiment is positive", "positive", False),
        ("", "positive", False),
        ("   ", "negative", False),
    ],
)
def test_match_sentiment(response, label, ok):
    assert match_sentiment(response, label) is ok


def test_registered():
    entry = DATASETS._entries["sentiment"]
    assert entry.meta["kind"] == "task" and entry.meta["match"] is match_sentiment
