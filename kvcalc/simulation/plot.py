"""``kvcalc plot timeline``: the KV memory of a ``kvcalc simulate --timeline`` CSV over time.

One allocator: the paper's categories stacked (token states, reservation, internal and
external fragmentation, free) as shares of the KV budget. Several: the token-state share of
each (solid) and its allocated share (token states + reservation + internal fragmentation,
dashed). This module reads the CSV; the chart is :func:`kvcalc.plot.timeline_chart`
(matplotlib is imported by :func:`kvcalc.plot.draw` only).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ..errors import ConfigError, UsageError
from .metrics import CATEGORIES

TIMELINE_COLUMNS = ("allocator", "time_s", "running", "waiting", "preemptions", *CATEGORIES)
#: the most rows a timeline chart reads (a 1-hour trace at 1 s is 3,600 per allocator)
MAX_TIMELINE_ROWS = 1_000_000
#: the most bytes a timeline CSV may hold (1,000,000 rows of ~150 bytes)
MAX_TIMELINE_BYTES = 256 * 1024 * 1024


def read_timeline(path: str | Path, allocator: str | None = None) -> tuple[list[dict], list[str]]:
    """The rows of a ``kvcalc simulate --timeline`` CSV (numbers checked) and the allocators
    they hold, in order; ``allocator`` keeps that allocator's rows. The chart is drawn by
    :func:`kvcalc.plot.timeline_chart` (this package never imports matplotlib or
    :mod:`kvcalc.plot`)."""
    import os

    from ..files import text_lines

    path = Path(path)
    if not os.path.lexists(path):
        raise UsageError(f"--from {path}: no such file")
    reader = csv.DictReader(text_lines(path, "timeline", MAX_TIMELINE_BYTES))
    if tuple(reader.fieldnames or ()) != TIMELINE_COLUMNS:
        raise ConfigError(f"{path}: not a kvcalc simulate --timeline CSV (expected the columns "
                          f"{','.join(TIMELINE_COLUMNS)})")
    rows = []
    for line, row in enumerate(reader, start=2):
        if len(rows) >= MAX_TIMELINE_ROWS:
            raise ConfigError(f"{path}: more than {MAX_TIMELINE_ROWS:,} rows")
        try:
            out = {"allocator": row["allocator"], "time_s": float(row["time_s"]),
                   "running": int(row["running"]), "waiting": int(row["waiting"]),
                   "preemptions": int(row["preemptions"])}
            out.update({c: float(row[c]) for c in CATEGORIES})
        except (TypeError, ValueError):
            raise ConfigError(f"{path}:{line}: not a number where one is expected") from None
        if not all(math.isfinite(out[c]) and out[c] >= 0 for c in ("time_s", *CATEGORIES)):
            raise ConfigError(f"{path}:{line}: times and shares must be finite and not "
                              "negative")
        rows.append(out)
    names = list(dict.fromkeys(r["allocator"] for r in rows))
    if allocator is not None:
        if allocator not in names:
            raise UsageError(f"--allocator {allocator}: {path.name} holds "
                             f"{', '.join(names) or 'no rows'}")
        rows = [r for r in rows if r["allocator"] == allocator]
        names = [allocator]
    return rows, names
