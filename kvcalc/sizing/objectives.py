"""Service-level objectives: ``ttft_p99=2s``, ``tpot_p99=50ms``, ``e2e_p90=30s``,
``queue_p99=500ms``, ``ttft_mean=300ms``.

A metric is one of the simulation's per-request latency histograms (modelled seconds,
:class:`kvcalc.simulation.metrics.LogHistogram`, percentiles within 0.5%):

- ``ttft``: arrival to first token (the frontend's latency included);
- ``tpot``: time per output token after the first, per request (requests of 2+ tokens);
- ``e2e``: arrival to last token;
- ``queue`` (also ``queueing``): arrival to first scheduled.

A statistic is ``p50``, ``p90``, ``p99`` or ``mean``; the limit is a time with a unit (``s``,
``ms``, ``us``; a bare number is seconds).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import UsageError

#: metric name -> (the Totals histogram, what it is)
METRICS = {
    "ttft": ("ttft", "time to first token"),
    "tpot": ("tpot", "time per output token"),
    "e2e": ("e2e", "end-to-end latency"),
    "queue": ("queue_delay", "queueing delay"),
}
ALIASES = {"queueing": "queue", "queue_delay": "queue", "itl": "tpot"}
STATS = ("p50", "p90", "p99", "mean")
_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
#: the largest objective: an hour
MAX_LIMIT_S = 3600.0

_PATTERN = re.compile(
    r"^\s*([a-z0-9_]+?)_(p50|p90|p99|mean)\s*(<=|=)\s*([0-9.eE+-]+)\s*([a-zµ]*)\s*$")


@dataclass(frozen=True)
class Objective:
    metric: str          # ttft, tpot, e2e, queue
    stat: str            # p50, p90, p99, mean
    limit_s: float

    @property
    def name(self) -> str:
        return f"{self.metric}_{self.stat}"

    @property
    def histogram(self) -> str:
        return METRICS[self.metric][0]

    def value(self, hist) -> float:
        """This objective's statistic of a latency histogram (modelled seconds)."""
        if self.stat == "mean":
            return hist.total / hist.n if hist.n else 0.0
        return hist.percentile(float(self.stat[1:]))

    def text(self) -> str:
        return f"{self.name} <= {seconds_text(self.limit_s)}"

    def record(self) -> dict:
        return {"name": self.name, "metric": self.metric, "stat": self.stat,
                "limit_s": self.limit_s}


def seconds_text(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s" if s < 100 else f"{s:,.0f} s"
    return f"{s * 1e3:.3g} ms"


def parse_objective(text: str) -> Objective:
    """``"ttft_p99=2s"`` -> Objective("ttft", "p99", 2.0); one clear line otherwise."""
    m = _PATTERN.match(str(text).lower())
    usage = (f"invalid --slo {text!r}: write METRIC_STAT=TIME, METRIC one of "
             f"{', '.join(METRICS)}, STAT one of {', '.join(STATS)}, e.g. ttft_p99=2s or "
             f"tpot_p99=50ms")
    if not m:
        raise UsageError(usage)
    metric, stat, _, number, unit = m.groups()
    metric = ALIASES.get(metric, metric)
    if metric not in METRICS or (unit and unit not in _UNITS):
        raise UsageError(usage)
    try:
        value = float(number) * _UNITS[unit or "s"]
    except ValueError:
        raise UsageError(usage) from None
    if not (math.isfinite(value) and 0 < value <= MAX_LIMIT_S):
        raise UsageError(f"invalid --slo {text!r}: the limit must be a positive time of at "
                         f"most {MAX_LIMIT_S:g} s")
    return Objective(metric, stat, value)


def parse_objectives(items) -> tuple[Objective, ...]:
    """Objectives from ``--slo`` values (each may hold several, comma-separated); a metric and
    statistic given twice is an error."""
    out: dict[str, Objective] = {}
    for item in items or ():
        if isinstance(item, Objective):
            parts = [item]
        else:
            parts = [parse_objective(p) for p in str(item).split(",") if p.strip()]
        for o in parts:
            if o.name in out:
                raise UsageError(f"--slo {o.name} given twice")
            out[o.name] = o
    if not out:
        raise UsageError("give at least one objective: --slo ttft_p99=2s --slo tpot_p99=50ms")
    return tuple(out.values())
