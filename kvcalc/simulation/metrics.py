"""Accumulators of a simulation: time-weighted memory, step-weighted batch sizes, latency
percentiles in flat memory (log-bucketed histograms), and the closed forms of a run of decode
steps' duration (the memory integrals are the caches' own: :mod:`.paged`, :mod:`.contiguous`)."""

from __future__ import annotations

import math

#: the paper's categories of KV memory (PagedAttention, Kwon et al. SOSP 2023, Fig. 2) + free
CATEGORIES = ("token_states", "reservation", "internal_fragmentation", "external_fragmentation",
              "free")

#: latency histogram: relative bucket width and smallest value resolved (seconds)
LATENCY_BUCKET_RATIO = 1.005
LATENCY_FLOOR_S = 1e-6
_LOG_RATIO = math.log(LATENCY_BUCKET_RATIO)


class LogHistogram:
    """Percentiles of positive numbers within 0.5%, in memory independent of the count."""

    __slots__ = ("counts", "zeros", "n", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.zeros = 0
        self.n = 0
        self.total = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.total += x
        if x <= LATENCY_FLOOR_S:
            self.zeros += 1
            return
        b = int(math.log(x / LATENCY_FLOOR_S) / _LOG_RATIO)
        self.counts[b] = self.counts.get(b, 0) + 1

    def percentile(self, p: float) -> float:
        if not self.n:
            return 0.0
        rank = max(1, math.ceil(p / 100 * self.n))
        if rank <= self.zeros:
            return 0.0
        seen = self.zeros
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return LATENCY_FLOOR_S * LATENCY_BUCKET_RATIO ** (b + 0.5)
        return 0.0  # pragma: no cover

    def summary(self) -> dict:
        return {"p50": round(self.percentile(50), 6), "p90": round(self.percentile(90), 6),
                "p99": round(self.percentile(99), 6),
                "mean": round(self.total / self.n, 6) if self.n else 0.0}


class CountHistogram:
    """Batch sizes weighted by the steps they lasted."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def add(self, size: int, steps: int = 1) -> None:
        self.counts[size] = self.counts.get(size, 0) + steps

    def summary(self) -> dict:
        n = sum(self.counts.values())
        if not n:
            return {"mean": 0.0, "p50": 0, "p99": 0, "max": 0}
        mean = sum(k * v for k, v in self.counts.items()) / n
        out = {"mean": round(mean, 2)}
        for name, p in (("p50", 50), ("p99", 99)):
            rank, seen = max(1, math.ceil(p / 100 * n)), 0
            for k in sorted(self.counts):
                seen += self.counts[k]
                if seen >= rank:
                    out[name] = k
                    break
        out["max"] = max(self.counts)
        return out


# --------------------------------------------------------------------------------------------
# Closed forms over a run of k decode steps, step j lasting c0 + c1 x j


def series_time(k: int, c0: float, c1: float) -> float:
    """sum_{j<k} (c0 + c1 j)."""
    return c0 * k + c1 * k * (k - 1) / 2


def series_jtime(k: int, c0: float, c1: float) -> float:
    """sum_{j<k} j (c0 + c1 j)."""
    return c0 * k * (k - 1) / 2 + c1 * (k - 1) * k * (2 * k - 1) / 6


def steps_until(dt: float, c0: float, c1: float) -> int:
    """The fewest steps k >= 1 whose total duration reaches ``dt``."""
    if dt <= 0:
        return 1
    a, b = c1 / 2, c0 - c1 / 2
    # the positive root of a k^2 + b k = dt, in the form that needs no division by a
    denom = b + math.sqrt(b * b + 4 * a * dt)
    k = max(1, math.ceil(2 * dt / denom)) if denom > 0 else 1
    while k > 1 and series_time(k - 1, c0, c1) >= dt:
        k -= 1
    while series_time(k, c0, c1) < dt:
        k += 1
    return k
