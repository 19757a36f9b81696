"""Parsing and formatting of sizes: token counts (4k, 128K, 1M) and byte amounts (48GiB, 80GB).

Conventions (documented in docs/cli.md):
- token counts: ``k``/``K`` = 1024 and ``m``/``M`` = 1024**2, as context lengths are named
  (``128k`` = 131,072 tokens); a plain integer is taken as it is.
- byte amounts: binary suffixes (KiB, MiB, GiB, TiB) are powers of 1024, decimal suffixes
  (KB, MB, GB, TB) powers of 1000; a bare number is bytes.
- numbers are read exactly (decimal arithmetic, never a float): ``9007199254740993`` stays
  itself, ``1.5k`` is 1,536, ``1e3`` is 1,000; a token count must come out whole;
- limits (docs/security.md): token counts at most :data:`MAX_TOKENS` (2**40), byte amounts at
  most :data:`MAX_BYTES` (2**60); NaN, Infinity and negative numbers are refused;
- every figure kvcalc computes stays an ``int`` of bytes until it is formatted for humans.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

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
_NUM = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,4})?)\s*([a-zA-Z]*)\s*$")
#: the largest token count kvcalc accepts (about 1.1 trillion tokens)
MAX_TOKENS = 1 << 40
#: the largest byte amount kvcalc accepts (1 EiB)
MAX_BYTES = 1 << 60


def _exact(text: str, suffixes: dict[str, int]) -> Decimal | None:
    """``'1.5k'`` -> Decimal(1536) exactly, or None when ``text`` is not such a number."""
    m = _NUM.match(str(text))
    if not m or m.group(2).lower() not in suffixes:
        return None
    number = m.group(1).replace("_", "")
    try:
        return Decimal(number) * suffixes[m.group(2).lower()]
    except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
        return None


def parse_tokens(text: str | int, what: str = "token count") -> int:
    """'4k' -> 4096, '128K' -> 131072, '1M' -> 1048576, '4096' -> 4096. Must be >= 1."""
    if isinstance(text, bool):
        raise UsageError(f"invalid {what} {text!r}: use an integer")
    if isinstance(text, int):
        value = text
    else:
        scaled = _exact(text, _TOKEN_SUFFIX)
        if scaled is None:
            raise UsageError(f"invalid {what} '{text}': use an integer or a size like 4k, 128K, 1M")
        if scaled != scaled.to_integral_value():
            raise UsageError(f"invalid {what} '{text}': not a whole number of tokens")
        if scaled > MAX_TOKENS:
            raise UsageError(f"invalid {what} '{text}': at most {MAX_TOKENS:,} tokens (2**40)")
        value = int(scaled)
    if value < 1:
        raise UsageError(f"invalid {what} '{text}': must be at least 1")
    if value > MAX_TOKENS:
        raise UsageError(f"invalid {what} '{text}': at most {MAX_TOKENS:,} tokens (2**40)")
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
    if isinstance(text, bool):
        raise UsageError(f"invalid {what} {text!r}: use bytes or a size like 48GiB")
    if isinstance(text, int):
        value = text
    else:
        scaled = _exact(text, _BYTE_SUFFIX)
        if scaled is None:
            raise UsageError(
                f"invalid {what} '{text}': use bytes or a size like 48GiB, 80GB, 512MiB"
            )
        if scaled > MAX_BYTES:
            raise UsageError(f"invalid {what} '{text}': at most {MAX_BYTES:,} bytes (1 EiB)")
        value = int(scaled)  # a fraction of a byte rounds down
    if value < 0:
        raise UsageError(f"invalid {what} '{text}': must not be negative")
    if value > MAX_BYTES:
        raise UsageError(f"invalid {what} '{text}': at most {MAX_BYTES:,} bytes (1 EiB)")
    return value


def format_gib(n: int | float) -> str:
    """Bytes in GiB (2^30) whatever the size, thousands separated: 2**31 -> '2.00 GiB'."""
    return f"{n / GiB:,.2f} GiB"


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
