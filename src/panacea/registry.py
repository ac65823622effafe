"""Registries of defenses (per stage), attacks, datasets, judges and answer matchers.

Each implementation file registers itself at import time, next to its code, under a unique
lowercase name (docs/contributing.md#habits, habit 2). ``load_builtins()`` imports every built-in module so that
``panacea ls`` and name lookups see them. An unknown name raises a ``ConfigError`` listing the
choices and the closest matches.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ConfigError


@dataclass
class Entry:
    name: str
    obj: Any
    help: str = ""
    meta: dict = field(default_factory=dict)


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
            self._entries[name] = Entry(name, o, doc, dict(meta))
            return o

        return add(obj) if obj is not None else add

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


STAGES = ("alignment", "finetune", "post")
DEFENSES = {stage: Registry(f"{stage} defense") for stage in STAGES}
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
