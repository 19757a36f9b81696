"""The engine loop: vLLM v1's scheduler (continuous batching, chunked prefill, preemption by
recompute), driving one KV cache (:mod:`.paged` or :mod:`.contiguous`) over time.

One engine step, as ``Scheduler.schedule`` in ``vllm/v1/core/sched/scheduler.py``:

1. running requests, oldest first, each get ``min(tokens not yet computed, token budget)``
   new tokens (1 while decoding, a chunk while prefilling); when the cache cannot hold them,
   the newest running request is preempted (its blocks freed, its computed tokens dropped, put
   back at the head of the waiting queue) until it can -- or the request itself is preempted;
2. when no request was preempted this step, waiting requests (first come, first served) are
   admitted while the budget lasts and fewer than ``max_num_seqs`` run: prefix-cache hits are
   looked up, the first chunk allocated; the first that does not fit stops the admission;
3. the step runs (its duration from :mod:`.timing`); a request whose computed tokens catch up
   with its tokens samples one more token (the first one is its time to first token); a request
   with all its output tokens finishes and frees its cache.

A closed loop (``Config.concurrency``, as serving benchmarks run: ``vllm bench serve
--max-concurrency``, aiperf ``--concurrency``) keeps that many requests in flight: they arrive
at the start, and one more each time one finishes (or is refused), at that moment; the first
``Config.warmup`` requests are left out of the latency and throughput figures, and, as aiperf
runs its warm-up phase, the loop drains after them and starts the measured requests at once.

Steps in which nothing but decoding happens and nothing can change the schedule are taken in
bulk (event-driven): the run ends at the next arrival, the next completion, or the step at
which the cache runs out; memory and time over the run are integrated in closed form.
"""

from __future__ import annotations

from collections import deque
from heapq import heappop, heappush
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..units import largest_satisfying
from .metrics import (CATEGORIES, CountHistogram, LogHistogram, record_finished, series_jtime,
                      series_time, steps_until)
from .requests import Arrival
from .timing import StepTime


def prefill_pairs(cached: int, new: int) -> float:
    """The query-key pairs a chunk of ``new`` prompt tokens after ``cached`` computes beyond
    what the step's KV term counts for it (``cached + new`` keys, as for one token): token k
    (1-based) of the chunk attends to ``cached + k`` keys, ``new x cached + new (new + 1) / 2``
    pairs in all, which is ``(new - 1)(cached + new / 2)`` more (the step time's attention term,
    :meth:`.timing.StepTime.duration`). Every scheduled chunk of more than one token adds it."""
    return (new - 1) * (cached + new / 2)


class Req:
    """One request in flight."""

    __slots__ = ("rid", "arrival", "prompt", "output", "final", "hash_ids", "num_tokens",
                 "computed", "hwm", "generated", "scheduled_at", "preempted", "held", "bkeys",
                 "tkeys", "reserve", "addr", "waste", "last_block_from", "seq", "d0",
                 "first", "measured")

    def __init__(self, rid: int, a: Arrival, output: int):
        self.rid = rid
        self.arrival = a.arrival_s
        self.prompt = a.prompt
        self.output = output
        #: tokens the cache holds at the request's last step (its last token is never cached)
        self.final = a.prompt + output - 1
        self.hash_ids = a.hash_ids
        self.num_tokens = a.prompt
        self.computed = 0
        self.hwm = 0                 # most tokens ever computed (recomputation after this)
        self.generated = 0
        self.scheduled_at: float | None = None
        self.preempted = False
        self.held = 0                # paged: blocks held
        self.bkeys: list | None = None   # paged: prefix-cache keys of the leading blocks
        self.tkeys: list | None = None   # paged: identities of the trace's prompt blocks
        self.reserve = 0             # contiguous: token slots reserved
        self.addr = -1               # contiguous: where
        self.waste = -1              # paged: slots of the last block never filled (-1: unset)
        self.last_block_from = 0     # paged: tokens held before the last block is allocated
        self.seq = -1                # admission number (the running order)
        self.d0 = -1                 # lazy (decoding): the tick its fields were last brought to
        self.first = 0.0             # when it sampled its first token
        self.measured = True         # counted in the latency figures (not a warm-up request)


@dataclass
class Config:
    max_num_batched_tokens: int
    max_num_seqs: int
    max_len: int
    timeline_interval_s: float | None = None
    #: check conservation and non-negative memory after every step (tests)
    check: bool = False
    #: closed loop: requests kept in flight (None: the arrivals' own times)
    concurrency: int | None = None
    #: the first requests left out of the latency and throughput figures
    warmup: int = 0
    #: SGLang's order (``--enable-mixed-chunk`` off): a step that can prefill (a prompt in
    #: progress, or a waiting request that can be admitted) prefills only, decodes wait
    prefill_first: bool = False


@dataclass
class Totals:
    """What one allocator's run produced (raw figures; :mod:`kvcalc.simulation` shapes them)."""

    requests: int = 0
    completed: int = 0
    rejected: int = 0
    clipped: int = 0
    preemptions: int = 0
    recomputed_tokens: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    queried_tokens: int = 0
    prefix_hit_tokens: int = 0
    offload_hit_tokens: int = 0
    #: hits (GPU or CPU) of preempted requests coming back: recompute saved, not prefix reuse
    resume_hit_tokens: int = 0
    steps: int = 0
    seconds: float = 0.0
    memory: dict = field(default_factory=lambda: {c: 0.0 for c in CATEGORIES})
    running: CountHistogram = field(default_factory=CountHistogram)
    waiting: CountHistogram = field(default_factory=CountHistogram)
    queue_delay: LogHistogram = field(default_factory=LogHistogram)
    ttft: LogHistogram = field(default_factory=LogHistogram)
    #: per request (warm-up requests left out): time per output token after the first
    #: ((end - first token) / (output - 1), requests of 2 tokens or more) and end to end
    tpot: LogHistogram = field(default_factory=LogHistogram)
    e2e: LogHistogram = field(default_factory=LogHistogram)
    #: the measured requests' output tokens, first arrival and last finish (throughput)
    measured_output_tokens: int = 0
    measured_start: float | None = None
    measured_end: float = 0.0
    timeline: list = field(default_factory=list)
    peak_used_slots: float = 0.0


def run(arrivals: Iterable[Arrival], cache, cfg: Config, timing: StepTime) -> Totals:
    """Replay ``arrivals`` (sorted by time) through the scheduler and ``cache``."""
    tot = Totals()
    source = iter(arrivals) if cfg.concurrency is None else ClosedLoop(
        arrivals, cfg.concurrency, cfg.warmup)
    sim = _Loop(source, cache, cfg, timing, tot)
    sim.loop()
    return tot


class _Loop:
    #: a step in which every running request decodes is one tick of the lazy batch (False:
    #: the detailed step, request by request -- the same figures; tests)
    fast_ticks = True

    def __init__(self, arrivals: Iterator[Arrival], cache, cfg: Config, timing: StepTime,
                 tot: Totals):
        self.arrivals = arrivals
        self.cache = cache
        self.cfg = cfg
        self.timing = timing
        self.tot = tot
        self.waiting: deque[Req] = deque()
        #: running requests by admission number (insertion order = vLLM's running order)
        self.running: dict[int, Req] = {}
        self.seq = 0
        self.t = 0.0
        self.start: float | None = None
        self.next: Arrival | None = next(self.arrivals, None)
        #: a closed loop releases an arrival whenever a request finishes or is refused
        self.closed = arrivals if isinstance(arrivals, ClosedLoop) else None
        self.rid = 0
        self.next_sample = 0.0
        #: the last detailed step changed nothing the next one could do differently
        self.stable = False
        #: sum of ``computed`` over the running requests (kept up to date at every change)
        self.kv_sum = 0
        #: fewest output tokens a running request has left (valid while ``stable``)
        self.min_left = 0
        # ---- the decoding batch as aggregates ----------------------------------------------
        #: decode clock: decoding ("lazy") requests advance one token per tick; a lazy
        #: request's fields hold its state at tick ``d0`` (materialised on demand)
        self.D = 0
        #: running requests that are not lazy (prefilling: a detailed step is needed)
        self.n_active = 0
        #: paged: block size; a lazy request needs a new block at the ticks t = q (mod B)
        self.B = B = getattr(cache, "B", 0)
        #: a cache may ask for every step in detail (hybrid KV cache groups:
        #: :class:`.paged.HybridCache` frees and allocates at different ticks per group)
        self.bulk = getattr(cache, "bulk_decode", True)
        self.phase = [0] * B
        #: (tick at which the request samples its last token, seq, request)
        self.finish_heap: list = []
        #: paged: (tick from which the request holds its last block, seq, waste slots)
        self.last_heap: list = []
        self.sampling = cfg.timeline_interval_s is not None
        self.prefill_first = cfg.prefill_first
        #: the memory integrals, by category (CATEGORIES' order; written to tot.memory at
        #: the end)
        self.mem = [0.0] * len(CATEGORIES)

    # ---- lazy decoding requests ----------------------------------------------------------
    def _lazify(self, r: Req) -> None:
        """``r`` decodes from now on: track it by its event ticks instead of by its fields."""
        D, B = self.D, self.B
        r.d0 = D
        heappush(self.finish_heap, (D + r.output - r.generated, r.seq, r))
        if B:
            c = r.computed
            self.phase[(D + 1 - c) % B] += 1
            if r.waste > 0 and r.last_block_from >= c:
                heappush(self.last_heap, (D + 1 + r.last_block_from - c, r.seq, r.waste))

    def _join_lazy_batch(self, requests: Iterable[Req]) -> int:
        """Requests of ``requests`` that decode from now on join the lazy batch
        (:meth:`_lazify`); returns how many of them still compute their prompt."""
        active = 0
        for r in requests:
            if r.d0 < 0:
                if r.generated and r.computed == r.num_tokens - 1:
                    self._lazify(r)
                else:
                    active += 1
        return active

    def _materialise(self, r: Req) -> None:
        """Bring a lazy request's fields to the current tick (the aggregates stay valid)."""
        delta = self.D - r.d0
        if delta:
            r.d0 = self.D
            r.hwm = r.computed = c = r.computed + delta
            r.num_tokens += delta
            r.generated += delta
            if self.B:
                r.held = -(-c // self.B)

    def _unlazify_all(self) -> None:
        """Materialise every running request and drop the aggregates (a detailed step)."""
        D = self.D
        B = self.B
        for r in self.running.values():
            if r.d0 < 0:
                continue
            delta = D - r.d0
            if delta:
                r.d0 = D
                r.hwm = r.computed = c = r.computed + delta
                r.num_tokens += delta
                r.generated += delta
                if B:
                    r.held = -(-c // B)
            r.d0 = -1
        self.phase = [0] * B
        self.finish_heap = []
        self.last_heap = []

    # ---- arrivals ----------------------------------------------------------------------
    def _take_arrivals(self) -> None:
        cfg, tot = self.cfg, self.tot
        max_len = cfg.max_len
        t = self.t
        nxt = self.next
        arrivals = self.arrivals
        rejects = self.cache.rejects
        waiting = self.waiting
        closed = self.closed
        warmup = cfg.warmup
        while nxt is not None and nxt.arrival_s <= t:
            a = nxt
            nxt = next(arrivals, None)
            tot.requests += 1
            prompt = a.prompt
            output = a.output
            if prompt >= max_len or prompt < 1 or output < 1:
                tot.rejected += 1        # vLLM refuses prompts of max_model_len or more
                if closed is not None:
                    closed.release(t, 1)
                    if nxt is None:
                        nxt = next(arrivals, None)
                continue
            if prompt + output > max_len:
                output = max_len - prompt    # generation stops at max_model_len
                tot.clipped += 1
            req = Req(self.rid, a, output)
            self.rid += 1
            if rejects(req):
                tot.rejected += 1
                if closed is not None:
                    closed.release(t, 1)
                    if nxt is None:
                        nxt = next(arrivals, None)
                continue
            if tot.requests <= warmup:
                req.measured = False
            elif tot.measured_start is None:
                tot.measured_start = a.arrival_s
            tot.prompt_tokens += prompt
            waiting.append(req)
            self.stable = False
        self.next = nxt

    # ---- the loop ----------------------------------------------------------------------
    def loop(self) -> None:
        tot = self.tot
        if self.next is None:
            return
        self.t = self.start = self.next.arrival_s
        while True:
            nxt = self.next
            if nxt is not None and nxt.arrival_s <= self.t:
                self._take_arrivals()
            if not self.running and not self.waiting:
                if self.next is None:
                    break
                gap = self.next.arrival_s - self.t
                self._accumulate_idle(gap)
                self.t = self.next.arrival_s
                continue
            if self.stable and self.bulk and self._decode_run():
                continue
            if self.prefill_first and (self.n_active or self.waiting) and self._prefill_step():
                continue
            self._step()
        tot.seconds = self.t - self.start
        for c, v in zip(CATEGORIES, self.mem):
            tot.memory[c] += v

    def _accumulate_idle(self, dt: float) -> None:
        mem = self.mem
        ext, free = self.cache.idle_split()
        mem[3] += ext * dt                    # external_fragmentation
        mem[4] += free * dt                   # free

    # ---- one detailed step -------------------------------------------------------------
    def _step(self) -> None:
        cfg, cache = self.cfg, self.cache
        budget = cfg.max_num_batched_tokens
        # slots a request's blocks hold beyond its tokens need no allocation (paged: block
        # size; contiguous: the reservation covers every token)
        B = self.B
        n = len(self.running)
        # 1. running requests, oldest first
        if self.n_active == 0 and n <= budget and self.fast_ticks and self.bulk and (
                not B or self.phase[(self.D + 1) % B] <= cache.free_count):
            self._tick_step(n)
            return
        tot = self.tot
        waiting = self.waiting
        preemptions = tot.preemptions
        track = getattr(cache, "prefix", False)
        tokens = kv = out = 0
        extra = 0.0
        finished: list[Req] = []
        first: list[Req] = []          # requests sampling their first token this step
        cached: list[Req] = []         # prompt blocks to cache once the step is scheduled
        all_decode = True
        # each request's tokens are computed as it is scheduled (what the step does to it
        # depends on nothing scheduled after it)
        self._unlazify_all()
        running = self.rlist = list(self.running.values())
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            c = r.computed
            new = r.num_tokens - c
            if new > budget:
                new = budget
            # paged: the last block may hold the new tokens already; else grow,
            # preempting the newest requests if need be
            if not (B and c + new <= r.held * B) and not self._make_room(r, new):
                break                            # r itself was preempted
            budget -= new
            tokens += new
            kv += c + new
            if new > 1:
                extra += prefill_pairs(c, new)
            i += 1
            r.computed = c + new
            if c < r.hwm:
                tot.recomputed_tokens += min(c + new, r.hwm) - c
            if c + new > r.hwm:
                r.hwm = c + new
            if track and r.hash_ids is not None:
                cached.append(r)
            if c + new == r.num_tokens:
                r.generated += 1
                r.num_tokens += 1
                out += 1
                if r.generated == 1:
                    first.append(r)
                if r.output - r.generated <= 0:
                    finished.append(r)
            else:
                all_decode = False
        scheduled_running = i
        preempted = tot.preemptions != preemptions
        if preempted:                    # the victims left the end of the running order
            self.running = {r.seq: r for r in running}
        self.n_active = len(running)
        running = self.running
        # 2. waiting requests, first come first served, when nothing was preempted
        admitted: list[tuple[Req, int]] = []
        blocked = False
        if not preempted:
            blocked, tokens, kv, extra = self._admit(admitted, budget, tokens, kv, extra)
        d = self.timing.duration(tokens, kv, extra, scheduled_running + len(admitted))
        end = self.t + d
        # the running requests' computed prompt blocks are cached after the admissions
        # looked the cache up, as vLLM caches blocks once the step has run
        for r in cached:
            cache.on_computed(r)
        for r in first:
            r.first = end
            if r.measured:
                tot.ttft.add(end - r.arrival + self.timing.frontend(r.prompt))
        if admitted:
            sampled, all_admitted_decode = self._compute_admitted(admitted, end, finished)
            out += sampled
            all_decode = all_decode and all_admitted_decode
        self._end_step(tokens, out, d, end, len(running), waiting, finished)
        # requests that decode from now on join the lazy batch
        fh = self.finish_heap
        if self.n_active:
            self.n_active = self._join_lazy_batch(running.values())
        self.min_left = fh[0][0] - self.D if fh else 1 << 62
        if self.sampling:
            self._sample()
        if cfg.check:
            self._check()
        # the next step schedules the same way (bulk decode) when nothing was preempted,
        # every running request decodes, and no waiting request can get in: none waits, or
        # the cache or max_num_seqs stopped the admission and nothing was freed since
        self.stable = (not preempted and all_decode
                       and scheduled_running + len(admitted) == len(running) + len(finished)
                       and len(running) + len(finished) <= cfg.max_num_batched_tokens
                       and (not waiting or (not finished and (
                           blocked or len(running) >= cfg.max_num_seqs))))

    def _tick_step(self, n: int) -> None:
        """:meth:`_step` when every running request decodes and gets the block it needs: one
        tick of the lazy batch, then the admissions (the same figures, in the same order)."""
        cfg, cache = self.cfg, self.cache
        waiting = self.waiting
        running = self.running
        # the tick: the blocks the lazy batch needs, the last blocks it reaches, finishes
        self.D = D = self.D + 1
        B = self.B
        if B:
            grown = self.phase[D % B]
            if grown:
                cache._pop(grown)
                cache.held_total += grown
            lh = self.last_heap
            while lh and lh[0][0] <= D:
                cache.ifrag_slots += heappop(lh)[2]
        fh = self.finish_heap
        finished = []
        while fh and fh[0][0] <= D:
            finished.append(heappop(fh)[2])
        budget = cfg.max_num_batched_tokens - n
        tokens = out = n
        kv = self.kv_sum + n
        t = self.t
        # 2. waiting requests, first come first served (a tick preempts nothing)
        admitted: list[tuple[Req, int]] = []
        blocked = False
        extra = 0.0
        if waiting and budget > 0:
            blocked, tokens, kv, extra = self._admit(admitted, budget, tokens, kv, extra)
        d = self.timing.duration(tokens, kv, extra, n + len(admitted))
        end = t + d
        all_decode = True
        if admitted:
            sampled, all_decode = self._compute_admitted(admitted, end, finished)
            out += sampled
        self._end_step(tokens, out, d, end, len(running), waiting, finished)
        # requests that decode from now on join the lazy batch (after a tick, only admitted
        # requests can be outside it)
        if self.n_active:
            self.n_active = self._join_lazy_batch(r for r, _ in admitted if r.seq in running)
        self.min_left = fh[0][0] - D if fh else 1 << 62
        if self.sampling and end >= self.next_sample:
            self._sample()
        if cfg.check:
            self._check()
        self.stable = (all_decode
                       and n + len(admitted) == len(running) + len(finished)
                       and len(running) + len(finished) <= cfg.max_num_batched_tokens
                       and (not waiting or (not finished and (
                           blocked or len(running) >= cfg.max_num_seqs))))

    def _prefill_step(self) -> bool:
        """A step of prompts only (:attr:`Config.prefill_first`, SGLang's scheduler: its
        ``get_new_batch_prefill`` runs before any decode while it finds work): the prompts in
        progress continue, waiting requests are admitted while the token budget lasts; the
        decoding requests do not advance. False when it would schedule nothing."""
        cache = self.cache
        budget = self.cfg.max_num_batched_tokens
        tokens = kv = 0
        extra = 0.0
        B = self.B
        chunks: list[tuple[Req, int]] = []
        pending = self.n_active
        if pending:
            for r in self.running.values():
                if r.d0 >= 0:
                    continue
                c = r.computed
                new = min(r.num_tokens - c, budget)
                if new <= 0 or budget <= 0 or (
                        not (B and c + new <= r.held * B) and not cache.grow(r, c + new)):
                    break
                chunks.append((r, new))
                budget -= new
                tokens += new
                kv += c + new
                if new > 1:
                    extra += prefill_pairs(c, new)
        admitted: list[tuple[Req, int]] = []
        if self.waiting and budget > 0:
            _, tokens, kv, extra = self._admit(admitted, budget, tokens, kv, extra)
        if not chunks and not admitted:
            return False
        d = self.timing.duration(tokens, kv, extra, len(chunks) + len(admitted))
        end = self.t + d
        finished: list[Req] = []
        out = self._compute_admitted(chunks, end, finished)[0] if chunks else 0
        if admitted:
            out += self._compute_admitted(admitted, end, finished)[0]
        running = self.running
        self._end_step(tokens, out, d, end, len(running), self.waiting, finished)
        # the prompts in progress not scheduled, and the scheduled ones still prefilling
        self.n_active = (pending - len(chunks)) + self._join_lazy_batch(
            r for r, _ in chunks + admitted if r.seq in running)
        fh = self.finish_heap
        self.min_left = fh[0][0] - self.D if fh else 1 << 62
        if self.sampling:
            self._sample()
        if self.cfg.check:
            self._check()
        self.stable = False
        return True

    def _admit(self, admitted: list[tuple[Req, int]], budget: int, tokens: int,
               kv: int, extra: float) -> tuple[bool, int, int, float]:
        """Admit waiting requests, first come first served, while the step's token budget,
        ``max_num_seqs`` and the cache allow: each gets its prefix-cache hits and up to the
        budget's worth of its prompt (appended to ``admitted`` as (request, new tokens)).
        Returns whether the head of the queue was blocked by the cache, and the step's tokens,
        cached tokens and extra query-key pairs (:meth:`.timing.StepTime.duration`) with the
        admissions."""
        cache, tot, waiting, running = self.cache, self.tot, self.waiting, self.running
        max_seqs = self.cfg.max_num_seqs
        t = self.t
        while waiting and budget > 0 and len(running) < max_seqs:
            r = waiting[0]
            hits = cache.lookup(r)
            hit_tokens = hits[0] if hits else 0
            new = min(r.num_tokens - hit_tokens, budget)
            if not cache.admit(r, hits, hit_tokens + new):
                return True, tokens, kv, extra
            waiting.popleft()
            tot.queried_tokens += r.num_tokens
            if hits:
                tot.prefix_hit_tokens += hits[1]
                tot.offload_hit_tokens += hits[2]
                if r.preempted:
                    tot.resume_hit_tokens += hits[0]
            r.computed = hit_tokens
            self.kv_sum += hit_tokens
            if r.scheduled_at is None:
                r.scheduled_at = t
                tot.queue_delay.add(t - r.arrival)
            r.seq = seq = self.seq
            self.seq = seq + 1
            running[seq] = r
            self.n_active += 1
            admitted.append((r, new))
            budget -= new
            tokens += new
            kv += hit_tokens + new
            if new > 1:
                extra += prefill_pairs(hit_tokens, new)
        return False, tokens, kv, extra

    def _compute_admitted(self, admitted: list[tuple[Req, int]], end: float,
                          finished: list[Req]) -> tuple[int, bool]:
        """The step computes the admitted requests' prompt tokens (recomputation counted,
        computed prompt blocks cached); those whose prompt is complete sample a token (time to
        first token at ``end``), and those done join ``finished``. Returns the tokens sampled
        and whether every admitted request is now decoding."""
        cache, tot = self.cache, self.tot
        track = getattr(cache, "prefix", False)
        sampled, all_decode = 0, True
        for r, new in admitted:
            before = r.computed
            r.computed = c = before + new
            if before < r.hwm:
                tot.recomputed_tokens += min(c, r.hwm) - before
            if c > r.hwm:
                r.hwm = c
            if track and r.hash_ids is not None:
                cache.on_computed(r)
            if c == r.num_tokens:
                r.generated += 1
                r.num_tokens += 1
                sampled += 1
                if r.generated == 1:
                    r.first = end
                    if r.measured:
                        tot.ttft.add(end - r.arrival + self.timing.frontend(r.prompt))
                if r.output - r.generated <= 0:
                    finished.append(r)
            else:
                all_decode = False
        return sampled, all_decode

    def _end_step(self, tokens: int, out: int, d: float, end: float, running: int,
                  waiting, finished: list[Req]) -> None:
        """Close a step of ``d`` seconds ending at ``end``: its tokens, the memory it held (the
        state at its end, for its duration), the batch sizes, and the requests it finished."""
        tot, cache = self.tot, self.cache
        self.kv_sum += tokens
        tot.output_tokens += out
        snap = cache.snapshot(None, waiting[0] if waiting else None, self.kv_sum)
        mem = self.mem
        mem[0] += snap[0] * d
        mem[1] += snap[1] * d
        mem[2] += snap[2] * d
        mem[3] += snap[3] * d
        mem[4] += snap[4] * d
        used = snap[0] + snap[1] + snap[2]
        if used > tot.peak_used_slots:
            tot.peak_used_slots = used
        tot.steps += 1
        counts = tot.running.counts
        counts[running] = counts.get(running, 0) + 1
        counts = tot.waiting.counts
        m = len(waiting)
        counts[m] = counts.get(m, 0) + 1
        self.t = end
        if finished:
            self._finish(finished)

    def _make_room(self, r: Req, new: int) -> bool:
        """Grow ``r``'s cache to hold ``new`` more tokens, preempting the newest running
        requests until it can. False when ``r`` itself had to be preempted."""
        while not self.cache.grow(r, r.computed + new):
            victim = self.rlist.pop()
            self._preempt(victim)
            if victim is r:
                return False
        return True

    def _preempt(self, r: Req) -> None:
        self.kv_sum -= r.computed
        r.preempted = True
        self.cache.free(r, preempted=True)
        r.computed = 0
        r.d0 = -1
        self.waiting.appendleft(r)
        self.tot.preemptions += 1

    def _finish(self, finished: list[Req]) -> None:
        """Free the finished requests' caches, in running order."""
        if len(finished) > 1:
            finished.sort(key=_seq)
        running = self.running
        free = self.cache.free
        D, B = self.D, self.B
        phase = self.phase
        kv_sum = self.kv_sum
        for r in finished:
            d0 = r.d0
            if d0 >= 0:
                # :meth:`_materialise`, and out of the phase counts
                delta = D - d0
                c = r.computed
                if delta:
                    r.hwm = r.computed = c = c + delta
                    r.num_tokens += delta
                    r.generated += delta
                    if B:
                        r.held = -(-c // B)
                if B:
                    phase[(D + 1 - c) % B] -= 1
            else:
                self.n_active -= 1
            r.d0 = -1
            free(r, preempted=False)
            kv_sum -= r.computed
            del running[r.seq]
        self.kv_sum = kv_sum
        t = self.t
        record_finished(self.tot, finished, t, self.timing)
        if self.closed is not None:
            self.closed.release(t, len(finished))
            if self.next is None:
                self.next = next(self.arrivals, None)
        if self.waiting:
            self.stable = False

    def _sample(self, force: bool = False) -> None:
        interval = self.cfg.timeline_interval_s
        if interval is None or (self.t < self.next_sample and not force):
            return
        head = self.waiting[0] if self.waiting else None
        snap = self.cache.snapshot(None, head, self.kv_sum)
        self.tot.timeline.append((self.t - self.start, len(self.running), len(self.waiting),
                                  self.tot.preemptions, *snap))
        self.next_sample = self.t + interval

    # ---- bulk decode -------------------------------------------------------------------
    def _decode_run(self) -> bool:
        """Take the coming decode-only steps at once. False when not even one step fits.

        The figures of :meth:`.timing.StepTime.decode_series`, :func:`.metrics.steps_until` and
        the cache's ``bulk_integrals`` from the lazy batch's aggregates."""
        cache, tot = self.cache, self.tot
        # every running request decodes and is lazy (stable): the aggregates hold
        k = self.min_left
        n = len(self.running)
        kv_sum = self.kv_sum
        waiting = self.waiting
        c0, c1 = self.timing.decode_series(n, kv_sum)
        if not waiting:
            nxt = self.next
            if nxt is not None:
                dt = nxt.arrival_s - self.t
                # a run of k steps that ends before the arrival needs no search
                if series_time(k, c0, c1) >= dt:
                    k = min(k, steps_until(dt, c0, c1))
        B = self.B
        D = self.D
        if B:
            # phase[q]: lazy requests that need a block at the ticks t = q (mod B); the run's
            # ticks are D + 1 ... D + k
            phase = self.phase
            i = (D + 1) % B
            free = cache.free_count
            if free < n * (k // B + 1):
                k = _most_steps(phase[i:] + phase[:i], n, k, free)
        if k < 1:
            self.stable = False
            return False
        end = D + k
        d_total, dj = series_time(k, c0, c1), series_jtime(k, c0, c1)
        if B:
            a, b = divmod(k, B)
            j = i + b
            grown = a * n + (sum(phase[i:j]) if j <= B else sum(phase[i:]) + sum(phase[:j - B]))
            ifrag_slots = cache.ifrag_slots
            held_now = cache.held_total
            used_blocks = cache.n - free
            # the last-block tails at the start of the run: tails[u] = phase[(D + 2 + u) % B]
            s = (D + 2) % B
            tails = phase[s:] + phase[:s]
            # the batch advanced k tokens: blocks grown, last blocks reached
            if grown:
                cache._pop(grown)
                cache.held_total = held_now + grown
            lh = self.last_heap
            events = []
            if lh and lh[0][0] <= end:
                add = 0
                while lh and lh[0][0] <= end:
                    t, _, waste = heappop(lh)
                    events.append((t - D - 1, waste))
                    add += waste
                cache.ifrag_slots = ifrag_slots + add
            integrals = cache.bulk_integrals(n, kv_sum, k, c0, c1, d_total, dj, None,
                                             (tails, ifrag_slots, held_now, used_blocks),
                                             events)
        else:
            integrals = cache.bulk_integrals(n, kv_sum, k, c0, c1, d_total, dj,
                                             waiting[0] if waiting else None, None, None)
        self.D = end
        mem = self.mem
        mem[0] += integrals[0]
        mem[1] += integrals[1]
        mem[2] += integrals[2]
        mem[3] += integrals[3]
        mem[4] += integrals[4]
        self.kv_sum = kv_sum + k * n
        tot.output_tokens += k * n
        tot.steps += k
        counts = tot.running.counts
        counts[n] = counts.get(n, 0) + k
        counts = tot.waiting.counts
        w = len(waiting)
        counts[w] = counts.get(w, 0) + k
        self.t += d_total
        used = (cache.n - cache.free_count) * B if B else cache.used_slots(None)
        if used > tot.peak_used_slots:
            tot.peak_used_slots = used
        fh = self.finish_heap
        if fh and fh[0][0] <= end:
            finished = []
            while fh and fh[0][0] <= end:
                finished.append(heappop(fh)[2])
            self._finish(finished)
        self.min_left = fh[0][0] - end if fh else 1 << 62
        if self.sampling and self.t >= self.next_sample:
            self._sample()
        if self.cfg.check:
            self._check()
        return True

    def _check(self) -> None:
        running = list(self.running.values())
        for r in running:
            if r.d0 >= 0:
                self._materialise(r)
        assert self.kv_sum == sum(r.computed for r in running), "computed tokens"
        lazy = [r for r in running if r.d0 >= 0]
        assert self.n_active == len(running) - len(lazy), "active requests"
        assert len(self.finish_heap) == len(lazy), "finish events"
        for r in lazy:
            assert r.generated and r.computed == r.num_tokens - 1 == r.hwm, "lazy decodes"
        if self.B:
            B = self.B
            assert sum(self.phase) == len(lazy), "phases"
            for r in lazy:
                assert r.held == -(-r.computed // B), "lazy blocks"
        self.cache.check(running)
        snap = self.cache.snapshot(running, self.waiting[0] if self.waiting else None)
        for category, value in zip(CATEGORIES, snap):
            assert value >= -1e-6, f"negative {category}: {value}"
        assert abs(sum(snap) - self.cache.budget_slots) < 1e-6 * max(1, self.cache.budget_slots)


def _seq(r: Req) -> int:
    return r.seq


def _most_steps(rot: list[int], n: int, k: int, free: int) -> int:
    """The most ticks s <= k in which ``n`` lazy requests need at most ``free`` new blocks,
    ``rot[i]`` of them at tick i (mod B) (:meth:`.paged.PagedCache.max_steps`)."""
    B = len(rot)

    def need(s: int) -> int:
        a, b = divmod(s, B)
        return a * n + sum(rot[:b])

    if need(k) <= free:
        return k
    return largest_satisfying(lambda s: need(s) <= free, k - 1)


class ClosedLoop:
    """The arrivals of a closed loop: ``concurrency`` requests of ``source`` (their lengths;
    arrival times ignored) at time 0, then one more each time :meth:`release` is called (a
    request finished or was refused), at that time, until ``source`` runs out. With
    ``warmup`` requests, as aiperf runs its warm-up phase: the loop issues the first
    ``warmup`` requests, waits until all of them are done, then starts again with
    ``concurrency`` requests at once (the measured phase)."""

    __slots__ = ("source", "ready", "concurrency", "warmup", "issued", "done")

    def __init__(self, source: Iterable[Arrival], concurrency: int, warmup: int = 0):
        self.source = iter(source)
        self.ready: deque[Arrival] = deque()
        self.concurrency = concurrency
        self.warmup = warmup
        self.issued = self.done = 0
        self._issue(0.0, concurrency)

    def __iter__(self) -> "ClosedLoop":
        return self

    def __next__(self) -> Arrival:
        if self.ready:
            return self.ready.popleft()
        raise StopIteration

    def release(self, t: float, n: int) -> None:
        self.done += n
        if self.warmup and self.issued == self.warmup:
            if self.done == self.warmup:         # the warm-up drained: measure from now
                self._issue(t, self.concurrency)
            return
        self._issue(t, n)

    def _issue(self, t: float, n: int) -> None:
        if self.issued < self.warmup:
            n = min(n, self.warmup - self.issued)
        source, ready = self.source, self.ready
        for _ in range(n):
            a = next(source, None)
            if a is None:
                return
            ready.append(Arrival(t, a.prompt, a.output, a.hash_ids))
            self.issued += 1
