"""SGLang (0.5.23): its token pool, the automatic ``mem_fraction_static``, and what it prints
when it sizes the KV cache (``KV Cache is allocated``, ``max_total_num_tokens=…``).

SGLang keeps one token-granular pool (pages of ``page_size`` tokens, 1 by default) sized from a
memory fraction, not from a block budget per request. Every rule below reimplements a function
of SGLang 0.5.23 (``python/sglang/srt/`` in sgl-project/sglang; docs/engines.md section 4 has
the derivations and real logs):

- automatic ``mem_fraction_static`` (:func:`auto_mem_fraction_static`):
  ``arg_groups/memory_hook.py`` ``handle_gpu_memory_settings`` and ``reserve_for_graph_mb``;
- budget (:func:`sglang_available_bytes`): ``mem_cache/kv_cache_configurator.py``
  ``KVCacheConfigurator._profile_available_bytes``;
- bytes per token (:func:`sglang_cell_size`): ``model_executor/pool_configurator.py``
  ``DefaultPoolConfigurator._compute_cell_size`` and ``calculate_mla_kv_cache_dim``;
- tokens, page alignment and the user's cap (:func:`sglang_max_total_tokens`):
  ``DefaultPoolConfigurator.calculate_pool_sizes``, ``_apply_token_constraints``;
- ``max_running_requests`` (:func:`sglang_max_running_requests`): ``resolve_max_num_reqs``;
- hybrid SWA pools (:func:`sglang_swa_pools`): ``HybridSWAPoolConfigurator``;
- Mamba state pool (:func:`sglang_mamba_pool`): ``_handle_max_mamba_cache``.

Memory in SGLang's logs is "GB" = 2^30 bytes. The figures are checked against SGLang 0.5.23's
own code, run on a CPU with only its GPU memory and platform queries answered
(tests/sglang_diff/).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

from .. import arch
from ..arch import AttentionLayer, MLALayer, ModelSpec, StateLayer
from ..dtypes import KVDtype, resolve_kv_dtype
from ..errors import UsageError
from ..units import GiB, MiB
from ..budget import Budget, activation_bytes, pp_partition, stage_weight_bytes  # noqa: F401
from . import Band, Engine, Setting, cached_layout, register
from .cache import INDEXER_QUANT_BLOCK, indexer_bytes_per_token
from .cache import (KEEP_ALL, KEEP_NONE, LayerCache, Layout, attention_bytes_per_token,
                    attention_formula, mla_latent_bytes_per_token, mla_latent_formula,
                    no_cache_formula, state_bytes, state_formula,
                    require_at_least_one)

# --------------------------------------------------------------------------------------------
# Named constants (SGLang 0.5.23, python/sglang/srt/...)

#: ``handle_gpu_memory_settings`` tiers, by the GPU total in MiB that nvidia-smi reports
#: (``get_device_memory_capacity``): (upper bound MiB, chunked_prefill_size, decode CUDA-graph
#: max_bs with tp < 4, with tp >= 4); the last tier has no upper bound
MEMORY_TIERS_MIB = (
    (20 * 1024, 2048, 8, 8),
    (35 * 1024, 4096, 48, 160),
    (60 * 1024, 4096, 32, 160),
    (90 * 1024, 8192, 256, 512),
    (160 * 1024, 8192, 256, 512),
    (None, 16384, 512, 512),
)
#: tp at which the larger decode CUDA-graph batch is chosen
LARGE_GRAPH_TP = 4
#: ``reserved_mem`` terms (MiB): a base, 1.5 MiB per activation token (at least 2,048 tokens),
#: 1 GiB per 8 GPUs of tp x pp, 2 MiB per decode CUDA-graph batch entry
RESERVED_BASE_MIB = 512
RESERVED_MIB_PER_ACTIVATION_TOKEN = 1.5
MIN_ACTIVATION_TOKENS = 2048
RESERVED_MIB_PER_8_GPUS = 1024
RESERVED_MIB_PER_GRAPH_BS = 2
#: GPUs above this total (MiB) reserve at least :data:`MIN_RESERVED_MIB_LARGE_GPU`
LARGE_GPU_MIB = 60 * 1024
MIN_RESERVED_MIB_LARGE_GPU = 10 * 1024
#: digits ``mem_fraction_static`` is rounded to
MEM_FRACTION_DIGITS = 3
#: ``resolve_max_num_reqs``: ``clamp(int(tokens / context_len x 512), 2048, 4096)``, and at most
#: half the tokens
RUNNING_REQUESTS_PER_CONTEXT = 512
MIN_DEFAULT_RUNNING_REQUESTS = 2048
MAX_DEFAULT_RUNNING_REQUESTS = 4096
TOKENS_PER_RUNNING_REQUEST = 2
#: ``--swa-full-tokens-ratio`` default: the SWA pool holds 0.8 x the full pool's tokens
SWA_FULL_TOKENS_RATIO = 0.8
#: ``--mamba-full-memory-ratio`` default: Mamba states get ratio / (1 + ratio) of the budget
MAMBA_FULL_MEMORY_RATIO = 0.9
#: Mamba state slots one running request holds (``_calculate_mamba_ratio``: 3, + 2 tracking
#: slots of the extra buffer that the radix cache turns on by default)
MAMBA_SLOTS_PER_REQUEST = 5
#: Mamba state dtypes (``mamba2_state_dtype``, ``configs/mamba_utils.py``): the conv state is
#: ``SGLANG_MAMBA_CONV_DTYPE`` (default bfloat16), the SSM / recurrent state float32 unless the
#: config sets ``mamba_ssm_dtype`` or ``SGLANG_MAMBA_SSM_DTYPE`` / ``--mamba-ssm-dtype`` is given.
#: kvcalc models the defaults only: it does not read ``mamba_ssm_dtype`` (no preset sets it) nor
#: take those settings
MAMBA_CONV_BYTES = 2
MAMBA_SSM_BYTES = 4
#: model types SGLang 0.5.23 runs with hybrid SWA pools (``is_hybrid_swa_model``: gpt-oss and
#: Llama 4); Gemma 2/3, Mistral, Phi-3 keep one full-length pool for every layer
HYBRID_SWA_MODEL_TYPES = ("gpt_oss", "llama4", "llama4_text")
#: DeepSeek-V3.2 indexer keys: fp8 values + one fp32 scale per 128 (``DSATokenToKVPool``)
DSA_INDEXER_QUANT_BLOCK = INDEXER_QUANT_BLOCK
#: default attention backend and page size per GPU generation (``get_default_attn_backend``,
#: ``_page_size_default``): compute-capability major -> (backend, page_size)
DEFAULT_BACKENDS = {9: ("fa3", 1), 10: ("trtllm_mha", 64)}
DEFAULT_BACKEND_OTHER = ("flashinfer", 1)
#: SGLang's "GB" in logs and memory arithmetic
SGLANG_GB = GiB
#: When no measurement is given: the free memory SGLang sees before loading weights is the
#: runtime total less the CUDA context (and NCCL's buffers with several GPUs). Real SGLang
#: logs on an H100 80GB (runtime total 79.19 GiB) print "Load weight begin. avail mem=78.60 GB"
#: at tp 1 (sgl-project/sglang#16526 and others, docs/engines.md section 3.8); other H100 tp-1
#: logs print 78.43-78.81 GB, so 600 MiB is a typical value, not a constant of SGLang's.
CUDA_CONTEXT_BYTES = 600 * MiB
#: ASSUMPTION, not sourced: 400 MiB more per GPU when tp x pp > 1 (NCCL communicators). The one
#: multi-GPU log found, sgl-project/sglang#17680 (2 x A100 80GB PCIe, tp 2, SGLang 0.5.8), prints
#: "Load weight begin. avail mem=78.77 GB" on both ranks, 0.48 GiB under the 79.25 GiB runtime
#: total: there NCCL had taken nothing yet. kvcalc keeps the allowance (fewer tokens, not more);
#: give --free-memory from the "avail mem" line of a real log to replace both terms.
NCCL_BYTES = 400 * MiB


@dataclass(frozen=True)
class SglangSettings:
    """The SGLang server arguments that size the pool, under SGLang's names."""

    mem_fraction_static: float | None = None
    page_size: int | None = None
    max_running_requests: int | None = None
    max_total_tokens: int | None = None
    chunked_prefill_size: int | None = None
    cuda_graph_max_bs: int | None = None
    disable_cuda_graph: bool = False
    swa_full_tokens_ratio: float = SWA_FULL_TOKENS_RATIO
    mamba_full_memory_ratio: float = MAMBA_FULL_MEMORY_RATIO
    max_mamba_cache_size: int | None = None


# --------------------------------------------------------------------------------------------
# Automatic mem_fraction_static


@dataclass(frozen=True)
class MemoryDefaults:
    """What ``handle_gpu_memory_settings`` resolves for one GPU and parallel layout."""

    gpu_mem_mib: int
    chunked_prefill_size: int
    cuda_graph_max_bs: int
    reserved_mib: float
    mem_fraction_static: float


def memory_tier(gpu_mem_mib: int, tp: int) -> tuple[int, int]:
    """(chunked_prefill_size, decode CUDA-graph max_bs) of the GPU's memory tier."""
    for limit, chunk, small, large in MEMORY_TIERS_MIB:
        if limit is None or gpu_mem_mib < limit:
            return chunk, (small if tp < LARGE_GRAPH_TP else large)
    raise AssertionError("unreachable")


def reserved_mib(gpu_mem_mib: int, tp: int, pp: int, chunked_prefill_size: int,
                 graph_max_bs: int) -> float:
    """``reserved_mem`` (MiB): ``512 + max(chunked_prefill_size, 2048) x 1.5 + tp x pp / 8 x
    1024 + 2 x max_bs`` (0 for the graphs with CUDA graphs off), at least 10,240 on GPUs above
    60 GiB. (The prefill CUDA graph's terms are off by default in 0.5.23.)"""
    reserved = float(RESERVED_BASE_MIB)
    reserved += max(chunked_prefill_size, MIN_ACTIVATION_TOKENS) * RESERVED_MIB_PER_ACTIVATION_TOKEN
    reserved += tp * pp / 8 * RESERVED_MIB_PER_8_GPUS
    reserved += graph_max_bs * RESERVED_MIB_PER_GRAPH_BS
    if gpu_mem_mib > LARGE_GPU_MIB:
        reserved = max(reserved, MIN_RESERVED_MIB_LARGE_GPU)
    return reserved


def auto_mem_fraction_static(gpu_mem_mib: int, tp: int = 1, pp: int = 1,
                             settings: SglangSettings = SglangSettings()) -> MemoryDefaults:
    """SGLang's ``mem_fraction_static`` when not given: ``round((gpu_mem - reserved) / gpu_mem,
    3)`` with ``gpu_mem`` the nvidia-smi total in MiB (H100 80GB 81,559 -> 0.835 at tp 1)."""
    chunk, max_bs = memory_tier(gpu_mem_mib, tp)
    if settings.chunked_prefill_size is not None:
        chunk = settings.chunked_prefill_size
    if settings.cuda_graph_max_bs is not None:
        max_bs = settings.cuda_graph_max_bs
    elif settings.max_running_requests is not None and max_bs > settings.max_running_requests:
        max_bs = settings.max_running_requests
    graphs = 0 if settings.disable_cuda_graph else max_bs
    activation = chunk if chunk > 0 else MIN_ACTIVATION_TOKENS
    reserved = reserved_mib(gpu_mem_mib, tp, pp, activation, graphs)
    mfs = round((gpu_mem_mib - reserved) / gpu_mem_mib, MEM_FRACTION_DIGITS)
    if settings.mem_fraction_static is not None:
        mfs = settings.mem_fraction_static
    return MemoryDefaults(gpu_mem_mib, chunk, max_bs, reserved, mfs)


# --------------------------------------------------------------------------------------------
# Layout: bytes per token


def sglang_kv_heads_per_gpu(kv_heads: int, tp: int) -> int:
    """``ModelConfig.get_num_kv_heads(tp)``: ``max(1, kv_heads // tp)``."""
    return max(1, kv_heads // tp)


def sglang_indexer_bytes_per_token(layer: MLALayer) -> int:
    """DeepSeek-V3.2 lightning-indexer keys: ``index_head_dim`` fp8 values + one fp32 scale per
    128 (``_compute_dsa_indexer_cell_size``) -- the layout vLLM uses too
    (:func:`kvcalc.engines.cache.indexer_bytes_per_token`)."""
    return indexer_bytes_per_token(layer)


def served_kv_dtype(spec: ModelSpec, kv_dtype: str) -> KVDtype:
    """``--kv-cache-dtype``: ``auto`` is the model dtype; fp8_e4m3 / fp8_e5m2 take 1 byte."""
    return resolve_kv_dtype(kv_dtype, spec.dtype)


def is_hybrid_swa(spec: ModelSpec) -> bool:
    """SGLang 0.5.23 keeps separate full and SWA pools only for :data:`HYBRID_SWA_MODEL_TYPES`
    with both windowed and full layers; every other model gets one full-length pool."""
    windowed = any(isinstance(l, AttentionLayer) and l.kind != arch.FULL for l in spec.layers)
    return spec.model_type in HYBRID_SWA_MODEL_TYPES and windowed


def is_mamba_hybrid(spec: ModelSpec) -> bool:
    return any(isinstance(l, StateLayer) for l in spec.layers)


@lru_cache(maxsize=256)
def sglang_layout(spec: ModelSpec, kv_dtype: str = "auto", page_size: int = 1, tp: int = 1,
                  version: str | None = None) -> Layout:
    """``spec`` laid out by SGLang: one token pool row per layer (pages of ``page_size``);
    windowed layers keep every token unless the model is hybrid SWA (:func:`is_hybrid_swa`)."""
    require_at_least_one(tensor_parallel_size=tp, page_size=page_size)
    version = version or SGLANG.default_version
    band = SGLANG.band(version)
    dtype = served_kv_dtype(spec, kv_dtype)
    hybrid = is_hybrid_swa(spec)
    notes = [f"SGLang token pool, page size {page_size}"]
    if tp > 1:
        notes.append(f"tensor parallel {tp}: figures are per GPU")
    if not hybrid and any(isinstance(l, AttentionLayer) and l.kind != arch.FULL
                          for l in spec.layers):
        notes.append("SGLang 0.5.23 runs this model's sliding/chunked layers with one "
                     "full-length pool (hybrid SWA pools are for gpt-oss and Llama 4 only)")
    out = []
    for i, layer in enumerate(spec.layers):
        out.append(_layer(i, layer, dtype, page_size, tp, hybrid))
    return Layout(spec, "sglang", dtype, tuple(out), page_size, tp, version, band.name,
                  tuple(notes))


def _layer(i: int, layer: arch.Layer, dtype: KVDtype, page: int, tp: int,
           hybrid: bool) -> LayerCache:
    if isinstance(layer, AttentionLayer):
        heads = sglang_kv_heads_per_gpu(layer.kv_heads, tp)
        bpt = attention_bytes_per_token(heads, layer.head_dim_k, layer.head_dim_v, dtype)
        text = attention_formula(heads, layer, dtype)
        if layer.kind != arch.FULL and hybrid:
            return LayerCache(i, arch.SLIDING, bpt, "window", layer.window, page,
                              formula=text + f", SWA pool (window {layer.window:,})")
        return LayerCache(i, arch.FULL, bpt, KEEP_ALL, None, page, formula=text)
    if isinstance(layer, MLALayer):
        extra = sglang_indexer_bytes_per_token(layer)
        text = mla_latent_formula(layer, dtype)
        if extra:
            text += (f" + indexer key {layer.indexer_head_dim} fp8 + "
                     f"{layer.indexer_head_dim // DSA_INDEXER_QUANT_BLOCK} fp32 scales")
        return LayerCache(i, layer.kind, mla_latent_bytes_per_token(layer, dtype) + extra,
                          KEEP_ALL, None, page, formula=text)
    if isinstance(layer, StateLayer):
        # SGLang's default state dtypes (mamba2_state_dtype): conv bfloat16, SSM float32; the
        # model dtype and vLLM's mamba_ssm_cache_dtype do not enter (a config's mamba_ssm_dtype
        # would, and is not read: MAMBA_CONV_BYTES)
        fixed = state_bytes(layer, layer.conv_kernel - 1, MAMBA_CONV_BYTES, MAMBA_SSM_BYTES, tp)
        return LayerCache(i, layer.kind, 0, KEEP_NONE, fixed_bytes=fixed, mixer=layer.mixer,
                          formula=state_formula(layer, layer.conv_kernel - 1, MAMBA_CONV_BYTES,
                                                MAMBA_SSM_BYTES, tp))
    return LayerCache(i, layer.kind, 0, KEEP_NONE, formula=no_cache_formula(layer))


def sglang_cell_size(layout: Layout) -> int:
    """Bytes per token of the whole model on one GPU (``_compute_cell_size``): every layer with
    per-token KV (attention layers only for Mamba hybrids)."""
    return sum(c.bytes_per_token for c in layout.layers if c.keep != KEEP_NONE)


# --------------------------------------------------------------------------------------------
# Capacity


def sglang_available_bytes(free_before: int, free_after: int, mem_fraction_static: float) -> float:
    """``rest_memory`` in SGLang's GB: ``available - pre_model_load x (1 - mem_fraction_static)``
    (floats, as SGLang computes them), where ``available`` is the free memory after loading the
    weights and ``pre_model_load`` the free memory before."""
    return free_after / SGLANG_GB - free_before / SGLANG_GB * (1 - mem_fraction_static)


def min_viable_fraction(free_before: int, free_after: int) -> float:
    """``1 - available / pre``: the smallest ``mem_fraction_static`` that leaves any KV memory."""
    return 1 - (free_after / SGLANG_GB) / (free_before / SGLANG_GB)


def page_align(tokens: int, page_size: int) -> int:
    return tokens // page_size * page_size


def sglang_max_total_tokens(available_bytes: int, cell_size: int, page_size: int,
                            max_total_tokens: int | None = None) -> int:
    """``available // cell_size``, page-aligned, capped by ``--max-total-tokens``."""
    tokens = page_align(available_bytes // cell_size, page_size)
    if max_total_tokens is not None and max_total_tokens < tokens:
        tokens = page_align(max_total_tokens, page_size)
    return tokens


def sglang_max_running_requests(tokens: int, context_len: int, requested: int | None = None,
                                mamba_cache_size: int | None = None) -> int:
    """``resolve_max_num_reqs``: ``min(clamp(int(tokens / context_len x 512), 2048, 4096),
    tokens // 2)``, or the user's value capped by ``tokens // 2``; Mamba hybrids also at most
    ``max_mamba_cache_size // 5``."""
    if requested is not None:
        reqs = min(max(1, requested), tokens // TOKENS_PER_RUNNING_REQUEST)
    else:
        estimated = int(tokens / context_len * RUNNING_REQUESTS_PER_CONTEXT)
        estimated = max(min(estimated, MAX_DEFAULT_RUNNING_REQUESTS), MIN_DEFAULT_RUNNING_REQUESTS)
        reqs = min(estimated, tokens // TOKENS_PER_RUNNING_REQUEST)
    if mamba_cache_size is not None:
        reqs = min(reqs, mamba_cache_size // MAMBA_SLOTS_PER_REQUEST)
    return reqs


def sglang_swa_pools(available_bytes: int, full_bytes: int, swa_bytes: int, page_size: int,
                     ratio: float = SWA_FULL_TOKENS_RATIO) -> tuple[int, int]:
    """``HybridSWAPoolConfigurator``: ``cell = full + ratio x swa`` bytes per full-pool token,
    ``full = page_align(int(available // cell))``, ``swa = page_align(int(full x ratio))``."""
    cell = full_bytes + ratio * swa_bytes
    full = page_align(int(available_bytes // cell), page_size)
    swa = page_align(int(full * ratio), page_size)
    return full, swa


def sglang_mamba_pool(rest_gb: float, per_request: int,
                      ratio: float = MAMBA_FULL_MEMORY_RATIO) -> tuple[int, float]:
    """``_handle_max_mamba_cache``: ``max_mamba_cache_size = int((rest x ratio / (1 + ratio)
    - per_req) // per_req)``; returns it and the rest (GB) once its ``size + 1`` slots are
    taken."""
    budget = rest_gb * ratio / (1 + ratio) * SGLANG_GB
    size = int((budget - per_request) // per_request)
    return size, rest_gb - (size + 1) * per_request / SGLANG_GB


@dataclass(frozen=True)
class SglangCapacity:
    """What SGLang 0.5.23 resolves and prints for one GPU (one TP rank)."""

    mem_fraction_static: float
    mem_fraction_source: str            # "auto" or "--mem-fraction-static"
    defaults: MemoryDefaults | None
    free_before_bytes: int
    free_after_bytes: int
    available_bytes: int                # KV bytes after the fraction (and Mamba states)
    cell_size: int
    page_size: int
    max_total_num_tokens: int
    max_running_requests: int
    context_len: int
    chunked_prefill_size: int
    swa_max_total_num_tokens: int | None = None
    max_mamba_cache_size: int | None = None
    mamba_bytes_per_request: int = 0
    error: str | None = None
    k_bytes: int = 0
    v_bytes: int = 0
    mla: bool = False
    dtype: str = "bf16"
    backend: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def fits(self) -> bool:
        return self.error is None and self.max_total_num_tokens > 0

    key = "sglang"

    @property
    def num_blocks(self) -> int:
        """Pages in the (full) pool."""
        return self.max_total_num_tokens // self.page_size

    @property
    def kv_cache_tokens(self) -> int:
        return self.max_total_num_tokens

    @property
    def max_concurrency(self) -> float:
        """Requests of ``context_len`` tokens the pool holds at once."""
        return self.max_total_num_tokens / self.context_len if self.context_len else 0.0

    def budget_rows(self) -> list[tuple[str, int]]:
        """SGLang's budget, term by term (bytes)."""
        static = int(self.free_before_bytes * self.mem_fraction_static)
        return [("free memory before loading (--free-memory)", self.free_before_bytes),
                (f"x mem_fraction_static {self.mem_fraction_static}", static),
                ("- weights (free before - free after loading)",
                 self.free_before_bytes - self.free_after_bytes),
                ("= available for the KV pool" + (" (after Mamba states)"
                                                  if self.max_mamba_cache_size is not None
                                                  else ""), self.available_bytes)]

    def capacity_rows(self) -> list[tuple[str, str]]:
        """The figures ``kvcalc plan`` shows in its table, SGLang's names first."""
        rows = [("mem_fraction_static" + (" (auto)" if self.mem_fraction_source == "auto"
                                          else ""), f"{self.mem_fraction_static}"),
                ("bytes per token (cell_size, per GPU)", f"{self.cell_size:,}"),
                ("page_size", f"{self.page_size}"),
                ("max_total_num_tokens", f"{self.max_total_num_tokens:,}"),
                ("max_running_requests", f"{self.max_running_requests:,}")]
        if self.swa_max_total_num_tokens is not None:
            rows.append(("swa_max_total_num_tokens", f"{self.swa_max_total_num_tokens:,}"))
        if self.max_mamba_cache_size is not None:
            rows.append(("max_mamba_cache_size", f"{self.max_mamba_cache_size:,}"))
        return rows

    def log_lines(self) -> list[str]:
        """The lines SGLang prints (``KV Cache is allocated …`` from the memory pool,
        ``max_total_num_tokens=…`` from the scheduler), or its error."""
        if self.error:
            return [self.error]
        gb = lambda n: f"{n / SGLANG_GB:.2f} GB"  # noqa: E731
        if self.mla:
            pool = (f"KV Cache is allocated. dtype: {self.dtype}, #tokens: "
                    f"{self.max_total_num_tokens}, KV size: {gb(self.k_bytes)}")
        else:
            pool = (f"KV Cache is allocated. dtype: {self.dtype}, #tokens: "
                    f"{self.max_total_num_tokens}, K size: {gb(self.k_bytes)}, V size: "
                    f"{gb(self.v_bytes)}")
        sched = (f"max_total_num_tokens={self.max_total_num_tokens}, chunked_prefill_size="
                 f"{self.chunked_prefill_size}, max_running_requests="
                 f"{self.max_running_requests}, context_len={self.context_len}")
        return [pool, sched]

    def record(self) -> dict:
        """The ``sglang`` object of ``kvcalc plan --format json`` (docs/planning.md)."""
        return {
            "version": SGLANG.default_version,
            "mem_fraction_static": self.mem_fraction_static,
            "mem_fraction_static_source": self.mem_fraction_source,
            "reserved_mib": self.defaults.reserved_mib if self.defaults else None,
            "gpu_memory_mib": self.defaults.gpu_mem_mib if self.defaults else None,
            "free_memory_bytes": self.free_before_bytes,
            "free_after_weights_bytes": self.free_after_bytes,
            "available_bytes": self.available_bytes,
            "cell_size": self.cell_size,
            "page_size": self.page_size,
            "attention_backend": self.backend or None,
            "max_total_num_tokens": self.max_total_num_tokens,
            "max_running_requests": self.max_running_requests,
            "context_len": self.context_len,
            "chunked_prefill_size": self.chunked_prefill_size,
            "swa_max_total_num_tokens": self.swa_max_total_num_tokens,
            "max_mamba_cache_size": self.max_mamba_cache_size,
            "mamba_bytes_per_request": self.mamba_bytes_per_request or None,
            "fits": self.fits,
            "error": self.error,
            "log": self.log_lines(),
        }


def no_memory_error(mfs: float, free_before: int, free_after: int) -> str:
    """SGLang's ValueError when the weights leave nothing for the KV cache."""
    minimum = min_viable_fraction(free_before, free_after)
    suggested = math.ceil(minimum * 1000) / 1000
    return (f"Loaded weights leave no GPU memory for the KV cache under "
            f"--mem-fraction-static={mfs}. Raise --mem-fraction-static above "
            f"{suggested:.3f} (minimum viable = 1 - available/pre = {minimum:.4f}). If using "
            f"speculative decoding, draft weights are now counted.")


def mamba_no_memory_error(size: int, rest_gb: float, per_request: int) -> str:
    """SGLang's RuntimeError (``_handle_max_mamba_cache``) when the state pool would get no slot:
    raised before the KV-cache check, so Mamba hybrids whose weights leave nothing see this."""
    return (f"Not enough GPU memory for hybrid (mamba/linear-attention) state cache. "
            f"Computed max_mamba_cache_size={size} (total_rest_memory={rest_gb:.2f} GB, "
            f"mamba_cache_per_req={per_request / MiB:.2f} MB). Try: (1) reduce "
            f"--max-running-requests, (2) increase --mem-fraction-static, (3) reduce "
            f"--speculative-num-draft-tokens, or (4) use GPUs with more memory.")


def default_backend(capability: tuple[int, int] | None) -> tuple[str, int]:
    """SGLang's default attention backend and page size for a GPU generation."""
    if capability is None:
        return DEFAULT_BACKEND_OTHER
    return DEFAULT_BACKENDS.get(capability[0], DEFAULT_BACKEND_OTHER)


def sglang_capacity(layout: Layout, *, free_before: int, weights: int, context_len: int,
                    gpu_mem_mib: int | None, tp: int = 1, pp: int = 1,
                    settings: SglangSettings = SglangSettings(),
                    backend: str = "", available_override: int | None = None) -> SglangCapacity:
    """SGLang's pool for ``layout`` (per GPU): fraction, budget, tokens, requests, pools."""
    if settings.mem_fraction_static is None and gpu_mem_mib is None:
        raise UsageError("SGLang's automatic --mem-fraction-static needs the GPU's nvidia-smi "
                         "total: give --mem-fraction-static for a GPU outside the catalog")
    defaults = None
    chunk = settings.chunked_prefill_size
    if gpu_mem_mib is not None:
        defaults = auto_mem_fraction_static(gpu_mem_mib, tp, pp, settings)
        chunk = defaults.chunked_prefill_size
    mfs = defaults.mem_fraction_static if defaults else settings.mem_fraction_static
    source = "--mem-fraction-static" if settings.mem_fraction_static is not None else "auto"
    free_after = free_before - weights
    page = layout.block_size or 1
    cell = sglang_cell_size(layout)
    mla = any(c.kind == arch.MLA for c in layout.layers)
    common = dict(mem_fraction_static=mfs, mem_fraction_source=source, defaults=defaults,
                  free_before_bytes=free_before, free_after_bytes=free_after, cell_size=cell,
                  page_size=page, context_len=context_len, chunked_prefill_size=chunk or 0,
                  mla=mla, dtype=_torch_dtype(layout.kv_dtype), backend=backend)
    rest = sglang_available_bytes(free_before, free_after, mfs)
    if available_override is not None:   # --kv-budget: SGLang's "available" given directly
        rest = available_override / SGLANG_GB
    mamba_size = None
    per_req = sum(c.fixed_bytes for c in layout.layers if c.keep == KEEP_NONE)
    error = None
    if per_req:
        rest_before = rest
        if settings.max_mamba_cache_size is not None:
            mamba_size = settings.max_mamba_cache_size
            rest -= (mamba_size + 1) * per_req / SGLANG_GB
        else:
            mamba_size, rest = sglang_mamba_pool(rest, per_req, settings.mamba_full_memory_ratio)
        if mamba_size <= 0:
            error = mamba_no_memory_error(mamba_size, rest_before, per_req)
    if rest <= 0 or error:
        notes = () if free_after > 0 else (
            f"the weights ({weights / GiB:,.2f} GiB per GPU) exceed the free memory "
            f"({free_before / GiB:,.2f} GiB): SGLang runs out of memory loading them, before "
            f"it sizes the pool (more GPUs: --tp)",)
        return SglangCapacity(available_bytes=0, max_total_num_tokens=0,
                              max_running_requests=0, error=error or no_memory_error(
                                  mfs, free_before, free_after), notes=notes, **common)
    available = int(rest * SGLANG_GB)
    swa_tokens = None
    if any(c.keep == "window" for c in layout.layers):
        full_b = sum(c.bytes_per_token for c in layout.layers if c.keep == KEEP_ALL)
        swa_b = sum(c.bytes_per_token for c in layout.layers if c.keep == "window")
        tokens, swa_tokens = sglang_swa_pools(available, full_b, swa_b, page,
                                              settings.swa_full_tokens_ratio)
        if settings.max_total_tokens is not None and settings.max_total_tokens < tokens:
            tokens = page_align(settings.max_total_tokens, page)
            swa_tokens = page_align(int(tokens * settings.swa_full_tokens_ratio), page)
    else:
        tokens = sglang_max_total_tokens(available, cell, page, settings.max_total_tokens)
    reqs = sglang_max_running_requests(tokens, context_len, settings.max_running_requests,
                                       mamba_size)
    k_bytes, v_bytes = _pool_bytes(layout, tokens, swa_tokens, page)
    notes = []
    return SglangCapacity(available_bytes=available, max_total_num_tokens=tokens,
                          max_running_requests=reqs, swa_max_total_num_tokens=swa_tokens,
                          max_mamba_cache_size=mamba_size, mamba_bytes_per_request=per_req,
                          k_bytes=k_bytes, v_bytes=v_bytes, notes=tuple(notes), **common)


def _pool_bytes(layout: Layout, tokens: int, swa_tokens: int | None, page: int) -> tuple[int, int]:
    """K and V buffer bytes as the pool allocates them: ``tokens + page_size`` rows per layer
    (MLA: the latent in the first figure, 0 in the second)."""
    k = v = 0
    for c in layout.layers:
        if c.keep == KEEP_NONE:
            continue
        rows = (swa_tokens if c.keep == "window" else tokens) + page
        if c.kind == arch.MLA:
            k += rows * c.bytes_per_token
        else:
            k += rows * c.bytes_per_token // 2
            v += rows * (c.bytes_per_token - c.bytes_per_token // 2)
    return k, v


def _torch_dtype(dtype: KVDtype) -> str:
    return {"bf16": "torch.bfloat16", "fp16": "torch.float16", "fp32": "torch.float32",
            "fp8": "torch.float8_e4m3fn"}.get(dtype.name, dtype.name)


# --------------------------------------------------------------------------------------------
# The engine

BANDS = (
    Band("0.5.23", (0, 5), None,
         ("one token pool sized from mem_fraction_static of the free memory measured before "
          "the weights load (KVCacheConfigurator._profile_available_bytes)",
          "automatic mem_fraction_static from the nvidia-smi total, chunked prefill and decode "
          "CUDA-graph sizes (arg_groups/memory_hook.py)",
          "hybrid SWA pools only for gpt-oss and Llama 4 (is_hybrid_swa_model); Gemma 3 and "
          "Mistral get one full-length pool",
          "Mamba hybrids: states first (mamba_full_memory_ratio 0.9), then attention layers "
          "only"),
         ("sgl-project/sglang v0.5.23: python/sglang/srt/mem_cache/kv_cache_configurator.py, "
          "python/sglang/srt/model_executor/pool_configurator.py, "
          "python/sglang/srt/arg_groups/memory_hook.py",)),
)


class Sglang(Engine):
    name = "sglang"
    display_name = "SGLang"
    package = "sglang"
    bands = BANDS
    newest_checked = "0.5.23"
    default_version = "0.5"
    version_flag = "--sglang-version"
    version_example = "0.5"
    plans = True
    tensor_parallel = True
    settings = (
        Setting("mem_fraction_static", None, "--mem-fraction-static",
                "weights + KV pool as a share of the free memory before loading; None = "
                "SGLang's automatic value for the GPU, TP/PP and CUDA graphs"),
        Setting("page_size", None, "--page-size",
                "tokens per page; None = the default backend's (1 with fa3/flashinfer, 64 "
                "with trtllm_mha on Blackwell)"),
        Setting("max_running_requests", None, "--max-running-requests",
                "None = clamp(tokens / context_len x 512, 2048, 4096), at most tokens / 2"),
        Setting("max_total_tokens", None, "--max-total-tokens", "caps the pool's tokens"),
        Setting("context_length", None, "--context-length (alias of --max-len)",
                "the model's context length by default"),
        Setting("kv_cache_dtype", "auto", "--kv-dtype", "auto = model dtype; fp8_e4m3 1 byte"),
        Setting("tp_size", 1, "--tp", "KV heads split over TP ranks"),
        Setting("chunked_prefill_size", None, "--chunked-prefill-size",
                "None = 2048-16384 by GPU memory"),
        Setting("cuda_graph_max_bs", None, "--cuda-graph-max-bs",
                "None = 8-512 by GPU memory and TP"),
        Setting("disable_cuda_graph", False, "--disable-cuda-graph",
                "drops the graphs' reserve from the automatic fraction"),
        Setting("free_memory", None, "--free-memory",
                "the free GPU memory SGLang measures before loading weights"),
    )

    def layout(self, spec, kv_dtype: str = "auto", *, version: str | None = None,
               block_size: int | None = None, tp: int = 1) -> Layout:
        return sglang_layout(spec, kv_dtype, 1 if block_size is None else block_size, tp,
                             version)

    def describe(self, layout: Layout) -> str:
        detail = f"SGLang {SGLANG.newest_checked} token pool, page {layout.block_size}"
        return detail + (f", tp {layout.tp} (per GPU)" if layout.tp > 1 else "")

    # -- kvcalc plan ----------------------------------------------------------------------

    plan_options = ("--mem-fraction-static", "--max-running-requests", "--max-total-tokens",
                    "--chunked-prefill-size", "--cuda-graph-max-bs", "--disable-cuda-graph",
                    "--free-memory")

    def plan_block_size(self, spec, inp) -> int:
        return default_backend(inp.gpu.cuda_capability)[1]

    def settings_for(self, inp) -> SglangSettings:
        o = inp.option
        return SglangSettings(mem_fraction_static=o("mem_fraction_static"),
                              max_running_requests=o("max_running_requests"),
                              max_total_tokens=o("max_total_tokens"),
                              chunked_prefill_size=o("chunked_prefill_size"),
                              cuda_graph_max_bs=o("cuda_graph_max_bs"),
                              disable_cuda_graph=bool(o("disable_cuda_graph", False)))

    def _stage_figures(self, spec, params, inp, layout=None) -> list[SglangCapacity]:
        layout = layout or cached_layout(spec, inp.engine, inp.kv_dtype, version=inp.version,
                                         block_size=inp.block(spec), tp=inp.tp)
        stages = pp_partition(spec.num_layers, inp.pp)
        free = inp.free_memory if inp.free_memory is not None else \
            default_free_memory(inp.gpu.memory_bytes, inp.tp * inp.pp)
        weights = stage_weight_bytes(spec, params, inp.weights_dtype, inp.tp, stages)
        if inp.weights is not None:
            weights = [inp.weights] * len(stages)
        gpu_mib = inp.gpu.smi_mib
        backend = "" if inp.block_size is not None else \
            default_backend(inp.gpu.cuda_capability)[0]
        out = []
        for (start, end), w in zip(stages, weights):
            stage = replace(layout, layers=layout.layers[start:end]) if inp.pp > 1 else layout
            out.append(sglang_capacity(stage, free_before=free, weights=w,
                                       context_len=inp.max_len, gpu_mem_mib=gpu_mib, tp=inp.tp,
                                       pp=inp.pp, settings=self.settings_for(inp),
                                       backend=backend, available_override=inp.kv_budget))
        return out

    def plan_budgets(self, spec, params, inp) -> list:
        out = []
        for cap in self._stage_figures(spec, params, inp):
            kept = cap.free_before_bytes - int(cap.free_before_bytes * cap.mem_fraction_static)
            out.append(Budget(cap.free_before_bytes, cap.mem_fraction_static,
                              cap.free_before_bytes - cap.free_after_bytes, 0, 0, 0, kept,
                              cap.available_bytes if cap.error is None else
                              int(sglang_available_bytes(cap.free_before_bytes,
                                                         cap.free_after_bytes,
                                                         cap.mem_fraction_static) * SGLANG_GB),
                              "sglang"))
        return out

    def plan_figures(self, spec, inp, layout, budgets) -> SglangCapacity:
        from ..params import count_parameters

        caps = self._stage_figures(spec, count_parameters(spec), inp, layout)
        failing = [c for c in caps if c.error]
        return failing[0] if failing else min(caps, key=lambda c: c.max_total_num_tokens)


def default_free_memory(runtime_total: int, gpus: int) -> int:
    """The free memory SGLang measures before loading weights, when not given (--free-memory):
    the runtime total less the CUDA context (:data:`CUDA_CONTEXT_BYTES`) and, with several GPUs,
    NCCL's buffers (:data:`NCCL_BYTES`)."""
    return runtime_total - CUDA_CONTEXT_BYTES - (NCCL_BYTES if gpus > 1 else 0)


SGLANG = register(Sglang())
