"""vLLM (v1 engine, PagedAttention): its layout, its version bands, and what it prints at
start-up (GPU blocks, KV cache size, maximum concurrency).

Layout: pages of ``block_size`` tokens per layer; a sequence holds ``ceil(n / block)`` blocks of
each full layer; sliding-window layers release blocks that fall wholly outside the window,
chunked-local layers release completed chunks; MLA caches the latent once per layer (one
"head", not split by tensor parallelism); KV heads per GPU are ``max(1, kv_heads // tp)``;
Mamba-style states keep ``conv_kernel - 1`` columns and one state per sequence, in the model
dtype unless the config sets ``mamba_ssm_cache_dtype``.

Capacity: reimplements, from a :class:`~kvcalc.engines.cache.Layout` laid out for ``vllm``, the rules of
``vllm/v1/core/kv_cache_utils.py`` and ``kv_cache_interface.py`` (see
../shared/reference/engines.md Part A and docs/planning.md):

- one *spec* per layer (full / sliding / chunked attention or MLA, Mamba-style state); a page
  is one block of one layer; layers with nothing to cache (KV sharing, MLP-only) have no spec;
- hybrid models (more than one spec): pages are unified (smaller pages scale their block size,
  or are padded), layers are bucketed by spec and split into groups of ``group_size`` layers
  (``max`` bucket size if it is below 1.5 x the smallest, else the smallest); memory per block
  id is ``group_size`` pages; attention+Mamba hybrids first enlarge the attention block size so
  an attention page holds a Mamba state;
- ``num_blocks = available // bytes_per_block`` per worker, the minimum across pipeline stages;
- blocks one request needs per group: full ``ceil(L/B)``; sliding ``ceil(min(W-1+T, L)/B) + 1``;
  chunked ``ceil(min(C+T, L)/B)``; state 1. ``T`` is the tokens in flight
  (:func:`in_flight_tokens`): ``max_num_batched_tokens`` in v0.9–v0.19; from v0.20
  ``max_concurrent_batches x max_num_batched_tokens`` (2 batches with async scheduling, the
  default, at PP 1; PP batches with pipeline parallelism);
- ``--disable-hybrid-kv-cache-manager`` turns sliding/chunked layers into full attention
  (every layer keeps every token; ``unify_hybrid_kv_cache_specs``);
- ``max concurrency = num_blocks / sum of blocks needed``; "GPU KV cache size" is
  ``int(concurrency x L)`` tokens (v0.20+), ``num_blocks // groups x B`` (v0.9–v0.19);
- one block (the null block) is never usable (v0.20+), and a request of ``max_model_len``
  must fit or vLLM refuses to start, estimating the largest length that would fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache

from .. import arch
from ..arch import CHUNKED, FULL, MLA, SLIDING, AttentionLayer, MLALayer, ModelSpec, StateLayer
from ..dtypes import DTYPES, KVDtype, resolve_kv_dtype
from ..errors import UsageError
from ..units import GiB, cdiv, largest_satisfying
from . import Band, Engine, Setting, register
from .cache import (KEEP_ALL, KEEP_CHUNK, KEEP_NONE, KEEP_WINDOW, LayerCache, Layout,
                    attention_bytes_per_token, attention_formula, mla_latent_bytes_per_token,
                    mla_latent_formula, no_cache_formula, state_bytes, state_formula)

ERAS = ("new", "mid")
#: vLLM rounds the enlarged attention block of attention+Mamba hybrids to this alignment
MAMBA_HYBRID_BLOCK_ALIGNMENT = 16
MAMBA = "mamba"


DEFAULT_BLOCK_SIZE = 16          # vLLM CacheConfig default on CUDA/ROCm


#: vLLM's DSA indexer key cache is fp8 with one fp32 scale per 128 values
#: (``index_head_dim + index_head_dim // 128 * 4`` bytes per token per layer)
VLLM_INDEXER_QUANT_BLOCK = 128


def vllm_indexer_bytes_per_token(layer: MLALayer) -> int:
    """DeepSeek-V3.2 lightning-indexer keys: vLLM stores ``index_head_dim`` fp8 values plus one
    fp32 scale per :data:`VLLM_INDEXER_QUANT_BLOCK` values, whatever the KV dtype."""
    if not layer.indexer_head_dim:
        return 0
    d = layer.indexer_head_dim
    return d + d // VLLM_INDEXER_QUANT_BLOCK * 4


def vllm_kv_heads_per_gpu(kv_heads: int, tp: int) -> int:
    """vLLM ``ModelConfig.get_num_kv_heads``: ``max(1, kv_heads // tp)`` (replicated past kv)."""
    return max(1, kv_heads // tp)


@lru_cache(maxsize=256)
def vllm_layout(spec: ModelSpec, kv_dtype: str = "auto", block_size: int = DEFAULT_BLOCK_SIZE,
                tp: int = 1, version: str | None = None) -> Layout:
    """``spec`` laid out by vLLM ``version`` (default: the newest band), per GPU at TP ``tp``."""
    if tp < 1:
        raise UsageError(f"invalid tensor-parallel size {tp}: must be at least 1")
    if block_size < 1:
        raise UsageError(f"invalid block size {block_size}: must be at least 1")
    version = version or VLLM.default_version
    band = VLLM.band(version)
    dtype = resolve_kv_dtype(kv_dtype, spec.dtype)
    return _vllm_layout(spec, dtype, block_size, tp, version, band)


def _vllm_layout(spec: ModelSpec, dtype: KVDtype, block_size: int, tp: int, version: str,
                 band: Band) -> Layout:
    notes = [f"vLLM PagedAttention, block size {block_size} tokens"]
    if tp > 1:
        notes.append(f"tensor parallel {tp}: figures are per GPU")
        kv = spec.kv_heads
        if kv is not None and not spec.is_mla and tp > kv:
            notes.append(f"tp {tp} exceeds {kv} KV heads: each GPU holds a replicated head")
    if dtype.name == "int4":
        notes.append("vLLM has no int4 KV cache; figures model a grouped int4 layout")
    model_float = DTYPES[spec.dtype].element_bytes
    out: list[LayerCache] = []
    memo: dict[int, LayerCache] = {}
    for i, layer in enumerate(spec.layers):
        if id(layer) not in memo:
            memo[id(layer)] = _vllm_layer(i, layer, dtype, block_size, tp, model_float)
        out.append(replace(memo[id(layer)], index=i))
    return Layout(spec, "vllm", dtype, tuple(out), block_size, tp, version, band.name,
                  tuple(notes))


def _vllm_layer(i: int, layer: arch.Layer, dtype: KVDtype, block_size: int, tp: int,
                model_float: int) -> LayerCache:
    if isinstance(layer, AttentionLayer):
        heads = vllm_kv_heads_per_gpu(layer.kv_heads, tp)
        bpt = attention_bytes_per_token(heads, layer.head_dim_k, layer.head_dim_v, dtype)
        keep = {arch.FULL: KEEP_ALL, arch.SLIDING: KEEP_WINDOW, arch.CHUNKED: KEEP_CHUNK}[layer.kind]
        text = attention_formula(heads, layer, dtype) + f", whole blocks of {block_size}"
        if layer.kind == arch.SLIDING:
            text += f", blocks wholly outside the window W = {layer.window:,} freed"
        elif layer.kind == arch.CHUNKED:
            text += f", blocks of completed chunks (C = {layer.window:,}) freed"
        return LayerCache(i, layer.kind, bpt, keep, layer.window, block_size, formula=text)
    if isinstance(layer, MLALayer):
        extra = vllm_indexer_bytes_per_token(layer)
        text = mla_latent_formula(layer, dtype) + f", whole blocks of {block_size}"
        if extra:
            text += (f" + indexer key {layer.indexer_head_dim} fp8 + "
                     f"{layer.indexer_head_dim // VLLM_INDEXER_QUANT_BLOCK} fp32 scales")
        return LayerCache(i, layer.kind, mla_latent_bytes_per_token(layer, dtype) + extra,
                          KEEP_ALL, None, block_size, formula=text)
    if isinstance(layer, StateLayer):
        ssm_b = DTYPES[layer.ssm_dtype].element_bytes if layer.ssm_dtype else model_float
        fixed = state_bytes(layer, layer.conv_kernel - 1, model_float, ssm_b, tp)
        text = state_formula(layer, layer.conv_kernel - 1, model_float, ssm_b, tp)
        return LayerCache(i, layer.kind, 0, KEEP_NONE, fixed_bytes=fixed, formula=text)
    return LayerCache(i, layer.kind, 0, KEEP_NONE, formula=no_cache_formula(layer))



@dataclass(frozen=True)
class KVSpec:
    """One layer as vLLM's KVCacheSpec: its kind, page (one block of this layer) and block."""

    kind: str            # full | sliding | chunked | mamba
    page_bytes: int
    block_size: int
    window: int | None = None
    #: Mamba only: extra state blocks kept for speculative decoding (``num_speculative_blocks``)
    spec_blocks: int = 0

    def blocks_needed(self, max_len: int, batched_tokens: int) -> int:
        """Blocks one request of ``max_len`` tokens needs (``max_memory_usage_bytes / page``)."""
        bs = self.block_size
        if self.kind == SLIDING:
            return cdiv(min(self.window - 1 + batched_tokens, max_len), bs) + 1
        if self.kind == CHUNKED:
            return cdiv(min(self.window + batched_tokens, max_len), bs)
        if self.kind == MAMBA:
            return 1 + self.spec_blocks  # one state per request (mamba_cache_mode "none")
        return cdiv(max_len, bs)


@dataclass(frozen=True)
class Group:
    spec: KVSpec
    layers: tuple[int, ...]


@dataclass(frozen=True)
class Grouping:
    """vLLM's KV cache groups for one model (all pipeline stages together)."""

    groups: tuple[Group, ...]
    #: "uniform" (one spec), "uniform_type" (all full attention, page sizes differ),
    #: "hybrid", or "attention_free"
    mode: str
    group_size: int = 0
    padding_layers: int = 0
    notes: tuple[str, ...] = ()
    pages: dict[int, int] = field(default_factory=dict)  # layer -> page bytes after unification

    @property
    def block_size(self) -> int:
        sizes = [g.spec.block_size for g in self.groups if g.spec.kind != MAMBA]
        return min(sizes) if sizes else 0

    @cached_property
    def _bytes_per_block_all(self) -> int:
        return self._bytes_per_block(None)

    def bytes_per_block(self, layers: set[int] | None = None) -> int:
        """Memory of one block id on a worker holding ``layers`` (all layers by default)."""
        if layers is None:
            return self._bytes_per_block_all
        return self._bytes_per_block(layers)

    def _bytes_per_block(self, layers: set[int] | None) -> int:
        if not self.groups:
            return 0
        per_group = []
        for g in self.groups:
            held = [l for l in g.layers if layers is None or l in layers]
            per_group.append(sum(self.pages[l] for l in held))
        if self.mode == "hybrid" and layers is None:
            return self.group_size * max(g.spec.page_bytes for g in self.groups)
        return max(per_group)

    @cached_property
    def _spec_counts(self) -> tuple[tuple[KVSpec, int], ...]:
        counts: dict[KVSpec, int] = {}
        for g in self.groups:
            counts[g.spec] = counts.get(g.spec, 0) + 1
        return tuple(counts.items())

    def blocks_needed(self, max_len: int, batched_tokens: int) -> int:
        """Blocks one request of ``max_len`` tokens needs, summed over the groups."""
        return sum(n * spec.blocks_needed(max_len, batched_tokens)
                   for spec, n in self._spec_counts)


def in_flight_tokens(batched_tokens: int, era: str = "new", pp: int = 1,
                     async_scheduling: bool = True) -> int:
    """``T`` in the sliding-window/chunked block counts.

    v0.9–v0.19 (``mid``): ``max_num_batched_tokens``. v0.20+ (``new``): ``max_in_flight_tokens``
    = ``max_concurrent_batches x max_num_batched_tokens``, where ``max_concurrent_batches`` is
    the PP size with pipeline parallelism, 2 with async scheduling (on by default) at PP 1, else 1.
    """
    if era != "new":
        return batched_tokens
    if pp > 1:
        return pp * batched_tokens
    return (2 if async_scheduling else 1) * batched_tokens


def layer_specs(layout: Layout, max_len: int, disable_hybrid: bool = False) -> dict[int, KVSpec]:
    """Layer index -> KVSpec, with vLLM's attention block enlargement for Mamba hybrids.

    ``disable_hybrid`` (``--disable-hybrid-kv-cache-manager``) makes every sliding/chunked layer
    a full-attention spec, as ``unify_hybrid_kv_cache_specs`` does; vLLM refuses this when the
    model has no full-attention layer and its layer types differ.
    """
    if layout.engine != "vllm":
        raise UsageError("vLLM capacity figures need the vllm layout")
    specs: dict[int, KVSpec] = {}
    states = [c for c in layout.layers if c.fixed_bytes]
    attn = [c for c in layout.layers if c.keep != KEEP_NONE]
    block = layout.block_size or 16
    if states and attn:
        # HybridAttentionMambaModelConfig: attention pages must hold one Mamba state
        mamba_page = max(c.fixed_bytes for c in states)
        per_token = max(c.bytes_per_token for c in attn)
        align = MAMBA_HYBRID_BLOCK_ALIGNMENT
        needed = align * cdiv(mamba_page, align * per_token)
        block = max(block, needed)
    for c in layout.layers:
        if c.fixed_bytes:
            page = block * max(a.bytes_per_token for a in attn) if attn else c.fixed_bytes
            specs[c.index] = KVSpec(MAMBA, page, max_len)
        elif c.keep != KEEP_NONE:
            kind = FULL if c.kind == MLA else c.kind
            specs[c.index] = KVSpec(kind, block * c.bytes_per_token, block, c.window)
    if disable_hybrid and len({s.kind for s in specs.values()}) > 1:
        if not any(s.kind == FULL for s in specs.values()):
            raise UsageError("--disable-hybrid-kv-cache-manager needs at least one full-attention "
                             "layer when layer types differ (vLLM raises ValueError)")
        specs = {i: KVSpec(FULL, s.page_bytes, s.block_size, None)
                 if s.kind in (SLIDING, CHUNKED) else s for i, s in specs.items()}
    return specs


def kv_cache_groups(specs: dict[int, KVSpec]) -> Grouping:
    """``get_kv_cache_groups``: one group, a uniform-type group, or hybrid groups."""
    if not specs:
        return Grouping((), "attention_free")
    distinct = set(specs.values())
    layers = sorted(specs)
    pages = {l: specs[l].page_bytes for l in layers}
    if len(distinct) == 1:
        return Grouping((Group(specs[layers[0]], tuple(layers)),), "uniform", len(layers), 0,
                        (), pages)
    if all(s.kind == FULL for s in distinct) and len({s.block_size for s in distinct}) == 1:
        spec = next(iter(distinct))
        return Grouping((Group(spec, tuple(layers)),), "uniform_type", len(layers), 0,
                        ("full-attention layers with different page sizes: one group "
                         "(UniformTypeKVCacheSpecs), a block id spans every layer",), pages)
    # unify page sizes: scale block sizes of smaller pages, pad where not divisible
    max_page = max(s.page_bytes for s in distinct)
    unified: dict[KVSpec, KVSpec] = {}
    notes = []
    for s in distinct:
        if s.page_bytes == max_page or s.kind == MAMBA:
            unified[s] = KVSpec(s.kind, max_page, s.block_size, s.window, s.spec_blocks)
        elif max_page % s.page_bytes == 0:
            ratio = max_page // s.page_bytes
            unified[s] = KVSpec(s.kind, max_page, s.block_size * ratio, s.window, s.spec_blocks)
            notes.append(f"{s.kind} layers: block size scaled to {s.block_size * ratio} so pages "
                         f"are equal")
        else:
            unified[s] = KVSpec(s.kind, max_page, s.block_size, s.window, s.spec_blocks)
            notes.append(f"{s.kind} layers: page padded from {s.page_bytes:,} to {max_page:,} B")
    buckets: dict[KVSpec, list[int]] = {}
    for l in layers:
        buckets.setdefault(unified[specs[l]], []).append(l)
    sizes = [len(v) for v in buckets.values()]
    lo, hi = min(sizes), max(sizes)
    group_size = hi if hi < lo * 1.5 else lo
    groups: list[Group] = []
    padding = 0
    for spec, members in buckets.items():
        n_groups = cdiv(len(members), group_size)
        pad = n_groups * group_size - len(members)
        if pad:
            padding += pad
            notes.append(f"Add {pad} padding layers, may waste at most "
                         f"{100 * pad / len(members):.2f}% KV cache memory ({spec.kind} layers)")
        for i in range(n_groups):
            groups.append(Group(spec, tuple(members[i::n_groups])))
    return Grouping(tuple(groups), "hybrid", group_size, padding, tuple(notes),
                    {l: max_page for l in layers})


_GROUPING_CACHE: dict[tuple[int, int, bool],
                     tuple[Layout, dict[int, KVSpec], Grouping, tuple[str, ...]]] = {}


_HAS_STATE: dict[int, tuple[Layout, bool]] = {}


def _specs_and_groups(layout: Layout, max_len: int,
                      disable_hybrid: bool) -> tuple[dict[int, KVSpec], Grouping, tuple[str, ...]]:
    """layer_specs + kv_cache_groups (+ vLLM's block-size notes), memoised per layout object
    (layouts are cached and immutable; the grouping only depends on max_len through the Mamba
    block size)."""
    state = _HAS_STATE.get(id(layout))
    if state is None or state[0] is not layout:
        if len(_HAS_STATE) > 4096:
            _HAS_STATE.clear()
        state = _HAS_STATE[id(layout)] = (layout, any(c.fixed_bytes for c in layout.layers))
    key = (id(layout), max_len if state[1] else 0, disable_hybrid)
    hit = _GROUPING_CACHE.get(key)
    if hit is not None and hit[0] is layout:
        return hit[1], hit[2], hit[3]
    specs = layer_specs(layout, max_len, disable_hybrid)
    grouping = kv_cache_groups(specs)
    notes = grouping.notes
    attn_blocks = {sp.block_size for sp in specs.values() if sp.kind != MAMBA}
    if any(sp.kind == MAMBA for sp in specs.values()) and layout.block_size and \
            attn_blocks and min(attn_blocks) > layout.block_size:
        notes = (f"Setting attention block size to {min(attn_blocks)} tokens to ensure that "
                 f"attention page size is >= mamba page size (vLLM's log line)",) + notes
    if len(_GROUPING_CACHE) > 4096:
        _GROUPING_CACHE.clear()
    _GROUPING_CACHE[key] = (layout, specs, grouping, notes)
    return specs, grouping, notes


def pp_partition(num_layers: int, pp: int) -> list[tuple[int, int]]:
    """``get_pp_indices``: equal stages, the remainder added from the second-to-last stage
    backwards. Returns (start, end) per stage."""
    if pp < 1 or pp > num_layers:
        raise UsageError(f"invalid pipeline-parallel size {pp} for {num_layers} layers")
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    out, start = [], 0
    for n in parts:
        out.append((start, start + n))
        start += n
    return out


@dataclass(frozen=True)
class VllmCapacity:
    """vLLM's start-up figures for one engine (one TP x PP replica)."""

    num_blocks: int
    block_size: int
    kv_cache_tokens: int
    max_concurrency: float
    max_model_len: int
    groups: int
    bytes_per_block: int
    blocks_per_request: int
    fits: bool
    needed_bytes: int              # KV one max_model_len request needs (+ the null block)
    available_bytes: int           # the smallest per-stage budget
    estimated_max_model_len: int | None
    notes: tuple[str, ...] = ()

    def log_lines(self) -> list[str]:
        """The start-up lines as vLLM formats them."""
        if not self.fits:
            return [vllm_error_message(self)]
        return [f"# GPU blocks: {self.num_blocks:,}",
                f"GPU KV cache size: {self.kv_cache_tokens:,} tokens",
                f"Maximum concurrency for {self.max_model_len:,} tokens per request: "
                f"{self.max_concurrency:.2f}x"]


def vllm_error_message(cap: VllmCapacity) -> str:
    """vLLM's ValueError text from ``check_enough_kv_cache_memory`` (its wording, typo kept)."""
    if cap.available_bytes <= 0:
        return ("No available memory for the cache blocks. Try increasing "
                "`gpu_memory_utilization` when initializing the engine. See "
                "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.")
    est = cap.estimated_max_model_len
    estimate = (f"Based on the available memory, the estimated maximum model length is {est}."
                if est else "The available memory cannot hold even one block of a request.")
    return (f"To serve at least one request with the models's max seq len ({cap.max_model_len}), "
            f"({cap.needed_bytes / GiB:.2f} GiB KV cache is needed, which is larger than the "
            f"available KV cache memory ({cap.available_bytes / GiB:.2f} GiB). {estimate} Try "
            "increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
            "initializing the engine.")


def estimate_max_model_len(grouping: Grouping, available: int, max_len: int,
                           batched_tokens: int, null_block: bool = False) -> int:
    """Largest L in [1, max_len] whose request fits ``available`` (binary search, as vLLM)."""
    per_block = grouping.bytes_per_block()
    budget = available - (per_block if null_block else 0)

    def fits(length: int) -> bool:
        return per_block * grouping.blocks_needed(length, batched_tokens) <= budget

    return largest_satisfying(fits, max_len)


def vllm_capacity(layout: Layout, available_per_stage: list[int], max_len: int,
                  batched_tokens: int, era: str = "new",
                  num_blocks_override: int | None = None,
                  disable_hybrid: bool = False) -> VllmCapacity:
    """vLLM's figures for ``layout`` (per GPU, tp applied) with one budget per PP stage.

    ``batched_tokens`` is ``T`` of the sliding/chunked block counts, already multiplied by the
    concurrent batches (:func:`in_flight_tokens`).
    """
    if era not in ERAS:
        raise UsageError(f"unknown vLLM era '{era}': choose one of {', '.join(ERAS)}")
    specs, grouping, notes = _specs_and_groups(layout, max_len, disable_hybrid)
    n_layers = len(layout.layers)
    stages = pp_partition(n_layers, len(available_per_stage))
    if grouping.mode == "attention_free":
        return VllmCapacity(1, 0, 0, float("inf"), max_len, 0, 0, 0, True, 0,
                            min(available_per_stage), None, ("attention-free model",))
    blocks_needed = grouping.blocks_needed(max_len, batched_tokens)
    null = era == "new"
    per_stage_blocks = []
    worst = None
    for (start, end), avail in zip(stages, available_per_stage):
        if len(stages) > 1:
            per_block = grouping.bytes_per_block({l for l in specs if start <= l < end})
        else:
            per_block = grouping.bytes_per_block()
        blocks = max(0, avail // per_block) if per_block else 0
        per_stage_blocks.append(blocks)
        if worst is None or blocks < worst[0]:
            worst = (blocks, avail, per_block)
    num_blocks = min(per_stage_blocks)
    if num_blocks_override is not None:
        num_blocks = num_blocks_override
    _, avail, per_block = worst
    if num_blocks_override is not None:
        # vLLM >= 0.20 plans the check and the length estimate against override x block bytes
        avail = num_blocks_override * per_block
    needed = per_block * blocks_needed + (per_block if null else 0)
    fits = avail > 0 and needed <= avail and (num_blocks - (1 if null else 0)) >= blocks_needed
    est = None
    if not fits:
        est = estimate_max_model_len(grouping, avail, max_len, batched_tokens, null_block=null)
    concurrency = num_blocks / blocks_needed
    n_groups = len(grouping.groups)
    if era == "new":
        tokens = int(concurrency * max_len)
    else:
        tokens = num_blocks // n_groups * grouping.block_size
    return VllmCapacity(num_blocks, grouping.block_size, tokens, concurrency, max_len, n_groups,
                        grouping.bytes_per_block(), blocks_needed, fits, needed, avail, est,
                        notes)


# --------------------------------------------------------------------------------------------
# The engine: settings, version bands, registry entry

BANDS = (
    Band("0.9-0.19", (0, 9), (0, 19),
         ("GPU KV cache size = num_blocks // groups x block_size (_report_kv_cache_config)",
          "sliding/chunked layers reserve max_num_batched_tokens in flight",
          "no null block; CUDA graphs captured after the KV cache and not counted"),
         ("vllm-project/vllm vllm/v1/core/kv_cache_utils.py (_report_kv_cache_config, "
          "get_max_concurrency_for_kv_cache_config)",)),
    Band("0.20-0.32", (0, 20), (0, 32),
         ("GPU KV cache size = int(max concurrency x max_model_len) (get_kv_cache_capacity, "
          "PRs #37429 and #40384)",
          "max_in_flight_tokens = max_concurrent_batches x max_num_batched_tokens (2 batches "
          "with async scheduling at PP 1)",
          "the null block is held back in the start-up check",
          "CUDA graph memory estimated and subtracted by default (PR #30515, default from "
          "0.21)"),
         ("vllm-project/vllm vllm/v1/core/kv_cache_utils.py (get_kv_cache_capacity), "
          "vllm/config/vllm.py (max_in_flight_tokens), vllm/v1/worker/gpu_worker.py",)),
)


class Vllm(Engine):
    name = "vllm"
    display_name = "vLLM"
    package = "vllm"
    bands = BANDS
    newest_checked = "0.33.0"
    default_version = "0.32"
    version_flag = "--vllm-version"
    version_example = "0.33"
    plans = True
    tensor_parallel = True
    settings = (
        Setting("block_size", None, "--block-size",
                "tokens per KV block; None = the attention backend's choice (16, MLA backends "
                "by GPU and KV dtype)"),
        Setting("kv_cache_dtype", "auto", "--kv-dtype", "auto = the model dtype"),
        Setting("tensor_parallel_size", 1, "--tp", "KV heads split over TP ranks"),
        Setting("pipeline_parallel_size", 1, "--pp", "layers split over stages"),
        Setting("gpu_memory_utilization", 0.9, "--gpu-util", "share of total GPU memory"),
        Setting("max_num_batched_tokens", 8192, "--max-batched-tokens",
                "8,192 on GPUs with >= 70 GiB, else 2,048 (serve defaults)"),
        Setting("max_num_seqs", 1024, "--max-num-seqs",
                "1,024 on GPUs with >= 70 GiB, else 256"),
        Setting("async_scheduling", True, "--async-scheduling/--no-async-scheduling",
                "2 batches in flight at PP 1"),
        Setting("disable_hybrid_kv_cache_manager", False, "--disable-hybrid-kv-cache-manager",
                "every layer keeps every token, one group"),
        Setting("num_gpu_blocks_override", None, "--num-gpu-blocks-override",
                "replaces the computed number of blocks"),
    )

    def layout(self, spec, kv_dtype: str = "auto", *, version: str | None = None,
               block_size: int | None = None, tp: int = 1) -> Layout:
        return vllm_layout(spec, kv_dtype, DEFAULT_BLOCK_SIZE if block_size is None
                           else block_size, tp, version)

    def describe(self, layout: Layout) -> str:
        detail = (f"vLLM {layout.version} (band {layout.band}) PagedAttention, "
                  f"block {layout.block_size}")
        return detail + (f", tp {layout.tp} (per GPU)" if layout.tp > 1 else "")


VLLM = register(Vllm())
