"""``kvcalc simulate``: the KV cache over time, on real request traces.

Arrivals (a trace or synthetic) go through vLLM v1's scheduler (:mod:`.scheduler`) into a KV
cache: vLLM's paged block pool with prefix caching and a CPU tier (:mod:`.paged`), or the
PagedAttention paper's contiguous baselines (:mod:`.contiguous`). The capacity is the one
``kvcalc plan`` computes -- the same budget, block size, engine band and GPU blocks
(:func:`kvcalc.plan.make_plan`); step durations are a roofline estimate (:mod:`.timing`).

>>> from kvcalc.model import load_spec
>>> from kvcalc.hardware import resolve_gpu
>>> from kvcalc.plan import PlanInputs
>>> from kvcalc.simulate import simulate
>>> from kvcalc.simulate.requests import synthetic
>>> _, spec = load_spec("llama-3.1-8b")
>>> inp = PlanInputs(gpu=resolve_gpu("h100"), max_len=8192)
>>> res = simulate(spec, inp, lambda: synthetic(50, None, 100, 20), allocators=("paged",))
>>> res.runs["paged"].totals.completed
50
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from ..engines.cache import KEEP_ALL, KEEP_NONE
from ..errors import UsageError
from ..params import weight_bytes
from ..plan import Plan, PlanInputs, make_plan
from ..workload import fixed
from .contiguous import POLICIES, ContiguousCache
from .metrics import CATEGORIES
from .paged import PagedCache
from .requests import MOONCAKE_HASH_BLOCK, Arrival, Trace
from .scheduler import Config, Totals, run
from .timing import StepTime, step_time_model

#: allocator names: vLLM's paged pool, then the paper's contiguous baselines
ALLOCATORS = ("paged",) + POLICIES


@dataclass(frozen=True)
class Options:
    allocators: tuple[str, ...] = ALLOCATORS
    prefix_caching: bool = True
    cpu_offload_bytes: int = 0
    step_time_s: float | None = None
    step_overhead_s: float | None = None
    timeline_interval_s: float | None = None
    hash_block: int = MOONCAKE_HASH_BLOCK
    #: assert block/slot conservation after every step (tests; slower)
    check: bool = False


@dataclass
class AllocatorRun:
    name: str
    totals: Totals
    budget_slots: float
    pool_slots: int

    @property
    def memory(self) -> dict[str, float]:
        """The paper's categories as fractions of the KV budget, averaged over time."""
        t = self.totals
        denom = t.seconds * self.budget_slots
        if denom <= 0:
            return {c: (1.0 if c == "free" else 0.0) for c in CATEGORIES}
        return {c: t.memory[c] / denom for c in CATEGORIES}


@dataclass
class SimulationResult:
    plan: Plan
    timing: StepTime
    options: Options
    description: str
    runs: dict[str, AllocatorRun] = field(default_factory=dict)
    cpu_blocks: int = 0
    usable_blocks: int = 0


def check_simulable(plan: Plan) -> None:
    """The simulator models one KV cache group of full-attention (or MLA) layers."""
    layout = plan.layout
    if plan.inputs.engine != "vllm":
        raise UsageError("kvcalc simulate models vLLM's scheduler: use --engine vllm")
    if plan.inputs.pp != 1:
        raise UsageError("kvcalc simulate models one pipeline stage: use --pp 1 (tp is fine)")
    odd = [c for c in layout.layers if c.keep not in (KEEP_ALL, KEEP_NONE) or c.fixed_bytes]
    if odd or plan.vllm.groups != 1:
        kinds = sorted({c.kind for c in odd}) or ["several KV cache groups"]
        raise UsageError(f"kvcalc simulate models full-attention and MLA layers in one KV cache "
                         f"group; {plan.spec.model_type} has {', '.join(kinds)} layers "
                         f"(not modelled yet)")
    if not plan.fits:
        raise UsageError(f"the plan does not fit: {plan.vllm.log_lines()[0]} (kvcalc plan "
                         f"shows why)")


def simulate(spec, inputs: PlanInputs, arrivals: Trace | Callable[[], Iterable[Arrival]],
             options: Options | None = None, **kw) -> SimulationResult:
    """Replay ``arrivals`` (a :class:`Trace`, or a function returning fresh arrivals, called
    once per allocator) on the plan of ``spec`` with ``inputs``, once per allocator."""
    options = options or Options(**kw)
    for name in options.allocators:
        if name not in ALLOCATORS:
            raise UsageError(f"unknown allocator '{name}': choose from {', '.join(ALLOCATORS)}")
    if options.cpu_offload_bytes < 0:
        raise UsageError("--cpu-offload must not be negative")
    plan = make_plan(spec, inputs, fixed(1, 0))
    check_simulable(plan)
    cap, budget = plan.vllm, plan.budget
    bpt = plan.bytes_per_token
    slot_bytes = cap.bytes_per_block / cap.block_size
    budget_slots = budget.kv_bytes / slot_bytes
    weights = budget.weights_bytes or -(-weight_bytes(plan.params, inputs.weights_dtype)
                                        // inputs.tp)
    # per GPU: with tensor parallelism each GPU reads its shard of the weights and of the KV
    # (bpt is per GPU already) and computes its share of the FLOPs, all at once
    timing = step_time_model(inputs.gpu, weights, bpt, plan.params.active / inputs.tp,
                             options.step_overhead_s, options.step_time_s)
    cfg = Config(inputs.batched_tokens(), inputs.num_seqs(), inputs.max_len,
                 options.timeline_interval_s, options.check)
    null = 1 if cap.rules.era == "new" else 0
    usable = max(0, cap.num_blocks - null)
    cpu_blocks = options.cpu_offload_bytes // cap.bytes_per_block
    if isinstance(arrivals, Trace):
        trace = arrivals
        description = trace.description
        hash_block = trace.hash_block

        def replay() -> Iterator[Arrival]:
            return iter(trace.arrivals)
    else:
        description = "synthetic arrivals"
        hash_block = options.hash_block
        replay = arrivals
    result = SimulationResult(plan, timing, options, description, cpu_blocks=cpu_blocks,
                              usable_blocks=usable)
    for name in options.allocators:
        if name == "paged":
            cache = PagedCache(usable, cap.block_size, budget_slots, options.prefix_caching,
                               cpu_blocks, hash_block)
            pool = usable * cap.block_size
        else:
            pool = int(budget.kv_bytes // slot_bytes)
            cache = ContiguousCache(name, pool, budget_slots, inputs.max_len)
        totals = run(replay(), cache, cfg, timing)
        result.runs[name] = AllocatorRun(name, totals, budget_slots, pool)
    return result


def result_record(res: SimulationResult) -> dict:
    """The documented JSON of ``kvcalc simulate`` (docs/simulation.md)."""
    plan, inp = res.plan, res.plan.inputs
    first = next(iter(res.runs.values()))
    rec = {
        "model": None,
        "gpu": inp.gpu.name,
        "workload": res.description,
        "requests": first.totals.requests,
        "completed": first.totals.completed,
        "rejected": first.totals.rejected,
        "kv_budget_bytes": plan.budget.kv_bytes,
        "bytes_per_token": plan.bytes_per_token,
        "block_size": plan.vllm.block_size,
        "num_gpu_blocks": plan.vllm.num_blocks,
        "usable_blocks": res.usable_blocks,
        "engine_version": plan.layout.version,
        "version_band": plan.layout.band,
        "max_len": inp.max_len,
        "max_num_batched_tokens": inp.batched_tokens(),
        "max_num_seqs": inp.num_seqs(),
        "prefix_caching": res.options.prefix_caching,
        "cpu_offload_bytes": res.options.cpu_offload_bytes,
        "cpu_offload_blocks": res.cpu_blocks,
        "step_time_model": res.timing.describe(),
        "allocators": {name: run_record(r) for name, r in res.runs.items()},
    }
    return rec


def run_record(r: AllocatorRun) -> dict:
    t = r.totals
    secs = t.seconds
    return {
        "requests": t.requests,
        "completed": t.completed,
        "rejected": t.rejected,
        "clipped_at_max_len": t.clipped,
        "memory": {c: round(v, 6) for c, v in r.memory.items()},
        "preemptions": t.preemptions,
        "recomputed_tokens": t.recomputed_tokens,
        "prompt_tokens": t.prompt_tokens,
        "output_tokens": t.output_tokens,
        "prefix_hit_tokens": t.prefix_hit_tokens,
        "offload_hit_tokens": t.offload_hit_tokens,
        "resume_hit_tokens": t.resume_hit_tokens,
        "prefix_hit_rate": round(t.prefix_hit_tokens / t.queried_tokens, 6)
        if t.queried_tokens else 0.0,
        "running": t.running.summary(),
        "waiting": t.waiting.summary(),
        "queue_delay_s": t.queue_delay.summary(),
        "ttft_s": t.ttft.summary(),
        "steps": t.steps,
        "seconds_modelled": round(secs, 6),
        "output_tokens_per_s_modelled": round(t.output_tokens / secs, 2) if secs else 0.0,
        "peak_used_fraction": round(t.peak_used_slots / r.budget_slots, 6)
        if r.budget_slots else 0.0,
    }
