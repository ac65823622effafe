"""Registries of defenses (per stage), attacks, datasets, judges and answer matchers.

Each implementation file registers itself at import time, next to its code, under a unique
lowercase name (docs/contributing.md#habits, habit 2). ``load_builtins()`` imports every built-in module so that
``panacea ls`` and name lookups see them. An unknown name raises a ``ConfigError`` listing the
choices and the closest matches.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from .defenses.base import DatasetTrainerEntry, DefenseSpec
from .errors import ConfigError


@dataclass
class Entry:
    name: str
    obj: Any
    help: str = ""
    meta: dict = field(default_factory=dict)
    """Datasets, judges and matchers only (their keys are documented where they register)."""
    spec: DefenseSpec | None = None
    """Defenses only: what the defense declares (``defenses.base.DefenseSpec``)."""


class Registry:
    """A name → object map with did-you-mean errors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: Any = None, *, help: str = "", **meta) -> Callable:
        if name != name.lower() or not name.replace("_", "").isalnum():
            raise ValueError(f"{self.kind} name {name!r} must be lowercase letters, digits and '_'")

        def add(o):
            if name in self._entries and self._entries[name].obj is not o:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = help or ((o.__doc__ or "").strip().splitlines() or [""])[0]
            self._entries[name] = self._entry(name, o, doc, meta)
            return o

        return add(obj) if obj is not None else add

    def _entry(self, name: str, obj: Any, doc: str, meta: dict) -> Entry:
        return Entry(name, obj, doc, dict(meta))

    def get(self, name: str, key: str = "") -> Entry:
        load_builtins()
        if name not in self._entries:
            choices = sorted(self._entries)
            close = difflib.get_close_matches(str(name), choices, n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}{hint}; choices: {', '.join(choices)}"
            )
        return self._entries[name]

    def registered(self, name: str) -> Entry | None:
        """The entry ``name`` if it is registered already, else None; unlike ``get``, no built-in
        plug-in is imported (cheap, for labels)."""
        return self._entries.get(name)

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        load_builtins()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: str) -> bool:
        load_builtins()
        return name in self._entries


class DefenseRegistry(Registry):
    """The defenses of one stage: each registers with ``spec=DefenseSpec(...)`` and nothing else
    (docs/contributing.md#adding-a-defense); the spec is checked against the class here."""

    def __init__(self, stage: str):
        super().__init__(f"{stage} defense")
        self.stage = stage

    def _entry(self, name: str, obj: Any, doc: str, meta: dict) -> Entry:
        spec = meta.pop("spec", None)
        if meta:
            raise ValueError(f"{self.kind} {name!r}: declare {', '.join(sorted(meta))} in its DefenseSpec")
        if not isinstance(spec, DefenseSpec):
            raise ValueError(f"{self.kind} {name!r} must register with spec=DefenseSpec(...)")
        if spec.stage != self.stage:
            raise ValueError(f"{self.kind} {name!r}: its spec says stage {spec.stage!r}")
        if getattr(obj, "Config", None) is not spec.config_cls:
            raise ValueError(f"{self.kind} {name!r}: spec.config_cls is not {obj.__name__}.Config")
        fields = {f.name for f in dataclasses.fields(spec.config_cls)}
        missing = [k for k in spec.option_keys() if k not in fields]
        if missing:
            raise ValueError(f"{self.kind} {name!r}: {spec.config_cls.__name__} has no option {missing[0]!r}")
        return Entry(name, obj, doc, spec=spec)

    def register_trainer(self, name: str, trainer: type, spec: DefenseSpec, *, help: str, option: str | None = None,
                         data_key: str = "harmful_data", data_kwarg: str = "harmful_dataset") -> type:
        """Register a training defense whose trainer takes its options and one defender data set
        (``defenses.base.DatasetTrainerEntry``): ``trainer(..., <option>=cfg, <data_kwarg>=data)``
        with ``data`` loaded from the options' ``data_key``. Returns the entry class it builds."""
        entry = type(f"{trainer.__name__}Entry", (DatasetTrainerEntry,), {
            "__doc__": f"Registry entry of ``{name}``: a ``{trainer.__name__}`` with its ``{data_key}``.",
            "Config": spec.config_cls, "Trainer": trainer, "option": option or name,
            "data_key": data_key, "data_kwarg": data_kwarg})
        self.register(name, entry, help=help, spec=spec)
        return entry

    def baseline(self) -> str:
        """The name of the stage's ``role="baseline"`` defense (``sft``); KeyError when none."""
        names = [e.name for e in self.entries() if e.spec.role == "baseline"]
        if len(names) != 1:
            raise KeyError(f"{self.kind}: {len(names)} baselines registered, expected one")
        return names[0]


STAGES = ("alignment", "finetune", "post")
DEFENSES = {stage: DefenseRegistry(stage) for stage in STAGES}
ATTACKS = Registry("attack")
DATASETS = Registry("dataset")
JUDGES = Registry("judge")
MATCHERS = Registry("matcher")

_BUILTINS = (
    "panacea.defenses.alignment.sft",
    "panacea.defenses.alignment.booster",
    "panacea.defenses.alignment.vaccine",
    "panacea.defenses.alignment.repnoise",
    "panacea.defenses.finetune.sft",
    "panacea.defenses.finetune.panacea",
    "panacea.defenses.finetune.lisa",
    "panacea.defenses.finetune.safety_mix",
    "panacea.defenses.post.none",
    "panacea.defenses.post.random_perturbation",
    "panacea.defenses.post.ascent",
    "panacea.defenses.post.safelora",
    "panacea.defenses.post.antidote",
    "panacea.attacks.poison_mix",
    "panacea.attacks.benign",
    "panacea.attacks.identity_shift",
    "panacea.attacks.backdoor",
    "panacea.attacks.wrapped",
    "panacea.data.embedded",
    "panacea.data.sentiment",
    "panacea.data.files",
    "panacea.data.hub",
    "panacea.data.matchers",
    "panacea.judges.harm",
    "panacea.judges.learned",
    "panacea.judges.llm",
    "panacea.judges.beaver_dam",
    "panacea.judges.gate",
)
_loaded = False


def load_builtins() -> None:
    """Import every built-in plug-in module once (each registers itself)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTINS:
        importlib.import_module(mod)
