"""Checking ``eval.judge_options`` for the model-backed judges (``llm``, ``beaver_dam``, ``gate``).

Unknown keys and wrong types raise a :class:`~panacea.errors.ConfigError` naming
``eval.judge_options.<key>`` (``judge_options`` is also what ``--judge-option k=v`` fills in on the
command line). ``DTYPES`` and :func:`device` are the loading choices the two model judges share.

Each model judge registers its option parser as ``check`` in the registry entry's ``meta``: the CLI
runs it before training (``panacea run`` / ``validate``), so a bad option, a missing calibration
file or a missing local model folder fails in a second instead of after the fine-tuning.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, DataError
from ..registry import JUDGES

KEY = "eval.judge_options"
DTYPES = ("float32", "bfloat16", "float16")


def check_options(options: dict | None, allowed: dict[str, type | tuple[type, ...]]) -> dict:
    """Return a copy of ``options`` after checking every key against ``allowed`` (key → types).

    ``bool`` is accepted only where ``bool`` is listed (YAML ``true`` is not an integer here); an
    ``int``, or a string that parses as a number, is accepted where ``float`` is.
    """
    options = dict(options or {})
    for key, value in options.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(f"{KEY}.{key}: unknown option (known: {known})")
        types = allowed[key] if isinstance(allowed[key], tuple) else (allowed[key],)
        if float in types:
            types = (*types, int)
            if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
                try:
                    value = options[key] = float(value)
                except ValueError:
                    pass
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ConfigError(f"{KEY}.{key}: wrong type {type(value).__name__} ({value!r})")
    return options


def positive(options: dict, key: str) -> None:
    if key in options and not options[key] > 0:
        raise ConfigError(f"{KEY}.{key} must be > 0, got {options[key]}")


def unit_interval(options: dict, key: str) -> None:
    if key in options and not 0.0 <= options[key] <= 1.0:
        raise ConfigError(f"{KEY}.{key} must be in [0, 1], got {options[key]}")


def choice(options: dict, key: str, choices: tuple[str, ...]) -> None:
    if key in options and options[key] not in choices:
        raise ConfigError(f"{KEY}.{key} must be one of {', '.join(choices)}, got {options[key]!r}")


def device(name: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else is passed to torch."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def local_model(options: dict, what: str, key: str = "model") -> None:
    """Fail early (before any training) when ``model`` names a local folder that does not exist.

    Hub ids (``owner/name``) and ``embedded`` are left to the loader."""
    name = options.get(key)
    if not isinstance(name, str) or name == "embedded":
        return
    looks_local = name.startswith(("/", "./", "../", "~")) or "\\" in name or name.count("/") > 1
    if looks_local and not Path(name).expanduser().is_dir():
        raise DataError(f"{KEY}.{key}: cannot load the {what} {name!r} (no such folder)")


def check_judge(cfg) -> None:
    """Validate ``cfg.eval.judge_options`` (and calibration files, local model folders) before any
    training, for a judge that registers a ``check``; ``panacea run``, ``validate`` and the Python
    API call it."""
    check = JUDGES.get(cfg.eval.judge, "eval.judge").meta.get("check")
    if check is not None:
        check(cfg.eval.judge_options)
