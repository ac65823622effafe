"""Defense interfaces (protocols only; no shared logic: docs/contributing.md#habits, habit 1).

A training defense (alignment or fine-tuning stage) is a class registered with
``DEFENSES[stage].register(name, Cls)`` that has a ``Config`` dataclass and builds a
``transformers.Trainer``; a post-fine-tuning defense has a ``Config`` and an ``apply`` that edits
the fine-tuned model's trainable (LoRA) weights in place. Each registers with a ``DefenseSpec``
(below) saying what the pipeline and the bench need to know about it; the optional hooks are the
protocols at the end of this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable


class StageContext(Protocol):
    """What the pipeline hands a defense: data access and shared settings."""

    tokenizer: Any
    collator: Any
    seed: int
    source: Any
    """Post-fine-tuning stage only: ``pipeline.Source`` (the run being repaired, its adapter chain,
    the aligned model it started from and the adapter mode); ``None`` in training stages."""

    def dataset(self, spec, key: str):
        """Load, select and tokenise the pool ``spec``; ``key`` names it in errors."""

    def examples(self, spec, key: str) -> list:
        """Load and select the pool ``spec`` as ``Example`` records."""


class TrainingDefense(Protocol):
    Config: ClassVar[type]

    @staticmethod
    def make_trainer(model, args, train_dataset, ctx: StageContext, cfg):
        """Return a ``transformers.Trainer`` (or subclass) ready for ``.train()``."""


class PostDefense(Protocol):
    Config: ClassVar[type]

    @staticmethod
    def apply(model, ctx: StageContext, cfg) -> dict:
        """Edit the model's trainable weights in place; return numbers for the stage record."""


class DatasetTrainerEntry:
    """A ``TrainingDefense`` whose trainer takes its options and one defender data set:
    ``make_trainer`` loads ``cfg.<data_key>`` (errors named by that key) and builds
    ``Trainer(model=, args=, train_dataset=, data_collator=, <option>=cfg, <data_kwarg>=data)``.
    A subclass names its ``Config``, ``Trainer`` and ``option`` (and the data keys when they are
    not the defender's harmful set)."""

    Config: ClassVar[type]
    Trainer: ClassVar[type]
    option: ClassVar[str]
    data_key: ClassVar[str] = "harmful_data"
    data_kwarg: ClassVar[str] = "harmful_dataset"

    @classmethod
    def make_trainer(cls, model, args, train_dataset, ctx: StageContext, cfg):
        data = ctx.dataset(getattr(cfg, cls.data_key), cls.data_key)
        return cls.Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=ctx.collator,
                           **{cls.option: cfg, cls.data_kwarg: data})


# --------------------------------------------------------------------------- the registration contract

ROLES = ("defense", "baseline", "control")


@dataclass(frozen=True)
class Counterpart:
    """A post defense that computes the same kind of weight change without training; the bench
    compares the two at equal ``strength_option`` values and states it in one sentence."""

    name: str
    """The counterpart's registered (post-stage) name."""
    sentence: str
    """How the finding opens, e.g. ``"X vs one-shot Y (what Y computes)"``; " at the same ρ: …" follows."""


@dataclass(frozen=True)
class DefenseSpec:
    """What a defense declares when it registers (``DEFENSES[stage].register(name, Cls, spec=…)``).

    The pipeline, ``panacea bench`` and the scaling sweep read these fields instead of knowing
    methods by name (docs/contributing.md#adding-a-defense). Option names refer to fields of
    ``config_cls``; the registry checks them when the defense registers.
    """

    stage: str
    """``alignment``, ``finetune`` or ``post``: the registry the defense is in."""
    config_cls: type
    """The options dataclass (the registered class's ``Config``)."""
    passes_per_step: float = 2
    """Forward+backward passes per training step relative to SFT (docs/algorithms.md#passes-per-step);
    the bench's time estimate and the plausible-ratio check read it. 2 when a defense does not say."""
    defender_data_keys: tuple[str, ...] = ()
    """Options holding the defender's own harmful data (e.g. ``harmful_data``): checked disjoint
    from the user's harmful data and the evaluation prompts."""
    safety_data_keys: tuple[str, ...] = ()
    """Options holding refusal / safety data (Lisa's ``alignment_data``, safety mixing's
    ``safety_data``): checked disjoint the same way, but not harmful answers."""
    needs_merge_new: bool = False
    """Post stage: repairs only a run fine-tuned with ``adapter_mode: merge_new`` (SafeLoRA); the
    bench then gives it a ``merge_new`` source."""
    beyond_paper: bool = False
    """Not a published method: tables mark it *beyond the paper*."""
    role: str = "defense"
    """``defense`` (compared by the bench); ``baseline`` (the stage's undefended training, ``sft``:
    the reference of overhead ratios and the attack run on every aligned variant); ``control``
    (the stage's no-op, ``none``)."""
    overhead_target: bool = False
    """Judged against the bench's step-time and memory targets (``bench.TARGETS``), profiled when
    it misses them, and in the default scaling sweep."""
    strength_option: str | None = None
    """The option the bench reports a sweep of as a strength sweep (where over-refusal passes
    20 %, where task accuracy halves), e.g. ``rho``."""
    step_interval_option: str | None = None
    """Option k such that the extra passes run on every k-th step only (Panacea's
    ``perturb_every``): the time estimate divides the extra passes by k and an ablation of it is
    reported as time saved."""
    counterpart: Counterpart | None = None
    """A one-shot post defense the bench compares this one with at the same strength."""
    safety_coefficients: bool = False
    """Saves an ε whose per-layer analysis (``analysis/coefficients.py``) the bench reports."""
    profile_label: str | None = None
    """Prefix of the trainer's ``record_function("<label>/<pass>")`` labels; default: the name."""

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not self.passes_per_step > 0:
            raise ValueError(f"passes_per_step must be > 0, got {self.passes_per_step!r}")

    def option_keys(self) -> tuple[str, ...]:
        """Every option name the spec refers to (each must be a field of ``config_cls``)."""
        named = (self.strength_option, self.step_interval_option)
        return self.defender_data_keys + self.safety_data_keys + tuple(k for k in named if k)


# --------------------------------------------------------------------------- optional hooks


@runtime_checkable
class ChecksSource(Protocol):
    """Post stage, on the registered class: refuse a source run it cannot repair, at planning time."""

    @staticmethod
    def check_source(cfg, source) -> None:
        """Raise ``ConfigError`` when ``source`` (``pipeline.Source``, planned) does not fit."""


@runtime_checkable
class RecordsStage(Protocol):
    """Training stage, on the trainer: numbers the pipeline copies into the stage's record.json."""

    def stage_record(self) -> dict: ...


@runtime_checkable
class Resumable(Protocol):
    """Training stage, on the trainer: state beyond weights and optimizer that a checkpoint keeps
    (``checkpoint.CheckpointState``): nested dicts and lists of tensors, numbers, strings, None."""

    def extra_state(self) -> dict | None: ...

    def load_extra_state(self, state: dict) -> None: ...
