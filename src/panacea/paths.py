"""Paths from a config, the command line or the environment, and bounded reads of the files they name.

``expand_path`` turns a path as the user wrote it (``~/runs/x``, ``$SCRATCH/data.jsonl``,
``a/missing/../b``) into one absolute path: ``~`` and environment variables expanded, symbolic
links and ``..`` resolved the way the operating system will resolve them once the missing folders
exist. Every component that touches the path (the run directory check, the Trainer, the data
loaders) is given this one path, so no component can write somewhere the check did not look.
An environment variable that is not set is an error, not a literal ``$NAME`` folder.

``read_regular`` reads a file only if it is a regular file (never a FIFO, a device or a socket:
opening those can block forever or never end) and only up to a size cap, so a wrong ``path:``
fails with one line instead of hanging or exhausting memory.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .errors import ConfigError, DataError, UserError

#: Default cap on a data file (``data.max_bytes`` raises it per data section).
MAX_DATA_BYTES = 1 << 30

_UNSET = re.compile(r"\$(\w+|\{[^}]*\})")


def shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def expand_path(value: str | os.PathLike, key: str) -> Path:
    """``value`` with ``~`` and ``$VARIABLES`` expanded, made absolute and resolved (``..`` and links).

    Raises:
        ConfigError: naming ``key``: a variable is not set, ``~user`` is unknown, the path holds
            a NUL character or cannot be resolved (a symbolic-link loop).
    """
    text = str(value)
    if "\x00" in text:
        raise ConfigError(f"{key}: the path holds a NUL character")
    expanded = os.path.expandvars(text)
    left = _UNSET.search(expanded)
    if left:
        raise ConfigError(f"{key}: environment variable {left.group(0)} in {shorten(text)!r} is not set")
    expanded = os.path.expanduser(expanded)
    if expanded.startswith("~"):
        raise ConfigError(f"{key}: cannot expand {shorten(text)!r} (unknown user)")
    try:
        return Path(expanded).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a symbolic-link loop, a name too long
        raise ConfigError(f"{key}: cannot resolve the path {shorten(text)!r} ({type(e).__name__})") from None


def read_regular(path: Path, max_bytes: int, what: str, error=DataError) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    The file is opened without blocking and checked on the open descriptor, so a FIFO swapped in
    after a check is still refused. ``what`` names the file in errors (``data file``, ``config
    file``); ``error`` is the exception class raised (one line, exit 2).
    """
    shown = shorten(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error(f"{shown}: file not found ({what})") from None
    except OSError as e:
        raise error(f"cannot read {what} {shown}: {e.strerror or type(e).__name__}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                    else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise error(f"cannot read {what} {shown}: it is {kind}, not a regular file")
        if st.st_size > max_bytes:
            raise error(f"cannot read {what} {shown}: {st.st_size} bytes, more than the limit of {max_bytes}"
                        f"{' (raise it with data.max_bytes)' if what == 'data file' else ''}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        chunks, total = [], 0
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            total += len(block)
            if total > max_bytes:  # the file grew while it was read
                raise error(f"cannot read {what} {shown}: more than the limit of {max_bytes} bytes")
            chunks.append(block)
        return b"".join(chunks)
    except OSError as e:
        raise error(f"cannot read {what} {shown}: {e.strerror or type(e).__name__}") from None
    finally:
        os.close(fd)


def cache_dir() -> Path:
    """panacea's own cache folder: ``$PANACEA_CACHE``, else ``$XDG_CACHE_HOME/panacea`` or
    ``~/.cache/panacea``, expanded and resolved (``expand_path``); an unusable value is a one-line
    ``UserError`` naming the variable. It holds the embedded model's safetensors copy (models.py)
    and matplotlib's font cache (plots.pyplot)."""

    for var, sub in (("PANACEA_CACHE", ""), ("XDG_CACHE_HOME", "panacea")):
        root = os.environ.get(var, "")
        if root:
            try:
                path = expand_path(root, var) / sub if sub else expand_path(root, var)
            except ConfigError as e:
                raise UserError(str(e)) from None
            if path.exists() and not path.is_dir():
                raise UserError(f"{var}: {str(path)!r} is not a folder")
            return path
    return Path.home().resolve() / ".cache" / "panacea"
