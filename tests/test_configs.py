"""The values configs/demo.yaml reports with are the ones its recorded searches chose on the
validation prompts (docs/protocol.md#validation-and-test-parts): change a search or a value, and
this fails until both agree again."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from panacea.results import load, select

ROOT = Path(__file__).parents[1]

#: demo.yaml key → (recorded search, family, option of the chosen variant)
LINKS = {
    ("finetune", "runs", "panacea", "rho"): ("search_demo_panacea", "panacea", "rho"),
    ("finetune", "runs", "panacea_avg", "rho"): ("search_demo_others", "panacea_avg", "rho"),
    ("post", "sft+random", "norm"): ("search_demo_others", "sft+random", "norm"),
    ("post", "sft+ascent", "rho"): ("search_demo_others", "sft+ascent", "rho"),
}


def _get(d: dict, keys: tuple[str, ...]):
    for k in keys:
        d = d[k]
    return d


@pytest.mark.parametrize("keys", list(LINKS), ids=[".".join(k) for k in LINKS])
def test_demo_values_are_the_searched_ones(keys):
    search, family, option = LINKS[keys]
    res = load(ROOT / "results" / search)
    assert {(p.get("part")) for p in (res["meta"]["eval"][k] for k in ("harmful", "utility", "benign"))} == {"validation"}
    chosen = {s["family"]: s["chosen"] for s in select(res)}[family]
    cfg = res["config"]
    section = cfg["finetune"]["runs"] if chosen in cfg["finetune"]["runs"] else cfg["post"]
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    assert _get(demo, keys) == section[chosen][option], f"demo.yaml {'.'.join(keys)} is not {search}'s choice {chosen}"
