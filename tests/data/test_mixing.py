"""Row selection, the poisoned user mix and the disjointness check (panacea.data.mixing)."""

import pytest

from panacea.data.base import DataSpec, Example
from panacea.data.mixing import check_disjoint, mix_poison, normalize_prompt, select
from panacea.errors import ConfigError, DataError


def pool(prefix: str, n: int) -> list[Example]:
    return [Example(f"{prefix} {i}", source=prefix) for i in range(n)]


def test_normalize_prompt():
    assert normalize_prompt("  Write a POEM!\n") == "write a poem"
    assert normalize_prompt('"How  do\tI bake bread?"') == "how do i bake bread"
    assert normalize_prompt("Explain e.g. this") == "explain e.g. this"


def test_select_half_open_range():
    rows = select(pool("p", 10), DataSpec(name="p", start=2, n=3), "k")
    assert [r.instruction for r in rows] == ["p 2", "p 3", "p 4"]
    assert len(select(pool("p", 10), DataSpec(name="p", start=4), "k")) == 6
    assert select(pool("p", 10), DataSpec(name="p", start=10, n=0), "k") == []


def test_select_shuffle_is_seeded():
    spec = DataSpec(name="p", n=5, shuffle=True, seed=1)
    a, b = select(pool("p", 50), spec, "k"), select(pool("p", 50), spec, "k")
    assert a == b
    assert a != select(pool("p", 50), DataSpec(name="p", n=5, shuffle=True, seed=2), "k")
    assert a != pool("p", 5)


@pytest.mark.parametrize("start, n", [(0, 11), (8, 3), (-1, 2), (0, -1), (12, None)])
def test_select_out_of_range(start, n):
    msg = "finetune.data.harmful: asked for rows .* but the pool p has only 10 rows"
    with pytest.raises(DataError, match=msg):
        select(pool("p", 10), DataSpec(name="p", start=start, n=n), "finetune.data.harmful")


def test_select_empty_pool():
    with pytest.raises(DataError, match="eval.data: the pool x is empty"):
        select([], DataSpec(name="x"), "eval.data")


@pytest.mark.parametrize(
    "n, p, seed", [(10, 0.1, 0), (300, 0.2, 1), (7, 0.5, 3), (100, 0, 2), (100, 1, 2)]
)
def test_mix_poison_counts(n, p, seed):
    benign, harmful = pool("b", 400), pool("h", 400)
    mixed = mix_poison(benign, harmful, n, p, seed)
    n_harm = int(n * p + 0.5)
    assert len(mixed) == n
    assert sum(ex.source == "h" for ex in mixed) == n_harm
    assert sum(bool(ex.meta.get("poison")) for ex in mixed) == n_harm
    assert all(ex.meta.get("poison") for ex in mixed if ex.source == "h")
    assert len({ex.instruction for ex in mixed}) == n  # without replacement
    assert not any(ex.meta for ex in harmful)  # inputs untouched


def test_mix_poison_rounds_half_up():
    assert sum(ex.source == "h" for ex in mix_poison(pool("b", 9), pool("h", 9), 5, 0.5, 0)) == 3


def test_mix_poison_seeded():
    benign, harmful = pool("b", 100), pool("h", 100)
    a = mix_poison(benign, harmful, 50, 0.2, 7)
    assert a == mix_poison(benign, harmful, 50, 0.2, 7)
    assert a != mix_poison(benign, harmful, 50, 0.2, 8)
    assert [i for i, ex in enumerate(a) if ex.source == "h"] != list(range(10))  # shuffled


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_mix_poison_bad_ratio(p):
    with pytest.raises(ConfigError, match=r"finetune.data.poison_ratio must be in \[0, 1\]"):
        mix_poison(pool("b", 10), pool("h", 10), 5, p, 0)


def test_mix_poison_bad_n():
    with pytest.raises(ConfigError, match="finetune.data.n"):
        mix_poison(pool("b", 10), pool("h", 10), 0, 0.1, 0)


def test_mix_poison_not_enough_rows():
    with pytest.raises(DataError, match="needs 10 harmful rows but the harmful pool has only 5"):
        mix_poison(pool("b", 100), pool("h", 5), 20, 0.5, 0)
    with pytest.raises(DataError, match="benign pool has only 100"):
        mix_poison(pool("b", 100), pool("h", 100), 150, 0.1, 0)


def test_check_disjoint():
    check_disjoint({"a": pool("a", 3), "b": pool("b", 3)})
    clash = pool("b", 3) + [Example("  A 1!")]
    with pytest.raises(DataError, match="pools a and b .* share 1 prompt.*'a 1'"):
        check_disjoint({"a": pool("a", 3), "b": clash})


def test_check_disjoint_uses_input():
    a = [Example("Classify", input="good film")]
    check_disjoint({"a": a, "b": [Example("Classify", input="bad film")]})
    with pytest.raises(DataError, match="pools a and b"):
        check_disjoint({"a": a, "b": [Example("classify", input="Good film.")]})


def test_protocol_doc_states_the_parts_sizes_of_the_shipped_pools():
    """docs/protocol.md's table of validation/test sizes is what eval_part gives on the embedded
    pools (the counts are checked here, not trusted as typed), and the two parts are disjoint."""
    import re
    from pathlib import Path

    from panacea.data.mixing import eval_part, prompt_key
    from panacea.registry import DATASETS

    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    for name, split in (("strongreject", "train"), ("sentiment", "test"), ("benign_prompts", "train")):
        pool = DATASETS.get(name).obj(DataSpec(name=name, split=split))
        parts = {"validation": [], "test": []}
        for ex in pool:
            parts[eval_part(ex)].append(prompt_key(ex))
        assert not set(parts["validation"]) & set(parts["test"])
        row = re.search(rf"^\| [^|]*`{name}`, (\d+)[^|]*\| (\d+) \| (\d+) \|$", doc, re.M)
        assert row, f"docs/protocol.md has no row for {name}"
        assert tuple(map(int, row.groups())) == (len(pool), len(parts["validation"]), len(parts["test"])), name
