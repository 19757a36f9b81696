"""Output formats: table, json, yaml, csv, markdown. No arithmetic here."""

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
    """A text table: ``simple`` for the terminal, ``github`` for markdown (tabulate's formats of
    those names, cell for cell)."""
    return _grid(rows, headers, "github" if fmt == "markdown" else "simple",
                 _colalign(rows, headers) if align_numbers else None)


def key_values(pairs: Sequence[tuple[str, Any]], fmt: str = "table") -> str:
    """Two-column 'label  value' block (no header)."""
    if fmt == "markdown":
        return _grid(pairs, ("", ""), "github", None)
    return _grid(pairs, (), "plain", None)


#: the table styles, as tabulate draws its formats of the same names: the (begin, separator,
#: end) of a row, the rule's fill ('' for none) and where it is drawn, the padding in a cell
_STYLES = {
    "simple": (("", "  ", ""), "-", ("above", "below_header", "below"), 0),
    "github": (("|", "|", "|"), "-", ("above", "below_header"), 1),
    "plain": (("", "  ", ""), "", (), 0),
}


def _grid(rows: Sequence[Sequence[Any]], headers: Sequence[str] | str, style: str,
          colalign: Sequence[str] | None) -> str:
    """``rows`` under ``headers`` in ``style`` (:data:`_STYLES`), column ``i`` aligned
    ``colalign[i]`` ("left" or "right"; left when not given). As tabulate draws it with numbers
    not parsed: None is blank, cells are stripped and measured as printed (:func:`printable`), a column is as wide as its widest cell and at
    least its header plus 2, a multi-line cell spreads over lines, trailing blanks are cut; with
    a header the simple style drops its rules above and below (kept without one)."""
    (begin, sep, end), fill, rules, pad = _STYLES[style]
    body = [["" if v is None else printable(v) for v in row] for row in rows]
    ncols = max((len(r) for r in body), default=0)
    heads = [printable(h) for h in headers] if headers and not isinstance(headers, str) else []
    if heads and body and len(heads) < ncols:
        heads = [""] * (ncols - len(heads)) + heads
    ncols = ncols if body else len(heads)
    heads = heads[:ncols]
    if not heads and not body:
        return ""
    body = [r + [""] * (ncols - len(r)) for r in body]
    aligns = [(colalign[i] if colalign and i < len(colalign) else "left") for i in range(ncols)]
    multiline = any("\n" in c or "\r" in c for c in [*heads, *(c for r in body for c in r)])
    cols = [[r[i].strip() for r in body] for i in range(ncols)]
    widths = [max([_lines_width(c) for c in col] + ([_lines_width(heads[i]) + 2] if heads else []),
                  default=0) for i, col in enumerate(cols)]

    def lines_of(cells: list[str]) -> list[str]:
        split = [c.splitlines() if multiline else [c] for c in cells]
        height = max((len(s) for s in split), default=1)
        out = []
        for k in range(height):
            parts = [_aligned(s[k] if k < len(s) else "", w, a)
                     for s, w, a in zip(split, widths, aligns)]
            out.append((begin + sep.join(" " * pad + p + " " * pad for p in parts) + end).rstrip())
        return out

    rule = (begin + sep.join(fill * (w + 2 * pad) for w in widths) + end).rstrip()
    hidden = ("above", "below") if heads and style == "simple" else ("above",) if heads else ()
    out: list[str] = []
    if fill and "above" in rules and "above" not in hidden:
        out.append(rule)
    if heads:
        out += lines_of(heads)
        if fill and "below_header" in rules:
            out.append(rule)
    for row in zip(*cols):
        out += lines_of(list(row))
    if fill and "below" in rules and "below" not in hidden:
        out.append(rule)
    return "\n".join(out)


def _lines_width(text: str) -> int:
    return max((_text_width(line) for line in re.split("[\r\n]", text)), default=0)


def _text_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: East Asian wide characters 2, combining marks 0."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF"
               else 1 for c in text)


def _aligned(text: str, width: int, align: str) -> str:
    gap = " " * max(0, width - _text_width(text))
    return gap + text if align == "right" else text + gap


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
