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


def _resolved(path: Path, overrides=()) -> dict:
    from panacea.config import load_config, to_dict

    out = to_dict(load_config(path, overrides)[0])
    for k in ("seeds", "output_dir"):  # a recorded config.yaml is one seed's, without the run directory
        out.pop(k, None)
    return _identity(out)


def _identity(cfg: dict) -> dict:
    """A config as a run directory identifies it (keys added later, at the default that gives the
    older behaviour, do not count: rundir.canonical)."""
    from panacea.rundir import canonical

    return yaml.safe_load(canonical(cfg))


def test_quickstart_table_is_a_run_of_the_committed_config():
    """The README's quick-start block (results/quickstart) was recorded from configs/quickstart.yaml
    as it is now, and its trial (configs/search/quickstart.yaml) differs only in the evaluated part
    and the extra candidates."""
    recorded = _identity(yaml.safe_load((ROOT / "results" / "quickstart" / "config.yaml").read_text()))
    quick = _resolved(ROOT / "configs" / "quickstart.yaml")
    assert recorded == quick
    trial = _identity(yaml.safe_load((ROOT / "results" / "search_quickstart" / "config.yaml").read_text()))
    assert trial == _resolved(ROOT / "configs" / "search" / "quickstart.yaml")
    assert {trial["eval"][k]["part"] for k in ("harmful", "utility", "benign")} == {"validation"}
    for k in ("harmful", "utility", "benign"):
        trial["eval"][k]["part"] = "test"
    trial["name"] = "quickstart"
    trial["finetune"]["runs"] = {k: v for k, v in trial["finetune"]["runs"].items() if k in quick["finetune"]["runs"]}
    trial["post"] = {}
    assert trial == quick
