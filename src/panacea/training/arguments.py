"""``TrainingArguments`` from a stage's ``train`` settings, the per-device batch size of a
multi-process launch, and the named progress bar of a stage.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from transformers import ProgressCallback, TrainingArguments

from ..distributed import launched_processes
from ..errors import ConfigError


def training_arguments(train, output_dir, seed: int, **extra) -> TrainingArguments:
    """``TrainingArguments`` from a ``TrainSettings`` (same field names)."""
    kw = dict(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    kw.update(asdict(train))
    # checkpoints (TrainSettings.save_steps, 0 = none): the Trainer writes them, the pipeline
    # completes, rotates and deletes them (checkpoint.CheckpointState), so a checkpoint is never
    # deleted before its successor is complete
    save_steps = kw.pop("save_steps", 0)
    kw.pop("save_total_limit", None)
    kw.pop("keep_checkpoints", None)
    if save_steps:
        kw.update(save_strategy="steps", save_steps=save_steps, save_total_limit=None)
    if kw.pop("global_batch_size", None) is not None:
        kw["per_device_train_batch_size"] = per_device_batch_size(train, launched_processes())
    kw.update(extra)
    return TrainingArguments(**kw)


def per_device_batch_size(train, processes: int, key: str = "train.global_batch_size") -> int:
    """The per-process batch of a ``TrainSettings`` on ``processes`` processes.

    ``per_device_train_batch_size`` unless ``global_batch_size`` is set; then that divided by
    processes × ``gradient_accumulation_steps``, which must divide it (else a ``ConfigError``
    naming ``key``, the ``global_batch_size`` key as the user typed it, e.g.
    ``finetune.train.global_batch_size``).
    """
    if train.global_batch_size is None:
        return train.per_device_train_batch_size
    ga = train.gradient_accumulation_steps
    if train.global_batch_size % (processes * ga):
        raise ConfigError(
            f"{key}: {train.global_batch_size} is not divisible by {processes} processes × "
            f"gradient_accumulation_steps {ga}; pick a world size that divides it or change the batch"
        )
    return train.global_batch_size // (processes * ga)


class NamedProgress(ProgressCallback):
    """The Trainer's own progress bar (``ProgressCallback``) labelled with its stage, e.g.
    ``finetune/panacea`` (the stage's folder in the run directory)."""

    def __init__(self, desc: str):
        super().__init__()
        self.desc = desc

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.desc)


def name_progress(trainer, desc: str) -> None:
    """Replace ``trainer``'s default progress bar by a ``NamedProgress(desc)`` (none is added when
    the Trainer shows no bar, ``disable_tqdm``)."""
    if any(type(cb) is ProgressCallback for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(NamedProgress(desc))
