"""Engine layouts: how a runtime lays one model's cache out in memory.

A layout turns each layer of a :class:`~kvcalc.arch.ModelSpec` into a :class:`LayerCache`: the
bytes one cached token costs in that layer, how many token slots a sequence of ``n`` tokens
holds there (windows, chunks, block rounding) and the fixed bytes per sequence (recurrent
states). Derivations and sources: docs/formulas.md.

Engines
-------
``hf``   transformers ``generate()`` with its default ``DynamicCache`` (token-granular).
         Version bands (``hf_version``):
           * ``>= 5.15`` (default, 5.23 measured): sliding/chunked layers keep ``W - 1`` tokens,
             MLA caches the latent ``kv_lora_rank + qk_rope_head_dim`` per layer.
           * ``4.56 - 5.14``: windows capped the same way, MLA caches decompressed per-head K
             (``qk_nope + qk_rope``) and V (``v_head_dim``).
           * ``< 4.56``: no window capping in DynamicCache (every layer keeps every token), MLA
             decompressed, Gemma 3n's shared layers still store their own copy.
         Recurrent states: conv buffer of ``conv_kernel`` columns in the model dtype plus the
         SSM/recurrent state in fp32. Falcon's new decoder architecture caches all query heads.
``vllm`` PagedAttention (vLLM v1): pages of ``block_size`` tokens per layer; a sequence holds
         ``ceil(n / block)`` blocks of each full layer; sliding-window layers release blocks that
         fall wholly outside the window, chunked-local layers release completed chunks; MLA caches
         the latent once per layer (one "head", not split by tensor parallelism); KV heads per
         GPU are ``max(1, kv_heads // tp)``; Mamba-style states keep ``conv_kernel - 1`` columns
         and one state per sequence, in the model dtype unless the config sets
         ``mamba_ssm_cache_dtype``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache

from . import arch
from .arch import AttentionLayer, MLALayer, ModelSpec, StateLayer
from .dtypes import DTYPES, KVDtype, resolve_kv_dtype
from .errors import UsageError
from .units import cdiv

ENGINES = ("hf", "vllm")
DEFAULT_BLOCK_SIZE = 16          # vLLM CacheConfig default on CUDA/ROCm
HF_DEFAULT_VERSION = "5.23"      # the transformers release the hf layout was measured against
HF_WINDOW_CAP_SINCE = (4, 56)    # DynamicSlidingWindowLayer appears (transformers #40039 era)
HF_MLA_LATENT_SINCE = (5, 15)    # transformers #47761: DeepSeek caches the compressed latent
#: transformers keeps Mamba/GDN recurrent (SSM) states in fp32 even in a bf16 model (measured
#: on 5.23, transformers.md §2.3); the conv buffer follows the model dtype
HF_RECURRENT_STATE_BYTES = 4

#: how many tokens a layer keeps for a sequence
KEEP_ALL = "all"         # every token (full attention, MLA)
KEEP_WINDOW = "window"   # the last tokens of a sliding window
KEEP_CHUNK = "chunk"     # the tokens of the current attention chunk (vLLM) / last C-1 (hf)
KEEP_NONE = "none"       # nothing per token (states, shared, MLP-only layers)


@dataclass(frozen=True)
class LayerCache:
    """The cost of one layer's cache in one engine layout (all integers, bytes or tokens)."""

    index: int
    kind: str
    bytes_per_token: int
    keep: str = KEEP_ALL
    #: sliding window W or chunk size C in tokens (for KEEP_WINDOW / KEEP_CHUNK)
    window: int | None = None
    #: paged engines allocate whole blocks of this many tokens; None = token-granular
    block_size: int | None = None
    #: bytes per sequence that do not depend on its length (recurrent states)
    fixed_bytes: int = 0
    #: hf only: a sliding layer caps at ``window - 1`` tokens when True, keeps all when False
    capped: bool = True
    #: how bytes_per_token / fixed_bytes were derived, with this model's numbers
    formula: str = field(default="", compare=False)

    def slots_held(self, n: int) -> int:
        """Token slots this layer holds for one sequence whose cache has ``n`` tokens."""
        if self.keep == KEEP_NONE or n <= 0:
            return 0
        if self.block_size is None:  # token-granular (hf DynamicCache)
            if self.keep == KEEP_ALL or not self.capped:
                return n
            return min(n, self.window - 1)
        bs = self.block_size
        blocks = cdiv(n, bs)
        if self.keep == KEEP_WINDOW:
            # vLLM SlidingWindowManager: tokens before n - W + 1 are skipped; whole skipped blocks
            # are freed (get_num_skipped_tokens = max(0, n - W + 1)).
            blocks -= max(0, n - self.window + 1) // bs
        elif self.keep == KEEP_CHUNK:
            # vLLM ChunkedLocalAttentionManager: tokens of completed chunks are skipped.
            blocks -= (n // self.window) * self.window // bs
        return blocks * bs

    def bytes_for(self, n: int) -> int:
        """Bytes this layer holds for one sequence of ``n`` cached tokens."""
        return self.slots_held(n) * self.bytes_per_token + self.fixed_bytes

    @property
    def page_bytes(self) -> int:
        """vLLM page: one block of this layer (0 for token-granular layouts)."""
        return (self.block_size or 0) * self.bytes_per_token


@dataclass(frozen=True)
class Layout:
    """A model laid out by one engine: one :class:`LayerCache` per decoder layer."""

    spec: ModelSpec
    engine: str
    kv_dtype: KVDtype
    layers: tuple[LayerCache, ...]
    block_size: int | None = None
    tp: int = 1
    hf_version: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token adds while inside every window, over layers with per-token KV."""
        return sum(layer.bytes_per_token for layer in self.layers if layer.keep != KEEP_NONE)

    @property
    def fixed_bytes_per_sequence(self) -> int:
        return sum(layer.fixed_bytes for layer in self.layers)

    def bytes_per_sequence(self, n: int) -> int:
        """Exact bytes one sequence of ``n`` cached tokens holds (windows, states, blocks)."""
        return sum(count * layer.bytes_for(n) for layer, count in self._distinct)

    @cached_property
    def _distinct(self) -> tuple[tuple[LayerCache, int], ...]:
        """Identical layers collapsed (index aside): sums cost one term per kind of layer."""
        counts: dict[LayerCache, int] = {}
        for layer in self.layers:
            key = replace(layer, index=0)
            counts[key] = counts.get(key, 0) + 1
        return tuple(counts.items())


def parse_version(text: str) -> tuple[int, int]:
    try:
        parts = str(text).strip().split(".")
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except (ValueError, IndexError):
        raise UsageError(f"invalid transformers version '{text}': use MAJOR.MINOR, e.g. 4.57") from None


@lru_cache(maxsize=256)
def build_layout(spec: ModelSpec, engine: str = "hf", kv_dtype: str = "auto", *,
                 block_size: int | None = None, tp: int = 1,
                 hf_version: str | None = None) -> Layout:
    """Lay ``spec`` out for ``engine`` with KV dtype ``kv_dtype`` (``auto`` = model dtype)."""
    dtype = resolve_kv_dtype(kv_dtype, spec.dtype)
    if tp < 1:
        raise UsageError(f"invalid tensor-parallel size {tp}: must be at least 1")
    if engine == "hf":
        if tp != 1:
            raise UsageError("the hf layout models one process: tensor parallelism needs --engine vllm")
        return _hf_layout(spec, dtype, hf_version or HF_DEFAULT_VERSION)
    if engine == "vllm":
        bs = DEFAULT_BLOCK_SIZE if block_size is None else block_size
        if bs < 1:
            raise UsageError(f"invalid block size {bs}: must be at least 1")
        return _vllm_layout(spec, dtype, bs, tp)
    raise UsageError(f"unknown engine '{engine}': choose one of {', '.join(ENGINES)}")


def attention_bytes_per_token(kv_heads: int, head_dim_k: int, head_dim_v: int,
                              dtype: KVDtype) -> int:
    """K and V rows for every cached head: ``kv_heads x (row(hd_k) + row(hd_v))``.

    For unquantised dtypes this is the textbook ``kv_heads x (hd_k + hd_v) x bytes``.
    """
    return kv_heads * (dtype.row_bytes(head_dim_k) + dtype.row_bytes(head_dim_v))


def mla_latent_bytes_per_token(layer: MLALayer, dtype: KVDtype) -> int:
    """One latent row per token: ``(kv_lora_rank + qk_rope_head_dim) x bytes`` (576 elements
    for DeepSeek V2/V3/R1 and Kimi K2)."""
    return dtype.row_bytes(layer.kv_lora_rank + layer.qk_rope_head_dim)


#: vLLM's DSA indexer key cache is fp8 with one fp32 scale per 128 values
#: (``index_head_dim + index_head_dim // 128 * 4`` bytes per token per layer)
VLLM_INDEXER_QUANT_BLOCK = 128


def indexer_bytes_per_token(layer: MLALayer, dtype: KVDtype, engine: str) -> int:
    """DeepSeek-V3.2 lightning-indexer keys: transformers keeps ``index_head_dim`` values in
    the cache dtype (``DynamicIndexedLayer``); vLLM stores them as fp8 plus fp32 scales."""
    if not layer.indexer_head_dim:
        return 0
    d = layer.indexer_head_dim
    if engine == "vllm":
        return d + d // VLLM_INDEXER_QUANT_BLOCK * 4
    return dtype.row_bytes(d)


def mla_expanded_bytes_per_token(layer: MLALayer, dtype: KVDtype) -> int:
    """Decompressed K (``qk_nope + qk_rope``) and V (``v_head_dim``) for every head."""
    return attention_bytes_per_token(layer.num_heads, layer.qk_nope_head_dim + layer.qk_rope_head_dim,
                                     layer.v_head_dim, dtype)


def state_bytes(layer: StateLayer, conv_columns: int, conv_bytes: int, ssm_bytes: int,
                tp: int = 1) -> int:
    """Fixed per-sequence state: conv buffer ``conv_dim x columns`` + the SSM/recurrent tensor.

    With tensor parallelism the channels and heads are split across ranks (ceil division).
    """
    ssm_elements = 1
    for d in layer.ssm_shape:
        ssm_elements *= d
    conv = cdiv(layer.conv_dim, tp) * conv_columns * conv_bytes
    ssm = cdiv(ssm_elements, tp) * ssm_bytes
    return conv + ssm


def _float_bytes(dtype: KVDtype, model_dtype: str) -> int:
    """Bytes per element for tensors that stay in floating point (states): the KV dtype when it
    is a float type, otherwise the model's dtype."""
    return dtype.element_bytes if dtype.kind == "float" else DTYPES[model_dtype].element_bytes


def _hf_layout(spec: ModelSpec, dtype: KVDtype, version: str) -> Layout:
    ver = parse_version(version)
    capped = ver >= HF_WINDOW_CAP_SINCE
    latent = ver >= HF_MLA_LATENT_SINCE
    notes = [f"transformers {version} DynamicCache: a prompt of p tokens plus g generated "
             f"tokens leaves p + g - 1 tokens in the cache"]
    if dtype.kind != "float":
        notes.append(f"{dtype.name} KV in transformers means QuantizedCache "
                     f"(cache_implementation='quantized'); states stay in floating point")
    out: list[LayerCache] = []
    memo: dict[int, LayerCache] = {}
    for i, layer in enumerate(spec.layers):
        if id(layer) not in memo:
            memo[id(layer)] = _hf_layer(i, layer, dtype, spec, capped, latent, ver)
        out.append(replace(memo[id(layer)], index=i))
    if not capped and any(l.kind in (arch.SLIDING, arch.CHUNKED) for l in spec.layers):
        notes.append("transformers < 4.56: DynamicCache keeps every token in sliding layers")
    if spec.is_mla:
        notes.append("MLA cached as the compressed latent" if latent else
                     "MLA cached as decompressed per-head K and V (transformers < 5.15)")
    return Layout(spec, "hf", dtype, tuple(out), None, 1, version, tuple(notes))


def _hf_layer(i: int, layer: arch.Layer, dtype: KVDtype, spec: ModelSpec, capped: bool,
              latent: bool, ver: tuple[int, int]) -> LayerCache:
    if isinstance(layer, AttentionLayer):
        heads = layer.hf_kv_heads or layer.kv_heads
        bpt = attention_bytes_per_token(heads, layer.head_dim_k, layer.head_dim_v, dtype)
        keep = {arch.FULL: KEEP_ALL, arch.SLIDING: KEEP_WINDOW, arch.CHUNKED: KEEP_CHUNK}[layer.kind]
        text = attention_formula(heads, layer, dtype)
        if layer.hf_kv_heads:
            text += " (transformers caches every query head for Falcon's new architecture)"
        if layer.window:
            text += (f", at most W - 1 = {layer.window - 1:,} tokens" if capped
                     else f", uncapped (window {layer.window:,} applied by the mask only)")
        return LayerCache(i, layer.kind, bpt, keep, layer.window, capped=capped, formula=text)
    if isinstance(layer, MLALayer):
        if latent:
            bpt, text = mla_latent_bytes_per_token(layer, dtype), mla_latent_formula(layer, dtype)
        else:
            bpt = mla_expanded_bytes_per_token(layer, dtype)
            text = (f"{layer.num_heads} heads x (K {layer.qk_nope_head_dim} + "
                    f"{layer.qk_rope_head_dim} + V {layer.v_head_dim}) x {_elem(dtype)} "
                    f"(decompressed, transformers < 5.15)")
        extra = indexer_bytes_per_token(layer, dtype, "hf")
        if extra:
            text += f" + indexer key {layer.indexer_head_dim} x {_elem(dtype)}"
        return LayerCache(i, layer.kind, bpt + extra, formula=text)
    if isinstance(layer, StateLayer):
        conv_b = _float_bytes(dtype, spec.dtype)
        fixed = state_bytes(layer, layer.conv_kernel, conv_b, HF_RECURRENT_STATE_BYTES)
        text = state_formula(layer, layer.conv_kernel, conv_b, HF_RECURRENT_STATE_BYTES)
        return LayerCache(i, layer.kind, 0, KEEP_NONE, fixed_bytes=fixed, formula=text)
    if isinstance(layer, arch.SharedLayer) and ver < HF_WINDOW_CAP_SINCE:
        # before 4.56 the dynamic cache stored a full copy for KV-sharing layers too
        src = spec.layers[layer.source]
        assert isinstance(src, AttentionLayer)
        bpt = attention_bytes_per_token(src.kv_heads, src.head_dim_k, src.head_dim_v, dtype)
        return LayerCache(i, layer.kind, bpt, KEEP_ALL,
                          formula=attention_formula(src.kv_heads, src, dtype)
                          + " (transformers < 4.56 stores a copy for KV-sharing layers)")
    return LayerCache(i, layer.kind, 0, KEEP_NONE, formula=_no_cache_formula(layer))


def vllm_kv_heads_per_gpu(kv_heads: int, tp: int) -> int:
    """vLLM ``ModelConfig.get_num_kv_heads``: ``max(1, kv_heads // tp)`` (replicated past kv)."""
    return max(1, kv_heads // tp)


def _vllm_layout(spec: ModelSpec, dtype: KVDtype, block_size: int, tp: int) -> Layout:
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
    return Layout(spec, "vllm", dtype, tuple(out), block_size, tp, None, tuple(notes))


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
        extra = indexer_bytes_per_token(layer, dtype, "vllm")
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
    return LayerCache(i, layer.kind, 0, KEEP_NONE, formula=_no_cache_formula(layer))


# --------------------------------------------------------------------------------------------
# Human-readable derivations (shown by `estimate`, one per layer kind)


def _elem(dtype: KVDtype) -> str:
    if dtype.kind in ("float", "fp8"):
        return f"{dtype.bits // 8} B ({dtype.name})"
    return f"{dtype.name} (+ scales)"


def attention_formula(heads: int, layer: AttentionLayer, dtype: KVDtype) -> str:
    dims = (f"2 x {layer.head_dim_k}" if layer.head_dim_k == layer.head_dim_v
            else f"({layer.head_dim_k} + {layer.head_dim_v})")
    return f"{heads} kv heads x {dims} x {_elem(dtype)}"


def mla_latent_formula(layer: MLALayer, dtype: KVDtype) -> str:
    return (f"latent (kv_lora_rank {layer.kv_lora_rank} + qk_rope_head_dim "
            f"{layer.qk_rope_head_dim}) x {_elem(dtype)}")


def state_formula(layer: StateLayer, conv_columns: int, conv_bytes: int, ssm_bytes: int,
                  tp: int = 1) -> str:
    split = f" / tp {tp}" if tp > 1 else ""
    shape = " x ".join(str(d) for d in layer.ssm_shape)
    return (f"{layer.mixer} state per sequence: conv {layer.conv_dim} x {conv_columns} x "
            f"{conv_bytes} B + ssm {shape} x {ssm_bytes} B{split}")


def _no_cache_formula(layer: arch.Layer) -> str:
    if isinstance(layer, arch.SharedLayer):
        return "reuses the KV of an earlier layer of the same kind: 0 B"
    if isinstance(layer, arch.NoCacheLayer):
        return f"{layer.reason}: 0 B"
    return "0 B"
