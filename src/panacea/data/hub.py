"""Online datasets of the papers, through the Hugging Face ``datasets`` library.

Sources, fields and answer rules follow docs/protocol.md#data-sources (ids, fields, task records),
docs/protocol.md#harmful-score-hs-and-hs (HS prompts: BeaverTails ``30k_test``,
``is_safe == False``, dataset order, duplicates kept) and docs/protocol.md#fine-tune-accuracy-fa
(fine-tune accuracy matchers, the GSM8K number extractor of ``w-yibo/Panacea:gsm8k/pred_eval.py``).
``datasets`` is optional: it is imported only when one of these loaders runs. Offline, use the
embedded datasets (``panacea.data.embedded``, ``panacea.data.sentiment``) or a local file.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .base import DataSpec, Example
from .files import read_rows, rows_to_examples
from .mixing import normalize_prompt
from .sentiment import INSTRUCTION as SST2_INSTRUCTION

AGNEWS_INSTRUCTION = (
    "Categorize the news article given in the input into one of the 4 categories:"
    "\n\nWorld\nSports\nBusiness\nSci/Tech\n"
)
AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
GSM8K_MARKER = "The final answer is: "
_NUMBER = re.compile(r"-?\d+\.?\d*")


def _load_hub(name: str, hub_id: str, config: str | None, split: str) -> Any:
    """``datasets.load_dataset(hub_id, config, split=split)``, imported lazily."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"the `datasets` package is needed for {name} (pip install datasets); "
            "offline, use the embedded datasets or a local file"
        ) from None
    try:
        return datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # network, unknown id/split, cache problems: one line for the user
        raise DataError(
            f"{name}: cannot load {hub_id} split {split!r}: {type(e).__name__}: {e}"
        ) from e


def _rows(name: str, spec: DataSpec, hub_id: str, config: str | None, split: str) -> Any:
    """A local export when ``data.path`` is set (same columns as the hub dataset), else the hub."""
    if spec.path:
        rows = read_rows(spec, name)
        for i, r in enumerate(rows):
            missing = [c for c in _COLUMNS.get(name, ()) if c not in r]
            if missing:
                raise DataError(f"{spec.path} row {i}: missing column {missing[0]!r} for {name}")
        return rows
    return _load_hub(name, hub_id, config, split)


#: the hub columns each loader reads (a local file must have them too)
_COLUMNS = {"sst2": ("sentence", "label"), "agnews": ("text", "label"), "gsm8k": ("question", "answer"),
            "beavertails_eval": ("prompt", "is_safe"), "alpaca_eval": ("instruction",),
            "beavertails_refusals": ("refusal",), "beavertails_refusal_harmful": ("prompt", "response")}


def _flag(value) -> bool:
    """A boolean column from the hub (bool) or a local CSV/JSON export ("False", "0", …)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _task_split(spec: DataSpec, test_split: str) -> str:
    if spec.split not in ("train", "test"):
        raise ConfigError(
            f"data.split must be 'train' or 'test' for {spec.name}, got {spec.split!r}"
        )
    return test_split if spec.split == "test" else "train"


def match_sst2(response: str, label: str) -> bool:
    """The stripped generation is exactly ``positive``/``Positive`` (etc.);
    docs/protocol.md#fine-tune-accuracy-fa."""
    return response.strip() in (label, label.capitalize())


def match_agnews(response: str, label: str) -> bool:
    """Exactly ``World``/``world``, …, or ``Sci/Tech``/``sci``
    (docs/protocol.md#fine-tune-accuracy-fa)."""
    short = "sci" if label == "Sci/Tech" else label.lower()
    return response.strip() in (label, short)


def extract_gsm8k_number(text: str) -> float:
    """The answer number of a GSM8K generation (``extract_answer_number``,
    docs/protocol.md#fine-tune-accuracy-fa).

    Commas are removed; no number at all → ``inf``; if ``"The final answer is: "`` occurs, the
    first number after it (up to a second marker), else the last number of the whole text;
    otherwise the last number. Parsed as float (``inf`` if that fails).
    """
    text = text.replace(",", "")
    numbers = _NUMBER.findall(text)
    if not numbers:
        return float("inf")
    parts = text.split(GSM8K_MARKER)
    after = _NUMBER.findall(parts[1]) if len(parts) > 1 else []
    try:
        return float(after[0] if after else numbers[-1])
    except ValueError:
        return float("inf")


def match_gsm8k(response: str, label: str) -> bool:
    """The extracted number of the generation equals that of the reference;
    docs/protocol.md#fine-tune-accuracy-fa."""
    return extract_gsm8k_number(response) == extract_gsm8k_number(label)


@DATASETS.register(
    "sst2", kind="task", reads_path=True,
    match=match_sst2, help="SST-2 sentiment (stanfordnlp/sst2, online)"
)
def load_sst2(spec: DataSpec) -> list[Example]:
    rows = _rows("sst2", spec, "stanfordnlp/sst2", None, _task_split(spec, "validation"))
    out = []
    for r in rows:
        label = "positive" if int(r["label"]) == 1 else "negative"
        out.append(
            Example(SST2_INSTRUCTION, input=r["sentence"], output=label, label=label, source="sst2")
        )
    return out


@DATASETS.register(
    "agnews", kind="task", reads_path=True,
    match=match_agnews, help="AG News topics (fancyzhx/ag_news, online)"
)
def load_agnews(spec: DataSpec) -> list[Example]:
    rows = _rows("agnews", spec, "fancyzhx/ag_news", None, _task_split(spec, "test"))
    out = []
    for r in rows:
        label = AGNEWS_LABELS[int(r["label"])]
        out.append(
            Example(AGNEWS_INSTRUCTION, input=r["text"], output=label, label=label, source="agnews")
        )
    return out


@DATASETS.register(
    "gsm8k", kind="task", reads_path=True,
    match=match_gsm8k, help="GSM8K math word problems (openai/gsm8k, online)"
)
def load_gsm8k(spec: DataSpec) -> list[Example]:
    rows = _rows("gsm8k", spec, "openai/gsm8k", "main", _task_split(spec, "test"))
    out = []
    for r in rows:
        label = r["answer"].split("####")[-1].strip().replace(",", "")
        output = r["answer"].replace("####", GSM8K_MARKER)
        out.append(Example(r["question"], output=output, label=label, source="gsm8k"))
    return out


@DATASETS.register(
    "beavertails_harmful",
    kind="harmful_pairs",
    help="BeaverTails 30k_train unsafe prompt→response pairs, deduplicated by prompt (online)",
)
def load_beavertails_harmful(spec: DataSpec) -> list[Example]:
    """Rows with ``is_safe == False``, first response per normalized prompt, dataset order."""
    seen: set[str] = set()
    out = []
    for r in _load_hub("beavertails_harmful", "PKU-Alignment/BeaverTails", None, "30k_train"):
        key = normalize_prompt(r["prompt"])
        if not r["is_safe"] and key not in seen:
            seen.add(key)
            out.append(Example(r["prompt"], output=r["response"], source="beavertails"))
    return out


REFUSAL_FILE_HUB_ID = "anonymous4486/repnoise_beavertail"
"""HF mirror of ``domenicrosati/representation-noising:data/beavertails_with_refusals_train.json``,
the file both papers draw alignment refusals and harmful pools from (docs/protocol.md#data-sources)."""


def _refusal_rows(name: str, spec: DataSpec):
    return _rows(name, spec, spec.hub_id or REFUSAL_FILE_HUB_ID, spec.hub_config, "train")


@DATASETS.register(
    "beavertails_refusals",
    reads_path=True,
    kind="refusals",
    help="the papers' alignment data: BeaverTails prompt → refusal (anonymous4486/repnoise_beavertail, online)",
)
def load_beavertails_refusals(spec: DataSpec) -> list[Example]:
    """docs/protocol.md#data-sources: ``refusal`` is ``"Question: …\nAnswer: …"``; instruction =
    the question without ``"Question: "``, output = the answer. File order (select rows with start/n)."""
    out = []
    for r in _refusal_rows("beavertails_refusals", spec):
        q, sep, a = str(r["refusal"]).partition("\nAnswer: ")
        if not sep:
            continue
        out.append(Example(q.removeprefix("Question: ").strip(), output=a.strip(), source="beavertails_refusals"))
    return out


@DATASETS.register(
    "beavertails_refusal_harmful",
    reads_path=True,
    kind="harmful_pairs",
    help="the papers' harmful pools: BeaverTails prompt → harmful response from the refusal file (online)",
)
def load_beavertails_refusal_harmful(spec: DataSpec) -> list[Example]:
    """The same rows with their harmful ``response`` (rows 5000+ are the defender's in the papers)."""
    return [Example(str(r["prompt"]), output=str(r["response"]), source="beavertails_refusals")
            for r in _refusal_rows("beavertails_refusal_harmful", spec)]


@DATASETS.register(
    "beavertails_eval",
    reads_path=True,
    kind="harmful_prompts",
    help="BeaverTails 30k_test unsafe prompts, dataset order, duplicates kept (HS prompts, online)",
)
def load_beavertails_eval(spec: DataSpec) -> list[Example]:
    rows = _rows("beavertails_eval", spec, "PKU-Alignment/BeaverTails", None, "30k_test")
    return [Example(r["prompt"], source="beavertails_30k_test") for r in rows if not _flag(r["is_safe"])]


@DATASETS.register(
    "alpaca_eval",
    reads_path=True,
    kind="benign_prompts",
    help="AlpacaEval's 805 instructions (tatsu-lab/alpaca_eval, online); export answers with `panacea export`",
)
def load_alpaca_eval(spec: DataSpec) -> list[Example]:
    """docs/protocol.md#data-sources: config ``alpaca_eval``, split ``eval``, field ``instruction``;
    the papers' AlpacaEval FA is a win rate computed by the ``alpaca_eval`` tool from exported answers."""
    rows = _rows("alpaca_eval", spec, "tatsu-lab/alpaca_eval", "alpaca_eval", "eval")
    return [Example(str(r["instruction"]), output=str(r.get("output", "")), source="alpaca_eval") for r in rows]


@DATASETS.register(
    "hub", kind="file", reads_fields=True, help="any Hugging Face dataset (data.hub_id, hub_config, split, fields)"
)
def load_hub(spec: DataSpec) -> list[Example]:
    if not spec.hub_id:
        raise ConfigError("data.hub_id is required for the hub loader")
    rows = _load_hub("hub", spec.hub_id, spec.hub_config, spec.split)
    where = f"{spec.hub_id} split {spec.split!r}"
    numbered = ((f"row {i}", r) for i, r in enumerate(rows))
    return rows_to_examples(numbered, spec.fields, where, spec.hub_id)
