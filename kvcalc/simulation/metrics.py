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


# --------------------------------------------------------------------------------------------
# The step loop the SGLang and TensorRT-LLM schedulers share (:mod:`.sglang`, :mod:`.trtllm`)


def record_finished(tot, finished, t: float, timing) -> None:
    """Requests that finished at ``t``: counted, and the measured ones' end-to-end latency
    (the frontend's time included) and time per output token after the first."""
    tot.completed += len(finished)
    for r in finished:
        if r.measured:
            tot.e2e.add(t - r.arrival + timing.frontend(r.prompt))
            if r.output > 1:
                tot.tpot.add((t - r.first) / (r.output - 1))
            tot.measured_output_tokens += r.output
            tot.measured_end = t


class StepLoop:
    """Arrivals, steps and their bookkeeping for an engine whose scheduler takes every step in
    detail (the SGLang and TensorRT-LLM loops; vLLM's event-driven loop is
    :mod:`.scheduler`). A subclass implements :meth:`rejects` (a request that can never fit),
    :meth:`step` (one engine step: it calls :meth:`end_step`) and :meth:`snapshot` (the
    categories now, in token slots: they sum to ``budget_slots``).

    Requests are ``request_type`` (:class:`.scheduler.Req`, set by the subclass: this module
    sits below the scheduler); the same rejections as vLLM's loop (a prompt of ``max_len`` or
    more, empty requests), the same clipping of output at ``max_len``, the same closed loop
    (``closed_loop_type``, :class:`.scheduler.ClosedLoop`) and the same latency figures."""

    request_type: type = None
    closed_loop_type: type = None

    def __init__(self, arrivals, cfg, timing, tot, budget_slots: float):
        ClosedLoop = self.closed_loop_type
        self.cfg, self.timing, self.tot = cfg, timing, tot
        self.budget_slots = budget_slots
        self.arrivals = iter(arrivals) if cfg.concurrency is None else ClosedLoop(
            arrivals, cfg.concurrency, cfg.warmup)
        self.closed = self.arrivals if cfg.concurrency is not None else None
        self.next = next(self.arrivals, None)
        self.waiting: list = []          # a deque is not needed: engines insert anywhere
        self.running: list = []
        self.t = 0.0
        self.start = None
        self.rid = 0
        self.mem = [0.0] * len(CATEGORIES)
        self.next_sample = 0.0

    # ---- to implement ---------------------------------------------------------------------
    def rejects(self, r) -> bool:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def snapshot(self) -> tuple:
        raise NotImplementedError

    def idle_split(self) -> tuple[float, float]:
        """(external fragmentation, free) in token slots with nothing running."""
        raise NotImplementedError

    def check(self) -> None:
        """Conservation (tests): the subclass asserts its pool's invariants."""

    # ---- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        tot = self.tot
        if self.next is None:
            return
        self.t = self.start = self.next.arrival_s
        while True:
            if self.next is not None and self.next.arrival_s <= self.t:
                self.take_arrivals()
            if not self.running and not self.waiting and not self.busy():
                if self.next is None:
                    break
                gap = self.next.arrival_s - self.t
                ext, free = self.idle_split()
                self.mem[3] += ext * gap
                self.mem[4] += free * gap
                self.t = self.next.arrival_s
                self.on_idle()
                continue
            self.step()
        tot.seconds = self.t - self.start
        for c, v in zip(CATEGORIES, self.mem):
            tot.memory[c] += v

    def busy(self) -> bool:
        """Work outside the running and waiting lists (a prompt being chunked)."""
        return False

    def on_idle(self) -> None:
        """The engine had nothing to do (SGLang resets its new-token ratio)."""

    def take_arrivals(self) -> None:
        Req = self.request_type
        cfg, tot = self.cfg, self.tot
        while self.next is not None and self.next.arrival_s <= self.t:
            a = self.next
            self.next = next(self.arrivals, None)
            tot.requests += 1
            output = a.output
            if a.prompt >= cfg.max_len or a.prompt < 1 or output < 1:
                self._refuse()
                continue
            if a.prompt + output > cfg.max_len:
                output = cfg.max_len - a.prompt
                tot.clipped += 1
            r = Req(self.rid, a, output)
            self.rid += 1
            if self.rejects(r):
                self._refuse()
                continue
            if tot.requests <= cfg.warmup:
                r.measured = False
            elif tot.measured_start is None:
                tot.measured_start = a.arrival_s
            tot.prompt_tokens += a.prompt
            self.waiting.append(r)

    def _refuse(self) -> None:
        self.tot.rejected += 1
        if self.closed is not None:
            self.closed.release(self.t, 1)
            if self.next is None:
                self.next = next(self.arrivals, None)

    def admitted(self, r) -> None:
        """``r`` leaves the queue for the first time (queueing delay)."""
        if r.scheduled_at is None:
            r.scheduled_at = self.t
            self.tot.queue_delay.add(self.t - r.arrival)

    def computed(self, r, new: int) -> bool:
        """``r`` computed ``new`` more tokens this step (recomputation counted); True when it
        samples a token (its computed tokens caught up with its tokens)."""
        before = r.computed
        r.computed = c = before + new
        if before < r.hwm:
            self.tot.recomputed_tokens += min(c, r.hwm) - before
        if c > r.hwm:
            r.hwm = c
        if c == r.num_tokens:
            r.generated += 1
            r.num_tokens += 1
            return True
        return False

    def end_step(self, tokens: int, kv: int, extra: float, seqs: int, sampled: list,
                 finished: list) -> None:
        """Close a step that scheduled ``tokens`` new tokens of ``seqs`` requests holding ``kv``
        tokens (``extra``: prefill pairs, :meth:`.timing.StepTime.duration`): its duration,
        first tokens (``sampled``: the requests that sampled a token), memory, batch sizes and
        the requests it ``finished`` (already out of the running list and the pool)."""
        tot = self.tot
        d = self.timing.duration(tokens, kv, extra, seqs)
        end = self.t + d
        tot.output_tokens += len(sampled)
        for r in sampled:
            if r.generated == 1:
                r.first = end
                if r.measured:
                    tot.ttft.add(end - r.arrival + self.timing.frontend(r.prompt))
        snap = self.snapshot()
        mem = self.mem
        for i in range(5):
            mem[i] += snap[i] * d
        used = snap[0] + snap[1] + snap[2]
        if used > tot.peak_used_slots:
            tot.peak_used_slots = used
        tot.steps += 1
        tot.running.add(len(self.running))
        tot.waiting.add(len(self.waiting))
        self.t = end
        if finished:
            record_finished(tot, finished, end, self.timing)
            if self.closed is not None:
                self.closed.release(end, len(finished))
                if self.next is None:
                    self.next = next(self.arrivals, None)
        if self.cfg.timeline_interval_s is not None and end >= self.next_sample:
            self.tot.timeline.append((end - self.start, len(self.running), len(self.waiting),
                                      tot.preemptions, *snap))
            self.next_sample = end + self.cfg.timeline_interval_s
        if self.cfg.check:
            self.check()
            assert all(v >= -1e-6 for v in snap), f"negative category: {snap}"
            assert abs(sum(snap) - self.budget_slots) < 1e-6 * max(1.0, self.budget_slots), \
                f"categories sum to {sum(snap)}, budget {self.budget_slots}"
