"""The threat-model pipeline: align → fine-tune (user data with p·n harmful samples) → repair →
evaluate, writing everything into one run directory
(docs/protocol.md#1-the-threat-model-in-three-stages).

Run directory layout::

    config.yaml                      the resolved config (every default filled in)
    run.json                         the sha256 of that config: which config the directory belongs to
    status.json                      running / failed (with the error) / done (with metrics.json's sha256)
    alignment/adapter/               peft adapter (safetensors) + record.json + done.json
    finetune/<run>/adapter/          one per fine-tuning run (+ panacea_epsilon.safetensors)
    finetune/<run>/checkpoint-<n>/   while a stage trains, with ``train.save_steps`` (checkpoint.py)
    post/<name>/adapter/             one per post-fine-tuning defense
    eval/<variant>/result.json       one variant's metrics (+ done.json)
    cache/<kind>/<key>/              every finished stage by its key, hard-linked (stages.py, docs/stages.md;
                                     ``cache_dir`` puts it elsewhere, e.g. shared by several runs)
    generations/<variant>.jsonl      every evaluated answer with its judge verdict
    timings.json                     wall time, machine, and per variant and stage the seconds and memory
    results.md, hs_fa.png            the results table with what each column means, and HS vs FA
                                     (report.write_results; docs/reading_results.md)
    metrics.json                     written last: ``results`` (one entry per variant), ``records``
                                     (per stage), ``data_sizes``, ``provenance`` (package versions, git
                                     commit, machine); no timings, so the same config and seed on one
                                     machine and checkout give a byte-identical file

``metrics.json`` is written only when every stage and every evaluation has finished, so a run that
failed never leaves a result that looks complete. Every file is written under a temporary name and
renamed, and each stage writes its checksummed manifest ``done.json`` last (rundir.py).

Resume: ``panacea run`` on the directory of an interrupted run of the same config skips every stage
whose manifest verifies (for the stage's key, and was built from the same input adapters), continues an interrupted
training stage from its newest complete checkpoint (optimizer, scheduler, RNG and the defense's
own state, e.g. Panacea's ε), and evaluates only the variants not yet evaluated. On CPU with the
same seed the result equals that of an uninterrupted run. A NaN/inf loss term or gradient stops a
stage with its name, step and term after saving the last good checkpoint (``NonFiniteError``).
Before a stage writes its adapter and checkpoints, free disk space is checked against an estimate.

Several processes (``accelerate launch -m panacea run``, README "Multi-GPU"): every process runs
every stage; only the main one opens the run directory, writes files and prints (the others hold a
``FollowerRunDir``; ``rundir.write_atomic`` is a no-op for them) and the others wait at the end of
each stage (``_finish_stage``) before they read its files; evaluation prompts are split over the
processes and gathered (``eval.evaluate``).
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from typing import Any
from pathlib import Path

import torch
from transformers import set_seed
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames
from transformers.utils import logging as hf_logging

from . import attacks, models, stages
from .checkpoint import CheckpointState, NumericsGuard, latest_checkpoint, remove_checkpoints
from .config import ExperimentConfig, TrainSettings, from_dict, parse_options, to_dict
from .data.base import DataSpec, Example
from .data.matchers import build_matcher, reference
from .data.mixing import check_disjoint, select
from .defenses.base import ChecksSource, RecordsStage
from .data.templates import Collator, format_prompt, tokenize
from .errors import ConfigError, DataError, NonFiniteError, UserError
from .eval.evaluate import evaluate_benign, evaluate_harmful, evaluate_task
from .models import save_adapter
from .paths import expand_path
from .provenance import machine, provenance
from .report import files_section, judge_of, write_results
from .timings import merge_timings, read_timings, split_timings
from .registry import DATASETS, DEFENSES, JUDGES, MATCHERS
from .distributed import barrier, device, init, is_main, num_processes, on_main
from .rundir import (MANIFEST, RunDir, adapter_files, atomic_path, check_disk, invalidate, open_run_dir, resolve_run_dir,
                     stage_outputs, verify_manifest, write_atomic, write_json, write_manifest)
from .training import Overhead, name_progress, peak_memory, per_device_batch_size, reset_peak_memory, training_arguments


# --------------------------------------------------------------------------- small I/O helpers


# write_atomic and write_json live in rundir.py (imported above; other modules import them from here)


def say(msg: str) -> None:
    if is_main():  # on several processes only the main one prints
        print(msg, flush=True)


# --------------------------------------------------------------------------- data access


@dataclass
class Source:
    """What a post-fine-tuning defense repairs: the fine-tuning run and how its model was built."""

    run: str
    chain: list
    """Adapter folders, oldest first, that ``models.build`` turns into the model being repaired."""
    alignment: str
    """The aligned model the run started from (``aligned``, ``base`` or a variant name)."""
    alignment_chain: list
    """Adapter folders of that aligned model (empty for ``base``)."""
    adapter_mode: str
    """``continue`` (the last adapter holds alignment + user update) or ``merge_new``."""


class Context:
    """Data access for the stages (the ``StageContext`` of ``defenses.base``)."""

    def __init__(self, cfg: ExperimentConfig, tokenizer=None, pools: dict | None = None, stage_key: str = "",
                 source: Source | None = None):
        self.cfg = cfg
        self.source = source
        """The run a post defense repairs (``Source``); None for training stages."""
        self.seed = cfg.seed
        self.tokenizer = tokenizer
        self.collator = Collator(tokenizer.pad_token_id) if tokenizer is not None else None
        self.pools: dict = {} if pools is None else pools
        """Every data pool loaded so far, by what identifies it; pass it on to share the loads."""
        self.stage_key = stage_key
        """The config key of the stage being built, e.g. ``alignment.variants.booster``: the prefix
        of a defense's data keys in errors (``for_stage``)."""

    def for_stage(self, stage_key: str, source: Source | None = None) -> "Context":
        """This context for one stage: its errors name ``stage_key`` (e.g. ``finetune.runs.panacea``)
        and a post defense sees its ``source``; the pools and tokenizer are shared."""
        return Context(self.cfg, self.tokenizer, self.pools, stage_key, source)

    def _key(self, key: str) -> str:
        """A defense names its option (``harmful_data``); errors name the full config key."""
        if not self.stage_key or key.split(".", 1)[0] in ("alignment", "finetune", "post", "eval"):
            return key
        return f"{self.stage_key}.{key}"

    def pool(self, spec: DataSpec, key: str) -> list[Example]:
        key = self._key(key)
        entry = DATASETS.get(spec.name, f"{key}.name")
        check_spec(spec, entry, key)
        ck = (spec.name, spec.split, spec.path, spec.hub_id, spec.hub_config, spec.size,
              spec.seed, tuple(sorted(spec.fields.items())))
        if ck not in self.pools:
            self.pools[ck] = entry.obj(spec)
        return self.pools[ck]

    def examples(self, spec: DataSpec, key: str) -> list[Example]:
        return select(self.pool(spec, key), spec, self._key(key))

    def dataset(self, spec: DataSpec, key: str):
        return self.tokenize(self.examples(spec, key))

    def tokenize(self, exs: list[Example]):
        m = self.cfg.model
        return tokenize(self.tokenizer, exs, m.template, m.max_length, m.system_prompt)

    def format(self, ex: Example) -> str:
        """The prompt text exactly as in training, for generation."""
        return format_prompt(self.tokenizer, ex, self.cfg.model.template, self.cfg.model.system_prompt)

    def matcher(self, spec: DataSpec, key: str):
        """``match(response, reference) -> bool`` for FA: ``spec.match`` when set (data/matchers.py),
        else the task's own; a dataset without one (a local file) must name one."""
        entry = DATASETS.get(spec.name, f"{key}.name")
        if spec.match is not None:
            return build_matcher(spec, key)
        if spec.pattern is not None:
            raise ConfigError(f"{key}.pattern is read only with {key}.match: regex")
        match = entry.meta.get("match")
        if match is None:
            raise ConfigError(f"{key}.match: {spec.name!r} has no answer matcher of its own; choose one of "
                              f"{', '.join(MATCHERS.names())} (docs/own_task.md)")
        return match


def check_spec(spec: DataSpec, entry, key: str) -> None:
    """Refuse keys of a data section that its dataset would ignore, naming the key: ``path`` and
    ``fields`` for a dataset that reads none (a built-in task would silently stay built in),
    ``holdout`` for a dataset with its own splits, ``match``/``pattern`` outside ``eval.utility``."""
    local_file = entry.meta.get("kind") == "file" and entry.meta.get("reads_path")  # jsonl, json, csv
    if spec.path is not None and not entry.meta.get("reads_path"):
        raise ConfigError(f"{key}.path: the dataset {spec.name!r} reads no file, so the path would be ignored; "
                          f"for a file of your own use {key}.name: jsonl, json or csv")
    if spec.fields and not entry.meta.get("reads_fields"):
        raise ConfigError(f"{key}.fields: the dataset {spec.name!r} has fixed fields; "
                          f"field mappings are read by jsonl, json, csv and hub only")
    if spec.holdout is not None and entry.meta.get("kind") != "file":
        raise ConfigError(f"{key}.holdout: {spec.name!r} has its own splits (use {key}.split); "
                          f"holdout splits a file read by jsonl, json, csv or hub")
    if local_file and spec.holdout is None and spec.split != "train":  # "train", the default, is the whole file
        raise ConfigError(f"{key}.split: a {spec.name} file has no splits of its own; set {key}.holdout "
                          f"to hold out a share of it (docs/own_task.md)")
    for k in ("match", "pattern"):
        if getattr(spec, k) is not None and key != "eval.utility":
            raise ConfigError(f"{key}.{k}: only eval.utility has an answer matcher")


def task_label(spec: DataSpec) -> str:
    """A task as results name it: the dataset, with its file or hub id (as written in the config)."""
    where = spec.path or (f"{spec.hub_id}{'/' + spec.hub_config if spec.hub_config else ''}" if spec.hub_id else "")
    return f"{spec.name}:{where}" if where else spec.name


def same_task(a: DataSpec, b: DataSpec) -> bool:
    """Whether two data sections read one task: the same built-in task (whatever its split or local
    export), or for ``file`` datasets the same file (resolved path) or hub dataset."""
    if a.name != b.name:
        return False
    if DATASETS.get(a.name).meta.get("kind") != "file":
        return True

    def where(s: DataSpec):
        path = str(expand_path(s.path, "data.path")) if s.path else None
        return path, s.hub_id, s.hub_config

    return where(a) == where(b)


# --------------------------------------------------------------------------- planning / validation


@dataclass(frozen=True)
class PlannedAlignment:
    """One alignment of the plan (``aligned``/``base`` or an ``alignment.variants`` entry)."""

    entry: Any
    """Its registry entry (``registry.Entry``: the defense object and its ``DefenseSpec``)."""
    options: Any
    """The defense's options dataclass, parsed from the config."""
    train: TrainSettings
    key: str
    """Its config key: ``alignment`` or ``alignment.variants.<name>``."""


@dataclass(frozen=True)
class PlannedRun:
    """One fine-tuning run of the plan (``finetune.runs.<name>``)."""

    entry: Any
    options: Any
    train: TrainSettings
    poison_ratio: float
    """The run's harmful ratio p (its own ``poison_ratio``, else ``finetune.data.poison_ratio``)."""
    key: str


@dataclass(frozen=True)
class PlannedPost:
    """One post-fine-tuning defense of the plan (``post.<name>``)."""

    entry: Any
    options: Any
    key: str


class Plan:
    """Everything resolved and validated before any model is loaded: ``aligns``, ``runs`` and
    ``posts`` map each variant name to its ``PlannedAlignment``, ``PlannedRun`` or ``PlannedPost``."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        a = cfg.alignment
        self.main = "base" if a.defense == "none" else "aligned"
        self.aligns: dict[str, PlannedAlignment] = {}
        entry = DEFENSES["alignment"].get(a.defense, "alignment.defense")
        self.aligns[self.main] = PlannedAlignment(entry, parse_options(entry.obj.Config, a.options, "alignment"),
                                                  a.train, "alignment")
        # where each stage's train settings were typed, so errors name that key (train_keys)
        self.train_keys = {"alignment": train_keys("alignment.train", "alignment.train", {})}
        _check_train(a.train, self.train_keys["alignment"])
        for name, v in a.variants.items():
            key = f"alignment.variants.{name}"
            if name == "adapter" or name.startswith("checkpoint-"):
                raise ConfigError(f"{key}: the name {name!r} is reserved (a folder of alignment/)")
            entry = DEFENSES["alignment"].get(v.defense, f"{key}.defense")
            train = from_dict(TrainSettings, {**_asdict(a.train), **v.train}, f"{key}.train")
            self.train_keys[key] = train_keys("alignment.train", f"{key}.train", v.train)
            _check_train(train, self.train_keys[key])
            self.aligns[name] = PlannedAlignment(entry, parse_options(entry.obj.Config, v.options, key), train, key)
        self.run_alignment = {name: r.alignment or self.main for name, r in cfg.finetune.runs.items()}
        self.adapter_mode = {name: r.adapter_mode or cfg.finetune.adapter_mode for name, r in cfg.finetune.runs.items()}
        self.runs: dict[str, PlannedRun] = {}
        for name, r in cfg.finetune.runs.items():
            entry = DEFENSES["finetune"].get(r.defense, f"finetune.runs.{name}.defense")
            opts = parse_options(entry.obj.Config, r.options, f"finetune.runs.{name}")
            train = from_dict(TrainSettings, {**_asdict(cfg.finetune.train), **r.train}, f"finetune.runs.{name}.train")
            self.train_keys[f"finetune.runs.{name}"] = train_keys("finetune.train", f"finetune.runs.{name}.train", r.train)
            _check_train(train, self.train_keys[f"finetune.runs.{name}"])
            p = cfg.finetune.data.poison_ratio if r.poison_ratio is None else r.poison_ratio
            if not 0 <= p <= 1:
                raise ConfigError(f"finetune.runs.{name}.poison_ratio must be in [0, 1], got {p}")
            self.runs[name] = PlannedRun(entry, opts, train, p, f"finetune.runs.{name}")
        self.attack, self.attack_opts = attacks.resolve(cfg)  # finetune.data.attack: builds the user set
        self.posts: dict[str, PlannedPost] = {}
        for name, pc in cfg.post.items():
            entry = DEFENSES["post"].get(pc.defense, f"post.{name}.defense")
            self.posts[name] = PlannedPost(entry, parse_options(entry.obj.Config, pc.options, f"post.{name}"),
                                           f"post.{name}")
        for name, planned in self.posts.items():
            entry, opts = planned.entry, planned.options
            if isinstance(entry.obj, ChecksSource):  # e.g. SafeLoRA needs a merge_new run fine-tuned from an aligned model
                src = cfg.post[name].source
                align = self.run_alignment[src]
                chain = [] if self.aligns[align].entry.name == "none" else [Path("alignment") / align]
                try:
                    entry.obj.check_source(opts, Source(src, [], align, chain, self.adapter_mode[src]))
                except ConfigError as e:
                    raise ConfigError(f"post.{name}: {e}") from None
        self.judge = JUDGES.get(cfg.eval.judge, "eval.judge")
        variants = list(self.aligns) + list(self.runs) + list(self.posts)
        self.variants = cfg.eval.variants or variants
        self.utility: dict | None = None  # what FA measures, set by check_data (utility_record)

    def defender_sets(self):
        """(config key, DataSpec) of every defender set the plan uses: the defender's harmful data
        and refusal / safety data (``DefenseSpec.defender_data_keys`` and ``safety_data_keys``)."""
        def keys(entry):
            return entry.spec.defender_data_keys + entry.spec.safety_data_keys

        return [(f"{planned.key}.{k}", getattr(planned.options, k))
                for stage in (self.aligns, self.runs, self.posts) for planned in stage.values()
                for k in keys(planned.entry)]

    def check_processes(self, processes: int) -> None:
        """Every training stage's batch on ``processes`` processes: a ``global_batch_size`` must
        be divisible by processes × gradient_accumulation_steps (one-line ``ConfigError``)."""
        for planned in [*self.aligns.values(), *self.runs.values()]:
            if planned.entry.name != "none":
                per_device_batch_size(planned.train, processes, self.train_keys[planned.key]["global_batch_size"])

    def check_data(self, ctx: Context) -> dict:
        """Load every pool once (fails early on missing files/packages) and check disjointness."""
        cfg = self.cfg
        models.check_folder(cfg.model)  # an empty or truncated model folder: one line, before any run
        user_harm = ctx.examples(cfg.finetune.data.harmful, "finetune.data.harmful")
        task = ctx.examples(cfg.finetune.data.task, "finetune.data.task")
        fd = cfg.finetune.data
        user_pools = attacks.pools(ctx, fd, self.attack, self.attack_opts)
        for name, run in self.runs.items():
            seed = cfg.seed if fd.seed is None else fd.seed
            attacks.check(self.attack, self.attack_opts, user_pools, fd.n, run.poison_ratio, seed, name)
        eval_harm = ctx.examples(cfg.eval.harmful, "eval.harmful")
        for key, spec in (("eval.harmful", cfg.eval.harmful), ("eval.utility", cfg.eval.utility),
                          ("eval.benign", cfg.eval.benign)):
            if spec is not None and not ctx.examples(spec, key):  # e.g. start at the end of the pool
                raise DataError(f"{key}: selects no rows (start {spec.start} of {len(ctx.pool(spec, key))}); "
                                f"an empty evaluation set has no score")
        pools = {"finetune.data.harmful": user_harm, "eval.harmful": eval_harm}
        for key, spec in self.defender_sets():
            pools[key] = ctx.examples(spec, key)
        if any(planned.entry.name != "none" for planned in self.aligns.values()):
            ctx.examples(cfg.alignment.data, "alignment.data")
            if cfg.alignment.benign is not None:
                ctx.examples(cfg.alignment.benign, "alignment.benign")
        self.utility = None
        if cfg.eval.utility is not None:
            match = ctx.matcher(cfg.eval.utility, "eval.utility")
            util = ctx.examples(cfg.eval.utility, "eval.utility")
            check_references(util, match, cfg.eval.utility)
            try:
                check_disjoint({"finetune.data.task": task, "eval.utility": util})
            except DataError as e:
                hint = ("; split one file with the same holdout in both sections (docs/own_task.md)"
                        if same_task(cfg.finetune.data.task, cfg.eval.utility) else "")
                raise DataError(f"{e}{hint}") from None
            self.utility = utility_record(cfg.finetune.data.task, cfg.eval.utility, match)
        if cfg.eval.benign is not None:
            ctx.examples(cfg.eval.benign, "eval.benign")
        # defender sets may share rows with each other (same defender), never with the user or eval
        for key, _ in self.defender_sets():
            check_disjoint({"finetune.data.harmful": user_harm, "eval.harmful": eval_harm, key: pools[key]})
        check_disjoint({"finetune.data.harmful": user_harm, "eval.harmful": eval_harm})
        sizes = {k: len(v) for k, v in pools.items()}
        return sizes


def check_references(rows: list[Example], match, spec: DataSpec) -> None:
    """Every ``eval.utility`` row has a reference its matcher can match (``matchers.reference``):
    a row without one would score wrong whatever the model answers."""
    check = getattr(match, "check", None)  # the built-in tasks' matchers have none
    for ex in rows:
        ref = reference(ex)
        why = "is empty" if not ref.strip() else check(ref) if check is not None else None
        if why:
            field = "label" if ex.label is not None else "output"
            row = (ex.input or ex.instruction)[:60]
            raise DataError(f"eval.utility: the reference ({field}) of the row {row!r} {why}, "
                            f"so match: {spec.match or spec.name} can never accept an answer")


def utility_record(task: DataSpec, util: DataSpec, match) -> dict:
    """What ``metrics.json["utility"]`` says about FA: the task it measures, the matcher, and whether
    it is the task the runs fine-tune on (``same_task``; when not, the run warns first)."""
    rec = {"task": task_label(util), "finetune_task": task_label(task), "same_task": same_task(task, util),
           "matcher": util.match or f"{util.name} (built in: {getattr(match, '__name__', type(match).__name__)})"}
    if util.pattern is not None:
        rec["pattern"] = util.pattern
    if util.holdout is not None:
        rec["holdout"] = util.holdout
    return rec


def task_warning(plan: "Plan") -> str | None:
    """The one-line warning a run prints first when FA is measured on another task than the one
    fine-tuned on (None when they agree or FA is skipped)."""
    u = plan.utility
    if not u or u["same_task"]:
        return None
    return (f"warning: fine-tune accuracy is measured on eval.utility = {u['task']}, but the runs fine-tune on "
            f"finetune.data.task = {u['finetune_task']} (docs/own_task.md)")


def batch_warnings(plan: "Plan", sizes: dict[str, int]) -> list[str]:
    """One line per defender set whose batch does not divide it: the auxiliary loader
    (``training.loaders.CyclingLoader``) keeps the rest of each pass as a smaller batch on one
    process, so some steps rest on fewer samples than the batch size says (e.g. 100 samples in
    batches of 80 alternate 80 and 20). The batch option of ``X_data`` is ``X_batch_size``; unset,
    the stage's ``per_device_train_batch_size``, as the trainers resolve it."""
    out = []
    for planned in [*plan.aligns.values(), *plan.runs.values()]:
        for k in planned.entry.spec.defender_data_keys + planned.entry.spec.safety_data_keys:
            option = k[: -len("_data")] + "_batch_size" if k.endswith("_data") else None
            if option is None or not hasattr(planned.options, option):
                continue
            batch = getattr(planned.options, option) or planned.train.per_device_train_batch_size
            n = sizes.get(f"{planned.key}.{k}")
            if batch and n and n % batch:
                out.append(f"warning: {planned.key}.{option} {batch} does not divide the {n} samples of "
                           f"{planned.key}.{k}: on one process each pass over them ends with a batch of "
                           f"{n % batch} (on several processes that batch is dropped)")
    return out


def plan_warnings(plan: "Plan", sizes: dict[str, int]) -> list[str]:
    """Every one-line warning ``panacea validate`` prints and a run says first."""
    return [w for w in [task_warning(plan), *batch_warnings(plan, sizes)] if w]


def _asdict(dc) -> dict:
    return asdict(dc)


def train_keys(base: str, own: str, typed: dict) -> dict[str, str]:
    """The config key of every train setting of one stage, as the user typed it.

    A fine-tuning run (or alignment variant) inherits ``finetune.train`` (``alignment.train``) and
    overrides some settings under its own ``train``; an error about an inherited setting names
    ``finetune.train.<setting>``, one about an overridden setting ``finetune.runs.<run>.train.<setting>``.
    """
    return {f.name: f"{own if f.name in typed else base}.{f.name}" for f in fields(TrainSettings)}


def _check_train(train: TrainSettings, keys: dict[str, str]) -> None:
    """The ``TrainingArguments`` choices a YAML typo would otherwise only break at training time."""
    for name, kind in (("lr_scheduler_type", SchedulerType), ("optim", OptimizerNames)):
        choices = [e.value for e in kind]
        if getattr(train, name) not in choices:
            value = str(getattr(train, name))[:60]
            raise ConfigError(f"{keys[name]}: unknown value {value!r}; choices: {', '.join(choices)}")


# --------------------------------------------------------------------------- the run


def run_dir_of(cfg: ExperimentConfig) -> Path:
    """The run directory as one absolute path (``~``, ``$VARS`` and ``..`` resolved, paths.py);
    every stage, the Trainer included, writes under exactly this path."""
    return resolve_run_dir(cfg.output_dir or Path("runs") / cfg.name)


#: Free space kept on top of a stage's estimate (records, logs, file-system slack).
DISK_MARGIN = 16 * 2**20


def stage_bytes(model, train: TrainSettings | None = None) -> int:
    """Disk a stage may need: its adapter twice (the new copy is renamed over the old one) and an
    fp32 ε, plus per checkpoint alive at once (``save_total_limit`` + 1 while the next is written)
    the adapter, two fp32 Adam moments and the defense's state (up to two fp32 copies)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in trainable)
    fp32 = 4 * sum(p.numel() for p in trainable)
    ckpts = train.save_total_limit + 1 if train is not None and train.save_steps else 0
    return 2 * weights + fp32 + ckpts * (weights + 4 * fp32) + DISK_MARGIN


def _train_stage(label, defense_entry, opts, model, data, train: TrainSettings, out_dir: Path, ctx: Context, seed: int,
                 progress: str = ""):
    """Train one stage with its defense's Trainer into ``out_dir`` and return its record;
    ``progress`` labels the progress bar (default: the last two parts of ``out_dir``)."""
    check_disk(out_dir, stage_bytes(model, train), label)
    ckpt = latest_checkpoint(out_dir)
    set_seed(seed)
    args = training_arguments(train, out_dir, seed)
    trainer = defense_entry.obj.make_trainer(model, args, data, ctx, opts)
    name_progress(trainer, progress or "/".join(out_dir.parts[-2:]))  # the bar says which stage it is, e.g. finetune/panacea
    overhead = Overhead()
    trainer.add_callback(overhead)
    saver = CheckpointState(trainer, overhead, train.save_total_limit)
    trainer.add_callback(saver)
    trainer.add_callback(NumericsGuard(trainer))
    if ckpt is not None:
        saver.load(ckpt)
        say(f"    {label}: resuming from {ckpt.name}")
    try:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    except BaseException as e:
        for cb in trainer.callback_handler.callbacks:  # end the progress bar's line before the error
            if getattr(cb, "training_bar", None) is not None:
                cb.training_bar.close()
                cb.training_bar = None
        if not isinstance(e, NonFiniteError):
            raise
        saved = saver.save_now()  # the weights and optimizer are still those of the last good step
        raise NonFiniteError(e.term, e.step, e.value, stage=label, checkpoint=str(saved)) from None
    record = {"defense": defense_entry.name, "samples": len(data), "samples_without_target": data.no_target,
              **overhead.summary()}
    if ckpt is not None:
        record["resumed_from_step"] = int(ckpt.name.rsplit("-", 1)[1])
    if isinstance(trainer, RecordsStage):
        record.update(trainer.stage_record())
    with atomic_path(out_dir / "adapter") as tmp:
        save_adapter(trainer.model, tmp, trainer)  # the main process writes (FSDP2: gathered first)
    write_json(out_dir / "record.json", record)
    say(f"    {label}: {record['steps']} steps in {record['train_seconds']:.0f} s "
        f"({record['step_seconds']} s/step, peak {record['peak_memory_gb']} GB)")
    return record


class StageStore:
    """Where the stages of one run are looked up, reused and kept (stages.py, docs/stages.md):
    the run directory (each stage's manifest ``done.json`` records its key) and the cache
    (``cache_dir``). ``legacy``: the stage keys (by folder) of the config the run directory was
    made with (``stages.recorded_keys``), so a manifest written before stage keys existed counts
    for a stage whose key is unchanged."""

    def __init__(self, run_dir: Path, graph: dict, cache, legacy: dict[str, str]):
        self.run_dir, self.graph, self.cache, self.legacy = run_dir, graph, cache, legacy
        self.counts = {"computed": 0, "reused": 0, "eval_parts_reused": 0}
        """Stages this invocation computed and reused (from the run directory or the cache), and
        prompt sets of recomputed evaluations read from the cache: ``timings.json``'s ``stages``."""

    def reuse(self, st, files: dict[str, Path], inputs: list[Path]) -> str | None:
        """``done`` when the stage's manifest in the run directory verifies for its key, ``cached``
        when a verified cache entry was linked into the run directory (``files``: entry name →
        path there), else None (the stage is to be computed). Decided by the main process."""
        def decide():
            out = self.run_dir / st.folder
            if verify_manifest(self.run_dir, out, adapter_files(inputs), key=st.key,
                               legacy=self.legacy.get(st.folder) == st.key):
                self._adopt(st, out, files, inputs)
                return "done"
            invalidate(out)
            entry = self.cache.lookup(st, inputs)
            if entry is None:
                return None
            names = self.cache.files(entry)
            dests = files if st.kind == "eval" else {rel: out / rel for rel in names}
            if set(names) != set(dests):
                return None
            if st.kind != "eval":
                stages.clear_stage(out)
            stages.fill(entry, names, dests)
            write_manifest(self.run_dir, out, list(dests.values()), adapter_files(inputs), key=st.key)
            return "cached"

        how = on_main(decide)
        barrier()
        self.counts["reused" if how else "computed"] += 1
        return how

    def _adopt(self, st, out: Path, files: dict[str, Path], inputs: list[Path]) -> None:
        """A stage done in the run directory: a manifest of an older panacea (verified because the
        config is unchanged) gets the stage's key, so a later changed config can reuse the stage;
        and the cache gets the stage when it has no entry for its key (e.g. a new ``cache_dir``)."""
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        outputs = [self.run_dir / rel for rel in manifest["files"]]
        if "key" not in manifest:
            write_manifest(self.run_dir, out, outputs, adapter_files(inputs), key=st.key)
        if not self.cache.entry(st).exists():
            if st.kind != "eval":
                files = {p.relative_to(out).as_posix(): p for p in outputs}
            self.cache.publish(st, files, inputs)

    def prepare(self, st, out: Path, inputs: list[Path] = ()) -> None:
        """Before a training or post stage is computed: its input adapters must exist (else a
        ``UserError`` names them); its folder keeps what it holds (the checkpoints of an
        interrupted run of this very stage) only if it was started for the same key
        (``stages.STAGE_KEY_FILE``; without one, only when the config is unchanged)."""
        missing = [p for p in inputs if not (Path(p) / "adapter_config.json").is_file()]
        if missing:
            names = ", ".join(str(Path(p).relative_to(self.run_dir).as_posix()) for p in missing)
            raise UserError(f"{st.label}: its input {names} is missing from {str(self.run_dir)!r}; "
                            f"run the same command again to compute it")
        if is_main():
            mark = out / stages.STAGE_KEY_FILE
            same = (mark.read_text(encoding="utf-8").strip() if mark.is_file() else self.legacy.get(st.folder)) == st.key
            if not same:
                stages.clear_stage(out)
            write_atomic(mark, st.key + "\n")
        barrier()

    def publish(self, st, files: dict[str, Path], inputs: list[Path]) -> None:
        self.cache.publish(st, files, inputs)


def _stage_done(store: StageStore, st, out: Path, inputs: list[Path], records: dict, name: str, train=None) -> str | None:
    """Whether stage ``out`` is done or reused (``StageStore.reuse``: its manifest verifies for its
    key against the current ``inputs``, the adapter folders it was built from, or the cache has
    it); if so its record is loaded into ``records``."""
    how = store.reuse(st, {}, inputs)
    if how is None:
        return None
    records[name] = json.loads((out / "record.json").read_text(encoding="utf-8"))
    if (train is None or not train.keep_checkpoints) and is_main():
        remove_checkpoints(out)  # left behind by a run killed between its manifest and the clean-up
    return how


def _finish_stage(store: StageStore, st, out: Path, inputs: list[Path], train=None) -> None:
    """Mark a stage done (its manifest with its key, written last), drop its checkpoints unless
    kept, and keep it in the cache."""
    outputs = stage_outputs(out) if is_main() else []
    write_manifest(store.run_dir, out, outputs, adapter_files(inputs), key=st.key)
    if train is None or not train.keep_checkpoints:
        remove_checkpoints(out)
    store.publish(st, {p.relative_to(out).as_posix(): p for p in outputs}, inputs)
    barrier()  # several processes: the others read this stage's files only once they are written


def _reused(how: str) -> str:
    return "done (outputs verified)" if how == "done" else "reused from the cache (outputs verified)"


def run_experiment(cfg: ExperimentConfig, force: bool = False) -> dict:
    """Run every stage of ``cfg`` and return the metrics written to ``metrics.json``.

    An existing run directory of the same config is resumed (or, when complete, left alone and its
    metrics returned); one of another config reuses every stage whose key is unchanged (stages.py);
    ``force`` computes everything again (rundir.open_run_dir).
    """
    hf_logging.set_verbosity_error()
    t_start = time.perf_counter()
    env_threads()  # a bad environment variable fails before anything is created
    models.cache_dir()
    plan = Plan(cfg)
    probe = Context(cfg)
    sizes = plan.check_data(probe)
    for warning in plan_warnings(plan, sizes):
        say(warning)
    init()  # the process group, when launched on several processes (a no-op otherwise)
    plan.check_processes(num_processes())

    graph = stages.build_graph(cfg, plan, probe)  # every stage's key, before anything is written
    if cfg.cache_dir and is_main():
        stages.open_cache(cfg, run_dir_of(cfg))  # a bad cache_dir fails before the run directory is touched
    legacy = on_main(stages.recorded_keys, run_dir_of(cfg)) if not force else {}
    with open_run_dir_on_main(run_dir_of(cfg), to_dict(cfg), force) as rd:
        if rd.mode == "complete":
            say(f"{rd.path} is complete (metrics.json verified): nothing to do; --force runs it again")
            return merge_timings(rd.completed("metrics.json"), read_timings(rd.path))
        if rd.changed:
            say(f"{rd.path}: the config changed ({rd.changed}); stages whose key is unchanged are reused, "
                f"the others computed")
        elif rd.mode == "resume":
            say(f"resuming {rd.path}: finished stages are verified and skipped")
        rd.set_status("running", pid=os.getpid(), resumed=rd.mode == "resume")
        store = StageStore(rd.path, graph, stages.open_cache(cfg, rd.path, read=not force),
                           legacy=legacy)
        try:
            metrics = _run(cfg, plan, rd.path, probe, sizes, t_start, store)
        except BaseException as e:
            err = disk_full_error(e, rd.path)
            try:
                rd.set_status("failed", error=f"{type(err).__name__}: {err}")
            except OSError:
                pass
            if err is not e:
                raise err from None
            raise
        results_only, timings = split_timings(metrics)
        write_json(rd.path / "timings.json", timings)
        write_run_results(rd.path, metrics, to_dict(cfg))
        rd.finish("metrics.json", results_only, wall_seconds=metrics["wall_seconds"])
    return metrics


def write_run_results(run_dir: Path, metrics: dict, cfg: dict) -> Path:
    """``results.md`` and ``hs_fa.png`` of a run (report.write_results), before ``metrics.json``
    marks it finished: a finished run always has them."""
    rows = metrics["results"]
    return write_results(run_dir, metrics["name"], rows, judge_of(rows, cfg.get("eval", {}).get("judge")), cfg=cfg,
                         wall=metrics.get("wall_seconds"), prov=metrics.get("provenance"), extra=files_section())


class FollowerRunDir(RunDir):
    """The run directory as a non-main process holds it: the main process's path and mode, no
    lock, no writes (the main process writes status and results)."""

    def __init__(self, path, mode: str, changed: str | None = None):
        super().__init__(Path(path), mode, "", None, changed)

    def set_status(self, state: str, **info) -> None:
        pass

    def finish(self, result: str, obj: dict, **info) -> None:
        pass


def open_run_dir_on_main(run_dir: Path, resolved: dict, force: bool) -> RunDir:
    """``rundir.open_run_dir`` on the main process; the others get a ``FollowerRunDir`` of the
    same path and mode (or the main process's ``UserError``). On one process: ``open_run_dir``."""
    init()
    opened = {}

    def open_main():
        opened["rd"] = open_run_dir(run_dir, resolved, force)
        return str(opened["rd"].path), opened["rd"].mode, opened["rd"].changed

    path, mode, changed = on_main(open_main)
    return opened["rd"] if "rd" in opened else FollowerRunDir(path, mode, changed)


def disk_full_error(e: BaseException, run_dir: Path) -> BaseException:
    """A one-line ``UserError`` for a full disk (finished stages stay; the same command resumes)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"the disk holding {str(run_dir)!r} is full; finished stages are kept: free some space "
                         f"and run the same command again to resume")
    return e


def _run(cfg, plan, run_dir, probe, sizes, t_start, store: StageStore) -> dict:
    torch_threads()
    tok = models.load_tokenizer(cfg.model)
    ctx = Context(cfg, tok, probe.pools)
    records: dict[str, dict] = {}
    chains: dict[str, list[Path]] = {}
    n_stages = len(plan.aligns) + len(plan.runs) + len(plan.posts)
    step = 0

    # ---- stage 1: alignment (the main aligned model, then any alignment.variants)
    a = cfg.alignment
    align_data = None
    for name, planned in plan.aligns.items():
        entry, opts, train = planned.entry, planned.options, planned.train
        step += 1
        if entry.name == "none":
            say(f"[{step}/{n_stages}] alignment {name}: none (the base model is served as is)")
            chains[name] = []
            continue
        st = store.graph[name]
        out = run_dir / st.folder
        chains[name] = [out / "adapter"]
        with store.cache.lock(st, say):
            how = _stage_done(store, st, out, [], records, name, train)
            if how:
                say(f"[{step}/{n_stages}] alignment {name}: {_reused(how)}")
                continue
            store.prepare(st, out)
            if align_data is None:
                data = ctx.examples(a.data, "alignment.data")
                if a.benign is not None:
                    data = data + ctx.examples(a.benign, "alignment.benign")

                random.Random(cfg.seed).shuffle(data)
                align_data = ctx.tokenize(data)
            say(f"[{step}/{n_stages}] alignment {name}: {entry.name} on {len(align_data)} examples")
            set_seed(cfg.seed)  # the new adapter's random init (LoRA A) is drawn from the global RNG
            model = models.build(cfg.model, cfg.lora, [], new_adapter=True)
            records[name] = _train_stage(f"alignment {name}", entry, opts, model, align_data, train, out,
                                         ctx.for_stage(planned.key), cfg.seed,
                                         progress=out.relative_to(run_dir).as_posix())
            del model
            _finish_stage(store, st, out, [], train)

    # ---- stage 2: fine-tuning runs
    fd = cfg.finetune.data
    user_pools = attacks.pools(ctx, fd, plan.attack, plan.attack_opts)
    mix_seed = cfg.seed if fd.seed is None else fd.seed
    for name, run in plan.runs.items():
        entry, opts, train, p = run.entry, run.options, run.train, run.poison_ratio
        step += 1
        merge = plan.adapter_mode[name] == "merge_new"
        align_chain = chains[plan.run_alignment[name]]
        st = store.graph[name]
        out = run_dir / st.folder
        chains[name] = (align_chain if merge else []) + [out / "adapter"]
        with store.cache.lock(st, say):
            how = _stage_done(store, st, out, align_chain, records, name, train)
            if how:
                say(f"[{step}/{n_stages}] fine-tuning {name}: {_reused(how)}")
                continue
            store.prepare(st, out, align_chain)
            user = attacks.build(plan.attack, plan.attack_opts, user_pools, fd.n, p, mix_seed)
            n_h = sum(1 for e in user if e.meta.get("poison"))
            ds = ctx.tokenize(user)
            attack = "" if plan.attack.name == attacks.DEFAULT else f", attack {plan.attack.name}"
            say(f"[{step}/{n_stages}] fine-tuning {name}: {entry.name} from {plan.run_alignment[name]} "
                f"on {len(ds)} user samples ({n_h} harmful, p={p}{attack})")
            set_seed(cfg.seed)
            model = models.build(cfg.model, cfg.lora, align_chain, new_adapter=merge or not align_chain, trainable=True)
            records[name] = _train_stage(f"fine-tuning {name}", entry, opts, model, ds, train, out,
                                         ctx.for_stage(run.key), cfg.seed,
                                         progress=f"finetune/{name}")
            records[name]["harmful_samples"] = n_h
            if attack:  # the default attack's record is as it was before attacks existed
                records[name]["attack"] = plan.attack.name
            write_json(out / "record.json", records[name])
            del model
            _finish_stage(store, st, out, align_chain, train)

    # ---- stage 3: post-fine-tuning defenses (their errors are prefixed with post.<name> below)
    for name, planned in plan.posts.items():
        entry, opts = planned.entry, planned.options
        step += 1
        src = cfg.post[name].source
        st = store.graph[name]
        out = run_dir / st.folder
        chains[name] = chains[src][:-1] + [out / "adapter"]
        with store.cache.lock(st, say):
            how = _stage_done(store, st, out, chains[src], records, name)
            if how:
                say(f"[{step}/{n_stages}] post-fine-tuning {name}: {_reused(how)}")
                continue
            store.prepare(st, out, chains[src])
            say(f"[{step}/{n_stages}] post-fine-tuning {name}: {entry.name} on {src}")
            set_seed(cfg.seed)
            source = Source(run=src, chain=list(chains[src]), alignment=plan.run_alignment[src],
                            alignment_chain=list(chains[plan.run_alignment[src]]), adapter_mode=plan.adapter_mode[src])
            post_ctx = ctx.for_stage(planned.key, source)
            model = models.build(cfg.model, cfg.lora, chains[src], new_adapter=False, trainable=True)
            check_disk(out, stage_bytes(model), f"post-fine-tuning {name}")

            reset_peak_memory()  # as a training stage measures it (training.Overhead): from the model built
            t0 = time.perf_counter()
            try:
                info = entry.obj.apply(model, post_ctx, opts)
            except ConfigError as e:  # a data key already names post.<name>; any other error gets it
                raise ConfigError(str(e) if str(e).startswith(f"post.{name}.") else f"post.{name}: {e}") from None
            secs = time.perf_counter() - t0
            memory = peak_memory()
            check_repaired(model, post_ctx, info, f"post-fine-tuning {name}", f"post.{name}")
            with atomic_path(out / "adapter") as tmp:
                save_adapter(model, tmp)  # the main process writes
            records[name] = {"defense": entry.name, "from": src, "apply_seconds": round(secs, 2),
                             "train_seconds": records[src]["train_seconds"], **memory, **info}
            write_json(out / "record.json", records[name])
            _finish_stage(store, st, out, chains[src])
            del model

    # ---- evaluation
    results = evaluate_all(cfg, plan, ctx, chains, records, run_dir, store)
    wall = round(time.perf_counter() - t_start, 1)
    return {
        "name": cfg.name,
        "results": results,
        "records": records,
        "data_sizes": sizes,
        "utility": plan.utility,
        "provenance": provenance(),
        "wall_seconds": wall,
        "machine": machine(),
        "stages": dict(store.counts),
    }


def nonfinite(obj, key: str = "") -> str | None:
    """The dotted key of the first NaN or infinite number in ``obj`` (nested dicts and lists), else None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return key or "the value"
    items = []
    if isinstance(obj, dict):
        items = [(v, f"{key}.{k}" if key else str(k)) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(v, f"{key}[{i}]") for i, v in enumerate(obj)]
    for v, sub in items:
        found = nonfinite(v, sub)
        if found is not None:
            return found
    return None


def check_repaired(model, ctx: Context, info: dict, label: str, key: str) -> None:
    """The fault guard after a post-fine-tuning defense: every weight finite, the model's logits on
    the first evaluation prompt finite (huge but finite weights overflow there), and the numbers
    the defense reports finite. Raises a one-line ``UserError`` naming the stage otherwise."""
    for pname, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise UserError(f"{label}: non-finite weights in {pname} after the defense; nothing was saved "
                            f"(check {key}'s options)")
    ex = ctx.examples(ctx.cfg.eval.harmful, "eval.harmful")[0]
    batch = ctx.tokenizer(ctx.format(ex), return_tensors="pt")
    dev = next(model.parameters()).device
    with torch.no_grad():
        logits = model(**{k: v.to(dev) for k, v in batch.items()}).logits
    if not torch.isfinite(logits).all():
        top = max(float(p.detach().abs().max()) for p in model.parameters() if p.requires_grad) \
            if any(p.requires_grad for p in model.parameters()) else float("nan")
        raise UserError(f"{label}: the model's outputs are NaN or infinite after the defense (largest trainable "
                        f"weight {top:.3g}); nothing was saved (lower the strength in {key})")
    bad = nonfinite(info)
    if bad is not None:
        raise UserError(f"{label}: the defense reported a non-finite {bad}; nothing was saved (check {key}'s options)")


def evaluate_all(cfg, plan, ctx, chains, records, run_dir, store: StageStore) -> list[dict]:
    """Evaluate every variant: one eval stage each, reused when its key and inputs are unchanged."""
    e = cfg.eval
    judge = None  # built on first use: a resumed run may have nothing left to judge
    harmful = ctx.examples(e.harmful, "eval.harmful")
    utility = ctx.examples(e.utility, "eval.utility") if e.utility is not None else None
    match = ctx.matcher(e.utility, "eval.utility") if e.utility is not None else None
    benign = ctx.examples(e.benign, "eval.benign") if e.benign is not None else None
    results = []
    say(f"[eval] {len(plan.variants)} variants × ({len(harmful)} harmful"
        f"{f', {len(utility)} task' if utility else ''}{f', {len(benign)} benign' if benign else ''} prompts)")
    for i, v in enumerate(plan.variants, 1):
        st = store.graph[f"eval/{v}"]
        vdir = run_dir / st.folder
        gen_path = run_dir / "generations" / f"{v}.jsonl"
        files = {"result.json": vdir / "result.json", "generations.jsonl": gen_path}
        with store.cache.lock(st, say):
            how = store.reuse(st, files, chains[v])
            if how:
                results.append(json.loads((vdir / "result.json").read_text(encoding="utf-8")))
                say(f"    [{i}/{len(plan.variants)}] {v}: {_reused(how)}")
                continue
            judge = _evaluate_one(cfg, plan, ctx, chains, records, run_dir, store, st, v, i, judge, results, files,
                                  harmful, utility, match, benign)
    return results


#: Each part of an evaluation (stages.Stage.parts) by the set name its answers carry in
#: ``generations/<variant>.jsonl``, in the order metrics and answers are written.
GENERATION_SETS = {"harmful": "harmful", "task": "task", "benign": "benign", "triggered": "harmful_triggered"}


def _read_part(entry: Path) -> tuple[dict, list[dict], float]:
    """A cached part of an evaluation: its metrics, its answers and the seconds it took."""
    part = json.loads((entry / "part.json").read_text(encoding="utf-8"))
    rows = [json.loads(ln) for ln in (entry / "generations.jsonl").read_text(encoding="utf-8").splitlines() if ln]
    return part["metrics"], rows, float(part["seconds"])


def _evaluate_one(cfg, plan, ctx, chains, records, run_dir, store, st, v, i, judge, results, files,
                  harmful, utility, match, benign):
    """Evaluate the variant ``v`` (its eval stage ``st``) and keep its result; returns the judge
    (built on first use).

    Each prompt set is a part of the stage with its own key (``Stage.parts``): a part found in the
    cache is read from it, the others are generated (the model is built only if one is missing)
    and put into the cache; the variant's ``result.json`` and ``generations/<variant>.jsonl`` are
    then assembled from the parts in a fixed order, as one evaluation of every set writes them.
    """
    e = cfg.eval
    tok = ctx.tokenizer
    vdir, gen_path = files["result.json"].parent, files["generations.jsonl"]
    inputs = chains[v]
    found = on_main(lambda: {part: str(entry) for part, pst in st.parts.items()
                             if (entry := store.cache.lookup(pst, inputs)) is not None})
    barrier()
    done = {part: _read_part(Path(entry)) for part, entry in found.items()}
    store.counts["eval_parts_reused"] += len(done)
    todo = [part for part in st.parts if part not in done]
    build_seconds = 0.0
    if todo:
        if judge is None and ({"harmful", "triggered"} & set(todo)):
            judge = plan.judge.obj(e.judge_options)
        t0 = time.perf_counter()
        model = models.build(cfg.model, cfg.lora, inputs, new_adapter=False)
        if device() is not None:  # several processes: each generates its share on its own GPU
            model.to(device())
        elif torch.cuda.is_available():  # one process on a GPU machine: generate on the GPU
            model.to("cuda")
        build_seconds = time.perf_counter() - t0
        for part in todo:
            t = time.perf_counter()
            if part == "harmful":
                m, rows = evaluate_harmful(model, tok, ctx.format, judge, e, harmful, v)
            elif part == "task":
                m, rows = evaluate_task(model, tok, ctx.format, e, utility, match, v)
            elif part == "benign":
                m, rows = evaluate_benign(model, tok, ctx.format, e, benign, v)
            else:  # the same prompts in the attack's form (backdoor trigger, persona, template)
                m, rows = attacks.triggered_eval(model, tok, ctx.format, judge, e, harmful, plan.attack,
                                                 plan.attack_opts, v)
            bad = nonfinite(m)
            if bad is not None:
                raise UserError(f"evaluation of {v}: {bad} is not a finite number; no result was written")
            secs = round(time.perf_counter() - t, 1)
            store.cache.put(st.parts[part], {
                "part.json": json.dumps({"metrics": m, "seconds": secs}, ensure_ascii=False, indent=1) + "\n",
                "generations.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)}, inputs)
            done[part] = (m, rows, secs)
        del model
    m, gens = {}, {}
    for part in st.parts:  # harmful, task, benign, triggered: the order of stages.build_graph
        m.update(done[part][0])
        gens[GENERATION_SETS[part]] = done[part][1]
    rec = records.get(v, {})
    row = {"name": v, **m, "train_seconds": rec.get("train_seconds", 0.0),
           "step_seconds": rec.get("step_seconds"), "peak_memory_gb": rec.get("peak_memory_gb"),
           "eval_seconds": round(build_seconds + sum(secs for _, _, secs in done.values()), 1),
           "samples": [{"prompt": g["prompt"], "response": g["response"], "category": g["category"]}
                       for g in gens["harmful"][: e.samples]]}
    results.append(row)
    lines = [json.dumps({"set": s, **g}, ensure_ascii=False) for s, gs in gens.items() for g in gs]
    write_atomic(gen_path, "\n".join(lines) + "\n")
    write_json(vdir / "result.json", row)
    write_manifest(run_dir, vdir, [vdir / "result.json", gen_path], adapter_files(inputs), key=st.key)
    store.publish(st, files, inputs)
    fa = f", FA {row['finetune_accuracy']:.1f}" if "finetune_accuracy" in row else ""
    trig = f" (triggered {row['triggered_harmful_score']:.1f})" if e.triggered else ""
    reused = f"; {', '.join(found)} reused from the cache" if found else ""
    say(f"    [{i}/{len(plan.variants)}] {v}: HS {row['harmful_score']:.1f}{trig}{fa} "
        f"({row['eval_seconds']:.0f} s{reused})")
    return judge


#: The most threads ``PANACEA_THREADS`` may ask for (more is a typo, not a machine).
MAX_THREADS = 4096


def env_threads() -> int | None:
    """``PANACEA_THREADS`` as a number of threads (None when unset or empty).

    Raises:
        UserError: one line naming the variable, for anything but a whole number in [1, 4096].
    """
    n = os.environ.get("PANACEA_THREADS", "").strip()
    if not n:
        return None
    if not n.isdigit() or not 1 <= int(n) <= MAX_THREADS:
        raise UserError(f"PANACEA_THREADS must be a whole number of threads from 1 to {MAX_THREADS}, got {n[:40]!r}")
    return int(n)


def torch_threads():
    n = env_threads()
    if n:
        torch.set_num_threads(n)
