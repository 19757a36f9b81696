"""The search: every configuration of the search space, pruned before it is simulated, the
fewest replicas of each that meet every objective, and the cheapest fleet.

For each configuration (:class:`.evaluate.Candidate`), in this order, without simulating:

1. ``kvcalc plan``'s figures: settings the engine refuses, a replica that does not boot (the
   engine's own start-up error), an engine ``kvcalc simulate`` does not replay;
2. the traffic against the replica's capacity: a prompt of ``max_len`` or more (vLLM refuses
   it), a request longer than the whole KV cache (it never finishes);
3. the latency floors (:func:`.bounds.latency_floors`): an objective missed at any replica
   count;
4. the throughput floor (:func:`.bounds.replicas_floor`): the fewest replicas worth trying.

Then the replica count is searched by simulation, from the floor up (doubling until the
objectives are met, then bisecting), on the assumption that more replicas of one configuration
never serve the traffic worse (monotonicity; the answer's R - 1 is simulated and checked).
Configurations that differ only in ``max_num_seqs`` share runs: a run in which no more than
``k`` requests ever ran at once is the same run under any ``max_num_seqs`` above ``k`` (the
limit only refuses admissions), so a sibling with a smaller limit reuses it when its plan has
the same KV blocks.

All configurations advance together, one round of simulations at a time; a round's
simulations run in parallel (:class:`LocalRunner`: worker processes; :mod:`.ray_runner`: Ray
tasks). Every simulation is a pure function of its inputs, so the answer does not depend on
the runner, the number of workers or the order of completion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from ..errors import UsageError
from ..simulation.metrics import LATENCY_BUCKET_RATIO
from .bounds import TrafficStats, latency_floors, replicas_floor, sound, steady_state
from .evaluate import Candidate, Context, Setup, evaluate, setup

#: default most replicas of one configuration tried
DEFAULT_MAX_REPLICAS = 64


# ---------------------------------------------------------------------------- runners

_WORKER: dict = {}


def _init_worker(ctx: Context) -> None:
    _WORKER.clear()
    _WORKER["ctx"] = ctx
    _WORKER["setups"] = {}


def worker_evaluate(ctx: Context, setups: dict, c: Candidate, replicas: int) -> dict:
    """Evaluate ``replicas`` replicas of ``c``, with the setups a worker keeps."""
    key = replace(c, router="")
    su = setups.get(key)
    if su is None:
        su, status, reason = setup(ctx, c)
        if su is None:
            raise UsageError(f"{c.label}: {status}: {reason}")
        setups[key] = su
    return evaluate(ctx, c, replicas, su)


def _task(item: tuple[Candidate, int]) -> dict:
    return worker_evaluate(_WORKER["ctx"], _WORKER["setups"], *item)


class LocalRunner:
    """Simulations in ``jobs`` worker processes on this machine (1: in this process)."""

    name = "local"

    def __init__(self, jobs: int | None = None):
        self.jobs = max(1, jobs or os.cpu_count() or 1)
        self._pool = None
        self._ctx = None

    def start(self, ctx: Context) -> None:
        self._ctx = ctx
        _init_worker(ctx)
        if self.jobs > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
            self._pool = ProcessPoolExecutor(
                self.jobs, mp_context=multiprocessing.get_context(method),
                initializer=_init_worker, initargs=(ctx,))

    def map(self, items: list[tuple[Candidate, int]]) -> list[dict]:
        if self._pool is None or len(items) <= 1:
            return [_task(item) for item in items]
        return list(self._pool.map(_task, items, chunksize=1))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def describe(self) -> dict:
        return {"runner": "local processes", "jobs": self.jobs}


# ---------------------------------------------------------------------------- the search

@dataclass
class State:
    c: Candidate
    index: int
    status: str = ""
    reason: str = ""
    su: Setup | None = None
    floor: int = 1
    lo: int = 0                      # largest replica count known to miss (0: none)
    hi: int | None = None            # smallest replica count known to meet
    evals: dict = field(default_factory=dict)      # replicas -> outcome
    how: dict = field(default_factory=dict)        # replicas -> "simulated" / "same run as ..."
    bounds: dict = field(default_factory=dict)

    def next_replicas(self, most: int) -> int | None:
        if self.status:
            return None
        if self.hi is None:
            if self.lo >= most:
                return None
            if not self.evals:
                return min(most, max(self.floor, self.lo + 1))
            return min(most, max(self.lo + 1, 2 * self.lo))
        if self.hi - self.lo <= 1:
            return None
        return (self.lo + self.hi) // 2


def prepare(ctx: Context, states: list[State], stats: TrafficStats) -> None:
    """Steps 1-4 of the module docstring, for every configuration (no simulation)."""
    objectives = ctx.objectives
    allowance = max(o.limit_s for o in objectives)
    tpot = [o.limit_s for o in objectives if o.metric == "tpot"]
    setups: dict = {}
    for st in states:
        key = replace(st.c, router="")
        if key not in setups:
            setups[key] = setup(ctx, st.c)
        su, status, reason = setups[key]
        if su is None:
            st.status, st.reason = status, reason
            continue
        st.su = su
        pool = su.usable_blocks * su.block_size
        max_len = su.inputs.max_len
        too_long = sum(1 for a in stats.arrivals if a.prompt >= max_len)
        if too_long:
            st.status = "does not fit"
            st.reason = (f"{too_long:,} requests have prompts of max_len ({max_len:,}) tokens or "
                         f"more: vLLM refuses them (--max-len)")
            continue
        if stats.longest > pool:
            st.status = "does not fit"
            st.reason = (f"the longest request holds {stats.longest:,} tokens, the replica's KV "
                         f"cache {pool:,} ({su.usable_blocks:,} blocks of {su.block_size})")
            continue
        if ctx.disagg is not None:
            from .disagg import prepare_disagg

            prepare_disagg(ctx, st, stats)
            continue
        st.bounds["steady_state"] = steady_state(su.timing, stats, su.max_num_seqs, pool,
                                                 min(tpot) if tpot else None)
        if not sound(su.timing):
            continue
        floors = latency_floors(su.timing, stats, su.max_batched_tokens, objectives)
        st.bounds["latency_floor_s"] = {k: round(v, 6) for k, v in floors.items()}
        missed = {o.name: floors[o.name] for o in objectives
                  if floors[o.name] > o.limit_s * LATENCY_BUCKET_RATIO}
        if missed:
            st.status = "misses at any replica count"
            st.reason = "; ".join(
                f"{o.name} is at least {floors[o.name]:.4g} s (modelled floor: one request "
                f"alone), objective {o.limit_s:.4g} s" for o in objectives if o.name in missed)
            continue
        if ctx.traffic.concurrency is None:
            floor, busy, span = replicas_floor(su.timing, stats, su.max_batched_tokens,
                                               su.max_num_seqs, allowance)
            st.floor = floor
            st.lo = floor - 1
            st.bounds["replicas_floor"] = floor
            st.bounds["busy_floor_s"] = round(busy, 3)
            st.bounds["seconds_per_replica"] = round(span, 3)


def _group(st: State, hashed: bool, replicas: int):
    """Configurations whose runs can be shared: they differ only in max_num_seqs, or (on a
    traffic without prefix hash ids) in prefix caching, or (one replica: nothing to route)
    in the router."""
    return (replace(st.c, max_num_seqs=None,
                    prefix_caching=st.c.prefix_caching if hashed else None,
                    router=st.c.router if replicas > 1 else ""),
            st.su.plan.engine_figures.num_blocks, st.su.max_batched_tokens)


def _rank(st: State):
    """Which sibling runs first: the largest max_num_seqs, prefix caching on."""
    return (st.su.max_num_seqs, st.c.prefix_caching)


#: simulations per round when the search prunes by cost (a constant, so that the configurations
#: simulated, not only the answer, are the same whatever the number of workers)
COST_BATCH = 16


def run_search(ctx: Context, candidates: list[Candidate], runner, most: int,
               prices: dict | None = None, span: float | None = None) -> list[State]:
    """The search. ``span``: a configuration that cannot cost less than ``span`` x the
    cheapest fleet found so far is not simulated further ("pruned by cost"), and the
    simulations go cheapest first, ``COST_BATCH`` at a time (None: every configuration is
    searched to its fewest replicas, all at once: the whole Pareto front)."""
    stats = TrafficStats(ctx.traffic.arrivals, ctx.traffic.warmup)
    states = [State(c, i) for i, c in enumerate(candidates)]
    prepare(ctx, states, stats)
    best = float("inf")

    def usd(st: State, replicas: int) -> float:
        return replicas * st.c.tp * prices[st.c.gpu]["usd_per_gpu_hour"]
    shared: dict = {}        # (group, replicas) -> [(max_num_seqs, prefix caching, outcome)]
    hashed = any(a.hash_ids for a in ctx.traffic.arrivals)
    runner.start(ctx)
    try:
        while True:
            wanted = [(st, r) for st in states
                      if (r := st.next_replicas(most)) is not None]
            if span is not None:
                for st, r in wanted:
                    floor = usd(st, st.lo + 1)
                    if st.hi is None and floor > span * best:
                        st.status = "pruned by cost"
                        st.reason = (f"costs at least ${floor:,.2f}/h ({st.lo + 1} replicas x "
                                     f"{st.c.tp} GPUs x ${usd(st, 1) / st.c.tp:g}), more than "
                                     f"{span:g} x the cheapest fleet (${best:,.2f}/h)")
                wanted = [(st, r) for st, r in wanted if not st.status]
                wanted.sort(key=lambda x: (usd(x[0], x[0].lo + 1), -x[0].su.max_num_seqs,
                                           not x[0].c.prefix_caching, x[0].index))
                wanted = wanted[:COST_BATCH]
            if not wanted:
                break
            # siblings: the one with the largest max_num_seqs runs first; the others reuse it
            # when it never ran their limit's worth of requests at once
            lead: dict = {}
            for st, r in wanted:
                key = (_group(st, hashed, r), r)
                if key not in lead or _rank(st) > _rank(lead[key]):
                    lead[key] = st
            first = [(st, r) for st, r in wanted if lead[(_group(st, hashed, r), r)] is st]
            later = [(st, r) for st, r in wanted if lead[(_group(st, hashed, r), r)] is not st]
            _run(runner, first, shared, hashed)
            rerun = []
            for st, r in later:
                reuse = _reusable(shared.get((_group(st, hashed, r), r), ()), st)
                if reuse is None:
                    rerun.append((st, r))
                else:
                    _record(st, r, reuse[1], reuse[0])
            _run(runner, rerun, shared, hashed)
            if span is not None:
                for st, _ in wanted:
                    if st.hi is not None:
                        best = min(best, usd(st, st.hi))
        for st in states:
            if not st.status:
                st.status = "meets" if st.hi is not None else "misses"
                if st.hi is None:
                    worst = st.evals[st.lo]
                    st.reason = (f"with {st.lo} replicas (the most tried): "
                                 + misses_text(ctx, worst))
    finally:
        runner.close()
    return states


def _run(runner, items, shared, hashed: bool) -> None:
    if not items:
        return
    results = runner.map([(st.c, r) for st, r in items])
    for (st, r), out in zip(items, results):
        _record(st, r, out, "simulated")
        shared.setdefault((_group(st, hashed, r), r), []).append(
            (st.su.max_num_seqs, st.c.prefix_caching, st.c.router, out))


def _reusable(entries, st: State):
    """A sibling's run that is this configuration's own: max_num_seqs never refused an
    admission in it (fewer requests ever ran at once than either limit) and, where prefix
    caching differs, nothing was preempted (on a traffic without hash ids the prefix cache
    only serves preempted requests' own blocks, and lookups take no modelled time)."""
    seqs = st.su.max_num_seqs
    for other, prefix, router, out in entries:
        if out["max_running"] >= min(other, seqs):
            continue
        if prefix != st.c.prefix_caching and out["preemptions"]:
            continue
        what = []
        if other != seqs:
            what.append(f"max_num_seqs {other:,}")
        if prefix != st.c.prefix_caching:
            what.append("prefix caching " + ("on" if prefix else "off"))
        if router != st.c.router:
            what.append(f"router {router} (one replica: nothing to route)")
        return (f"same run as {', '.join(what) or 'itself'} (at most {out['max_running']:,} ran at "
                f"once" + (", none preempted" if prefix != st.c.prefix_caching else "")
                + ")"), out
    return None


def _record(st: State, r: int, out: dict, how: str) -> None:
    st.evals[r] = out
    st.how[r] = how
    if out["meets"]:
        st.hi = r if st.hi is None else min(st.hi, r)
    else:
        st.lo = max(st.lo, r)


def misses_text(ctx: Context, out: dict) -> str:
    parts = []
    by_name = {o.name: o for o in ctx.objectives}
    for name, ratio in out["misses"].items():
        o = by_name[name]
        parts.append(f"{name} {out['values_s'][name]:.4g} s > {o.limit_s:.4g} s "
                     f"(x{ratio:.2f}, modelled)")
    if out["rejected"]:
        parts.append(f"{out['rejected']:,} requests rejected")
    if not out["completed"]:
        parts.append("no request completed")
    return "; ".join(parts) or "meets"
