"""Parsing and formatting of sizes: token counts (4k, 128K, 1M) and byte amounts (48GiB, 80GB).

Conventions (documented in docs/cli.md):
- token counts: ``k``/``K`` = 1024 and ``m``/``M`` = 1024**2, as context lengths are named
  (``128k`` = 131,072 tokens); a plain integer is taken as it is.
- byte amounts: binary suffixes (KiB, MiB, GiB, TiB) are powers of 1024, decimal suffixes
  (KB, MB, GB, TB) powers of 1000; a bare number is bytes.
- every figure kvcalc computes stays an ``int`` of bytes until it is formatted for humans.
"""

from __future__ import annotations

import re

from .errors import UsageError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_TOKEN_SUFFIX = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_BYTE_SUFFIX = {
    "": 1, "b": 1,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
    "ki": KiB, "mi": MiB, "gi": GiB, "ti": TiB,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
}
_NUM = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_tokens(text: str | int, what: str = "token count") -> int:
    """'4k' -> 4096, '128K' -> 131072, '1M' -> 1048576, '4096' -> 4096. Must be >= 1."""
    if isinstance(text, int):
        value = text
    else:
        m = _NUM.match(str(text))
        if not m or m.group(2).lower() not in _TOKEN_SUFFIX:
            raise UsageError(f"invalid {what} '{text}': use an integer or a size like 4k, 128K, 1M")
        number, suffix = m.group(1).replace("_", ""), m.group(2).lower()
        scaled = float(number) * _TOKEN_SUFFIX[suffix]
        if scaled != int(scaled):
            raise UsageError(f"invalid {what} '{text}': not a whole number of tokens")
        value = int(scaled)
    if value < 1:
        raise UsageError(f"invalid {what} '{text}': must be at least 1")
    return value


def parse_token_list(text: str, what: str = "token count") -> list[int]:
    """'1k,4k,32k' -> [1024, 4096, 32768] (order kept, duplicates dropped)."""
    items = [t for t in str(text).split(",") if t.strip()]
    if not items:
        raise UsageError(f"invalid {what} list '{text}'")
    out: list[int] = []
    for item in items:
        v = parse_tokens(item.strip(), what)
        if v not in out:
            out.append(v)
    return out


def parse_bytes(text: str | int, what: str = "size") -> int:
    """'48GiB' -> 51539607552, '80GB' -> 80000000000, '3.81GiB' -> int(3.81 * 2**30)."""
    if isinstance(text, int):
        value = text
    else:
        m = _NUM.match(str(text))
        if not m or m.group(2).lower() not in _BYTE_SUFFIX:
            raise UsageError(
                f"invalid {what} '{text}': use bytes or a size like 48GiB, 80GB, 512MiB"
            )
        value = int(float(m.group(1).replace("_", "")) * _BYTE_SUFFIX[m.group(2).lower()])
    if value < 0:
        raise UsageError(f"invalid {what} '{text}': must not be negative")
    return value


def format_bytes(n: int | float, precision: int = 2) -> str:
    """Binary units, labelled as such: 524288 -> '512.00 KiB', 2**31 -> '2.00 GiB'."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{sign}{n / size:.{precision}f} {unit}"
    return f"{sign}{int(n)} B"


def format_tokens(n: int) -> str:
    return f"{n:,}"


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative integers."""
    return -(-a // b)


def largest_satisfying(predicate, limit: int) -> int:
    """Largest n in [0, limit] with ``predicate(n)`` true, for a predicate that is true up to
    some point and false after it (binary search); 0 when only n = 0 qualifies."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if predicate(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
