"""Plumbing shared by every training stage, one concern a module (no method logic lives here,
docs/contributing.md#habits, habit 1):

* ``arguments``: ``TrainingArguments`` from a config, the per-device batch size, stage progress bars;
* ``memory``: peak memory and step time of a stage (``Overhead``, ``peak_memory``);
* ``loaders``: the defender's cycled data and the ``AuxiliaryMixin`` of the multi-pass trainers;
* ``gradients``: gradients on one or several processes (``process_gradients``, ``token_share``,
  ``process_mean``), the micro-batch loss scale and ``.grad`` accumulation;
* ``checks``: a non-finite loss or norm stops the step before it writes anything.

Saving an adapter lives with the models (``models.save_adapter``). The names below are what the
trainers and the pipeline import from ``panacea.training``.
"""

from .arguments import NamedProgress, name_progress, per_device_batch_size, training_arguments
from .checks import check_finite
from .gradients import (accumulate_grads, full_tensors, micro_batch_scale, process_gradients, process_mean,
                        require_gradient_access, token_share)
from .loaders import AuxiliaryMixin, CyclingLoader, add_auxiliary_logs
from .memory import Overhead, peak_memory, release_freed_memory, reset_peak_memory

__all__ = ["AuxiliaryMixin", "CyclingLoader", "NamedProgress", "Overhead", "accumulate_grads", "add_auxiliary_logs",
           "check_finite", "full_tensors", "micro_batch_scale", "name_progress", "peak_memory", "per_device_batch_size",
           "process_gradients", "process_mean", "release_freed_memory", "require_gradient_access", "reset_peak_memory",
           "token_share", "training_arguments"]
