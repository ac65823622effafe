"""File loaders (panacea.data.files); online loaders with a fake `datasets` (panacea.data.hub)."""

import json
import sys
import types

import pytest

from panacea.data import hub
from panacea.data.base import DataSpec, Example
from panacea.data.files import load_csv, load_json, load_jsonl
from panacea.errors import ConfigError, DataError


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(rows) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


# --- good files -------------------------------------------------------------------------------


def test_jsonl_defaults(tmp_path):
    path = write(
        tmp_path,
        "a.jsonl",
        jsonl(
            [
                {"instruction": "Add", "input": "1 2", "output": "3", "label": 3},
                {"prompt": "Hi", "response": "Hello"},
            ]
        )
        + "\n",  # blank lines are skipped
    )
    rows = load_jsonl(DataSpec(path=path))
    assert rows == [
        Example("Add", input="1 2", output="3", label="3", source="a.jsonl"),
        Example("Hi", output="Hello", source="a.jsonl"),
    ]


def test_json_list_and_data_key(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c"}]
    p1 = write(tmp_path, "l.json", json.dumps(rows))
    p2 = write(tmp_path, "d.json", json.dumps({"data": rows}))
    a, b = load_json(DataSpec(path=p1)), load_json(DataSpec(path=p2))
    pairs = [(r.instruction, r.output) for r in a]
    assert pairs == [(r.instruction, r.output) for r in b] == [("a", "b"), ("c", "")]
    assert load_json(DataSpec(path=p1))[1] == Example("c", source="l.json")


def test_csv(tmp_path):
    path = write(tmp_path, "t.csv", 'text,gold\n"Great, really",1\nBad,0\n')
    rows = load_csv(DataSpec(path=path, fields={"instruction": "text", "label": "gold"}))
    assert [(r.instruction, r.label) for r in rows] == [("Great, really", "1"), ("Bad", "0")]


def test_field_mapping(tmp_path):
    row = {"q": "Why?", "ctx": "sky", "a": "Rayleigh", "y": "x"}
    path = write(tmp_path, "m.jsonl", jsonl([row]))
    fields = {"instruction": "q", "input": "ctx", "output": "a", "label": "y"}
    assert load_jsonl(DataSpec(path=path, fields=fields)) == [
        Example("Why?", input="sky", output="Rayleigh", label="x", source="m.jsonl")
    ]


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loader, name", [(load_jsonl, "jsonl"), (load_json, "json"), (load_csv, "csv")]
)
def test_path_required(loader, name):
    with pytest.raises(ConfigError, match=f"data.path is required for the {name} loader"):
        loader(DataSpec())


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        load_jsonl(DataSpec(path=str(tmp_path / "nope.jsonl")))


def test_unreadable_file(tmp_path):
    bad = tmp_path / "bin.jsonl"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="cannot read .*bin.jsonl"):
        load_jsonl(DataSpec(path=str(bad)))
    (tmp_path / "adir").mkdir()
    with pytest.raises(DataError, match="cannot read .*adir"):
        load_json(DataSpec(path=str(tmp_path / "adir")))


@pytest.mark.parametrize(
    "loader, name, text, message",
    [
        (load_jsonl, "e.jsonl", '{"instruction": "a"}\n{"instr', r"e.jsonl line 2: invalid JSON"),
        (load_jsonl, "e.jsonl", '{"instruction": "a"}\n[1]\n', r"e.jsonl line 2: expected an object"),
        (load_jsonl, "e.jsonl", '{"output": "a"}', r"e.jsonl line 1: missing field 'instruction' or"),
        (load_jsonl, "e.jsonl", '{"instruction": 5}', r"e.jsonl line 1: field 'instruction' must be"),
        (load_jsonl, "e.jsonl", '{"instruction": "  "}\n', r"e.jsonl line 1: empty instruction"),
        (load_jsonl, "e.jsonl", "\n\n", r"e.jsonl has no rows"),
        (load_json, "e.json", "", r"e.json has no rows"),
        (load_json, "e.json", "[]", r"e.json has no rows"),
        (load_json, "e.json", '[{"instruction": "a"},\n oops]', r"e.json line 2: invalid JSON"),
        (load_json, "e.json", '{"rows": []}', r"e.json: expected a list of objects"),
        (load_json, "e.json", '["a"]', r"e.json item 0: expected an object, got str"),
        (load_csv, "e.csv", "", r"e.csv has no rows"),
        (load_csv, "e.csv", "instruction,output\n", r"e.csv has no rows"),
        (load_csv, "e.csv", "question,output\nhi,there\n", r"e.csv line 2: missing field"),
    ],
)
def test_bad_files(tmp_path, loader, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(DataError, match=message):
        loader(DataSpec(path=path))


def test_bad_mapping(tmp_path):
    path = write(tmp_path, "f.jsonl", jsonl([{"instruction": "a"}]))
    msg = r"f.jsonl line 1: missing field 'answer' \(data.fields.output\)"
    with pytest.raises(DataError, match=msg):
        load_jsonl(DataSpec(path=path, fields={"output": "answer"}))
    with pytest.raises(ConfigError, match="data.fields: unknown key 'outptu'"):
        load_jsonl(DataSpec(path=path, fields={"outptu": "answer"}))


# --- online loaders with a fake `datasets` ---------------------------------------------------


@pytest.fixture
def fake_datasets(monkeypatch):
    tables = {
        ("stanfordnlp/sst2", None, "train"): [
            {"sentence": "a gem", "label": 1},
            {"sentence": "a dud", "label": 0},
        ],
        ("stanfordnlp/sst2", None, "validation"): [{"sentence": "fine", "label": 1}],
        ("fancyzhx/ag_news", None, "test"): [{"text": f"news {i}", "label": i} for i in range(4)],
        ("openai/gsm8k", "main", "train"): [{"question": "2+2?", "answer": "2+2=4\n#### 1,004"}],
        ("PKU-Alignment/BeaverTails", None, "30k_train"): [
            {"prompt": "How to X?", "response": "Do X.", "is_safe": False},
            {"prompt": "how to x", "response": "Again.", "is_safe": False},
            {"prompt": "Hello", "response": "Hi", "is_safe": True},
        ],
        ("PKU-Alignment/BeaverTails", None, "30k_test"): [
            {"prompt": "Q1", "is_safe": False},
            {"prompt": "Q2", "is_safe": True},
            {"prompt": "Q1", "is_safe": False},
        ],
        ("me/data", "cfg", "train"): [{"question": "Why?", "answer": "Because."}],
        ("tatsu-lab/alpaca_eval", "alpaca_eval", "eval"): [{"instruction": "Name a colour.", "output": "Red."}],
        ("anonymous4486/repnoise_beavertail", None, "train"): [
            {"prompt": "How to X?", "response": "Do X.", "is_safe": False,
             "refusal": "Question: How to X?\nAnswer: I can't help with X."},
            {"prompt": "Broken", "response": "R", "is_safe": False, "refusal": "no answer marker"},
        ],
    }
    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return tables[(path, name, split)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hub_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    msg = r"the `datasets` package is needed for sst2 \(pip install datasets\); offline"
    with pytest.raises(DataError, match=msg):
        hub.load_sst2(DataSpec(name="sst2"))


def test_hub_tasks(fake_datasets):
    sst = hub.load_sst2(DataSpec(name="sst2"))
    assert [(r.input, r.output, r.label) for r in sst] == [
        ("a gem", "positive", "positive"),
        ("a dud", "negative", "negative"),
    ]
    assert sst[0].instruction == (
        "Analyze the sentiment of the input, and respond only positive or negative"
    )
    assert hub.load_sst2(DataSpec(name="sst2", split="test"))[0].input == "fine"
    assert fake_datasets[-1] == ("stanfordnlp/sst2", None, "validation")

    ag = hub.load_agnews(DataSpec(name="agnews", split="test"))
    assert [r.label for r in ag] == ["World", "Sports", "Business", "Sci/Tech"]
    assert ag[0].instruction == (
        "Categorize the news article given in the input into one of the 4 categories:"
        "\n\nWorld\nSports\nBusiness\nSci/Tech\n"
    )

    (gsm,) = hub.load_gsm8k(DataSpec(name="gsm8k"))
    assert gsm.output == "2+2=4\nThe final answer is:  1,004" and gsm.label == "1004"
    assert hub.match_gsm8k("so it is 1004", gsm.label)
    with pytest.raises(ConfigError, match="data.split"):
        hub.load_gsm8k(DataSpec(name="gsm8k", split="dev"))


def test_hub_beavertails(fake_datasets):
    pairs = hub.load_beavertails_harmful(DataSpec())
    assert [(r.instruction, r.output) for r in pairs] == [("How to X?", "Do X.")]
    assert [r.instruction for r in hub.load_beavertails_eval(DataSpec())] == ["Q1", "Q1"]


def test_hub_refusal_file(fake_datasets):
    """Refusal split on "\nAnswer: ", "Question: " dropped; rows without it skipped
    (docs/protocol.md#data-sources)."""
    (r,) = hub.load_beavertails_refusals(DataSpec())
    assert (r.instruction, r.output) == ("How to X?", "I can't help with X.")
    harm = hub.load_beavertails_refusal_harmful(DataSpec())
    assert [(h.instruction, h.output) for h in harm] == [("How to X?", "Do X."), ("Broken", "R")]


def test_hub_alpaca_eval(fake_datasets):
    (r,) = hub.load_alpaca_eval(DataSpec())
    assert (r.instruction, r.output) == ("Name a colour.", "Red.")


def test_hub_generic(fake_datasets):
    fields = {"instruction": "question", "output": "answer"}
    spec = DataSpec(hub_id="me/data", hub_config="cfg", fields=fields)
    assert hub.load_hub(spec) == [Example("Why?", output="Because.", source="me/data")]
    with pytest.raises(DataError, match=r"me/data split 'train' row 0: missing field 'q'"):
        hub.load_hub(DataSpec(hub_id="me/data", hub_config="cfg", fields={"instruction": "q"}))
    with pytest.raises(ConfigError, match="data.hub_id is required"):
        hub.load_hub(DataSpec())
    with pytest.raises(DataError, match="hub: cannot load me/other"):
        hub.load_hub(DataSpec(hub_id="me/other"))


@pytest.mark.parametrize(
    "text, value",
    [
        ("The answer is 1,234.", 1234.0),
        ("no number here", float("inf")),
        ("", float("inf")),
        ("3 apples and 4 pears, The final answer is: 12 apples, not 3", 12.0),
        ("first 3 then 7. The final answer is: none", 7.0),  # marker without a following number
        ("5 and 6", 6.0),
        ("-2.5 degrees", -2.5),
        ("The final answer is:  1,004", 1004.0),
        ("The final answer is: 8.", 8.0),
    ],
)
def test_extract_gsm8k_number(text, value):
    assert hub.extract_gsm8k_number(text) == value


@pytest.mark.parametrize(
    "response, label, ok",
    [
        ("positive", "positive", True),
        (" Positive\n", "positive", True),
        ("Negative", "negative", True),
        ("positive.", "positive", False),
        ("POSITIVE", "positive", False),
        ("negative", "positive", False),
    ],
)
def test_match_sst2(response, label, ok):
    assert hub.match_sst2(response, label) is ok


@pytest.mark.parametrize(
    "response, label, ok",
    [
        ("World", "World", True),
        ("world", "World", True),
        ("Sci/Tech", "Sci/Tech", True),
        ("sci", "Sci/Tech", True),
        ("sci/tech", "Sci/Tech", False),
        ("Sports.", "Sports", False),
        ("Business", "Sports", False),
    ],
)
def test_match_agnews(response, label, ok):
    assert hub.match_agnews(response, label) is ok


def test_online_loaders_read_a_local_export(tmp_path):
    """data.path: the papers' datasets from local files with the hub's columns (offline users)."""
    p = tmp_path / "gsm8k_test.jsonl"
    p.write_text('{"question": "1+1?", "answer": "1+1=2\\n#### 2"}\n')
    (g,) = hub.load_gsm8k(DataSpec(name="gsm8k", split="test", path=str(p)))
    assert g.label == "2" and hub.match_gsm8k("The final answer is: 2", g.label)
    c = tmp_path / "sst2.csv"
    c.write_text("sentence,label\na gem,1\n")
    assert [(r.input, r.label) for r in hub.load_sst2(DataSpec(name="sst2", path=str(c)))] == [("a gem", "positive")]
    b = tmp_path / "bt.csv"
    b.write_text("prompt,is_safe\nQ1,False\nQ2,True\n")
    assert [r.instruction for r in hub.load_beavertails_eval(DataSpec(path=str(b)))] == ["Q1"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(DataError, match="missing column 'answer' for gsm8k"):
        hub.load_gsm8k(DataSpec(name="gsm8k", path=str(bad)))
    with pytest.raises(DataError, match="reads .jsonl, .json or .csv"):
        hub.load_gsm8k(DataSpec(name="gsm8k", path=str(tmp_path / "x.txt")) if (tmp_path / "x.txt").write_text("a") else None)
