"""``kvcalc simulate``: the KV cache over time, on real request traces.

Arrivals (a trace or synthetic) go through vLLM v1's scheduler (:mod:`.scheduler`) into a KV
cache: vLLM's paged block pool with prefix caching and a CPU tier (:mod:`.paged`), or the
PagedAttention paper's contiguous baselines (:mod:`.contiguous`). The capacity is the one
``kvcalc plan`` computes -- the same budget, block size, engine band and GPU blocks
(:func:`kvcalc.planning.make_plan`); step durations come from a calibrated roofline
(:mod:`.timing`). Arrivals follow their own times, or a closed loop keeps ``concurrency``
requests in flight (:class:`.scheduler.ClosedLoop`).

>>> from kvcalc.model import load_spec
>>> from kvcalc.hardware import resolve_gpu
>>> from kvcalc.planning import PlanInputs
>>> from kvcalc.simulation import simulate
>>> from kvcalc.simulation.requests import synthetic
>>> _, spec = load_spec("llama-3.1-8b")
>>> inp = PlanInputs(gpu=resolve_gpu("h100"), max_len=8192)
>>> res = simulate(spec, inp, lambda: synthetic(50, None, 100, 20), allocators=("paged",))
>>> res.runs["paged"].totals.completed
50
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable, Iterator

from ..engines.cache import KEEP_ALL, KEEP_CHUNK, KEEP_NONE, KEEP_WINDOW
from ..errors import UsageError
from ..params import weight_bytes
from ..budget import pp_partition, stage_weight_bytes
from ..planning import Plan, PlanInputs, make_plan
from ..workload import fixed
from .contiguous import POLICIES, SLOTS, ContiguousCache, HybridContiguousCache, SlotsCache
from .metrics import CATEGORIES
from .paged import (CHUNKED_GROUP, FULL_GROUP, MAMBA_GROUP, SLIDING_GROUP, GroupSpec,
                    HybridCache, PagedCache)
from .requests import MOONCAKE_HASH_BLOCK, Arrival, Trace
from .scheduler import Config, Totals, run
from . import sglang as _sglang, trtllm as _trtllm
from .timing import StepTime, model_figures, pipeline_step_time, step_time_model

#: allocator names: vLLM's paged pool, then the paper's contiguous baselines (--engine vllm)
ALLOCATORS = ("paged",) + POLICIES
#: --engine llamacpp: llama-server's slots
LLAMACPP_ALLOCATORS = (SLOTS,)
#: --engine sglang / trtllm: the engine's own pool (one allocator each)
SGLANG_ALLOCATOR = "sglang-radix"
TRTLLM_ALLOCATOR = "trtllm-paged"
#: each simulated engine's allocators, its own first (the default set: all of them)
ENGINE_ALLOCATORS = {"vllm": ALLOCATORS, "llamacpp": LLAMACPP_ALLOCATORS,
                     "sglang": (SGLANG_ALLOCATOR,), "trtllm": (TRTLLM_ALLOCATOR,)}
#: every allocator name, for the CLI's choices
ALL_ALLOCATORS = tuple(n for names in ENGINE_ALLOCATORS.values() for n in names)


@dataclass(frozen=True)
class Options:
    allocators: tuple[str, ...] = ALLOCATORS
    prefix_caching: bool = True
    cpu_offload_bytes: int = 0
    step_time_s: float | None = None
    step_overhead_s: float | None = None
    #: the step-time calibration: an engine's name (its coefficients fitted on its measured
    #: runs nearest the run, :func:`resolve_calibration`), "roofline", or a
    #: :class:`.timing.Calibration` taken as it is; None: the engine's own
    calibration: object = None
    #: closed loop: requests kept in flight (None: the arrivals' own times)
    concurrency: int | None = None
    #: the mean (prompt, output) lengths the local calibration is fitted for
    #: (:func:`resolve_calibration`; None: the arrivals')
    workload_shape: tuple[float, float] | None = None
    #: requests left out of the latency figures (the first ones)
    warmup: int = 0
    #: SGLang's batching, prompts first (:attr:`.scheduler.Config.prefill_first`); None: with
    #: the SGLang calibration
    prefill_first: bool | None = None
    #: replaces the step-time model built for the run by its image (tools/fit_timing.py
    #: replays runs with one term of the model at a time)
    timing_transform: Callable[[StepTime], StepTime] | None = None
    timeline_interval_s: float | None = None
    hash_block: int = MOONCAKE_HASH_BLOCK
    #: assert block/slot conservation after every step (tests; slower)
    check: bool = False
    #: SGLang: requests sent with ignore_eos (their remaining output reserved whole)
    ignore_eos: bool = False
    #: TensorRT-LLM: capacity_scheduler_policy, max_batch_size, max_num_tokens,
    #: enable_chunked_prefill (None: the LLM API's defaults)
    capacity_scheduler_policy: str | None = None
    max_batch_size: int | None = None
    max_num_tokens: int | None = None
    enable_chunked_prefill: bool = False


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
    config: Config | None = None
    #: vLLM's KV cache groups when there are several (or one that is not full attention)
    groups: Groups | None = None
    #: the SGLang / TensorRT-LLM scheduler settings of the run (their modules' configs)
    engine_settings: object = None


def check_simulable(plan: Plan) -> None:
    """The simulator models vLLM's KV cache groups (:func:`kv_cache_groups`) and llama.cpp's
    slots, on a plan that fits."""
    engine = plan.inputs.engine
    if engine not in ENGINES:
        raise UsageError(f"kvcalc simulate models the schedulers of {', '.join(ENGINES)}; not "
                         f"--engine {engine}")
    ENGINES[engine].check(plan)


def _check_vllm(plan: Plan) -> None:
    if not plan.fits:
        raise UsageError(f"the plan does not fit: {plan.vllm.log_lines()[0]} (kvcalc plan "
                         f"shows why)")
    kv_cache_groups(plan)


def _is_single_group(plan: Plan) -> bool:
    """One KV cache group of full-attention (or MLA) layers: the dense path."""
    if plan.vllm.groups != 1:
        return False
    return not any(c.keep not in (KEEP_ALL, KEEP_NONE) or c.fixed_bytes
                   for c in plan.layout.layers) or _unified_to_full(plan)


def _unified_to_full(plan: Plan) -> bool:
    """vLLM turns sliding/chunked layers into full attention: --disable-hybrid-kv-cache-manager,
    or chunked local attention where the band switches the hybrid manager off."""
    inp = plan.inputs
    if inp.disable_hybrid:
        return True
    chunked = any(c.keep == KEEP_CHUNK for c in plan.layout.layers)
    return chunked and not inp.rules().allows_chunked_local_hybrid


@dataclass(frozen=True)
class Groups:
    """vLLM's KV cache groups of a plan, as the simulator replays them: one
    :class:`.paged.GroupSpec` per group, the layers of each (vLLM's ``get_kv_cache_groups``:
    layers bucketed by spec, each bucket split into groups of ``group_size`` layers, a bucket's
    i-th group taking every n-th layer), the attention block size and the block page."""

    specs: tuple[GroupSpec, ...]
    layers: tuple[tuple[int, ...], ...]
    block_size: int
    page_bytes: int

    def stage_bytes_per_block(self, start: int, end: int) -> int:
        """One block id's bytes on a pipeline stage holding layers ``start .. end - 1``: the
        group with the most layers there (vLLM's per-worker page tensors)."""
        return self.page_bytes * max(sum(1 for l in ls if start <= l < end)
                                     for ls in self.layers)


def kv_cache_groups(plan: Plan) -> Groups | None:
    """The KV cache groups of a vLLM plan, or None for one group of full attention (the dense
    path). Derived from the plan's layout and checked against the plan's engine figures (the
    number of groups and the blocks one max_model_len request needs)."""
    if _is_single_group(plan):
        return None
    layout, cap, inp = plan.layout, plan.vllm, plan.inputs
    rules = inp.rules()
    full = _unified_to_full(plan)
    buckets: dict[tuple, list[int]] = {}
    attn_bpt = set()
    for c in layout.layers:
        if c.fixed_bytes:
            key = (MAMBA_GROUP, 0)
        elif c.keep == KEEP_NONE:
            continue
        else:
            attn_bpt.add(c.bytes_per_token)
            if full or c.keep == KEEP_ALL:
                key = (FULL_GROUP, 0)
            elif c.keep == KEEP_WINDOW:
                key = (SLIDING_GROUP, c.window)
            else:
                key = (CHUNKED_GROUP, c.window)
        buckets.setdefault(key, []).append(c.index)
    if not attn_bpt:
        raise UsageError(f"kvcalc simulate needs attention layers; {plan.spec.model_type} has "
                         f"none (an attention-free model: not modelled)")
    if len(attn_bpt) > 1:
        raise UsageError(f"kvcalc simulate models KV cache groups of one block size; "
                         f"{plan.spec.model_type}'s attention layers differ in bytes per token "
                         f"(vLLM scales their block sizes: not modelled yet)")
    if inp.speculative_tokens and (MAMBA_GROUP, 0) in buckets:
        raise UsageError("kvcalc simulate does not model speculative decoding's Mamba blocks: "
                         "use --num-speculative-tokens 0")
    sizes = [len(v) for v in buckets.values()]
    lo, hi = min(sizes), max(sizes)
    group_size = hi if hi < lo * 1.5 else lo
    B, L, T = cap.block_size, inp.max_len, inp.in_flight()
    kinds, members = [], []
    attn_blocks = 0
    n_mamba = 0
    for (kind, window), ls in buckets.items():
        n = -(-len(ls) // group_size) if len(buckets) > 1 else 1
        for i in range(n):
            kinds.append((kind, window))
            members.append(tuple(ls[i::n]))
            if kind == SLIDING_GROUP:
                attn_blocks += -(-min(window - 1 + T, L) // B) + 1
            elif kind == CHUNKED_GROUP:
                attn_blocks += -(-min(window + T, L) // B)
            elif kind == FULL_GROUP:
                attn_blocks += -(-L // B)
            else:
                n_mamba += 1
    align = rules.mamba_align
    checkpoint = 0
    if n_mamba:
        per, rest = divmod(cap.blocks_per_request - attn_blocks, n_mamba)
        checkpoint = per - 2 if align else 0
        if rest or per != (2 + checkpoint if align else 1) or checkpoint not in (0, 1):
            raise UsageError(f"internal: {n_mamba} Mamba groups need "
                             f"{cap.blocks_per_request - attn_blocks} blocks per request")
    if len(kinds) != cap.groups or (not n_mamba and attn_blocks != cap.blocks_per_request):
        raise UsageError(f"internal: {len(kinds)} KV cache groups, {attn_blocks} blocks per "
                         f"request; the plan has {cap.groups} and {cap.blocks_per_request}")
    specs = tuple(GroupSpec(kind, window, align and kind == MAMBA_GROUP,
                            checkpoint if kind == MAMBA_GROUP else 0)
                  for kind, window in kinds)
    return Groups(specs, tuple(members), B, cap.bytes_per_block // (group_size if len(
        buckets) > 1 else len(members[0])))


def _check_llamacpp(plan: Plan) -> None:
    """llama.cpp's slots: per-slot streams of one cache (no SWA cache), within the budget."""
    figures = plan.engine_figures
    if figures.alloc is None:
        raise UsageError(figures.error or "llama.cpp refuses these settings")
    alloc = figures.alloc
    if plan.inputs.pp != 1 or plan.inputs.tp != 1:
        raise UsageError("kvcalc simulate models llama.cpp on one GPU: use --tp 1 --pp 1")
    if alloc.sizes.unified:
        raise UsageError("kvcalc simulate models llama.cpp's per-slot contexts, not the unified "
                         "KV cache (llama-server's -np auto or --kv-unified): give --parallel N")
    if len(alloc.caches) != 1 or alloc.caches[0].cache != "base":
        raise UsageError(f"kvcalc simulate models llama.cpp caches of full-attention and MLA "
                         f"layers; {plan.spec.model_type} has sliding-window layers (an SWA "
                         f"cache; not modelled yet)")
    if not figures.fits:
        raise UsageError(f"the plan does not fit: llama.cpp allocates "
                         f"{alloc.total_bytes:,} B of KV cache, the budget is "
                         f"{figures.kv_budget:,} B (kvcalc plan --engine llamacpp shows why)")


def _allocators(options: Options, engine: str) -> tuple[str, ...]:
    """The allocators to run: the engine's own by default, each checked against it."""
    own = ENGINE_ALLOCATORS.get(engine, ALLOCATORS)
    names = own if options.allocators == ALLOCATORS else options.allocators
    for name in names:
        if name in own:
            continue
        if name in ALL_ALLOCATORS:
            owner = next(e for e, ns in ENGINE_ALLOCATORS.items() if name in ns)
            raise UsageError(f"--allocator {name} does not apply to --engine {engine}: choose "
                             f"from {', '.join(own)}" + (f" (--engine {owner})"
                                                         if owner != "vllm" else ""))
        raise UsageError(f"unknown allocator '{name}': choose from {', '.join(own)}")
    return tuple(names)


def simulate(spec, inputs: PlanInputs, arrivals: Trace | Callable[[], Iterable[Arrival]],
             options: Options | None = None, **kw) -> SimulationResult:
    """Replay ``arrivals`` (a :class:`Trace`, or a function returning fresh arrivals, called
    once per allocator) on the plan of ``spec`` with ``inputs``, once per allocator."""
    options = options or Options(**kw)
    names = _allocators(options, inputs.engine)
    if options.cpu_offload_bytes < 0:
        raise UsageError("--cpu-offload must not be negative")
    _check_loop(options)
    plan = make_plan(spec, inputs, fixed(1, 0))
    check_simulable(plan)
    return ENGINES[inputs.engine].simulate(plan, arrivals, options, names)


def _simulate_vllm(plan: Plan, arrivals, options: Options,
                   names: tuple[str, ...]) -> SimulationResult:
    """vLLM v1's scheduler (:mod:`.scheduler`) on its paged pool or a contiguous baseline."""
    spec, inputs = plan.spec, plan.inputs
    cap, budget = plan.vllm, plan.budget
    groups = kv_cache_groups(plan)
    if groups is not None and options.cpu_offload_bytes:
        raise UsageError("--cpu-offload is not modelled with several KV cache groups (a hybrid "
                         "model's blocks): leave it out")
    if inputs.pp > 1:
        budget, slot_bytes, timing = _pipeline(plan, options, groups,
                                               resolve_calibration(plan, options, "vllm",
                                                                   arrivals))
    else:
        bpt = plan.bytes_per_token
        slot_bytes = cap.bytes_per_block / cap.block_size
        # per GPU: with tensor parallelism each GPU reads its shard of the weights and of the
        # KV (bpt is per GPU already) and computes its share of the FLOPs, all at once
        figures = model_figures(spec, plan.params, weight_bytes(plan.params,
                                                                inputs.weights_dtype)
                                / inputs.tp, bpt, inputs.tp)
        timing = step_time_model(inputs.gpu, figures, inputs.weights_dtype,
                                 resolve_calibration(plan, options, "vllm", arrivals),
                                 options.step_overhead_s, options.step_time_s)
    budget_slots = budget.kv_bytes / slot_bytes
    if options.timing_transform is not None:
        timing = options.timing_transform(timing)
    # SGLang's calibration comes with its batching: prompts first, decodes wait
    cfg = Config(inputs.batched_tokens(), inputs.num_seqs(), inputs.max_len,
                 options.timeline_interval_s, options.check, options.concurrency,
                 options.warmup, timing.calibration.name == "sglang"
                 if options.prefill_first is None else options.prefill_first)
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
                              usable_blocks=usable, config=cfg)
    batches = max(1, inputs.in_flight() // max(1, inputs.batched_tokens()))
    result.groups = groups
    for name in names:
        if name == "paged" and groups is not None:
            cache = HybridCache(groups.specs, usable, cap.block_size, budget_slots,
                                options.prefix_caching, hash_block,
                                lag=batches - 1 if inputs.async_scheduling else 0,
                                in_flight=inputs.in_flight())
            pool = usable * cap.block_size
        elif name == "paged":
            cache = PagedCache(usable, cap.block_size, budget_slots, options.prefix_caching,
                               cpu_blocks, hash_block)
            pool = usable * cap.block_size
        elif groups is not None:
            pool = int(budget.kv_bytes // slot_bytes)
            cache = HybridContiguousCache(name, pool, budget_slots, inputs.max_len,
                                          groups.specs, cap.block_size)
        else:
            pool = int(budget.kv_bytes // slot_bytes)
            cache = ContiguousCache(name, pool, budget_slots, inputs.max_len)
        totals = run(replay(), cache, cfg, timing)
        result.runs[name] = AllocatorRun(name, totals, budget_slots, pool)
    return result


def _pipeline(plan: Plan, options: Options, groups: Groups | None, cal):
    """Pipeline parallelism: (the limiting stage's budget, its KV bytes per token slot, the
    pipeline's step-time model). Every stage holds its own layers of every sequence in its own
    budget; the stage that fits the fewest blocks limits the replica -- the plan's
    ``num_blocks`` (vLLM's minimum over the stages), whose budget and bytes per token set the
    memory figures' denominator. The step time is the slowest stage's
    (:class:`.timing.PipelineStepTime`)."""
    spec, inputs, cap = plan.spec, plan.inputs, plan.vllm
    stages = pp_partition(spec.num_layers, inputs.pp)
    per_token = [sum(c.bytes_per_token for c in plan.layout.layers[start:end]
                     if c.keep != KEEP_NONE) for start, end in stages]
    if groups is None:
        blocks = [b.kv_bytes // (t * cap.block_size) if t else 0
                  for b, t in zip(plan.budgets, per_token)]
    else:
        # a block id costs each stage one page of each of its layers in the fullest group
        block_bytes = [groups.stage_bytes_per_block(start, end) for start, end in stages]
        blocks = [b.kv_bytes // p if p else 0 for b, p in zip(plan.budgets, block_bytes)]
    limit = min(range(len(stages)), key=lambda i: blocks[i])
    if inputs.num_blocks_override is None and blocks[limit] != cap.num_blocks:
        raise UsageError(f"internal: stage {limit} holds {blocks[limit]:,} blocks, the plan "
                         f"{cap.num_blocks:,}")
    weights = stage_weight_bytes(spec, plan.params, inputs.weights_dtype, inputs.tp, stages)
    whole = weight_bytes(plan.params, inputs.weights_dtype) / inputs.tp
    if options.step_time_s is not None:
        fixed = step_time_model(inputs.gpu, None, inputs.weights_dtype, cal,
                                options.step_overhead_s, options.step_time_s)
        timing = pipeline_step_time(fixed, [fixed] * len(stages), inputs.gpu, spec.hidden_size)
    else:
        models = [step_time_model(inputs.gpu, model_figures(spec, plan.params, w, t, inputs.tp,
                                                            (start, end, w / whole)),
                                  inputs.weights_dtype, cal, options.step_overhead_s)
                  for (start, end), w, t in zip(stages, weights, per_token)]
        timing = pipeline_step_time(models[0], models, inputs.gpu, spec.hidden_size)
    if groups is not None:
        return plan.budgets[limit], block_bytes[limit] / cap.block_size, timing
    return plan.budgets[limit], per_token[limit], timing


#: the arrivals whose mean lengths place a workload among the measured runs
SHAPE_SAMPLE = 10_000


def workload_shape(arrivals: Iterable[Arrival]) -> tuple[float, float] | None:
    """The mean prompt and output lengths of the first :data:`SHAPE_SAMPLE` ``arrivals`` (what
    a local calibration is fitted for), or None when there are none."""
    sample = list(islice(arrivals, SHAPE_SAMPLE))
    if not sample:
        return None
    return (sum(a.prompt for a in sample) / len(sample),
            sum(a.output for a in sample) / len(sample))


def resolve_calibration(plan: Plan, options: Options, default: str, arrivals=None):
    """The step-time calibration of a run: ``options.calibration`` (else ``default``, the
    engine's own) as given when it is a :class:`.timing.Calibration` or a fixed step time is
    set; else, for an engine with measured runs, its coefficients fitted on the runs nearest
    this plan and workload (:func:`.local.local_calibration`: GPU, model, weights dtype,
    tensor parallelism, the closed loop's concurrency, the mean prompt and output lengths of
    the first :data:`SHAPE_SAMPLE` arrivals or ``options.workload_shape``); else the name (the
    roofline)."""
    from .local import Query, local_calibration, model_key

    name = options.calibration or default
    if not isinstance(name, str) or options.step_time_s is not None:
        return name
    inputs = plan.inputs
    isl, osl = options.workload_shape or (None, None)
    if arrivals is not None and options.workload_shape is None:
        isl, osl = workload_shape(_replay(arrivals)[0]()) or (None, None)
    q = Query(gpu=inputs.gpu.name, model=model_key(plan.spec),
              weights_dtype=inputs.weights_dtype, tp=inputs.tp,
              concurrency=options.concurrency, isl=isl or None, osl=osl or None)
    return local_calibration(name, q) or name


def calibration_fields(timing: StepTime) -> dict:
    """The JSON record's ``calibration`` (its name; None for a fixed step time) and
    ``calibration_source`` (which fit: the local fit's runs, :func:`resolve_calibration`)."""
    cal = timing.calibration if timing.fixed_s is None else None
    return {"calibration": cal.name if cal else None,
            "calibration_source": cal.source if cal else None}


def engine_timing(plan: Plan, options: Options, kv_bytes_per_token: float,
                  calibration: str, arrivals=None) -> StepTime:
    """The step-time model of a one-stage plan: ``options``' calibration (else
    ``calibration``, the engine's own; fitted locally, :func:`resolve_calibration`), overhead
    or constant step, and transform."""
    inputs = plan.inputs
    figures = model_figures(plan.spec, plan.params,
                            weight_bytes(plan.params, inputs.weights_dtype) / inputs.tp,
                            kv_bytes_per_token, inputs.tp)
    timing = step_time_model(inputs.gpu, figures, inputs.weights_dtype,
                             resolve_calibration(plan, options, calibration, arrivals),
                             options.step_overhead_s, options.step_time_s)
    if options.timing_transform is not None:
        timing = options.timing_transform(timing)
    return timing


def loop_config(plan: Plan, options: Options, batched_tokens: int, seqs: int) -> Config:
    """The engine-neutral part of a loop's settings (max_len, timeline, closed loop, checks)."""
    return Config(batched_tokens, seqs, plan.inputs.max_len, options.timeline_interval_s,
                  options.check, options.concurrency, options.warmup)


def common_record(res: SimulationResult, engine: str) -> dict:
    """The fields every engine's ``kvcalc simulate`` JSON starts with."""
    plan, inp = res.plan, res.plan.inputs
    first = next(iter(res.runs.values()))
    return {
        "model": None,
        "gpu": inp.gpu.name,
        "engine": engine,
        "workload": res.description,
        "requests": first.totals.requests,
        "completed": first.totals.completed,
        "rejected": first.totals.rejected,
        "kv_budget_bytes": plan.budget.kv_bytes,
        "bytes_per_token": plan.bytes_per_token,
        "engine_version": plan.layout.version,
        "version_band": plan.layout.band,
        "max_len": inp.max_len,
        "prefix_caching": res.options.prefix_caching,
        "cpu_offload_bytes": 0,
        "step_time_model": res.timing.describe(),
        **calibration_fields(res.timing),
        "tp": inp.tp,
        "pp": inp.pp,
        "concurrency": res.options.concurrency,
        "warmup_requests": res.options.warmup,
    }


def _check_loop(options: Options) -> None:
    c, w = options.concurrency, options.warmup
    if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
        raise UsageError(f"invalid --concurrency {c}: must be a whole number of requests >= 1")
    if isinstance(w, bool) or not isinstance(w, int) or w < 0:
        raise UsageError(f"invalid --warmup {w}: must be a whole number of requests >= 0")


def replay_of(arrivals) -> tuple[Callable[[], Iterable[Arrival]], str, int | None]:
    """(a function returning fresh arrivals, their description, the trace's hash block)."""
    replay, description = _replay(arrivals)
    return replay, description, arrivals.hash_block if isinstance(arrivals, Trace) else None


def _replay(arrivals) -> tuple[Callable[[], Iterable[Arrival]], str]:
    if isinstance(arrivals, Trace):
        trace = arrivals
        return (lambda: iter(trace.arrivals)), trace.description
    return arrivals, "synthetic arrivals"


def _simulate_llamacpp(plan: Plan, arrivals, options: Options,
                       names: tuple[str, ...]) -> SimulationResult:
    """llama-server's slots (:class:`.contiguous.SlotsCache`) on the caches llama.cpp allocates
    for the plan (:func:`kvcalc.engines.llamacpp.allocate`, through ``kvcalc plan``)."""
    if options.cpu_offload_bytes:
        raise UsageError("--cpu-offload is a vLLM setting (llama.cpp has no CPU tier)")
    inputs = plan.inputs
    figures = plan.engine_figures
    alloc = figures.alloc
    sizes, cache = alloc.sizes, alloc.caches[0]
    slots, cells = sizes.n_stream, cache.cells_per_stream
    cell_bytes = cache.total_bytes // (slots * cells)      # bytes of one token of one slot
    budget_slots = figures.kv_budget / cell_bytes
    # no measured runs of llama.cpp to fit on: the uncalibrated roofline unless told otherwise
    timing = step_time_model(inputs.gpu, model_figures(plan.spec, plan.params,
                                                       figures.weights_bytes, cell_bytes, 1),
                             inputs.weights_dtype,
                             resolve_calibration(plan, options, "roofline", arrivals),
                             options.step_overhead_s, options.step_time_s)
    # llama-server's loop: every generating slot decodes one token, prompts fill the rest of
    # the n_batch tokens of a batch; at most one request per slot; a slot's context is n_ctx_seq
    cfg = Config(sizes.n_batch, slots, sizes.n_ctx_seq, options.timeline_interval_s,
                 options.check, options.concurrency, options.warmup)
    replay, description = _replay(arrivals)
    result = SimulationResult(plan, timing, options, description, usable_blocks=slots * cells,
                              config=cfg)
    for name in names:
        totals = run(replay(), SlotsCache(slots, cells, budget_slots), cfg, timing)
        result.runs[name] = AllocatorRun(name, totals, budget_slots, slots * cells)
    return result


def result_record(res: SimulationResult) -> dict:
    """The documented JSON of ``kvcalc simulate`` (docs/simulation.md)."""
    return ENGINES[res.plan.inputs.engine].record(res)


def _vllm_record(res: SimulationResult) -> dict:
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
        **calibration_fields(res.timing),
        "tp": inp.tp,
        "pp": inp.pp,
        "concurrency": res.options.concurrency,
        "warmup_requests": res.options.warmup,
        "allocators": {name: run_record(r, inp.tp * inp.pp) for name, r in res.runs.items()},
    }
    if res.groups is not None:
        rec["kv_cache_groups"] = groups_record(res)
    return rec


def groups_record(res: SimulationResult) -> list[dict]:
    """The KV cache groups a hybrid simulation replayed (one entry per group, in vLLM's order;
    ``peak_blocks_per_request``: the most one max_len request holds, vLLM's
    ``max_memory_usage_bytes / page``)."""
    inp, B = res.plan.inputs, res.groups.block_size
    out = []
    for spec, layers in zip(res.groups.specs, res.groups.layers):
        out.append({"kind": spec.kind, "layers": len(layers),
                    "window": spec.window or None,
                    "mamba_cache_mode": ("align" if spec.align else "none")
                    if spec.kind == MAMBA_GROUP else None,
                    "peak_blocks_per_request": spec.peak_blocks(inp.max_len, B,
                                                                inp.in_flight())})
    return out


def _llamacpp_record(res: SimulationResult) -> dict:
    first = next(iter(res.runs.values()))
    plan, inp, cfg = res.plan, res.plan.inputs, res.config
    figures = plan.engine_figures
    z = figures.alloc.sizes
    cache = figures.alloc.caches[0]
    return {
        "model": None,
        "gpu": inp.gpu.name,
        "engine": "llamacpp",
        "workload": res.description,
        "requests": first.totals.requests,
        "completed": first.totals.completed,
        "rejected": first.totals.rejected,
        "kv_budget_bytes": figures.kv_budget,
        "kv_allocated_bytes": figures.alloc.total_bytes,
        "bytes_per_token": cache.total_bytes // (z.n_stream * cache.cells_per_stream),
        "engine_version": figures.alloc.settings.version,
        "version_band": plan.layout.band,
        "slots": z.n_seq_max,
        "n_ctx": z.n_ctx,
        "n_ctx_seq": z.n_ctx_seq,
        "cells_per_slot": cache.cells_per_stream,
        "n_batch": z.n_batch,
        "max_len": cfg.max_len,
        "max_num_batched_tokens": cfg.max_num_batched_tokens,
        "max_num_seqs": cfg.max_num_seqs,
        "prefix_caching": False,
        "cpu_offload_bytes": 0,
        "step_time_model": res.timing.describe(),
        **calibration_fields(res.timing),
        "tp": 1,
        "concurrency": res.options.concurrency,
        "warmup_requests": res.options.warmup,
        "allocators": {name: run_record(r, 1) for name, r in res.runs.items()},
    }


def run_record(r: AllocatorRun, gpus: int = 1) -> dict:
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
        "tpot_s": t.tpot.summary(),
        "e2e_s": t.e2e.summary(),
        "throughput_modelled": throughput(t, gpus),
        "steps": t.steps,
        "seconds_modelled": round(secs, 6),
        "output_tokens_per_s_modelled": round(t.output_tokens / secs, 2) if secs else 0.0,
        "peak_used_fraction": round(t.peak_used_slots / r.budget_slots, 6)
        if r.budget_slots else 0.0,
    }


def throughput(t: Totals, gpus: int) -> dict:
    """Output tokens per second of the measured requests (warm-up left out) from the first one's
    arrival to the last one's finish: in all, per GPU, and per user (1 / mean time per output
    token)."""
    window = t.measured_end - t.measured_start if t.measured_start is not None else 0.0
    total = t.measured_output_tokens / window if window > 0 else 0.0
    tpot = t.tpot.total / t.tpot.n if t.tpot.n else 0.0
    return {"output_tokens_per_s": round(total, 2),
            "output_tokens_per_s_per_gpu": round(total / gpus, 2),
            "output_tokens_per_s_per_user": round(1 / tpot, 2) if tpot > 0 else 0.0,
            "window_s": round(window, 6)}


@dataclass(frozen=True)
class EngineSimulation:
    """What ``simulate`` does for one engine: refuse a plan it cannot replay (one line), replay
    the arrivals on the plan (one run per allocator), write the JSON record."""

    check: Callable[[Plan], None]
    simulate: Callable[..., SimulationResult]
    record: Callable[[SimulationResult], dict]


def _step_loop_engine(module) -> EngineSimulation:
    """An engine whose module (:mod:`.sglang`, :mod:`.trtllm`) gives ``check_plan``,
    ``settings`` (its config from the plan and options), ``capacity`` (pool and budget in token
    slots, KV bytes per token, its calibration, the loop's limits), ``run`` and ``record``."""

    def simulate_(plan: Plan, arrivals, options: Options, names) -> SimulationResult:
        settings = module.settings(plan, options)
        c = module.capacity(plan, settings)
        timing = engine_timing(plan, options, c["bytes_per_token"], c["calibration"],
                               arrivals)
        cfg = loop_config(plan, options, c["batched_tokens"], c["seqs"])
        replay, description, hash_block = replay_of(arrivals)
        result = SimulationResult(plan, timing, options, description,
                                  usable_blocks=c["usable_blocks"], config=cfg)
        result.engine_settings = settings
        for name in names:
            totals = module.run(replay(), cfg, timing, settings, c["budget_slots"],
                                hash_block or options.hash_block)
            result.runs[name] = AllocatorRun(name, totals, c["budget_slots"], c["pool_slots"])
        return result

    def record_(res: SimulationResult) -> dict:
        rec = common_record(res, res.plan.inputs.engine)
        rec.update(module.record(res.plan, res.engine_settings))
        rec["allocators"] = {n: run_record(r, res.plan.inputs.tp * res.plan.inputs.pp)
                             for n, r in res.runs.items()}
        return rec

    return EngineSimulation(module.check_plan, simulate_, record_)


#: the engines ``kvcalc simulate`` replays, by name (a table: no engine is named elsewhere)
ENGINES = {
    "vllm": EngineSimulation(_check_vllm, _simulate_vllm, _vllm_record),
    "llamacpp": EngineSimulation(_check_llamacpp, _simulate_llamacpp, _llamacpp_record),
    "sglang": _step_loop_engine(_sglang),
    "trtllm": _step_loop_engine(_trtllm),
}
