"""panacea: defenses against harmful fine-tuning (Panacea arXiv 2501.18100, Booster arXiv
2409.01586 and their baselines) and the align → fine-tune → repair → evaluate pipeline.

Importing the package is cheap; the heavy modules load on first use.
"""

__version__ = "0.1.0"


def load_config(path, overrides=()):
    from .config import load_config as _load

    return _load(path, overrides)[0]


def run_experiment(cfg, force: bool = False):
    from .pipeline import run_experiment as _run

    return _run(cfg, force=force)
