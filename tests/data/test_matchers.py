"""The answer matchers of eval.utility.match, the hold-out split of a local file, and the reference rule."""

from __future__ import annotations

import json

import pytest

from panacea.data.base import DataSpec, Example
from panacea.data.files import load_jsonl
from panacea.data.matchers import build_matcher, choice_letter, reference
from panacea.data.mixing import holdout_part, prompt_key, select
from panacea.errors import ConfigError, DataError
from panacea.registry import MATCHERS


def matcher(name, pattern=None):
    return build_matcher(DataSpec(name="jsonl", match=name, pattern=pattern), "eval.utility")


@pytest.mark.parametrize("name,response,ref,ok", [
    ("exact", " 42\n", "42", True),
    ("exact", "42.", "42", False),
    ("exact", "Paris", "paris", False),
    ("first_word", " Positive. really", "positive", True),
    ("first_word", "“Yes,” she said", "yes", True),
    ("first_word", "positively", "positive", False),
    ("first_word", "", "positive", False),
    ("number", "3 + 4 = 7", "3 + 4 = 7", True),              # last number of both
    ("number", "It is 1,234 apples", "1234", True),            # commas dropped
    ("number", "The final answer is: 12, not 13", "12", True),  # GSM8K's marker wins over the last number
    ("number", "7.0", "7", True),
    ("number", "3 + 4 = 8", "3 + 4 = 7", False),
    ("number", "no idea", "7", False),                         # no number is wrong, never inf == inf
    ("choice", "B", "B", True),
    ("choice", "(b) Paris", "B", True),
    ("choice", "B. Paris", "(B)", True),
    ("choice", "The answer is C.", "C", True),
    ("choice", "Berlin", "B", False),
    ("choice", "I don't know", "A", False),
    ("regex", "Answer: yes, because", "yes", True),            # first group vs a bare label
    ("regex", "Answer: no", "Answer: yes", False),             # the reference is extracted too
    ("regex", "Answer: yes", "Answer: yes", True),
    ("regex", "yes", "yes", False),                            # no match in the answer: wrong
])
def test_matchers(name, response, ref, ok):
    pattern = r"Answer: (\w+)" if name == "regex" else None
    assert matcher(name, pattern)(response, ref) is ok


def test_regex_named_group_and_whole_match():
    named = matcher("regex", r"(?i)(so|thus) the result is (?P<answer>-?\d+)")
    assert named.group == "answer" and named("So the result is -3.", "-3")
    whole = matcher("regex", r"\d{4}")
    assert whole("in 1969 or 1970", "1969") and not whole("in 69", "1969")


def test_choice_letter():
    assert [choice_letter(t) for t in ("a", "[c]", "D)", "option: e", "A cat", "apple")] == \
        ["A", "C", "D", "E", "A", None]


def test_matcher_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"eval.utility.match: unknown matcher 'numbr' \(did you mean number\?\)"):
        matcher("numbr")
    with pytest.raises(ConfigError, match="eval.utility.pattern is required with match: regex"):
        matcher("regex")
    with pytest.raises(ConfigError, match="eval.utility.pattern is read only with match: regex"):
        matcher("exact", r"\d+")
    with pytest.raises(ConfigError, match="eval.utility.pattern: not a valid regular expression"):
        matcher("regex", "(unclosed")
    assert set(MATCHERS.names()) >= {"exact", "first_word", "number", "choice", "regex"}


def test_checks_refuse_references_that_never_match():
    assert matcher("number").check("seven") == "has no number"
    assert matcher("choice").check("Paris") is not None
    assert matcher("exact").check("  ") == "is empty"
    assert matcher("number").check("3 + 4 = 7") is None


def test_reference_is_label_else_output():
    assert reference(Example("q", output="3 + 4 = 7")) == "3 + 4 = 7"
    assert reference(Example("q", output="3 + 4 = 7", label="7")) == "7"


def test_holdout_splits_a_file_disjointly_and_stably(tmp_path):
    rows = [{"instruction": f"What is {i} plus {i + 1}?", "output": str(2 * i + 1)} for i in range(200)]
    rows.append(dict(rows[0], instruction="  WHAT is 0 plus 1 "))  # the same prompt, normalized
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    pool = load_jsonl(DataSpec(name="jsonl", path=str(path)))

    def side(split, **kw):
        return select(pool, DataSpec(name="jsonl", path=str(path), holdout=0.3, split=split, **kw), "finetune.data.task")

    train, test = side("train"), side("test")
    assert len(train) + len(test) == len(pool)
    assert not {prompt_key(e) for e in train} & {prompt_key(e) for e in test}  # duplicates on one side
    assert 0.2 < len(test) / len(pool) < 0.4
    # the side is a property of the prompt: the file's order does not move a row
    assert [holdout_part(e, 0.3) for e in reversed(pool)] == [holdout_part(e, 0.3) for e in pool][::-1]
    # part: validation / test divides the held-out side, disjointly
    val, tst = side("test", part="validation"), side("test", part="test")
    assert len(val) + len(tst) == len(test) and val and tst
    with pytest.raises(ConfigError, match="finetune.data.task.split must be train or test"):
        side("validation")
    with pytest.raises(ConfigError, match=r"holdout must be a share in \(0, 1\)"):
        DataSpec(name="jsonl", holdout=1.0)
    with pytest.raises(DataError, match="asked for rows"):
        side("test", n=len(test) + 1)

