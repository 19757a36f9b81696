"""Output formats: table (tabulate), json, yaml, csv, markdown. No arithmetic here."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

FORMATS = ("table", "json", "yaml", "csv", "markdown")

#: characters a terminal acts on or that reorder text: C0 controls but tab and newline, DEL,
#: C1 controls (0x9b is a one-byte CSI), and the Unicode bidirectional overrides/isolates
UNSAFE_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f"
                          "\u202a-\u202e\u2066-\u2069]")


#: with :data:`UNSAFE_CHARS`, the characters that break a one-line value (a shell completion
#: entry, one field of a line-oriented protocol): newline and tab
LINE_BREAKING_CHARS = re.compile("[\t\n]")


def printable(text: str, *, one_line: bool = False) -> str:
    """``text`` with every character of :data:`UNSAFE_CHARS` written as a visible escape
    (``\\x1b``, ``\\u202e``): the one sanitiser for strings that may come from a config, a
    preset, the environment or the hub before they reach a terminal (every line the CLI prints
    passes here). ``one_line`` escapes newlines and tabs too (``\\x0a``), for a value that must
    stay one entry (a shell completion)."""
    text = UNSAFE_CHARS.sub(_escape, str(text))
    return LINE_BREAKING_CHARS.sub(_escape, text) if one_line else text


def _escape(m: re.Match) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def to_json(data: Any) -> str:
    """Valid JSON: non-ASCII text kept, every unsafe character escaped as ``\\uXXXX`` (json
    escapes C0 controls itself; C1 controls and bidi overrides are escaped here), so the
    document stays exact and reaches a terminal unescaped nowhere; a number without a finite
    value (the concurrency of a model that caches nothing) is ``null``, never ``Infinity``."""
    text = json.dumps(_finite(data), indent=2, ensure_ascii=False, allow_nan=False)
    return UNSAFE_CHARS.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def _finite(data: Any) -> Any:
    """``data`` with NaN and infinite floats replaced by None (JSON has no such numbers)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def to_yaml(data: Any) -> str:
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True)


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return buf.getvalue()


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | str = (), fmt: str = "table",
          align_numbers: bool = True) -> str:
    """A tabulate table: ``simple`` for the terminal, ``github`` for markdown."""
    from tabulate import tabulate

    style = "github" if fmt == "markdown" else "simple"
    return tabulate(rows, headers=headers, tablefmt=style, disable_numparse=True,
                    colalign=_colalign(rows, headers) if align_numbers else None)


def key_values(pairs: Sequence[tuple[str, Any]], fmt: str = "table") -> str:
    """Two-column 'label  value' block (no header)."""
    from tabulate import tabulate

    if fmt == "markdown":
        return tabulate(pairs, headers=("", ""), tablefmt="github", disable_numparse=True)
    return tabulate(pairs, tablefmt="plain", disable_numparse=True)


def _colalign(rows: Sequence[Sequence[Any]], headers: Sequence[str] | str) -> tuple[str, ...] | None:
    width = len(headers) if not isinstance(headers, str) and headers else (len(rows[0]) if rows else 0)
    if not width:
        return None
    aligns = []
    for i in range(width):
        cells = [str(r[i]) for r in rows if i < len(r) and str(r[i]) not in ("", "-")]
        numeric = bool(cells) and all(_looks_numeric(c) for c in cells)
        aligns.append("right" if numeric else "left")
    return tuple(aligns)


def _looks_numeric(text: str) -> bool:
    head = text.split(" ")[0].replace(",", "").replace(".", "", 1).rstrip("x%")
    return head.lstrip("-").isdigit()


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return "" if value is None else value
