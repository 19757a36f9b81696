"""``kvcalc plot timeline``: the KV memory of a ``kvcalc simulate --timeline`` CSV over time.

One allocator: the paper's categories stacked (token states, reservation, internal and
external fragmentation, free) as shares of the KV budget. Several: the token-state share of
each (solid) and its allocated share (token states + reservation + internal fragmentation,
dashed). matplotlib is imported by :func:`kvcalc.plot.draw` only.
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


def timeline_chart(path: str | Path, allocator: str | None = None):
    """The chart of ``path``; ``allocator`` keeps one allocator's rows (stacked areas)."""
    from ..plot import Chart

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
    return Chart("timeline", f"KV memory over time: {', '.join(names)}",
                 f"kvcalc simulate --timeline {path.name} (shares of the KV budget; times "
                 "modelled)", TIMELINE_COLUMNS, rows, xlabel="time (s, modelled)",
                 ylabel="share of the KV budget", y_scale="linear")


def draw_timeline(chart, ax) -> None:
    """Stacked categories for one allocator; token-state and allocated lines for several."""
    colors = {"token_states": "#2a7ab9", "reservation": "#f2a541",
              "internal_fragmentation": "#d1495b", "external_fragmentation": "#7a4ea3",
              "free": "#d9d9d9"}
    labels = {"token_states": "token states", "reservation": "reservation",
              "internal_fragmentation": "internal fragmentation",
              "external_fragmentation": "external fragmentation", "free": "free"}
    rows = chart.rows
    names = list(dict.fromkeys(r["allocator"] for r in rows))
    if len(names) == 1:
        t = [r["time_s"] for r in rows]
        ax.stackplot(t, *[[r[c] for r in rows] for c in CATEGORIES],
                     labels=[labels[c] for c in CATEGORIES],
                     colors=[colors[c] for c in CATEGORIES], step="post")
        ax.set_ylim(0, 1)
        ax.legend(loc="upper right")
    else:
        for i, name in enumerate(names):
            mine = [r for r in rows if r["allocator"] == name]
            t = [r["time_s"] for r in mine]
            color = f"C{i}"
            ax.plot(t, [r["token_states"] for r in mine], color=color, drawstyle="steps-post",
                    label=f"{name}: token states")
            ax.plot(t, [r["token_states"] + r["reservation"] + r["internal_fragmentation"]
                        for r in mine], color=color, linestyle="--", drawstyle="steps-post",
                    label=f"{name}: allocated")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="best")
