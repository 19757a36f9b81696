"""Reading and writing files a user names: the one bounded reader and the one atomic writer.

Every file kvcalc reads (a config, a preset, a GPU file, a GGUF header, a trace, a report given
to ``plot --from``) is opened by :func:`open_regular`: a regular file only -- a FIFO, a socket
or a device (``/dev/zero``, ``/dev/stdin``) is refused before a byte is read, so nothing blocks
on a pipe that never ends -- and read through a byte limit checked while reading
(:func:`read_bounded`, :func:`text_lines`). Compressed input (``.gz``) is decompressed as a
stream with a limit on the decompressed bytes, so a small bomb costs nothing. The limits are
listed in docs/security.md.

Every file kvcalc writes on a user's request (a chart, a report, a timeline CSV) is written by
:func:`atomic_write`: into a temporary file beside the target, renamed over it only when
complete, so a refused, failed or interrupted run leaves no half-written or empty file.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import ConfigError, LimitError

#: the longest line a line-oriented input (a trace, a report) may hold
MAX_LINE_BYTES = 1 << 20
#: read granularity of the streaming readers
_CHUNK = 1 << 16


def open_regular(path: str | os.PathLike, what: str = "file") -> IO[bytes]:
    """``path`` opened for reading in binary, when it is a regular file; a FIFO, socket,
    device or directory is one ConfigError naming it (opened without blocking, then checked on
    the open descriptor, so a file swapped in between cannot slip through)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a pipe (FIFO)"
                    if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                    or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "not a regular file")
            raise ConfigError(f"{what} {path} is {kind}: kvcalc reads regular files only "
                              "(docs/security.md)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike, what: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; more is a LimitError
    (checked while reading: a file that grows does not get past it)."""
    with open_regular(path, what) as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise LimitError(f"{what} {path} is larger than {limit:,} bytes, the most kvcalc reads "
                         "(docs/security.md)")
    return data


def byte_chunks(path: str | os.PathLike, what: str, limit: int) -> Iterator[bytes]:
    """The bytes of ``path`` in chunks, decompressed when the name ends in ``.gz``; more than
    ``limit`` bytes (after decompression) is a LimitError raised when the limit is crossed."""
    gz = str(path).lower().endswith(".gz")
    total = 0
    with open_regular(path, what) as fh:
        inflate = _Gunzip(path, what) if gz else None
        while True:
            try:
                raw = fh.read(_CHUNK)
            except OSError as exc:
                raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
            for piece in ([raw] if inflate is None else inflate.feed(raw)):
                total += len(piece)
                if total > limit:
                    raise LimitError(f"{what} {path} holds more than {limit:,} bytes"
                                     f"{' decompressed' if gz else ''}, the most kvcalc reads "
                                     "(docs/security.md)")
                if piece:
                    yield piece
            if not raw:
                if inflate is not None:
                    inflate.finish()
                return


class _Gunzip:
    """Streaming gzip: each input chunk decompressed at most ``_CHUNK`` bytes at a time (a bomb
    is stopped at the limit, not after filling memory); several members read as gzip does."""

    def __init__(self, path, what: str):
        self.path, self.what = path, what
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.started = False

    def feed(self, raw: bytes) -> Iterator[bytes]:
        try:
            while raw:
                if self.d.eof:                    # the next gzip member
                    self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self.started = True
                yield self.d.decompress(raw, _CHUNK)
                raw = self.d.unconsumed_tail or (self.d.unused_data if self.d.eof else b"")
        except zlib.error as exc:
            raise ConfigError(f"{self.what} {self.path}: not a valid gzip file "
                              f"({exc})") from None

    def finish(self) -> None:
        if not self.started or not self.d.eof:
            raise ConfigError(f"{self.what} {self.path}: not a valid gzip file (it ends early)")


def text_lines(path: str | os.PathLike, what: str, limit: int,
               line_limit: int = MAX_LINE_BYTES) -> Iterator[str]:
    """The UTF-8 lines of ``path`` (``.gz`` decompressed), without line ends, streamed: at
    most ``limit`` bytes in all and ``line_limit`` per line (a LimitError naming the line);
    a UTF-8 byte-order mark at the start is dropped; text that is not UTF-8 is a ConfigError
    naming the line."""
    pending = b""
    number = 0
    first = True
    for chunk in byte_chunks(path, what, limit):
        pending += chunk
        *whole, pending = pending.split(b"\n")
        for raw in whole:
            number += 1
            yield _decode_line(raw, number, first, path, what, line_limit)
            first = False
        if len(pending) > line_limit:
            raise LimitError(f"{what} {path}:{number + 1}: a line longer than "
                             f"{line_limit:,} bytes (docs/security.md)")
    if pending:
        yield _decode_line(pending, number + 1, first, path, what, line_limit)


def _decode_line(raw: bytes, number: int, first: bool, path, what: str,
                 line_limit: int) -> str:
    if len(raw) > line_limit:
        raise LimitError(f"{what} {path}:{number}: a line longer than {line_limit:,} bytes "
                         "(docs/security.md)")
    if first and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}:{number} is not UTF-8 text: save it as "
                          "UTF-8") from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A file object whose content becomes ``path`` only when the block completes: written to
    a temporary file beside ``path`` (same folder, so the rename is atomic), flushed and renamed
    over it; on any error or interrupt the temporary file is removed and ``path`` is left as it
    was. ``mode`` is "w" (text, UTF-8) or "wb"."""
    import tempfile

    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": ""} if "b" not in mode
                                    else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------------------------
# text and JSON (configs, presets, hub downloads, reports)

#: the largest config.json, preset or GPU file kvcalc reads (real configs are a few kB; the
#: largest multimodal ones under 100 kB)
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def decode_text(data: bytes, what: str) -> str:
    """UTF-8 bytes -> text, accepting a UTF-8 byte-order mark (as spreadsheets write)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} is not UTF-8 text (byte {exc.start:,}): save it as "
                          "UTF-8") from None


def parse_json(text: str | bytes, what: str) -> Any:
    """JSON text -> value; syntax errors, too deep nesting and 4,300+ digit numbers become one
    ConfigError naming ``what``."""
    if isinstance(text, bytes):
        text = decode_text(text, what)
    elif text.startswith("\ufeff"):
        text = text[1:]
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"malformed JSON in {what}:{exc.lineno}: {exc.msg}") from None
    except (RecursionError, ValueError) as exc:
        raise ConfigError(f"{what} cannot be read: {_parse_problem(exc)}") from None


def _parse_problem(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return (str(exc).splitlines() or ["invalid value"])[0]
