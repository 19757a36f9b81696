"""GPU sizing: the per-GPU memory budget, KV capacity, concurrency, parallelism and solvers.

Budget (per GPU, one pipeline stage; docs/planning.md):

    KV budget = total x gpu_util − weights − activations − non-torch − CUDA graphs

- total: the runtime-reported memory of the GPU (catalog), or ``--gpu 48GiB``;
- weights: the parameter count (kvcalc.params) x the weights dtype, divided by ``tp``; with
  ``pp`` each stage holds its layers, the first stage the embeddings and the last the LM head;
- activations: the peak of vLLM's profile forward over ``max_batched_tokens`` tokens,
  estimated as ``T x (4 x hidden + 3 x intermediate / tp) x 2 B`` (residual, norm, attention
  in/out, gated-MLP intermediates of the active experts) plus the sampler's dummy run over
  ``min(max_num_seqs, T)`` rows of the vocabulary: fp32 logits, fp32 probabilities, sorted
  fp32 logits and their int64 indices for top-k/top-p = 20 B per row per token of the vocabulary.
  Calibrated against llm-d's measured H100 runs (engines reference field.md §5.3): Llama-3.3-70B
  fp8 at TP 1 leaves -1.44 GiB for KV (kvcalc: -1.66 GiB), at TP 2 32.0 GiB (kvcalc 32.3 GiB);
- non-torch memory (NCCL buffers, cuBLAS workspaces): 0.5 GiB, 1 GiB with tp x pp > 1;
- CUDA graphs: 0.5 GiB (vLLM >= 0.20 subtracts its estimate; 0 with ``--vllm-era mid``);
- ``--overhead`` replaces the sum of the last three; ``--kv-budget`` replaces everything (the
  "Available KV cache memory" vLLM logs, per GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .arch import ModelSpec
from .budget import (ACTIVATION_BYTES, EXTENSIBLE, SAMPLER_BYTES_PER_LOGIT,  # noqa: F401
                     Budget,
                     activation_bytes, pp_partition, stage_weight_bytes)
from .errors import UsageError
from .hardware import GpuSpec
from .engines import cached_layout, get_engine
from .layout import KEEP_ALL, KEEP_NONE, Layout
from .params import ParamCount, count_parameters
from .units import MAX_TOKENS, GiB, cdiv, largest_satisfying
from .workload import AllocatorResult, Workload, compare_allocators, distinct, peak_bytes

TP_CHOICES = (1, 2, 4, 8)


@dataclass(frozen=True)
class PlanInputs:
    gpu: GpuSpec
    tp: int = 1
    pp: int = 1
    replicas: int = 1
    #: gpu_memory_utilization; None = the engine version's default (vLLM 0.34: 1.0 with the
    #: extensible KV cache; 0.92 from 0.20; 0.9 before)
    gpu_util: float | None = None
    weights_dtype: str = "bf16"
    kv_dtype: str = "auto"
    block_size: int | None = None          # None: 16, or the MLA backend's block size
    max_len: int = 4096
    max_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    overhead: int | None = None
    cuda_graph: int | None = None
    activation: int | None = None          # replaces the activation estimate
    non_torch: int | None = None           # replaces the non-torch default
    weights: int | None = None             # replaces the weights per GPU (e.g. from a log)
    kv_budget: int | None = None
    engine: str = "vllm"
    #: the engine version modelled (None: the engine's newest band)
    version: str | None = None
    async_scheduling: bool = True
    disable_hybrid: bool = False
    num_blocks_override: int | None = None
    prefix_caching: bool = True
    speculative_tokens: int = 0
    #: VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE (None: the band's default)
    chunked_local_hybrid: bool | None = None
    #: the free GPU memory the engine measures before loading weights (SGLang; None: estimated)
    free_memory: int | None = None
    #: settings only the planning engine takes, as (its setting name, value) pairs
    #: (SGLang's mem_fraction_static, TensorRT-LLM's free_gpu_memory_fraction, ...)
    engine_options: tuple[tuple[str, object], ...] = ()
    #: vLLM --enforce-eager: no CUDA graphs (so no full-graph Mamba check)
    enforce_eager: bool = False

    def option(self, name: str, default=None):
        """The value of the engine setting ``name`` given for this plan, else ``default``."""
        return dict(self.engine_options).get(name, default)

    def defaults(self, spec: ModelSpec | None = None):
        """What the planning engine does with the settings these inputs leave open
        (:meth:`kvcalc.engines.Engine.plan_defaults`: version rules, utilization, batch
        defaults, tokens in flight)."""
        return get_engine(self.engine).plan_defaults(self)

    def rules(self):
        """The engine configuration modelled: version band, settings and this GPU."""
        return self.defaults().rules

    def utilization(self) -> float:
        """--gpu-util, else the engine version's default."""
        return self.defaults().utilization

    @property
    def era(self) -> str:
        """The capacity report of the band ("new" or "mid" for vLLM)."""
        return self.rules().era

    def backend(self, spec: ModelSpec) -> str:
        """The attention backend that sets the default block ("" when it is the plain default)."""
        return get_engine(self.engine).plan_backend(spec, self)

    def block(self, spec: ModelSpec) -> int:
        """``--block-size``, else the planning engine's default for ``spec``."""
        if self.block_size is not None:
            return self.block_size
        return get_engine(self.engine).plan_block_size(spec, self)

    def in_flight(self) -> int:
        """``T`` for sliding/chunked block counts (the tokens the scheduler keeps in flight)."""
        return self.defaults().in_flight

    def batched_tokens(self) -> int:
        """--max-batched-tokens, else the engine's default for this GPU."""
        return self.defaults().batched_tokens

    def num_seqs(self) -> int:
        """--max-num-seqs, else the engine's default for this GPU."""
        return self.defaults().num_seqs


@dataclass(frozen=True)
class Plan:
    spec: ModelSpec
    inputs: PlanInputs
    params: ParamCount
    budgets: tuple[Budget, ...]            # one per pipeline stage
    layout: Layout                         # per GPU (tp applied)
    #: the planning engine's capacity figures (``engines.Engine.plan_figures``: ``key``,
    #: ``fits``, ``num_blocks``, ``kv_cache_tokens``, ``max_concurrency``, ``record()`` …)
    engine_figures: object
    contiguous: AllocatorResult
    paged: AllocatorResult
    workload: Workload
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def vllm(self):
        """vLLM's start-up figures (``VllmCapacity``) when vLLM planned, else None (kept for
        callers of the Python API; ``engine_figures`` is the engine-neutral form)."""
        return getattr(self.engine_figures, "capacity", None) \
            if getattr(self.engine_figures, "key", None) == "vllm" else None

    @property
    def budget(self) -> Budget:
        """The tightest stage's budget (the one that limits the replica)."""
        return min(self.budgets, key=lambda b: b.kv_bytes)

    @property
    def num_gpus(self) -> int:
        return self.inputs.tp * self.inputs.pp * self.inputs.replicas

    @property
    def bytes_per_token(self) -> int:
        """KV bytes one token costs on one GPU of the tightest pipeline stage (tp applied; with
        pp only that stage's layers)."""
        stage = min(range(len(self.budgets)), key=lambda i: self.budgets[i].kv_bytes)
        start, end = pp_partition(self.spec.num_layers, self.inputs.pp)[stage]
        return sum(c.bytes_per_token for c in self.layout.layers[start:end]
                   if c.keep != KEEP_NONE)

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens the KV budget holds at bytes_per_token (per GPU, windows not counted)."""
        bpt = self.bytes_per_token
        return self.budget.kv_bytes // bpt if bpt and self.budget.kv_bytes > 0 else 0

    @property
    def num_blocks(self) -> int:
        return self.engine_figures.num_blocks

    @property
    def fits(self) -> bool:
        return self.engine_figures.fits and self.budget.kv_bytes > 0


@dataclass(frozen=True)
class _SpecFacts:
    """What a plan asks of a ModelSpec again and again, computed once per spec object (hashing
    a ModelSpec walks every layer, which dominated the sweep)."""

    is_mla: bool
    kv_heads: int | None
    params: ParamCount


_FACTS: dict[int, tuple[ModelSpec, _SpecFacts]] = {}


def _facts(spec: ModelSpec) -> _SpecFacts:
    hit = _FACTS.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    facts = _SpecFacts(spec.is_mla, spec.kv_heads, count_parameters(spec))
    if len(_FACTS) > 256:
        _FACTS.clear()
    _FACTS[id(spec)] = (spec, facts)
    return facts


def plan_layout(spec: ModelSpec, inp: PlanInputs, block: int, tp: int) -> Layout:
    """The planning engine's layout of ``spec`` (registry), memoised per spec object."""
    return cached_layout(spec, inp.engine, inp.kv_dtype, version=inp.version, block_size=block,
                         tp=tp)


def compute_budgets(spec: ModelSpec, params: ParamCount, inp: PlanInputs) -> list[Budget]:
    """The KV budget of one GPU of every pipeline stage (one :class:`Budget` per stage).

    Public API (used by ``kvcalc plot``): ``compute_budgets(spec, count_parameters(spec),
    PlanInputs(gpu=find_gpu("h100"), tp=2))[0].kv_bytes`` is the bytes one GPU has for KV.
    """
    stages = pp_partition(spec.num_layers, inp.pp)
    if inp.kv_budget is not None:
        return [Budget(inp.gpu.memory_bytes, inp.utilization(), 0, 0, 0, 0, 0, inp.kv_budget,
                       "--kv-budget")] * len(stages)
    return get_engine(inp.engine).plan_budgets(spec, params, inp)


#: limits of the planner's counts (docs/security.md): vLLM's largest blocks (hybrid models
#: aligned to a Mamba state) are a few thousand tokens; the largest clusters a few thousand GPUs
MAX_BLOCK_SIZE = 1 << 16
MAX_GPUS = 1 << 16


def validate(spec: ModelSpec, inp: PlanInputs) -> None:
    if inp.gpu_util is not None and not 0 < inp.gpu_util <= 1:
        raise UsageError(f"invalid --gpu-util {inp.gpu_util}: must be in (0, 1]")
    for name, value, most in (("--tp", inp.tp, MAX_GPUS), ("--pp", inp.pp, MAX_GPUS),
                              ("--replicas", inp.replicas, MAX_GPUS),
                              ("--max-batched-tokens", inp.max_batched_tokens, MAX_TOKENS),
                              ("--max-num-seqs", inp.max_num_seqs, MAX_TOKENS),
                              ("--block-size", inp.block_size, MAX_BLOCK_SIZE)):
        if value is not None and not 1 <= value <= most:
            raise UsageError(f"invalid {name} {value}: must be from 1 to {most:,} "
                             "(docs/security.md)")
    if inp.num_blocks_override is not None and inp.num_blocks_override < 0:
        raise UsageError(f"invalid --num-gpu-blocks-override {inp.num_blocks_override}: "
                         "must not be negative")
    if inp.speculative_tokens < 0:
        raise UsageError(f"invalid --num-speculative-tokens {inp.speculative_tokens}: must not "
                         "be negative")
    refusal = get_engine(inp.engine).tp_refusal(spec, inp.tp)
    if refusal:
        raise UsageError(refusal)
    if inp.pp > spec.num_layers:
        raise UsageError(f"--pp {inp.pp} exceeds the {spec.num_layers} layers")


def make_plan(spec: ModelSpec, inp: PlanInputs, workload: Workload) -> Plan:
    """Everything ``kvcalc plan`` prints, for one model, one parallel layout and one workload.

    Public API: ``make_plan(spec, PlanInputs(gpu=find_gpu("h100"), max_len=8192),
    workload.fixed(1024, 256))`` gives ``.budget`` (tightest stage), ``.vllm`` (vLLM's
    start-up figures), ``.contiguous`` / ``.paged`` (:class:`~kvcalc.workload.AllocatorResult`
    per replica) and ``.warnings``. Raises :class:`~kvcalc.errors.UsageError` for invalid inputs;
    a plan that does not fit is returned with ``fits`` False, never raised.
    """
    validate(spec, inp)
    facts = _facts(spec)
    params = facts.params
    budgets = compute_budgets(spec, params, inp)
    block = inp.block(spec)
    layout = plan_layout(spec, inp, block, inp.tp)
    token_layout = plan_layout(spec, inp, 1, inp.tp)
    engine = get_engine(inp.engine)
    figures = engine.plan_figures(spec, inp, layout, budgets)
    contiguous, paged = _allocators(layout, token_layout, workload, inp, budgets)
    warnings = []
    kv = facts.kv_heads
    if kv and not facts.is_mla and inp.tp > kv:
        warnings.append(f"--tp {inp.tp} exceeds the model's {kv} KV heads: each GPU keeps a "
                        f"replicated copy (KV per GPU stops shrinking past tp {kv})")
    if spec.max_position_embeddings and inp.max_len > spec.max_position_embeddings:
        warnings.append(f"--max-len {inp.max_len:,} exceeds the model's context length "
                        f"({spec.max_position_embeddings:,})")
    notes = engine.plan_notes(spec, inp, layout, figures, budgets, paged)
    return Plan(spec, inp, params, tuple(budgets), layout, figures, contiguous, paged, workload,
                tuple(warnings), tuple(notes))


def _allocators(layout: Layout, token_layout: Layout, workload: Workload, inp: PlanInputs,
                budgets: list[Budget]) -> tuple[AllocatorResult, AllocatorResult]:
    """Contiguous and paged for the workload on one GPU. With pipeline parallelism every stage
    holds its own layers of every sequence in its own budget; the stage that fits the fewest
    sequences limits the replica (taken per allocator)."""
    if len(budgets) == 1:
        return compare_allocators(layout, token_layout, workload, inp.max_len,
                                  max(0, budgets[0].kv_bytes))
    results = []
    for (start, end), b in zip(pp_partition(layout.spec.num_layers, len(budgets)), budgets):
        paged_stage = replace(layout, layers=layout.layers[start:end])
        token_stage = replace(token_layout, layers=token_layout.layers[start:end])
        results.append(compare_allocators(paged_stage, token_stage, workload, inp.max_len,
                                          max(0, b.kv_bytes)))
    contiguous = min((r[0] for r in results), key=lambda a: a.max_sequences)
    paged = min((r[1] for r in results), key=lambda a: a.max_sequences)
    return contiguous, paged


# --------------------------------------------------------------------------------------------
# Solvers (for engines whose figures they search: ``Engine.solves``)


def _figures(spec: ModelSpec, inp: PlanInputs, budgets: list[Budget]):
    """The planning engine's figures for ``inp`` on ``budgets`` (the solvers' one question)."""
    layout = plan_layout(spec, inp, inp.block(spec), inp.tp)
    return get_engine(inp.engine).plan_figures(spec, inp, layout, budgets)


def solve_max_len(spec: ModelSpec, inp: PlanInputs, concurrency: int, limit: int) -> int:
    """Largest max length (<= limit) at which the engine's maximum concurrency is
    >= ``concurrency`` (binary search: the per-request cost is monotonic but not linear for
    windowed models)."""
    budgets = compute_budgets(spec, _facts(spec).params, inp)

    def ok(length: int) -> bool:
        f = _figures(spec, replace(inp, max_len=length), budgets)
        return f.fits and f.max_concurrency >= concurrency

    return largest_satisfying(ok, limit)


@dataclass(frozen=True)
class Sizing:
    gpu: GpuSpec
    tp: int
    pp: int
    replicas: int
    per_replica_concurrency: float   # min(vLLM's KV concurrency, max_num_seqs)
    fits: bool
    reason: str = ""
    kv_concurrency: float = 0.0      # vLLM's "Maximum concurrency" (KV cache only)
    limited_by: str = "kv cache"     # or "max_num_seqs"

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.replicas


def smallest_deployment(spec: ModelSpec, inp: PlanInputs, target: int,
                        max_pp: int = 8) -> Sizing:
    """Fewest GPUs of ``inp.gpu`` (TP in 1/2/4/8 within a node, then PP across nodes, then
    replicas) whose engine's maximum concurrency at ``inp.max_len`` reaches ``target``. A replica
    never runs more than ``max_num_seqs`` sequences at once, whatever its KV cache holds."""
    best: Sizing | None = None
    params = _facts(spec).params
    for pp in (1, 2, 4, 8):
        if pp > max_pp or pp > spec.num_layers:
            break
        for tp in TP_CHOICES:
            if get_engine(inp.engine).tp_refusal(spec, tp):
                continue
            trial = replace(inp, tp=tp, pp=pp, replicas=1)
            budgets = compute_budgets(spec, params, trial)
            if min(b.kv_bytes for b in budgets) <= 0:
                continue
            cap = _figures(spec, trial, budgets)
            if not cap.fits or cap.max_concurrency <= 0:
                continue
            seqs = trial.num_seqs()
            effective = min(cap.max_concurrency, seqs)
            replicas = max(1, cdiv(target * 1000, int(effective * 1000)))
            if effective * replicas < target:
                replicas += 1
            s = Sizing(inp.gpu, tp, pp, replicas, effective, True, "", cap.max_concurrency,
                       "max_num_seqs" if cap.max_concurrency > seqs else "kv cache")
            if best is None or (s.num_gpus, s.tp * s.pp) < (best.num_gpus, best.tp * best.pp):
                best = s
    if best is None:
        return Sizing(inp.gpu, 0, 0, 0, 0.0, False,
                      f"one request of {inp.max_len:,} tokens does not fit on up to "
                      f"{8 * max_pp} {inp.gpu.name} GPUs")
    return best
