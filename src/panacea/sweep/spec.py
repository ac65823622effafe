"""The ``sweep:`` section of a YAML: what varies, what is compared, how the points are run.

Everything here is checked before anything is computed; a mistake is one ``ConfigError`` naming
the key (``sweep.grid.<dotted key>``, ``sweep.space.<dotted key>``, ...), exit code 2.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, _ALIASES, _OPEN, apply_overrides, check_tree, read_yaml
from ..errors import ConfigError

#: FA (in points) a defense may lose against the baseline at the same point and still count for
#: its worst case; the same margin as the searches' selection rule (results.FA_MARGIN)
DEFAULT_FA_MARGIN = 3.0
DEFAULT_BASELINE = "sft"
ENGINES = ("local", "ray", "slurm")
SEARCHES = ("grid", "optuna")

#: keys of the sweep section
KEYS = {"base", "grid", "seeds", "variants", "baseline", "fa_margin", "search", "space", "trials", "target",
        "sampler_seed", "parallel", "engine", "address", "num_gpus", "num_cpus", "slurm", "output_dir"}
#: keys that say how and where points run, or how finished points are read: not part of a sweep's
#: identity (changing them resumes the same sweep)
EXECUTION_KEYS = {"engine", "address", "num_gpus", "num_cpus", "parallel", "slurm", "trials", "fa_margin",
                  "output_dir"}
SLURM_KEYS = {"cluster", "partition", "gpus_per_node", "timeout_min", "cpus_per_task", "mem_gb", "setup",
              "additional_parameters"}


@dataclass
class Range:
    """One dimension of an Optuna search."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    kind: str = "float"  # float, int or categorical
    choices: list = field(default_factory=list)

    def endpoints(self) -> list:
        """Values every one of which must give a valid experiment (checked before any trial)."""
        if self.kind == "categorical":
            return list(self.choices)
        return [self.low, self.high] if self.low != self.high else [self.low]


@dataclass
class SweepSpec:
    grid: list[dict[str, list]] = field(default_factory=list)
    """A union of products: each mapping is a product of its keys' values."""
    seeds: list[int] | None = None
    variants: list[str] | None = None
    baseline: str = DEFAULT_BASELINE
    fa_margin: float = DEFAULT_FA_MARGIN
    search: str = "grid"
    space: list[Range] = field(default_factory=list)
    trials: int = 20
    target: str | None = None
    sampler_seed: int | None = None
    parallel: int | None = None
    engine: str = "local"
    address: str | None = None
    num_gpus: float | None = None
    num_cpus: float = 1.0
    slurm: dict = field(default_factory=dict)
    output_dir: str | None = None

    def swept_keys(self) -> list[str]:
        if self.search == "optuna":
            return [r.key for r in self.space]
        out: list[str] = []
        for sub in self.grid:
            out += [k for k in sub if k not in out]
        return out


# --------------------------------------------------------------------------- dotted keys


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _unwrap(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _unwrap(inner[0]) if inner else tp
    return tp


def _did_you_mean(word: str, names: list[str]) -> str:
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6) or [n for n in names if n.startswith(word[:3])]
    return f" (did you mean {close[0]}?)" if close else ""


def check_key(base: dict, dotted: str, where: str) -> None:
    """``dotted`` names a key of the experiment config ``base`` (raw mapping): a field of the
    config's dataclasses, an entry that exists in one of its named mappings (``finetune.runs.X``,
    ``post.X``, ``alignment.variants.X``), or a defense's / attack's option below such an entry
    (validated when the point is built). Raises ``ConfigError`` naming ``where`` otherwise."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"{where}: {dotted!r} is not a dotted config key")
    cls: Any = ExperimentConfig
    node: Any = base
    for i, part in enumerate(parts):
        sofar = ".".join(parts[: i + 1])
        tp = _unwrap(cls)
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp) if f.name != "options"]
            alias = _ALIASES.get(tp, {})
            fname = alias.get(part, part)
            if fname in names:
                cls = _hints(tp)[fname]
            elif tp in _OPEN:
                return  # a defense's (or data source's) own option: the built point validates it
            else:
                known = names + list(alias)
                raise ConfigError(f"{where}: unknown config key {sofar!r}{_did_you_mean(part, known)}; "
                                  f"known: {', '.join(known)}")
        elif typing.get_origin(tp) is dict:
            if typing.get_args(tp)[1] is Any:  # free keys (a run's train overrides, judge options)
                return
            entries = list(node) if isinstance(node, dict) else []
            if part not in entries:
                choices = ", ".join(entries) or "none in this config"
                raise ConfigError(f"{where}: {sofar!r} is not in the config{_did_you_mean(part, entries)}; "
                                  f"entries: {choices}")
            cls = typing.get_args(tp)[1]
        else:  # a leaf (number, string, list, Any) with more parts below it
            if tp is Any:
                return
            raise ConfigError(f"{where}: {'.'.join(parts[:i])!r} is a value, not a section (key {dotted!r})")
        node = node.get(part) if isinstance(node, dict) else None


# --------------------------------------------------------------------------- parsing


def _number(key: str, value, kind=float):
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{key} must be a number, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    if kind is int:
        if f != int(f):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(f)
    return f


def merge(under: dict, over: dict) -> dict:
    """``over``'s keys on top of ``under``, mappings merged key by key, anything else replaced."""
    out = copy.deepcopy(under)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def split_section(raw: dict, overrides: list[str], origin=None) -> tuple[dict, dict]:
    """(experiment mapping, sweep mapping) from a sweep YAML's mapping and the command's overrides
    (``sweep.<key>=v`` edits the sweep section, anything else the experiment).

    ``sweep.base: FILE`` names an experiment YAML (relative to the sweep file's folder ``origin``,
    else to the working folder) that the sweep file's own top-level keys are merged over."""
    raw = copy.deepcopy(raw)
    raw = apply_overrides(raw, [o for o in overrides if o.split("=", 1)[0].strip().startswith("sweep.")])
    base_overrides = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("sweep.")]
    section = raw.pop("sweep", None)
    if section is None:
        raise ConfigError("sweep: the config has no sweep: section (docs/sweeps.md)")
    if not isinstance(section, dict):
        raise ConfigError(f"sweep must be a mapping, got {type(section).__name__}")
    if section.get("base") is not None:
        if not isinstance(section["base"], str):
            raise ConfigError("sweep.base must be the path of an experiment YAML")
        path = Path(section["base"])
        if not path.is_absolute() and origin is not None and (Path(origin).parent / path).is_file():
            path = Path(origin).parent / path
        under = read_yaml(path)
        if "sweep" in under:
            raise ConfigError(f"sweep.base: {section['base']} holds a sweep: section itself; name an experiment YAML")
        raw = merge(under, raw)
    raw = apply_overrides(raw, base_overrides)
    check_tree(raw)
    return raw, section


def parse(section: dict, base: dict) -> SweepSpec:
    """The validated sweep section (its keys only; the points are checked by ``plan``)."""
    unknown = [k for k in section if k not in KEYS]
    if unknown:
        k = str(unknown[0])
        raise ConfigError(f"sweep.{k}: unknown key{_did_you_mean(k, sorted(KEYS))}; known: {', '.join(sorted(KEYS))}")
    spec = SweepSpec()
    spec.search = str(section.get("search", "grid"))
    if spec.search not in SEARCHES:
        raise ConfigError(f"sweep.search must be one of {', '.join(SEARCHES)}, got {spec.search!r}")
    seeds = section.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds:
            raise ConfigError("sweep.seeds must be a non-empty list of integers")
        spec.seeds = [_number(f"sweep.seeds[{i}]", s, int) for i, s in enumerate(seeds)]
    if spec.search == "grid":
        spec.grid = _grid(section.get("grid"), base, spec)
        if "space" in section:
            raise ConfigError("sweep.space is for sweep.search: optuna; a grid sweep lists values in sweep.grid")
    else:
        if section.get("grid"):
            raise ConfigError("sweep.grid is for sweep.search: grid; an optuna search takes ranges in sweep.space")
        spec.space = _space(section.get("space"), base)
        spec.trials = _number("sweep.trials", section.get("trials", 20), int)
        if spec.trials < 1:
            raise ConfigError(f"sweep.trials must be ≥ 1, got {spec.trials}")
        if section.get("sampler_seed") is not None:
            spec.sampler_seed = _number("sweep.sampler_seed", section["sampler_seed"], int)
    if spec.seeds is None and isinstance(base.get("seeds"), list) and base["seeds"]:
        spec.seeds = [_number(f"seeds[{i}]", s, int) for i, s in enumerate(base["seeds"])]
    variants = section.get("variants")
    if variants is not None:
        if not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants):
            raise ConfigError("sweep.variants must be a non-empty list of variant names")
        spec.variants = list(dict.fromkeys(variants))
    spec.baseline = str(section.get("baseline", DEFAULT_BASELINE))
    spec.fa_margin = _number("sweep.fa_margin", section.get("fa_margin", DEFAULT_FA_MARGIN))
    if spec.fa_margin < 0:
        raise ConfigError(f"sweep.fa_margin must be ≥ 0 (FA points), got {spec.fa_margin:g}")
    if section.get("target") is not None:
        spec.target = str(section["target"])
    if section.get("parallel") is not None:
        spec.parallel = _number("sweep.parallel", section["parallel"], int)
        if spec.parallel < 1:
            raise ConfigError(f"sweep.parallel must be ≥ 1, got {spec.parallel}")
    spec.engine = str(section.get("engine", "local"))
    if spec.engine not in ENGINES:
        raise ConfigError(f"sweep.engine must be one of {', '.join(ENGINES)}, got {spec.engine!r}")
    spec.address = None if section.get("address") is None else str(section["address"])
    if section.get("num_gpus") is not None:
        spec.num_gpus = _number("sweep.num_gpus", section["num_gpus"])
        if spec.num_gpus < 0:
            raise ConfigError(f"sweep.num_gpus must be ≥ 0, got {spec.num_gpus:g}")
    spec.num_cpus = _number("sweep.num_cpus", section.get("num_cpus", 1))
    if spec.num_cpus <= 0:
        raise ConfigError(f"sweep.num_cpus must be > 0, got {spec.num_cpus:g}")
    slurm = section.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError("sweep.slurm must be a mapping (partition, gpus_per_node, timeout_min, ...)")
    for k in slurm:
        if k not in SLURM_KEYS:
            raise ConfigError(f"sweep.slurm.{k}: unknown key{_did_you_mean(str(k), sorted(SLURM_KEYS))}; "
                              f"known: {', '.join(sorted(SLURM_KEYS))}")
    spec.slurm = dict(slurm)
    if section.get("output_dir") is not None:
        spec.output_dir = str(section["output_dir"])
    return spec


def _grid(grid, base: dict, spec: SweepSpec) -> list[dict[str, list]]:
    if grid is None or grid == {} or grid == []:
        raise ConfigError("sweep.grid is empty: name at least one dotted key and its values, "
                          "e.g. sweep.grid: {finetune.data.poison_ratio: [0.05, 0.1]}")
    subs = grid if isinstance(grid, list) else [grid]
    out = []
    for i, sub in enumerate(subs):
        where = "sweep.grid" if not isinstance(grid, list) else f"sweep.grid[{i}]"
        if not isinstance(sub, dict) or not sub:
            raise ConfigError(f"{where} must be a non-empty mapping of dotted keys to lists of values")
        clean = {}
        for key, values in sub.items():
            key = str(key)
            if key in ("seed", "seeds"):  # the seeds are their own dimension (one run directory each)
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"{where}.{key}: empty list of values")
                if spec.seeds is not None and spec.seeds != values:
                    raise ConfigError(f"{where}.{key}: the seeds are given twice (also sweep.seeds); give them once")
                spec.seeds = [_number(f"{where}.{key}[{j}]", s, int) for j, s in enumerate(values)]
                continue
            if not isinstance(values, list):
                raise ConfigError(f"{where}.{key} must be a list of values, got {type(values).__name__}")
            if not values:
                raise ConfigError(f"{where}.{key}: empty list of values")
            check_key(base, key, f"{where}.{key}")
            shown = [json.dumps(v, sort_keys=True, default=str) for v in values]
            if len(set(shown)) != len(shown):
                raise ConfigError(f"{where}.{key} lists a value twice")
            clean[key] = list(values)
        if clean:
            out.append(clean)
    if not out:
        raise ConfigError("sweep.grid is empty: it lists seeds only; add at least one config key")
    return out


def _space(space, base: dict) -> list[Range]:
    if not space or not isinstance(space, dict):
        raise ConfigError("sweep.space is empty: give ranges, e.g. sweep.space: "
                          "{finetune.data.poison_ratio: {low: 0, high: 1}}")
    out = []
    allowed = {"low", "high", "log", "step", "type", "choices"}
    for key, r in space.items():
        key = str(key)
        where = f"sweep.space.{key}"
        check_key(base, key, where)
        if isinstance(r, list):  # a list of values: a categorical choice
            r = {"choices": r}
        if not isinstance(r, dict):
            raise ConfigError(f"{where} must be {{low, high[, log, step, type: int]}} or {{choices: [...]}}")
        bad = [k for k in r if k not in allowed]
        if bad:
            raise ConfigError(f"{where}.{bad[0]}: unknown key; known: {', '.join(sorted(allowed))}")
        if "choices" in r:
            if not isinstance(r["choices"], list) or not r["choices"]:
                raise ConfigError(f"{where}.choices must be a non-empty list")
            out.append(Range(key, kind="categorical", choices=list(r["choices"])))
            continue
        kind = str(r.get("type", "float"))
        if kind not in ("float", "int"):
            raise ConfigError(f"{where}.type must be float or int, got {kind!r}")
        if "low" not in r or "high" not in r:
            raise ConfigError(f"{where} needs low and high")
        conv = int if kind == "int" else float
        low, high = _number(f"{where}.low", r["low"], conv), _number(f"{where}.high", r["high"], conv)
        if low > high:
            raise ConfigError(f"{where}: low {low:g} > high {high:g}")
        log = r.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log must be true or false")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {low:g}")
        step = None if r.get("step") is None else _number(f"{where}.step", r["step"], conv)
        if step is not None and (step <= 0 or log):
            raise ConfigError(f"{where}.step must be > 0 and cannot go with log: true")
        out.append(Range(key, low, high, log, step, kind))
    return out


# --------------------------------------------------------------------------- points


def _slug(value) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    text = re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")
    return text[:40] or "x"


def short_names(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that tells it from the others (``poison_ratio``,
    ``finetune.train.learning_rate`` next to ``alignment.train.learning_rate``)."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            cand = ".".join(parts[-n:])
            if not any(o != k and (o == cand or o.endswith("." + cand)) for o in keys):
                out[k] = cand
                break
        else:
            out[k] = k
    return out


def cell_id(sets: dict, names: dict[str, str]) -> str:
    """A readable folder name for a grid cell: ``poison_ratio-0.1__attack-backdoor``; values that do
    not fit a name (mappings, long text, floats beyond 4 digits) get a short hash of the exact values."""
    if not sets:
        return "base"
    parts = [f"{names[k]}-{_slug(v)}" for k, v in sets.items()]
    text = "__".join(parts)
    exact = all(_slug(v) == str(v) or (isinstance(v, float) and float(_slug(v)) == v) for v in sets.values())
    if len(text) > 120 or not exact:
        digest = hashlib.sha256(json.dumps(sets, sort_keys=True, default=str).encode()).hexdigest()[:8]
        text = f"{text[:110]}__{digest}"
    return text


def grid_cells(spec: SweepSpec) -> list[dict]:
    """Every grid cell (``{dotted key: value}``), the union of the products, in order, without repeats."""
    seen, out = set(), []
    for sub in spec.grid:
        keys = list(sub)
        for combo in itertools.product(*(sub[k] for k in keys)):
            sets = dict(zip(keys, combo))
            ident = json.dumps(sets, sort_keys=True, default=str)
            if ident not in seen:
                seen.add(ident)
                out.append(sets)
    return out
