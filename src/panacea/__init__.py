"""panacea: defenses against harmful fine-tuning (Panacea arXiv 2501.18100, Booster arXiv
2409.01586 and their baselines) and the align → fine-tune → repair → evaluate pipeline.

Importing the package is cheap: every name below is looked up on first use (module ``__getattr__``,
PEP 562), so ``import panacea`` loads neither torch nor transformers. docs/api.md documents them:

* ``run_experiment``, ``load_config``, ``load_data``, ``RunResult``: ``panacea run`` / ``validate``
  from Python (``panacea.api``);
* the defenses' ``transformers.Trainer`` subclasses and their options dataclasses, for a training
  script of your own: ``PanaceaTrainer`` / ``PanaceaConfig`` (and ``PanaceaAvg…``), ``LisaTrainer``,
  ``SafetyMixTrainer``, ``BoosterTrainer``, ``VaccineTrainer``, ``RepNoiseTrainer`` with their
  ``…Config``;
* ``Collator``: pads ``input_ids`` and −100 ``labels`` the way the trainers expect.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "run_experiment": "panacea.api",
    "load_config": "panacea.api",
    "load_data": "panacea.api",
    "RunResult": "panacea.api",
    "PanaceaTrainer": "panacea.defenses.finetune.panacea",
    "PanaceaConfig": "panacea.defenses.finetune.panacea",
    "PanaceaAvgTrainer": "panacea.defenses.finetune.panacea",
    "PanaceaAvgConfig": "panacea.defenses.finetune.panacea",
    "LisaTrainer": "panacea.defenses.finetune.lisa",
    "LisaConfig": "panacea.defenses.finetune.lisa",
    "SafetyMixTrainer": "panacea.defenses.finetune.safety_mix",
    "SafetyMixConfig": "panacea.defenses.finetune.safety_mix",
    "BoosterTrainer": "panacea.defenses.alignment.booster",
    "BoosterConfig": "panacea.defenses.alignment.booster",
    "VaccineTrainer": "panacea.defenses.alignment.vaccine",
    "VaccineConfig": "panacea.defenses.alignment.vaccine",
    "RepNoiseTrainer": "panacea.defenses.alignment.repnoise",
    "RepNoiseConfig": "panacea.defenses.alignment.repnoise",
    "Collator": "panacea.data.templates",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'panacea' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
