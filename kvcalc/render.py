"""Output formats: table (tabulate), json, yaml, csv, markdown. No arithmetic here."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

FORMATS = ("table", "json", "yaml", "csv", "markdown")


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


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
