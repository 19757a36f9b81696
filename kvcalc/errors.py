"""Errors a user can cause. Each ends the command with one clear line and a non-zero exit."""

from __future__ import annotations


class KvcalcError(Exception):
    """Base class: the message is the one line the user sees (no traceback)."""

    exit_code = 1


class UsageError(KvcalcError):
    """An invalid option value (bad number, unknown dtype...)."""

    exit_code = 2


class ModelNotFoundError(KvcalcError):
    """--model named nothing kvcalc can resolve."""


class ConfigError(KvcalcError):
    """A config file is malformed or lacks a field kvcalc needs."""


class MissingFieldError(ConfigError):
    def __init__(self, field: str, model: str | None = None, hint: str | None = None):
        where = f" in the config of {model}" if model else ""
        msg = f"required field '{field}' is missing{where}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)
        self.field = field


class HubError(KvcalcError):
    """The Hugging Face hub could not give us a file (offline, gated, timeout, server error)."""
