"""One candidate fleet, evaluated: a configuration (GPU, engine, tensor parallelism, dtypes,
vLLM settings, router) with R replicas, its arrivals routed (:mod:`.router`), every replica's
share replayed by ``kvcalc simulate``'s engine (:func:`kvcalc.simulation.simulate`, vLLM v1's
scheduler and paged cache on the capacity ``kvcalc plan`` computes, the calibrated step time),
and the replicas' latency histograms merged exactly (bucket counts add up).

Everything here is a pure function of its arguments, so a candidate gives the same figures in
any process, in any order, on any worker (local processes or Ray tasks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..errors import KvcalcError, UsageError
from ..hardware import resolve_gpu
from ..params import default_weights_dtype
from ..planning import PlanInputs, make_plan
from ..workload import fixed
from ..simulation import Options, simulate, workload_shape
from ..simulation.requests import MOONCAKE_HASH_BLOCK, Arrival, Trace
from .objectives import Objective
from .merge import Merged, outcome, service_estimate
from .router import route

#: the engines whose scheduler ``kvcalc simulate`` replays with vLLM's settings
SEARCHED_ENGINES = ("vllm",)


@dataclass(frozen=True)
class Candidate:
    """One configuration of a replica, and the router in front of the replicas."""

    gpu: str
    engine: str = "vllm"
    tp: int = 1
    kv_dtype: str = "auto"
    weights_dtype: str = "auto"
    max_num_seqs: int | None = None
    prefix_caching: bool = True
    router: str = "least-outstanding"
    cpu_offload: int = 0
    #: --disagg: "prefill" or "decode" (the pool this candidate is); "" colocated
    pool: str = ""

    @property
    def label(self) -> str:
        parts = [self.gpu, self.engine, f"tp{self.tp}", f"kv {self.kv_dtype}",
                 f"w {self.weights_dtype}",
                 f"seqs {self.max_num_seqs if self.max_num_seqs is not None else 'default'}",
                 "prefix on" if self.prefix_caching else "prefix off", self.router]
        if self.cpu_offload:
            parts.append(f"cpu {self.cpu_offload / 2**30:g} GiB")
        if self.pool:
            parts.append(f"{self.pool} pool")
        return " · ".join(parts)

    def record(self) -> dict:
        return {"gpu": self.gpu, "engine": self.engine, "tp": self.tp, "kv_dtype": self.kv_dtype,
                "weights_dtype": self.weights_dtype, "max_num_seqs": self.max_num_seqs,
                "prefix_caching": self.prefix_caching, "router": self.router,
                "cpu_offload_bytes": self.cpu_offload}


@dataclass(frozen=True)
class Settings:
    """What every candidate shares: vLLM's settings that are not searched."""

    max_len: int
    gpu_util: float | None = None
    max_batched_tokens: int | None = None
    calibration: str | None = None
    vllm_version: str | None = None


@dataclass(frozen=True)
class Traffic:
    """The arrivals every fleet serves (a trace, or synthetic), or a closed loop."""

    description: str
    arrivals: tuple[Arrival, ...]
    hash_block: int = MOONCAKE_HASH_BLOCK
    #: closed loop: requests in flight over the whole fleet (None: the arrivals' own times)
    concurrency: int | None = None
    warmup: int = 0


@dataclass(frozen=True)
class Context:
    """Everything a worker needs to evaluate any candidate (sent to each worker once)."""

    spec: object                      # kvcalc.arch.ModelSpec
    traffic: Traffic
    objectives: tuple[Objective, ...]
    settings: Settings
    disagg: object | None = None      # .disagg.DisaggSettings


@dataclass
class Setup:
    """A configuration that boots: its plan inputs, plan, and the simulation's step time."""

    inputs: PlanInputs
    plan: object
    timing: object                    # kvcalc.simulation.timing.StepTime
    usable_blocks: int
    block_size: int
    max_num_seqs: int
    max_batched_tokens: int
    weights_dtype: str
    #: the step-time calibration every simulation of the configuration uses: a
    #: :class:`kvcalc.simulation.timing.Calibration` fitted once on the whole traffic's
    #: shape, so that every replica count and every replica's share of the arrivals is timed
    #: alike (with a fixed step time: the settings' calibration, unused)
    calibration: object = None


def plan_inputs(ctx: Context, c: Candidate, **over) -> PlanInputs:
    spec, s = ctx.spec, ctx.settings
    wdtype = c.weights_dtype
    if wdtype == "auto":
        from ..engines import get_engine

        wdtype = get_engine(c.engine).served_dtype(default_weights_dtype(spec))
    fields_ = dict(gpu=resolve_gpu(c.gpu), tp=c.tp, gpu_util=s.gpu_util, weights_dtype=wdtype,
                   kv_dtype=c.kv_dtype, max_len=s.max_len,
                   max_batched_tokens=s.max_batched_tokens, max_num_seqs=c.max_num_seqs,
                   engine=c.engine, version=s.vllm_version if c.engine == "vllm" else None,
                   prefix_caching=c.prefix_caching)
    fields_.update(over)
    return PlanInputs(**fields_)


def setup(ctx: Context, c: Candidate) -> tuple[Setup | None, str, str]:
    """(the setup, "", "") for a configuration ``kvcalc simulate`` can replay, else (None,
    status, reason): ``refused`` (settings the engine refuses, in its words), ``does not boot``
    (the engine's own start-up error, from ``kvcalc plan``'s figures), ``not simulated``."""
    try:
        inp = plan_inputs(ctx, c)
        plan = make_plan(ctx.spec, inp, fixed(1, 0))
    except KvcalcError as exc:
        return None, "refused", str(exc)
    if not plan.fits:
        figures = plan.engine_figures
        why = getattr(figures, "error", None)
        if not why:
            lines = figures.log_lines() if hasattr(figures, "log_lines") else []
            why = lines[0] if lines else "no KV cache budget"
        return None, "does not boot", why
    if c.engine not in SEARCHED_ENGINES:
        return None, "not simulated", (
            f"boots ({plan.engine_figures.num_blocks:,} KV blocks), but kvcalc simulate "
            f"replays vLLM's scheduler (and llama.cpp's slots), not {c.engine}'s")
    try:
        empty = simulate(ctx.spec, inp, Trace("", ()),
                         replace(_options(ctx, c, None),
                                 workload_shape=workload_shape(ctx.traffic.arrivals)))
    except KvcalcError as exc:
        return None, "not simulated", str(exc)
    cfg = empty.config
    cal = (empty.timing.calibration if empty.timing.fixed_s is None
           else ctx.settings.calibration)
    return Setup(inp, plan, empty.timing, empty.usable_blocks, plan.vllm.block_size,
                 cfg.max_num_seqs, cfg.max_num_batched_tokens, inp.weights_dtype,
                 cal), "", ""


def _options(ctx: Context, c: Candidate, concurrency: int | None, warmup: int = 0,
             su: Setup | None = None) -> Options:
    return Options(allocators=("paged",), prefix_caching=c.prefix_caching,
                   cpu_offload_bytes=c.cpu_offload,
                   calibration=ctx.settings.calibration if su is None else su.calibration,
                   concurrency=concurrency, warmup=warmup)


def evaluate(ctx: Context, c: Candidate, replicas: int, su: Setup | None = None) -> dict:
    """The figures of ``replicas`` replicas of ``c`` serving the traffic: every objective's
    modelled value, whether all are met, throughput, and the replicas' totals."""
    if su is None:
        su, status, reason = setup(ctx, c)
        if su is None:
            raise UsageError(f"{c.label}: {status}: {reason}")
    if ctx.disagg is not None:
        from .disagg import evaluate_disagg

        return evaluate_disagg(ctx, c, replicas, su)
    tr = ctx.traffic
    merged = Merged()
    for arrivals, conc, warm in split(ctx, c, su, replicas):
        if not arrivals:
            continue
        trace = Trace(tr.description, tuple(arrivals), tr.hash_block)
        res = simulate(ctx.spec, su.inputs, trace, _options(ctx, c, conc, warm, su))
        merged.add(res.runs["paged"].totals)
    return outcome(ctx, merged, replicas * c.tp, replicas)


def split(ctx: Context, c: Candidate, su: Setup, replicas: int):
    """Each replica's (arrivals, closed-loop concurrency, warm-up requests)."""
    tr = ctx.traffic
    if tr.concurrency is not None:
        # a closed loop: the users are spread over the replicas, each replica keeps its share
        # in flight; requests dealt round-robin (which replica serves whom does not matter)
        parts = route(tr.arrivals, replicas, "round-robin")
        out = []
        for i, part in enumerate(parts):
            conc = tr.concurrency // replicas + (1 if i < tr.concurrency % replicas else 0)
            warm = min(len(part) - 1, -(-tr.warmup * len(part) // max(1, len(tr.arrivals))))
            out.append((part if conc else [], conc or None, max(0, warm)))
        return out
    capacity = su.usable_blocks * su.block_size // tr.hash_block
    parts = route(tr.arrivals, replicas, c.router,
                  service_estimate(su.timing, su.max_batched_tokens), capacity)
    return [(part, None, 0) for part in parts]


def with_seqs(c: Candidate, seqs: int | None) -> Candidate:
    return replace(c, max_num_seqs=seqs)


def ceil_div(a: float, b: float) -> int:
    return int(math.ceil(a / b)) if b > 0 else 0
