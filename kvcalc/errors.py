"""Errors a user can cause. Each ends the command with one clear line and a non-zero exit.

Exit statuses (docs/cli.md): 0 success; 1 an error of the input or the environment (unknown
model, bad config, hub, file system); 2 an invalid option value; 3 ``plan``: one request does
not fit; 4 ``verify``: the verdict is not a pass; 130 interrupted (Ctrl-C); 141 the output was
closed (``kvcalc ... | head``).
"""

from __future__ import annotations

import errno

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE, what a shell reports for a tool whose reader went away
EXIT_BROKEN_PIPE = 141


class KvcalcError(Exception):
    """Base class: the message is the one line the user sees (no traceback)."""

    exit_code = EXIT_ERROR


class UsageError(KvcalcError):
    """An invalid option value (bad number, unknown dtype...)."""

    exit_code = EXIT_USAGE


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


class LimitError(KvcalcError):
    """An input beyond one of kvcalc's stated limits (docs/security.md)."""


def as_user_error(exc: BaseException) -> KvcalcError | None:
    """The one-line error for an exception the user's input or environment caused outside
    kvcalc's own checks (a full disk, an unwritable path, input nested too deeply), or None
    for anything else (a bug: the CLI reports it as an internal error).

    This is the one place such exceptions become lines; the CLI calls it for every command."""
    if isinstance(exc, KvcalcError):
        return exc
    if isinstance(exc, OSError):
        where = " ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        what = exc.strerror or type(exc).__name__
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return KvcalcError(f"no space left on the device writing {where or 'output'}: "
                               "free some space or write elsewhere")
        return KvcalcError(f"cannot use {where}: {what}" if where else f"{what} ({exc})")
    if isinstance(exc, RecursionError):
        return ConfigError("the input is nested too deeply to read (limit: "
                           "docs/security.md)")
    if isinstance(exc, MemoryError):
        return LimitError("out of memory: the input is too large to process")
    return None


def suggest(name: str, choices: list[str]) -> str:
    """``"; did you mean a, b?"`` naming up to three of ``choices`` close to ``name``, or ``""``
    (the tail of every "unknown X" message)."""
    import difflib

    close = difflib.get_close_matches(name.lower(), choices, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""
