"""The Python API: what ``panacea validate`` and ``panacea run`` do, callable from a script.

    import panacea

    cfg = panacea.load_config("configs/tiny.yaml", ["finetune.data.n=16"])   # panacea validate
    run = panacea.run_experiment("configs/tiny.yaml", ["finetune.data.n=16"],  # panacea run
                                 output_dir="runs/tiny_api")
    run.metrics["results"], run.run_dir, run.results["sft"]["finetune_accuracy"]

There is one code path: the command line calls these functions (``cli.cmd_run``, ``validate``),
so a config, its overrides and its errors behave the same in both (a bad key raises
``panacea.errors.ConfigError`` naming it, where the command prints it and exits with code 2).
docs/api.md documents them, and how to use a defense's ``Trainer`` in a training script of your own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .config import ExperimentConfig, apply_overrides, from_dict, load_config as _load, read_yaml, to_dict
from .data.base import DataSpec
from .data.mixing import select
from .distributed import init
from .errors import ConfigError
from .judges.options import check_judge
from .registry import DATASETS

# pipeline, models and seeds load torch (``import panacea`` and ``panacea.RunResult`` do not):
# they are imported inside the functions that run or validate


@dataclass
class RunResult:
    """What ``run_experiment`` returns."""

    run_dir: Path
    """The run directory (``output_dir``, else ``runs/<name>``), absolute."""
    metrics: dict
    """One seed: ``metrics.json`` with the timings of ``timings.json`` put back. With ``seeds:``:
    ``summary.json`` (mean ± 95 % interval per variant and metric, ``panacea.seeds``)."""
    seeds: dict[int, dict] = field(default_factory=dict)
    """With ``seeds:``: each seed's metrics as above (empty when the whole run was already complete)."""

    @property
    def results(self) -> dict[str, dict]:
        """Variant name → its row of ``metrics["results"]`` (``harmful_score``, ``finetune_accuracy``, …;
        with ``seeds:`` the summary row, whose ``metrics`` holds the mean and interval of each)."""
        return {r["name"]: r for r in self.metrics.get("results", [])}


def _resolve(config, overrides: Iterable[str], output_dir) -> ExperimentConfig:
    overrides = None if isinstance(overrides, str) else list(overrides)
    if overrides is None or not all(isinstance(o, str) for o in overrides):
        raise ConfigError("overrides must be a list of 'dotted.key=value' strings")
    if isinstance(config, ExperimentConfig):
        if not overrides and output_dir is None:
            return config
        raw = to_dict(config)
    elif isinstance(config, Mapping):
        raw = dict(config)
    elif isinstance(config, (str, os.PathLike)):
        raw = read_yaml(config)
    else:
        raise ConfigError(f"config must be a YAML path, a mapping or an ExperimentConfig, got {type(config).__name__}")
    raw = apply_overrides(raw, overrides)
    if output_dir is not None:  # after the overrides: the argument wins
        raw["output_dir"] = os.fspath(output_dir)
    return _load(raw)[0]


def validate(cfg) -> tuple[Any, dict]:
    """Everything ``panacea validate`` checks, without training: the config's names and options
    (``pipeline.Plan``), every data pool (loaded once, sizes, disjointness, FA's references), the
    judge's options and the environment. Returns ``(plan, pool sizes)``; raises a ``UserError``."""
    from .models import cache_dir
    from .pipeline import Context, Plan, env_threads

    env_threads()  # the environment a run would read, validated like the config
    cache_dir()
    plan = Plan(cfg)
    sizes = plan.check_data(Context(cfg))
    check_judge(cfg)
    return plan, sizes


def load_config(config, overrides: Iterable[str] = (), *, output_dir: str | os.PathLike | None = None,
                check_data: bool = True):
    """The resolved, validated config of an experiment (``panacea validate``).

    Args:
        config: a YAML file, a mapping with the same keys, or an ``ExperimentConfig``.
        overrides: dotted ``key=value`` strings, applied in order (as on the command line).
        output_dir: the run directory; wins over the file and the overrides.
        check_data: also load every data pool and check it (``validate``); False checks the config,
            the names and the defenses' options only (no data, no model).

    Returns:
        ``panacea.config.ExperimentConfig``, every default filled in.

    Raises:
        panacea.errors.UserError: a ``ConfigError`` or ``DataError`` naming the key or the file.
    """
    cfg = _resolve(config, overrides, output_dir)
    if check_data:
        validate(cfg)
    else:
        from .pipeline import Plan

        Plan(cfg)
    return cfg


def run_experiment(config, overrides: Iterable[str] = (), *, output_dir: str | os.PathLike | None = None,
                   force: bool = False) -> RunResult:
    """Run an experiment as ``panacea run`` does and return its metrics and run directory.

    Args:
        config: a YAML file, a mapping with the same keys, or an ``ExperimentConfig``.
        overrides: dotted ``key=value`` strings.
        output_dir: the run directory (default: the config's ``output_dir``, else ``runs/<name>``).
        force: replace an existing run directory of another config (``panacea run --force``);
            without it a run of the same config resumes, or returns at once when complete.

    Returns:
        :class:`RunResult`. With ``seeds:`` in the config every seed runs into
        ``<run_dir>/seed_<s>/`` and ``metrics`` is the summary over seeds.
    """
    from . import pipeline

    cfg = _resolve(config, overrides, output_dir)
    check_judge(cfg)
    init()  # the process group, when started by `accelerate launch` on several processes
    run_dir = pipeline.run_dir_of(cfg)
    if not cfg.seeds:
        return RunResult(run_dir, pipeline.run_experiment(cfg, force=force))
    from .seeds import run_seeds

    summary, per_seed = run_seeds(cfg, force=force)
    return RunResult(run_dir, summary, per_seed)


def load_data(name: str, **spec) -> list:
    """Rows of a registered dataset (``panacea ls datasets``) as ``panacea.data.base.Example``s, selected
    as a config's data section selects them, e.g. ``load_data("pyrit_harmful", start=100, n=50)`` or
    ``load_data("jsonl", path="my.jsonl", holdout=0.3, split="train")``; for a training script of your own."""
    from .pipeline import check_spec

    ds = from_dict(DataSpec, {"name": name, **spec}, "data")
    entry = DATASETS.get(ds.name, "data.name")
    check_spec(ds, entry, "data")
    return select(entry.obj(ds), ds, "data")
