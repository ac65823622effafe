"""Errors from a defense's own data option name the full config key of the stage being built."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from panacea.config import ExperimentConfig, from_dict
from panacea.data.base import DataSpec
from panacea.errors import ConfigError
from panacea.pipeline import Context
from panacea.registry import load_builtins

TINY = Path(__file__).parents[2] / "configs" / "tiny.yaml"


@pytest.mark.parametrize("stage_key,key,expected", [
    ("alignment.variants.booster", "harmful_data", "alignment.variants.booster.harmful_data.name"),
    ("finetune.runs.panacea", "harmful_data", "finetune.runs.panacea.harmful_data.name"),
    ("finetune.runs.panacea", "finetune.data.task", "finetune.data.task.name"),  # already full
    ("post.sft+ascent", "harmful_data", "post.sft+ascent.harmful_data.name"),
    ("", "harmful_data", "harmful_data.name"),
])
def test_dataset_errors_name_the_stage_key(stage_key, key, expected):
    load_builtins()
    run_ctx = Context(from_dict(ExperimentConfig, yaml.safe_load(TINY.read_text())))
    ctx = run_ctx.for_stage(stage_key)
    assert ctx.pools is run_ctx.pools and run_ctx.stage_key == ""  # shared loads; the run's context unchanged
    with pytest.raises(ConfigError, match=rf"^{expected.replace('.', '[.]').replace('+', '[+]')}\b"):
        ctx.examples(DataSpec(name="no_such_dataset"), key)
