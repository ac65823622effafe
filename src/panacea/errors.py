"""User-facing errors.

Every mistake a user can make in a config, an override, a data file or a method name raises
:class:`UserError`. The CLI prints its message as one line and exits with code 2; nothing that
looks like a finished result is written (see ``pipeline.run_experiment``).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError):
    """A config key or value is wrong. The message names the dotted key."""


class DataError(UserError):
    """A data file or data package is missing, unreadable, malformed or too small."""
