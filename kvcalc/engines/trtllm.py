"""TensorRT-LLM: blocks of ``tokens_per_block`` tokens from a fraction of the free memory.

Rules read from NVIDIA/TensorRT-LLM (docs/engines.md section 5; TensorRT-LLM does not install
on a CPU, so the figures are checked against real logs, tests/test_trtllm.py):

- ``KvCacheConfig`` (``tensorrt_llm/llmapi/llm_args.py``): ``free_gpu_memory_fraction`` 0.9,
  ``tokens_per_block`` 32 (64 in older engine builds), ``max_tokens`` / ``max_gpu_total_bytes``
  caps, ``host_cache_size`` for host (secondary) blocks;
- bytes per token (:func:`trtllm_bytes_per_token`, ``KVCacheManager`` in
  ``tensorrt_llm/_torch/pyexecutor/resource_manager.py``): ``kv_factor x sum over layers of
  ceil(kv_heads / tp) x head_dim x dtype``; MLA: kv_factor 1, one "head" of ``kv_lora_rank +
  qk_rope_head_dim``, not split by TP; sliding layers keep full length unless
  ``max_attention_window`` is set;
- tokens and blocks (:func:`trtllm_capacity`): ``max_tokens = available x fraction //
  bytes_per_token`` (capped), ``blocks = ceil(max_tokens / tokens_per_block)``
  (``calculateMaxNumBlocks``, ``cpp/tensorrt_llm/batch_manager/kvCacheManager.cpp``);
- the profiling run's own small pool (:func:`trtllm_estimation_tokens`, ``KvCacheCreator`` in
  ``tensorrt_llm/_torch/pyexecutor/_util.py``): whole blocks for the dummy requests of
  ``max_num_tokens``, printed before the final pool;
- the log lines "Number of tokens per block: 32." and "[MemUsageChange] Allocated X GiB for max
  tokens in paged KV cache (N)." / "Number of blocks in KV cache primary pool: N".

Version bands (:data:`BANDS`, closed at the newest release checked): 0.10-1.1 and 1.2 (checked
against the trtllm-serve 1.2.1 log). They model the same arithmetic; 1.2's rounding of the final
pool to whole blocks is the one kvcalc could not read from 1.2.1's own sources (:data:`ROUNDS_UP`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .. import arch
from ..arch import AttentionLayer, MLALayer, ModelSpec, StateLayer
from ..dtypes import KVDtype, resolve_kv_dtype
from ..errors import UsageError
from ..units import GiB, MiB, cdiv
from ..budget import Budget, activation_bytes, pp_partition, stage_weight_bytes  # noqa: F401
from . import Band, Engine, Setting, cached_layout, register
from .cache import (KEEP_ALL, KEEP_NONE, LayerCache, Layout, no_cache_formula,
                    require_at_least_one)

#: ``KvCacheConfig.free_gpu_memory_fraction`` default
FREE_GPU_MEMORY_FRACTION = 0.9
#: ``KvCacheConfig.tokens_per_block`` default (PyTorch backend / LLM API); older TRT engine
#: builds default to 64
TOKENS_PER_BLOCK = 32
TOKENS_PER_BLOCK_OLD_ENGINES = 64
#: K and V (``kv_factor``); MLA caches one latent (kv_factor 1)
KV_FACTOR = 2
MLA_KV_FACTOR = 1
#: ``max_num_tokens`` default (the profiling run's batch): 8192 in the LLM API
#: (``tensorrt_llm/llmapi/llm_args.py``) and in trtllm-bench ("the default max_batch_size and
#: max_num_tokens values of 2048 and 8192", docs/source/performance/perf-benchmarking.md); the
#: DGX Spark 1.1.0rc3 log in tests/test_trtllm.py prints "max_num_tokens=8192"
MAX_NUM_TOKENS = 8192
#: ASSUMPTION, no TensorRT-LLM log sources it: the memory the process holds before the weights
#: load (CUDA context), taken as the 600 MiB SGLang's logs show on an H100 (sglang.py). TensorRT-
#: LLM measures its budget after loading and profiling ("available: X GiB" on the engine path,
#: "Peak memory during memory usage profiling" on the PyTorch backend); give that figure with
#: --kv-budget (the pool is then fraction x budget), or --free-memory / --weights-memory /
#: --overhead for the terms
CUDA_CONTEXT_BYTES = 600 * MiB


def trtllm_heads_per_gpu(kv_heads: int, tp: int) -> int:
    """KV heads one TP rank holds in the pool: ``ceil(kv_heads / tp)`` (replicated past kv)."""
    return cdiv(kv_heads, tp)


@lru_cache(maxsize=256)
def trtllm_layout(spec: ModelSpec, kv_dtype: str = "auto", tokens_per_block: int = TOKENS_PER_BLOCK,
                  tp: int = 1, version: str | None = None) -> Layout:
    """``spec`` in TensorRT-LLM's paged pool: every attention layer at full length (no
    ``max_attention_window``), MLA latent unsplit."""
    require_at_least_one(tensor_parallel_size=tp, tokens_per_block=tokens_per_block)
    dtype = resolve_kv_dtype(kv_dtype, spec.dtype)
    version = version or TRTLLM.default_version
    band = TRTLLM.band(version)
    out = []
    for i, layer in enumerate(spec.layers):
        out.append(_layer(i, layer, dtype, tokens_per_block, tp))
    notes = [f"TensorRT-LLM paged KV cache, {tokens_per_block} tokens per block"]
    if any(isinstance(l, AttentionLayer) and l.kind != arch.FULL for l in spec.layers):
        notes.append("sliding/chunked layers keep full length (max_attention_window unset)")
    return Layout(spec, "trtllm", dtype, tuple(out), tokens_per_block, tp, version, band.name,
                  tuple(notes))


def _layer(i: int, layer, dtype: KVDtype, block: int, tp: int) -> LayerCache:
    if isinstance(layer, AttentionLayer):
        heads = trtllm_heads_per_gpu(layer.kv_heads, tp)
        bpt = heads * (dtype.row_bytes(layer.head_dim_k) + dtype.row_bytes(layer.head_dim_v))
        return LayerCache(i, arch.FULL, bpt, KEEP_ALL, None, block,
                          formula=f"ceil({layer.kv_heads} kv heads / tp {tp}) = {heads} x "
                                  f"({layer.head_dim_k} + {layer.head_dim_v}) x "
                                  f"{dtype.bits // 8} B, full length")
    if isinstance(layer, MLALayer):
        width = layer.kv_lora_rank + layer.qk_rope_head_dim
        return LayerCache(i, layer.kind, MLA_KV_FACTOR * dtype.row_bytes(width), KEEP_ALL, None,
                          block, formula=f"latent {width} x {dtype.bits // 8} B, not split by TP")
    if isinstance(layer, StateLayer):
        return LayerCache(i, layer.kind, 0, KEEP_NONE,
                          formula="Mamba states: not modelled for TensorRT-LLM")
    return LayerCache(i, layer.kind, 0, KEEP_NONE, formula=no_cache_formula(layer))


def trtllm_bytes_per_token(layout: Layout) -> int:
    """The pool's bytes per token on one GPU (every layer with per-token KV)."""
    return sum(c.bytes_per_token for c in layout.layers if c.keep != KEEP_NONE)


def trtllm_estimation_tokens(max_num_tokens: int = MAX_NUM_TOKENS, max_seq_len: int = 0,
                             tokens_per_block: int = TOKENS_PER_BLOCK, *,
                             overlap_scheduler: bool = True, draft_tokens: int = 0,
                             extra_kv_tokens: int = 0, beam_width: int = 1) -> int:
    """The pool of the PyTorch backend's profiling run: the ``max_tokens`` it prints first ("max_tokens
    is set by kv_cache_config.max_tokens: N", "Allocated X GiB for max tokens in paged KV cache (N)"
    before the final pool). ``KvCacheCreator._get_token_num_for_estimation`` and
    ``_create_dummy_context_requests`` (NVIDIA/TensorRT-LLM ``tensorrt_llm/_torch/pyexecutor/
    _util.py``, 1.1): dummy context requests of ``min(max_num_tokens, max_seq_len - 1)`` tokens
    until ``max_num_tokens`` are used up, each rounded up to whole blocks after adding the tokens it
    generates (1, +1 with the overlap scheduler; draft tokens likewise, + ``num_extra_kv_tokens``),
    times the beam width."""
    if max_num_tokens < 1 or tokens_per_block < 1:
        raise UsageError("max_num_tokens and tokens_per_block must be at least 1")
    extra = 1
    if overlap_scheduler:
        extra += 1 + draft_tokens
    extra += draft_tokens + extra_kv_tokens
    length = min(max_num_tokens, max(1, (max_seq_len or max_num_tokens + 1) - 1))
    blocks, remaining = 0, max_num_tokens
    while remaining > 0:
        n = min(length, remaining)
        blocks += cdiv(n + extra, tokens_per_block)
        remaining -= n
    return blocks * tokens_per_block * beam_width


@dataclass(frozen=True)
class TrtllmCapacity:
    """TensorRT-LLM's pool for one GPU."""

    available_bytes: int              # free memory the fraction applies to
    fraction: float
    bytes_per_token: int
    tokens_per_block: int
    max_tokens: int
    blocks: int
    host_blocks: int = 0
    max_seq_len: int = 0
    round_up: bool = True
    notes: tuple[str, ...] = ()
    #: free memory when the model loads, and the weights it loads (which component fails)
    free_bytes: int = 0
    weights_bytes: int = 0

    key = "trtllm"

    @property
    def kv_cache_bytes(self) -> int:
        """What the pool allocates: ``blocks x tokens_per_block x bytes_per_token``."""
        return self.blocks * self.tokens_per_block * self.bytes_per_token

    @property
    def fits(self) -> bool:
        return self.blocks > 0 and self.max_tokens >= min(self.max_seq_len or 1, 1)

    @property
    def error(self) -> str | None:
        # the PyTorch executor's refusal (tensorrt_llm/_torch/pyexecutor/py_executor_creator.py,
        # as quoted in NVIDIA/TensorRT-LLM#5872): the KV cache is the component not created
        if self.fits:
            return None
        model = self.weights_bytes > self.free_bytes > 0
        free = self.free_bytes if model else max(self.available_bytes, 0)
        return ("Executor creation failed due to insufficient GPU memory. The following "
                f"component could not be created: {'Model' if model else 'KV cache'} (free GPU "
                f"memory before the attempt: {free / GiB:.2f} GiB"
                + (f"; weights per GPU {self.weights_bytes / GiB:.2f} GiB)" if model else ")"))

    @property
    def num_blocks(self) -> int:
        return self.blocks

    @property
    def kv_cache_tokens(self) -> int:
        return self.blocks * self.tokens_per_block

    @property
    def max_concurrency(self) -> float:
        return self.kv_cache_tokens / self.max_seq_len if self.max_seq_len else 0.0

    def log_lines(self) -> list[str]:
        return [f"Number of tokens per block: {self.tokens_per_block}.",
                f"[MemUsageChange] Allocated {self.kv_cache_bytes / GiB:.2f} GiB for max tokens "
                f"in paged KV cache ({self.kv_cache_tokens}).",
                f"Number of blocks in KV cache primary pool: {self.blocks}"]

    def budget_rows(self) -> list[tuple[str, int]]:
        return [("free memory after the profiling run", self.available_bytes),
                (f"x free_gpu_memory_fraction {self.fraction}",
                 int(self.available_bytes * self.fraction)),
                ("= KV pool (blocks x tokens_per_block x bytes/token)", self.kv_cache_bytes)]

    def capacity_rows(self) -> list[tuple[str, str]]:
        return [("bytes per token (per GPU)", f"{self.bytes_per_token:,}"),
                ("tokens_per_block", f"{self.tokens_per_block}"),
                ("max_tokens", f"{self.max_tokens:,}"),
                ("blocks (primary pool)", f"{self.blocks:,}"),
                ("host blocks (host_cache_size)", f"{self.host_blocks:,}")]

    def record(self) -> dict:
        """The ``trtllm`` object of ``kvcalc plan --format json``."""
        return {"tokens_per_block": self.tokens_per_block, "max_tokens": self.max_tokens,
                "blocks": self.blocks, "kv_cache_bytes": self.kv_cache_bytes,
                "host_blocks": self.host_blocks, "bytes_per_token": self.bytes_per_token,
                "free_gpu_memory_fraction": self.fraction,
                "available_bytes": self.available_bytes, "fits": self.fits,
                "log": self.log_lines()}


def trtllm_capacity(available_bytes: int, bytes_per_token: int, *,
                    fraction: float = FREE_GPU_MEMORY_FRACTION,
                    tokens_per_block: int = TOKENS_PER_BLOCK, max_tokens: int | None = None,
                    max_gpu_total_bytes: int = 0, host_cache_size: int = 0,
                    max_seq_len: int = 0, round_up: bool = True, free_bytes: int = 0,
                    weights_bytes: int = 0) -> TrtllmCapacity:
    """``max_tokens = int(available x fraction) // bytes_per_token`` (capped by ``max_tokens``
    and ``max_gpu_total_bytes``), ``blocks = ceil(max_tokens / tokens_per_block)`` (the newest
    PyTorch source floors: ``round_up=False``); host blocks from ``host_cache_size``."""
    primary = int(max(0, available_bytes) * fraction)
    if max_gpu_total_bytes:
        primary = min(primary, max_gpu_total_bytes)
    tokens = primary // bytes_per_token if bytes_per_token else 0
    if max_tokens is not None:
        tokens = min(tokens, max_tokens)
    blocks = cdiv(tokens, tokens_per_block) if round_up else tokens // tokens_per_block
    block_bytes = tokens_per_block * bytes_per_token
    host = host_cache_size // block_bytes if block_bytes else 0
    return TrtllmCapacity(available_bytes, fraction, bytes_per_token, tokens_per_block, tokens,
                          blocks, host, max_seq_len, round_up, free_bytes=free_bytes,
                          weights_bytes=weights_bytes)


#: 1.1.0rc3 rounds the final pool's max_tokens up to whole blocks (``math.ceil`` in
#: ``KVCacheManager.calculate_max_num_blocks``; the DGX Spark log's 86,711 tokens -> 2,710 blocks).
#: Later sources on NVIDIA/TensorRT-LLM main floor (``int(max_tokens // tokens_per_block)``); which
#: of the two 1.2.1 ships could not be read here (its wheel is not on PyPI, only a stub that
#: downloads from pypi.nvidia.com), and the 1.2.1 log fits both, so 1.2 keeps rounding up
ROUNDS_UP = {"0.10-1.1": True, "1.2": True}

BANDS = (
    Band("0.10-1.1", (0, 10), (1, 1),
         ("free_gpu_memory_fraction 0.9 of the free memory (after the profiling run on the "
          "PyTorch backend), blocks of tokens_per_block tokens rounded up",),
         ("NVIDIA/TensorRT-LLM tensorrt_llm/_torch/pyexecutor/_util.py (KvCacheCreator), "
          "tensorrt_llm/_torch/pyexecutor/resource_manager.py, "
          "cpp/tensorrt_llm/batch_manager/kvCacheManager.cpp",)),
    Band("1.2", (1, 2), (1, 2),
         ("the same pool arithmetic as 1.1: KvCacheCreator sets max_tokens = estimated KV memory "
          "// bytes per token and max_gpu_total_bytes to that memory (\"Estimated max memory in KV "
          "cache\"); the KvCacheConfig defaults are the same in the 1.1 and 1.3 API references "
          "(free_gpu_memory_fraction 0.9, tokens_per_block 32, max_gpu_total_bytes 0, block "
          "reuse on); the trtllm-serve 1.2.1 "
          "log of SmolLM2-135M (13,189 blocks, 422,048 tokens, 9.06 GiB) is reproduced",
          "the profiling (dry-run) pool takes its blocks straight from the estimation's max_tokens "
          "(max_tokens // tokens_per_block, no second free-memory query; #9093, merged in "
          "November 2025, after 1.1); the estimation tokens "
          "are whole blocks, so the profiling figures equal 1.1's",
          "unverified: whether the final pool still rounds max_tokens up to whole blocks "
          "(1.1.0rc3) or floors (later main sources); the 1.2.1 log fits both, the two differ by "
          "at most one block, and kvcalc keeps rounding up"),
         ("NVIDIA/TensorRT-LLM tensorrt_llm/_torch/pyexecutor/_util.py "
          "(KvCacheCreator.configure_kv_cache_capacity)",
          "NVIDIA/TensorRT-LLM tensorrt_llm/_torch/pyexecutor/resource_manager.py "
          "(KVCacheManager.__init__, calculate_max_num_blocks)",
          "NVIDIA/TensorRT-LLM#9093 (KV cache manager aware of the estimation dry run)",
          "NVIDIA/TensorRT-LLM docs, llm-api/reference/KvCacheConfig (defaults)",
          "lmontigny/lm7 docs/tensorrt-llm.md (the 1.2.1 log)")),
)


def trtllm_rounds_up(version: str | None = None) -> bool:
    """Whether the final pool rounds ``max_tokens`` up to whole blocks in ``version``'s band."""
    return ROUNDS_UP[TRTLLM.band(version).name]


class Trtllm(Engine):
    name = "trtllm"
    aliases = ("tensorrt-llm",)
    display_name = "TensorRT-LLM"
    package = "tensorrt_llm"
    bands = BANDS
    newest_checked = "1.2.1"
    default_version = "1.2"
    version_flag = "--trtllm-version"
    version_example = "1.2"
    plans = True
    tensor_parallel = True
    settings = (
        Setting("free_gpu_memory_fraction", FREE_GPU_MEMORY_FRACTION,
                "--free-gpu-memory-fraction", "share of the free memory for the pool"),
        Setting("tokens_per_block", TOKENS_PER_BLOCK, "--tokens-per-block",
                "32 (64 in older engine builds)"),
        Setting("max_tokens", None, "--max-tokens", "caps the pool's tokens"),
        Setting("max_gpu_total_bytes", 0, "--max-gpu-total-bytes", "caps the pool's bytes"),
        Setting("host_cache_size", 0, "--host-cache-size", "host (secondary) pool bytes"),
    )
    plan_options = ("--free-gpu-memory-fraction", "--max-tokens", "--max-gpu-total-bytes",
                    "--host-cache-size", "--free-memory")

    def layout(self, spec, kv_dtype: str = "auto", *, version: str | None = None,
               block_size: int | None = None, tp: int = 1) -> Layout:
        return trtllm_layout(spec, kv_dtype, TOKENS_PER_BLOCK if block_size is None
                             else block_size, tp, version)

    def describe(self, layout: Layout) -> str:
        detail = f"TensorRT-LLM paged KV cache, {layout.block_size} tokens per block"
        return detail + (f", tp {layout.tp} (per GPU)" if layout.tp > 1 else "")

    def plan_block_size(self, spec, inp) -> int:
        return TOKENS_PER_BLOCK

    def _capacity(self, spec, params, inp, layout=None) -> TrtllmCapacity:
        layout = layout or cached_layout(spec, inp.engine, inp.kv_dtype, version=inp.version,
                                         block_size=inp.block(spec), tp=inp.tp)
        stages = pp_partition(spec.num_layers, inp.pp)
        weights = max(stage_weight_bytes(spec, params, inp.weights_dtype, inp.tp, stages))
        if inp.weights is not None:
            weights = inp.weights
        free = inp.free_memory if inp.free_memory is not None else \
            inp.gpu.memory_bytes - CUDA_CONTEXT_BYTES
        overhead = inp.overhead if inp.overhead is not None else activation_bytes(
            spec, params, MAX_NUM_TOKENS, 1, inp.tp)
        available = free - weights - overhead if inp.kv_budget is None else inp.kv_budget
        o = inp.option
        return trtllm_capacity(available, trtllm_bytes_per_token(layout),
                               fraction=o("free_gpu_memory_fraction", FREE_GPU_MEMORY_FRACTION),
                               tokens_per_block=layout.block_size or TOKENS_PER_BLOCK,
                               max_tokens=o("max_tokens"),
                               max_gpu_total_bytes=o("max_gpu_total_bytes", 0) or 0,
                               host_cache_size=o("host_cache_size", 0) or 0,
                               max_seq_len=inp.max_len,
                               round_up=ROUNDS_UP.get(layout.band, True),
                               free_bytes=free, weights_bytes=weights)

    def plan_budgets(self, spec, params, inp) -> list:
        cap = self._capacity(spec, params, inp)
        return [Budget(cap.available_bytes, cap.fraction, 0, 0, 0, 0, 0, cap.kv_cache_bytes,
                       "trtllm")] * inp.pp

    def plan_figures(self, spec, inp, layout, budgets) -> TrtllmCapacity:
        from ..params import count_parameters

        return self._capacity(spec, count_parameters(spec), inp, layout)


TRTLLM = register(Trtllm())
