"""Defense interfaces (protocols only; no shared logic: docs/contributing.md#habits, habit 1).

A training defense (alignment or fine-tuning stage) is a class registered with
``DEFENSES[stage].register(name, Cls)`` that has a ``Config`` dataclass and builds a
``transformers.Trainer``; a post-fine-tuning defense has a ``Config`` and an ``apply`` that edits
the fine-tuned model's trainable (LoRA) weights in place.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol


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
