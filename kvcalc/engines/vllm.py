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
docs/engines.md §3 and docs/planning.md):

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

import math
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache

from .. import arch
from ..budget import (EXTENSIBLE, Budget, activation_bytes, pp_partition,  # noqa: F401
                      requested_memory, stage_weight_bytes)
from ..arch import CHUNKED, FULL, MLA, SLIDING, AttentionLayer, MLALayer, ModelSpec, StateLayer
from ..dtypes import DTYPES, KVDtype, resolve_kv_dtype
from ..errors import UsageError
from ..layout import head_split_problem
from ..units import MiB, GiB, cdiv, largest_satisfying
from ..units import format_gib as kvcalc_gib   # 'N.NN GiB'; format_gib below is vLLM's
from . import Band, Engine, Setting, register
from .cache import (KEEP_ALL, KEEP_CHUNK, KEEP_NONE, KEEP_WINDOW, LayerCache, Layout,
                    attention_bytes_per_token, attention_formula, mla_latent_bytes_per_token,
                    mla_latent_formula, no_cache_formula, state_bytes, state_formula,
                    require_at_least_one, INDEXER_QUANT_BLOCK,
                    indexer_bytes_per_token)

#: the capacity-report eras of the bands: "new" (>= 0.20) and "mid" (0.9-0.19)
ERAS = ("new", "mid")
#: vLLM rounds the enlarged attention block of attention+Mamba hybrids to this alignment
MAMBA_HYBRID_BLOCK_ALIGNMENT = 16
MAMBA = "mamba"


DEFAULT_BLOCK_SIZE = 16          # vLLM CacheConfig default on CUDA/ROCm

#: vLLM >= 0.20: tokens = int(concurrency x max_model_len), the null block held back, 2 batches
#: in flight with async scheduling (PRs #37429, #40384; vllm/config/vllm.py max_in_flight_tokens)
NEW_CAPACITY_SINCE = (0, 20)
#: vLLM 0.33: kv_cache_planning.py (wording of the errors, one capacity log line), Mamba align
#: mode with prefix caching, backend priorities per GPU generation (platforms/cuda.py)
V0_33 = (0, 33)
#: vLLM 0.34: default block 64 (``CacheConfig.DEFAULT_BLOCK_SIZE``, vllm/config/cache.py), the
#: extensible KV cache sized after warm-up (vllm/v1/worker/extensible_kv_cache.py), pp + 1
#: batches in flight with async scheduling (``VllmConfig.max_concurrent_batches``)
V0_34 = (0, 34)
#: ``CacheConfig.DEFAULT_BLOCK_SIZE`` per band: 16 up to 0.33, 64 from 0.34
DEFAULT_BLOCK_SIZE_V0_34 = 64
#: the extensible KV cache keeps free, after warm-up, a margin of
#: max(KV_CACHE_MARGIN_FLOOR_BYTES, KV_CACHE_MARGIN_FRACTION x transient peak) on CUDA
#: (3 GiB floor on ROCm) -- ``measure_kv_cache_bytes``, vllm/v1/worker/extensible_kv_cache.py
EXTENSIBLE_MARGIN_FLOOR = {True: 1 * GiB, False: 3 * GiB}
EXTENSIBLE_MARGIN_FRACTION = 0.75
#: gpu_memory_utilization when not given: 1.0 with the extensible KV cache (0.34), else
#: ``CacheConfig.DEFAULT_GPU_MEMORY_UTILIZATION`` 0.92 (``gpu_memory_utilization: float =
#: Field(default=0.92, ...)`` in vllm/config/cache.py of every release from 0.20.0 to 0.33.0;
#: 0.9 in 0.19.0 and before; read from the released wheels)
GPU_UTIL_EXTENSIBLE = 1.0
GPU_UTIL_DEFAULT = 0.92
GPU_UTIL_BEFORE = 0.9
GPU_UTIL_092_SINCE = (0, 20)
#: ``EngineArgs.get_batch_defaults`` (vllm/engine/arg_utils.py) for ``vllm serve``
#: (UsageContext.OPENAI_API_SERVER): (max_num_batched_tokens, max_num_seqs) by the GPU's
#: total memory and name -- >= 160 GiB (B200, B300): 16,384 / 1,024 (from 0.28); >= 70 GiB and
#: not an A100 nor a GB10 (SM 12.1): 8,192 / 1,024; else 2,048 / 256
BATCH_DEFAULTS_LARGEST = (16384, 1024)
BATCH_DEFAULTS_LARGE = (8192, 1024)
BATCH_DEFAULTS_SMALL = (2048, 256)
LARGEST_GPU_BYTES = 160 * GiB
LARGE_GPU_BYTES = 70 * GiB
LARGEST_DEFAULTS_SINCE = (0, 28)
GB10_CAPABILITY = (12, 1)
#: the GPU a layout is planned for when none is known: an H100 (SM 9.0), vLLM's most common target
ASSUMED_CAPABILITY = (9, 0)
#: ``FLASHINFER_GDN_CHECKPOINT_ALIGNMENT`` (vllm/v1/attention/backends/gdn_attn.py, 0.33.0):
#: GDN prefill checkpoints land on multiples of 64 tokens when FlashInfer runs the GDN prefill
FLASHINFER_GDN_CHECKPOINT_ALIGNMENT = 64
#: FlashInfer's GDN prefill kernel needs head_k_dim 128 on Blackwell (SM 10.x / 12.x)
#: (``_resolve_gdn_prefill_backend``, model_executor/layers/mamba/gdn/qwen_gdn_linear_attn.py)
FLASHINFER_GDN_BLACKWELL_HEAD_K_DIM = 128
#: the Mamba state blocks one request holds: one, plus the previous state kept for prefix
#: caching in "align" mode (``MambaSpec.max_memory_usage_bytes``, vllm/v1/kv_cache_interface.py)
MAMBA_BLOCKS_NONE = 1
MAMBA_BLOCKS_ALIGN = 2
#: mixers whose vLLM layer exports a prefill checkpoint block in align mode (0.33):
#: ``MambaMixer2.get_kv_cache_spec`` (Nemotron-H, Nemotron-3, Mamba-2) always; the Qwen GDN
#: layers only when FlashInfer runs their prefill; Jamba's / Mamba-1's ``MambaMixer`` never
MAMBA2 = "mamba2"
GATED_DELTANET = "gated_deltanet"
#: VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE when not given, per band (docs/engines.md)
CHUNKED_LOCAL_HYBRID_ENV = "VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE"
#: float32 checkpoints are served in the platform's first supported dtype: bf16 on SM >= 8.0
#: (``ModelConfig._resolve_auto_dtype``, "Downcast for float32 models", vllm/config/model.py)
SERVED_FLOAT32_AS = "bf16"


@dataclass(frozen=True)
class VllmRules:
    """The vLLM configuration whose figures are modelled: its version and the settings that
    change how the cache is planned (vLLM's own names; docs/engines.md)."""

    version: str = "0.33"
    enable_prefix_caching: bool = True
    num_speculative_tokens: int = 0
    #: VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE; None = the band's default
    chunked_local_hybrid: bool | None = None
    #: the GPU's CUDA compute capability; None with ``cuda`` False = a ROCm GPU
    capability: tuple[int, int] | None = ASSUMED_CAPABILITY
    cuda: bool = True

    @property
    def parsed(self) -> tuple[int, int]:
        return VLLM.parse_version(self.version)

    @property
    def band(self) -> Band:
        return VLLM.band(self.version)

    @property
    def era(self) -> str:
        """"new" (>= 0.20: int(concurrency x L) tokens, null block) or "mid" (0.9-0.19)."""
        return "new" if self.parsed >= NEW_CAPACITY_SINCE else "mid"

    @property
    def default_block_size(self) -> int:
        """``CacheConfig.DEFAULT_BLOCK_SIZE`` of the band (16, 64 from 0.34)."""
        return DEFAULT_BLOCK_SIZE_V0_34 if self.parsed >= V0_34 else DEFAULT_BLOCK_SIZE

    @property
    def extensible_kv_cache(self) -> bool:
        """vLLM 0.34's extensible KV cache: on by default on CUDA and ROCm (the budget is
        measured after warm-up; :func:`vllm_budgets`)."""
        return self.parsed >= V0_34

    def default_gpu_utilization(self, extensible: bool) -> float:
        """``CacheConfig.resolved_gpu_memory_utilization`` when --gpu-memory-utilization is
        not given: 1.0 with the extensible KV cache, 0.92 (0.20-0.34), 0.9 before."""
        if extensible:
            return GPU_UTIL_EXTENSIBLE
        return GPU_UTIL_DEFAULT if self.parsed >= GPU_UTIL_092_SINCE else GPU_UTIL_BEFORE

    def max_concurrent_batches(self, pp: int, async_scheduling: bool) -> int:
        """``VllmConfig.max_concurrent_batches``: pp + 1 with async scheduling (0.34); up to
        0.33 the V1 model runner overlaps 2 batches at PP 1 only, else pp."""
        if async_scheduling and self.parsed >= V0_34:
            return pp + 1
        if async_scheduling and pp <= 1:
            return 2
        return pp

    @property
    def mamba_align(self) -> bool:
        """``mamba_cache_mode == "align"``: set by ``MambaModelConfig.verify_and_update_config``
        when prefix caching is on (its default) from 0.33."""
        return self.parsed >= V0_33 and self.enable_prefix_caching

    @property
    def allows_chunked_local_hybrid(self) -> bool:
        """``envs.VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE``: read with a default of
        "1" (vllm/envs.py at v0.33.0), so the hybrid manager stays on for chunked local
        attention unless the variable is set to 0 (checked against vLLM's own
        ``VllmConfig.__post_init__``, tests/test_vllm_differential.py)."""
        if self.chunked_local_hybrid is not None:
            return self.chunked_local_hybrid
        return True

    def gdn_uses_flashinfer(self, head_k_dim: int) -> bool:
        """``_resolve_gdn_prefill_backend``: FlashInfer on SM 9.0, and on SM 10.x / 12.x with
        head_k_dim 128 (CUDA 13 runtime assumed); Triton elsewhere (Ampere, Ada, ROCm)."""
        if not self.cuda or self.capability is None:
            return False
        major = self.capability[0]
        return major == 9 or (major in (10, 12)
                              and head_k_dim == FLASHINFER_GDN_BLACKWELL_HEAD_K_DIM)

    def checkpoint_blocks(self, mixer: str | None, head_k_dim: int) -> int:
        """``num_prefill_checkpoint_blocks`` of one Mamba-style layer (align mode only)."""
        if not self.mamba_align:
            return 0
        if mixer == MAMBA2:
            return 1
        if mixer == GATED_DELTANET:
            return int(self.gdn_uses_flashinfer(head_k_dim))
        return 0

    def hybrid_block_alignment(self, states: list[tuple[str | None, int]],
                               block_size: int = DEFAULT_BLOCK_SIZE) -> int:
        """The alignment of the enlarged attention block of attention+Mamba hybrids
        (``Platform._align_hybrid_block_size``): max(the backend's smallest kernel block (16),
        the cache block size -- 16 up to 0.33, 64 from 0.34), made a multiple of the Mamba
        prefill checkpoint alignment in align mode -- 64 when every state layer is a GDN layer
        whose prefill FlashInfer runs, else none (1)."""
        align = max(MAMBA_HYBRID_BLOCK_ALIGNMENT, block_size)
        if self.mamba_align and states and all(
                m == GATED_DELTANET and self.gdn_uses_flashinfer(d) for m, d in states):
            align = math.lcm(align, FLASHINFER_GDN_CHECKPOINT_ALIGNMENT)
        return align


def rules_for_gpu(version: str | None, capability: str | None, vendor: str = "nvidia",
                  **settings) -> VllmRules:
    """:class:`VllmRules` for a catalog GPU: its compute capability (presets/gpus); a card of
    unknown capability is taken as :data:`ASSUMED_CAPABILITY`, an AMD card as ROCm."""
    cuda = vendor != "amd"
    parts = (capability or "").split(".")
    cc = (int(parts[0]), int(parts[1])) if len(parts) == 2 and all(
        p.isdigit() for p in parts) else (ASSUMED_CAPABILITY if cuda else None)
    return VllmRules(version or VLLM.default_version, capability=cc, cuda=cuda, **settings)


#: attention backends (``_get_backend_priorities``, vllm/platforms/cuda.py at v0.33.0) and the
#: block each prefers with the default 16 (``get_preferred_block_size``: 16 when the backend
#: takes it, else its smallest kernel block) and the KV dtypes it takes
#: (``supported_kv_cache_dtypes``; "auto" = the served model dtype, bf16/fp16)
MLA_BACKENDS = {
    "FLASH_ATTN_MLA": (16, ("bf16", "fp16")),          # MultipleOf(16); SM 9.x only
    "FLASHMLA": (64, ("bf16", "fp16", "fp8")),          # [64]; SM 9.x / 10.x
    "FLASHINFER_MLA": (32, ("bf16", "fp16", "fp8")),    # [32, 64]; SM 10.x; qk_nope 64/128/192
    "CUTLASS_MLA": (128, ("bf16", "fp16", "fp8")),      # [128]; SM 10.x
    "TRITON_MLA": (16, ("bf16", "fp16", "fp8")),        # MultipleOf(16); any GPU
    "FLASHMLA_SPARSE": (64, ("bf16", "fp8")),           # DeepSeek-V3.2 sparse attention
}
#: each MLA backend's kernel block sizes (``get_supported_kernel_block_sizes``): a list, or
#: ``MultipleOf(n)`` as (the empty list, n)
MLA_KERNEL_BLOCKS = {
    "FLASH_ATTN_MLA": ((), 16),
    "FLASHMLA": ((64,), 0),
    "FLASHINFER_MLA": ((32, 64), 0),
    "CUTLASS_MLA": ((128,), 0),
    "TRITON_MLA": ((), 16),
    "FLASHMLA_SPARSE": ((), 64),
    # the sparse backends 0.33's selector also picks (DeepSeek-V3.2 by GPU, KV dtype, heads)
    "FLASH_ATTN_MLA_SPARSE": ((), 64),
    "FLASH_ATTN_MLA_SPARSE_FA4": ((), 64),
    "FLASHINFER_MLA_SPARSE": ((), 32),
    "FLASHINFER_MLA_SPARSE_SM90": ((), 64),
    "FLASHINFER_MLA_SPARSE_SM120": ((), 64),
}
#: the priority lists per GPU generation at v0.33.0 (dense MLA; TOKENSPEED_MLA needs a package
#: that vLLM does not install, so it is skipped)
MLA_PRIORITY_V0_33 = {
    9: ("FLASH_ATTN_MLA", "FLASHMLA", "FLASHINFER_MLA", "TRITON_MLA"),
    10: ("FLASHINFER_MLA", "CUTLASS_MLA", "FLASH_ATTN_MLA", "FLASHMLA", "TRITON_MLA"),
    12: ("TRITON_MLA",),
}
MLA_PRIORITY_OTHER = ("FLASH_ATTN_MLA", "FLASHMLA", "FLASHINFER_MLA", "TRITON_MLA")
#: compute capability majors each backend runs on (``supports_compute_capability``)
MLA_BACKEND_MAJORS = {"FLASH_ATTN_MLA": (9,), "FLASHMLA": (9, 10), "FLASHINFER_MLA": (10,),
                      "CUTLASS_MLA": (10,)}
#: FlashInfer MLA needs qk_nope_head_dim in these (``FlashInferMLABackend.supports_combination``)
FLASHINFER_MLA_QK_NOPE = (64, 128, 192)
#: before 0.33 (kvcalc's figures for 0.20-0.32): FlashMLA on Hopper, CUTLASS MLA on SM 10.x,
#: TRITON_MLA elsewhere (engines reference A.1)
MLA_BACKEND_BEFORE_V0_33 = {9: "FLASHMLA", 10: "CUTLASS_MLA"}


#: vLLM's DSA indexer key cache: fp8 keys with one fp32 scale per 128 values
#: (engines.cache.indexer_bytes_per_token, shared with SGLang)
VLLM_INDEXER_QUANT_BLOCK = INDEXER_QUANT_BLOCK
vllm_indexer_bytes_per_token = indexer_bytes_per_token


#: FlashMLA-sparse's fp8 cache format "fp8_ds_mla" (what vLLM serves any fp8 KV dtype of a
#: DeepSeek Sparse Attention model as: ``_canonicalize_sparse_mla_kv_cache_dtype``): per token
#: the kv_lora_rank NoPE values in fp8 with one fp32 scale per 128 of them, and the RoPE values
#: in bf16 — 512 + 4 x 4 + 64 x 2 = 656 bytes for DeepSeek-V3.2, the ``state_content_bytes``
#: of ``MLAAttention.get_kv_cache_spec`` (vllm/model_executor/layers/attention/mla_attention.py)
DS_MLA_FP8_SCALE_BLOCK = 128
DS_MLA_ROPE_BYTES = 2


def ds_mla_fp8_bytes_per_token(layer: MLALayer) -> int:
    """Bytes of one token of the ``fp8_ds_mla`` latent (656 for DeepSeek-V3.2)."""
    nope = layer.kv_lora_rank
    return (nope + nope // DS_MLA_FP8_SCALE_BLOCK * 4
            + layer.qk_rope_head_dim * DS_MLA_ROPE_BYTES)


def mla_backend(spec: ModelSpec, kv_dtype: str, rules: VllmRules) -> str:
    """The MLA attention backend vLLM selects for ``spec`` with KV dtype ``kv_dtype`` (a
    resolved name: bf16, fp16, fp8, ...) on the GPU of ``rules``: the first backend of the
    GPU generation's priority list that runs on it and takes the KV dtype."""
    cc = rules.capability if rules.cuda else None
    if any(isinstance(l, MLALayer) and l.indexer_head_dim for l in spec.layers):
        return "FLASHMLA_SPARSE"
    if rules.parsed < V0_33:
        return MLA_BACKEND_BEFORE_V0_33.get(cc[0], "TRITON_MLA") if cc else "TRITON_MLA"
    if cc is None:
        return "TRITON_MLA"
    qk_nope = next((l.qk_nope_head_dim for l in spec.layers if isinstance(l, MLALayer)), 0)
    for name in MLA_PRIORITY_V0_33.get(cc[0], MLA_PRIORITY_OTHER):
        if cc[0] not in MLA_BACKEND_MAJORS.get(name, (cc[0],)):
            continue
        if kv_dtype not in MLA_BACKENDS[name][1]:
            continue
        if name == "FLASHINFER_MLA" and qk_nope not in FLASHINFER_MLA_QK_NOPE:
            continue
        return name
    return "TRITON_MLA"


# --------------------------------------------------------------------------------------------
# The attention backend vLLM selects per layer, and its refusal when none takes the layer
# (0.33 and 0.34: ``get_attn_backend`` in vllm/v1/attention/selector.py ->
# ``CudaPlatform.get_attn_backend_cls`` / ``_get_backend_priorities`` in vllm/platforms/cuda.py
# -> each backend's ``AttentionBackend.validate_configuration``, vllm/v1/attention/backend.py).
# Checked against vLLM's own selector: tests/vllm_diff/backends.py.

#: kvcalc's KV dtype names -> the ``--kv-cache-dtype`` value the selector sees
SELECTOR_KV_DTYPES = {"auto": "auto", "bf16": "bfloat16", "bfloat16": "bfloat16",
                      "fp16": "float16", "float16": "float16", "fp8": "fp8",
                      "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"}
#: --kv-cache-dtype values that are not quantized (``is_quantized_kv_cache``)
UNQUANTIZED_KV = ("auto", "bfloat16", "float16")
#: model types that run with attention sinks on every layer (vllm/model_executor/models/
#: gpt_oss.py passes ``sinks`` to ``Attention``)
SINK_MODEL_TYPES = ("gpt_oss",)
#: ``_FLOAT16_NOT_SUPPORTED_MODELS`` (vllm/config/model.py): never served in float16
FLOAT16_NOT_SUPPORTED = ("gemma2", "gemma3", "gemma3_text", "glm4")
#: the environment kvcalc assumes, as on a GPU host with vLLM's wheel and its dependencies:
#: FlashInfer's TRT-LLM kernels reachable (``has_nvidia_artifactory``: NVIDIA's artifactory or
#: flashinfer-cubin; attention sinks on FlashInfer) and the FA4 cute-DSL entry point
#: importable (nvidia-cutlass-dsl, a vLLM requirement; FLASH_ATTN_MLA_SPARSE_FA4)
FA4_CUTE_DSL = True


class BackendRefusal(Exception):
    """vLLM stops building the model: no attention backend takes a layer (or the KV dtype
    contradicts the model dtype); the message is vLLM's."""

    def __init__(self, message: str, check: str = "attention_backend"):
        super().__init__(message)
        self.check = check


@dataclass(frozen=True)
class SelectorQuery:
    """What ``AttentionSelectorConfig`` (and the backends' ``supports_combination``) read for
    one layer, as far as kvcalc knows it: vLLM's defaults for everything else (no --block-size
    unless given, no KV connector, DCP/PCP off, causal decoder attention)."""

    head_size: int
    dtype: str                    # "bfloat16" | "float16" | "float32" (torch.<name>)
    kv_cache_dtype: str           # the --kv-cache-dtype value
    capability: tuple[int, int]
    block_size: int | None = None
    use_mla: bool = False
    has_sink: bool = False
    use_sparse: bool = False
    has_sliding_window: bool = False
    num_heads: int | None = None  # MLA: query heads per GPU
    # model config fields the MLA backends read (hf_text_config)
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    kv_lora_rank: int = 0
    index_topk: int | None = None
    fa4_cute_dsl: bool = FA4_CUTE_DSL

    @property
    def quantized(self) -> bool:
        return self.kv_cache_dtype not in UNQUANTIZED_KV

    def config_repr(self, version: tuple[int, int]) -> str:
        """``AttentionSelectorConfig.__repr__`` (vllm/v1/attention/selector.py); the attention
        type prints as ``AttentionType.DECODER`` in 0.33, ``decoder`` in 0.34."""
        attn_type = "decoder" if version >= V0_34 else "AttentionType.DECODER"
        block = "None" if self.block_size is None else str(self.block_size)
        return (f"AttentionSelectorConfig(head_size={self.head_size}, dtype=torch.{self.dtype}, "
                f"kv_cache_dtype={self.kv_cache_dtype}, block_size={block}, "
                f"use_mla={self.use_mla}, has_sink={self.has_sink}, use_sparse={self.use_sparse}, "
                "use_mm_prefix=False, use_per_head_quant_scales=False, "
                f"attn_type={attn_type}, has_sliding_window={self.has_sliding_window}, "
                "use_non_causal=False, use_batch_invariant=False, use_kv_connector=False, "
                "use_adaptive_verification=False, use_pcp=False, use_dcp=False, use_rswa=False)")


def _fa_version(cap: tuple[int, int]) -> int | None:
    """``get_flash_attn_version()`` with no layer arguments (fa_utils.py): FA3 on SM 9.x, FA4
    on SM 10.x, FA2 from SM 8.0; None below."""
    if cap[0] == 9:
        return 3
    if cap[0] == 10:
        return 4
    return 2 if cap >= (8, 0) else None


def _fa4_supported(cap: tuple[int, int]) -> bool:
    """``_is_fa4_supported`` (vllm_flash_attn/flash_attn_interface.py): SM 9.x, 10.x, 11.x."""
    return cap[0] in (9, 10, 11)


def _fa_layer_version(q: SelectorQuery) -> int | None:
    """``get_flash_attn_version(head_size=..., has_sinks=..., kv_cache_block_size=...,
    supports_fa4_hd256=True)`` for a layer of equal K/V head size (fa_utils.py): FA3 -> FA4 on
    SM 9.0 past head 256; FA4's Blackwell head-256 kernel falls back to FA2 for sinks or a
    quantized KV cache; FA4 on SM >= 10 takes heads up to 128 (and 256) only."""
    cap, v = q.capability, _fa_version(q.capability)
    if v == 3 and _fa4_supported(cap) and q.head_size > 256:
        v = 4
    if v == 4 and q.head_size == 256 and cap[0] in (10, 11):
        if q.has_sink or q.quantized or (q.block_size is not None and q.block_size % 128):
            v = 2
    if v == 4 and cap[0] >= 10 and q.head_size > 128 and q.head_size != 256:
        v = 2
    return v


def _fa_supports_kv(q: SelectorQuery, layer: bool) -> bool:
    """``flash_attn_supports_kv_cache_dtype`` (fa_utils.py): never fp8_e5m2; fp8 with FA3 on
    SM 9.x (or FA4 at head 512) and with FA4 on SM 10.x."""
    if q.kv_cache_dtype == "fp8_e5m2":
        return False
    v = _fa_layer_version(q) if layer else _fa_version(q.capability)
    sm90 = v == 3 or (v == 4 and (not layer or q.head_size == 512))
    return (sm90 and q.capability[0] == 9) or (v == 4 and q.capability[0] == 10)


def _flash_attn(q: SelectorQuery) -> list[str]:
    """FLASH_ATTN (vllm/v1/attention/backends/flash_attn.py)."""
    cap, r = q.capability, []
    if not (q.head_size % 8 == 0 and (q.head_size <= 256 or (
            _fa4_supported(cap) and q.head_size <= 512))):
        r.append("head_size not supported")
    if q.dtype not in ("float16", "bfloat16"):
        r.append("dtype not supported")
    if q.kv_cache_dtype not in ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3") or (
            q.quantized and not _fa_supports_kv(q, layer=False)):
        r.append("kv_cache_dtype not supported")
    if q.block_size is not None and q.block_size % 16:
        r.append("block_size not supported")
    if q.use_mla:
        r.append("MLA not supported")
    if q.has_sink and _fa_version(cap) not in (3, 4):
        r.append("attention sinks not supported")
    if q.use_sparse:
        r.append("sparse not supported")
    if cap < (8, 0):
        r.append("compute capability not supported")
    if (cap == (9, 0) and q.quantized and q.head_size == 512 and q.block_size is not None
            and q.block_size % 64):
        r.append("SM90 d512 FP8 KV requires a block size divisible by 64")
    elif q.has_sink and cap < (9, 0):
        r.append("sink not supported on compute capability < 9.0")
    elif q.quantized and not _fa_supports_kv(q, layer=True):
        r.append("FP8 KV requires FA3 (SM90), equal-d512 FA4 (SM90), or FA4 (SM100).")
    return r


def _flashinfer(q: SelectorQuery) -> list[str]:
    """FLASHINFER (vllm/v1/attention/backends/flashinfer.py); attention sinks through the
    TRT-LLM kernels: decode on SM 9.0 and 12.x, decode and prefill on 10.x."""
    cap, r = q.capability, []
    if q.head_size not in (64, 128, 256, 512):
        r.append("head_size not supported")
    if q.dtype not in ("float16", "bfloat16"):
        r.append("dtype not supported")
    if q.kv_cache_dtype not in ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"):
        r.append("kv_cache_dtype not supported")
    if q.block_size is not None and q.block_size % 16:
        r.append("block_size not supported")
    if q.use_mla:
        r.append("MLA not supported")
    if q.has_sink and not (cap == (9, 0) or cap[0] in (10, 12)):
        r.append("attention sinks not supported")
    if q.use_sparse:
        r.append("sparse not supported")
    if not (8, 0) <= cap <= (12, 1):
        r.append("compute capability not supported")
    return r


def _triton_attn(q: SelectorQuery) -> list[str]:
    """TRITON_ATTN (vllm/v1/attention/backends/triton_attn.py): any head size, sinks and
    windows, every float and fp8 KV dtype, any compute capability (its impl then refuses
    KV dtypes the GPU cannot store: :func:`triton_impl_refusal`)."""
    r = []
    if q.block_size is not None and q.block_size % 16:
        r.append("block_size not supported")
    if q.use_mla:
        r.append("MLA not supported")
    if q.use_sparse:
        r.append("sparse not supported")
    return r


def _mla_common(q: SelectorQuery, *, heads=(), dtypes=("float16", "bfloat16"),
                kv=("auto", "float16", "bfloat16", "fp8", "fp8_e4m3"), blocks=(),
                multiple_of=0, sparse=False, majors=None, window=False) -> list[str]:
    """``validate_configuration``'s generic checks for an MLA backend, in vLLM's order."""
    r = []
    if heads and q.head_size not in heads:
        r.append("head_size not supported")
    if q.dtype not in dtypes:
        r.append("dtype not supported")
    if q.kv_cache_dtype not in kv:
        r.append("kv_cache_dtype not supported")
    if q.block_size is not None and not (
            (multiple_of and q.block_size % multiple_of == 0)
            or any(q.block_size % b == 0 for b in blocks)):
        r.append("block_size not supported")
    if not q.use_mla:
        r.append("non-MLA not supported")
    if q.has_sink:
        r.append("attention sinks not supported")
    if q.use_sparse != sparse:
        r.append("sparse not supported" if q.use_sparse else "non-sparse not supported")
    if majors is not None and q.capability[0] not in majors:
        r.append("compute capability not supported")
    if q.has_sliding_window and not window:
        r.append("sliding window not supported")
    return r


DENSE_MLA_HEADS = (320, 512, 576)


def _flash_attn_mla(q):
    r = _mla_common(q, heads=DENSE_MLA_HEADS, kv=("auto", "float16", "bfloat16"),
                    multiple_of=16, majors=(9,))
    if q.capability[0] != 9:                     # flash_attn_supports_mla(): FA3 on SM 9.x
        r.append("FlashAttention MLA not supported on this device")
    return r


def _flashmla(q):
    r = _mla_common(q, heads=DENSE_MLA_HEADS, blocks=(64,), majors=(9, 10))
    if q.use_sparse:                              # is_flashmla_sparse_supported()
        if q.capability[0] not in (9, 10):
            r.append("FlashMLA Sparse is only supported on Hopper and Blackwell DC devices.")
    elif q.capability[0] != 9:                    # is_flashmla_dense_supported()
        r.append("FlashMLA Dense is only supported on Hopper devices.")
    return r


def _flashinfer_mla(q):
    r = _mla_common(q, heads=DENSE_MLA_HEADS, blocks=(32, 64), majors=(10,))
    if q.qk_nope_head_dim not in (64, 128, 192):
        r.append("FlashInfer MLA kernel requires qk_nope_head_dim in [64, 128, 192], but got "
                 f"{q.qk_nope_head_dim}")
    return r


def _tokenspeed_mla(q):
    # tokenspeed_mla is not a vLLM requirement: not installed unless added by hand
    return _mla_common(q, heads=DENSE_MLA_HEADS, kv=("fp8", "fp8_e4m3"), blocks=(32, 64),
                       majors=(10,)) + [
        "tokenspeed_mla package is not installed. Install it with: "
        "`uv pip install tokenspeed-mla`"]


def _cutlass_mla(q):
    return _mla_common(q, heads=DENSE_MLA_HEADS, blocks=(128,), majors=(10,))


def _triton_mla(q):
    return _mla_common(q, multiple_of=16, window=True)


def _flash_attn_mla_sparse(q):
    r = _mla_common(q, kv=("auto", "float16", "bfloat16"), multiple_of=64, sparse=True,
                    majors=(9,))
    if q.kv_cache_dtype not in ("auto", "float16", "bfloat16"):
        r.append("FlashAttention MLA Sparse currently supports only FP16/BF16 KV cache")
    elif q.capability[0] != 9:
        r.append("FlashAttention MLA not supported on this device")
    elif q.index_topk is None:
        r.append("FlashAttention MLA Sparse requires model with index_topk")
    return r


def _flashinfer_mla_sparse_combination(q) -> str | None:
    """``FlashInferMLASparseTRTLLMBackend.supports_combination`` (flashinfer_mla_sparse.py)."""
    if q.qk_rope_head_dim == 0:
        if q.qk_nope_head_dim != 256 or q.kv_lora_rank != 512:
            return ("FlashInfer native no-rope MLA requires qk_nope_head_dim=256 and "
                    f"kv_lora_rank=512, but got qk_nope_head_dim={q.qk_nope_head_dim}, "
                    f"kv_lora_rank={q.kv_lora_rank}")
    elif q.qk_nope_head_dim not in (128, 192):
        return ("FlashInfer MLA Sparse kernel requires qk_nope_head_dim in [128, 192], but got "
                f"{q.qk_nope_head_dim}")
    if q.index_topk is None:
        return "FlashInfer MLA Sparse requires model with index_topk config"
    return None


def _flashinfer_mla_sparse(q):
    r = _mla_common(q, heads=(512, 576), multiple_of=32, sparse=True, majors=(10,))
    if reason := _flashinfer_mla_sparse_combination(q):
        r.append(reason)
    return r


FA4_SPARSE_HEADS = (8, 16, 32, 64, 128)


def _flash_attn_mla_sparse_fa4(q):
    """FLASH_ATTN_MLA_SPARSE_FA4 (flashattn_mla_sparse.py): FA4's decode kernel, bf16 only."""
    r = _mla_common(q, heads=(576,), dtypes=("bfloat16",), kv=("auto", "bfloat16"),
                    multiple_of=64, sparse=True, majors=(10,))
    if not _fa4_supported(q.capability):
        reason = ("FA4 unavailable: FA4 is only supported on devices with compute capability "
                  "9.x, 10.x, or 11.x")
    elif not q.fa4_cute_dsl:
        reason = ("FA4 cute-DSL entry point failed to import: "
                  "ModuleNotFoundError(\"No module named 'cutlass'\")")
    elif q.index_topk is None or q.index_topk % 128:
        reason = f"FA4 sparse MLA requires index_topk % 128 == 0, got {q.index_topk}"
    elif (q.kv_lora_rank, q.qk_rope_head_dim) != (512, 64):
        reason = ("FA4 sparse MLA requires (kv_lora_rank, qk_rope_head_dim) == (512, 64), got "
                  f"({q.kv_lora_rank}, {q.qk_rope_head_dim})")
    elif q.num_heads not in FA4_SPARSE_HEADS:
        reason = (f"FA4 sparse MLA requires {FA4_SPARSE_HEADS} gathered query heads, got "
                  f"num_heads={q.num_heads} * dcp_size=1")
    else:
        reason = _flashinfer_mla_sparse_combination(q)
    return r + ([reason] if reason else [])


def _flashmla_sparse(q):
    r = _mla_common(q, heads=(576, 512), dtypes=("bfloat16",),
                    kv=("auto", "bfloat16", "fp8_ds_mla", "fp8", "nvfp4_ds_mla"),
                    multiple_of=64, sparse=True, majors=(9, 10))
    if q.head_size == 512:
        if q.kv_cache_dtype in ("auto", "bfloat16", "fp8_ds_mla") and q.capability[0] == 9:
            if q.qk_rope_head_dim != 0:
                r.append("FLASHMLA_SPARSE supports head_size 512 only for rope-free (NoPE) "
                         "models")
        else:
            r.append("FLASHMLA_SPARSE supports head_size 512 only with bf16 or fp8_ds_mla "
                     f"kv-cache on SM90 (NoPE), got kv_cache_dtype={q.kv_cache_dtype}, "
                     f"capability={_cap_repr(q.capability)}")
    return r


def _cap_repr(cap: tuple[int, int]) -> str:
    return f"DeviceCapability(major={cap[0]}, minor={cap[1]})"


def _flashinfer_mla_sparse_sm90(q):
    r = _mla_common(q, heads=(512, 576), dtypes=("bfloat16",),
                    kv=("auto", "bfloat16", "fp8", "fp8_e4m3"), multiple_of=64, sparse=True,
                    majors=(9,))
    if not q.use_sparse:
        r.append("FLASHINFER_MLA_SPARSE_SM90 requires sparse MLA")
    elif q.kv_lora_rank != 512:
        r.append("FLASHINFER_MLA_SPARSE_SM90 requires kv_lora_rank=512")
    elif q.qk_rope_head_dim not in (0, 64):
        r.append("FLASHINFER_MLA_SPARSE_SM90 requires qk_rope_head_dim in (0, 64)")
    return r


def _flashinfer_mla_sparse_sm120(q):
    kv = ("auto", "fp8", "fp8_e4m3", "fp8_ds_mla")
    r = _mla_common(q, heads=(512, 576), dtypes=("bfloat16",), kv=kv, multiple_of=64,
                    sparse=True, majors=(12,))
    if q.dtype != "bfloat16":
        r.append("dtype not supported")
    elif q.kv_cache_dtype not in kv:
        r.append("kv_cache_dtype not supported")
    elif q.index_topk is None:
        r.append("FLASHINFER_MLA_SPARSE_SM120 requires a model with index_topk config")
    elif q.index_topk != 2048:
        r.append(f"FLASHINFER_MLA_SPARSE_SM120 requires index_topk=2048; got {q.index_topk}")
    return r


#: each backend's ``validate_configuration`` for the layers kvcalc plans
BACKEND_CHECKS = {
    "FLASH_ATTN": _flash_attn, "FLASHINFER": _flashinfer, "TRITON_ATTN": _triton_attn,
    "FLASH_ATTN_MLA": _flash_attn_mla, "FLASHMLA": _flashmla,
    "FLASHINFER_MLA": _flashinfer_mla, "TOKENSPEED_MLA": _tokenspeed_mla,
    "CUTLASS_MLA": _cutlass_mla, "TRITON_MLA": _triton_mla,
    "FLASH_ATTN_MLA_SPARSE": _flash_attn_mla_sparse,
    "FLASH_ATTN_MLA_SPARSE_FA4": _flash_attn_mla_sparse_fa4,
    "FLASHMLA_SPARSE": _flashmla_sparse, "FLASHINFER_MLA_SPARSE": _flashinfer_mla_sparse,
    "FLASHINFER_MLA_SPARSE_SM90": _flashinfer_mla_sparse_sm90,
    "FLASHINFER_MLA_SPARSE_SM120": _flashinfer_mla_sparse_sm120,
}


def backend_priorities(q: SelectorQuery) -> tuple[str, ...]:
    """``_get_backend_priorities`` (vllm/platforms/cuda.py, the same in 0.33.0 and 0.34.0),
    for causal decoder layers without a multimodal prefix; FLEX_ATTENTION and TURBOQUANT
    follow TRITON_ATTN but are never reached (TRITON_ATTN takes every layer kvcalc plans)."""
    major = q.capability[0]
    if q.use_mla:
        if major == 10:
            if q.quantized:
                sparse = ("FLASHINFER_MLA_SPARSE", "FLASHMLA_SPARSE")
            elif q.num_heads is not None and q.num_heads <= 16:
                sparse = ("FLASH_ATTN_MLA_SPARSE_FA4", "FLASHINFER_MLA_SPARSE",
                          "FLASHMLA_SPARSE")
            else:
                sparse = ("FLASHMLA_SPARSE", "FLASHINFER_MLA_SPARSE")
            return ("FLASHINFER_MLA", "TOKENSPEED_MLA", "CUTLASS_MLA", "FLASH_ATTN_MLA",
                    "FLASHMLA", "TRITON_MLA") + sparse
        if major == 12:
            return ("TRITON_MLA", "FLASHINFER_MLA_SPARSE_SM120")
        tail = ("FLASH_ATTN_MLA_SPARSE", "FLASHMLA_SPARSE")
        tail = (("FLASHINFER_MLA_SPARSE_SM90",) + tail if q.head_size == 512
                else tail + ("FLASHINFER_MLA_SPARSE_SM90",))
        return ("FLASH_ATTN_MLA", "FLASHMLA", "FLASHINFER_MLA", "TRITON_MLA") + tail
    if major == 10:
        return ("FLASHINFER", "FLASH_ATTN", "TRITON_ATTN")
    return ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN")


def select_backend(q: SelectorQuery, version: tuple[int, int] = V0_34) -> str:
    """The backend ``CudaPlatform.get_attn_backend_cls`` returns for ``q``: the first of the
    priority list whose checks pass; else :class:`BackendRefusal` with vLLM's message,
    "No valid attention backend found for cuda with <config>. Reasons: {...}."."""
    reasons = {}
    for name in backend_priorities(q):
        invalid = BACKEND_CHECKS[name](q)
        if not invalid:
            return name
        reasons[name] = invalid
    text = ", ".join(f"{name}: [{', '.join(r)}]" for name, r in reasons.items())
    raise BackendRefusal(f"No valid attention backend found for cuda with "
                         f"{q.config_repr(version)}. Reasons: {{{text}}}.")


def selector_model_dtype(spec: ModelSpec, cap: tuple[int, int],
                         model_dtype: str | None = None) -> str:
    """The dtype vLLM runs the model in on a GPU of capability ``cap``
    (``ModelConfig._resolve_auto_dtype``, vllm/config/model.py): bf16 from SM 8.0, else
    float16 (float32 for the models ``_FLOAT16_NOT_SUPPORTED_MODELS`` keeps off float16);
    float32 checkpoints run in the first of those."""
    supported = ["bfloat16", "float16", "float32"] if cap >= (8, 0) else ["float16", "float32"]
    if spec.model_type in FLOAT16_NOT_SUPPORTED:
        supported.remove("float16")
    name = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(
        model_dtype or spec.dtype, "bfloat16")
    if name == "float32" or name not in supported:
        return supported[0]
    return name


def kv_dtype_refusal(kv_cache_dtype: str, model_dtype: str) -> str | None:
    """``VllmConfig._reject_mismatched_float_kv_cache`` (vllm/config/vllm.py, 0.33 and 0.34):
    an explicit float16/bfloat16 KV cache must match the model dtype."""
    if kv_cache_dtype not in ("float16", "bfloat16") or kv_cache_dtype == model_dtype:
        return None
    allowed = (f"`auto` or `{model_dtype}`" if model_dtype in ("float16", "bfloat16")
               else "`auto`")
    return (f'kv_cache_dtype="{kv_cache_dtype}" is incompatible with dtype="{model_dtype}". '
            f"Please set `--kv-cache-dtype` to {allowed}.")


def selector_queries(spec: ModelSpec, kv_dtype: str, rules: VllmRules, tp: int = 1,
                     block_size: int | None = None, model_dtype: str | None = None
                     ) -> list[SelectorQuery]:
    """One :class:`SelectorQuery` per distinct attention layer of ``spec`` (as vLLM's model
    files build them: MLA layers with ``kv_lora_rank + qk_rope_head_dim`` and the heads per
    GPU; attention layers with their head size, window and sinks). Empty when the selector
    does not apply: a ROCm GPU, a band before 0.33, or a KV dtype vLLM names otherwise."""
    kv = SELECTOR_KV_DTYPES.get(kv_dtype)
    if kv is None or not rules.cuda or rules.capability is None or rules.parsed < V0_33:
        return []
    if kv == "bfloat16" and any(isinstance(l, MLALayer) and l.indexer_head_dim is not None
                                for l in spec.layers):
        # DeepSeek-V3.2 serves an explicit bfloat16 KV cache as "auto"
        # (DeepseekV32ForCausalLM.verify_and_update_config, vllm/model_executor/models/config.py)
        kv = "auto"
    cap = rules.capability
    dtype = selector_model_dtype(spec, cap, model_dtype)
    cfg = spec.config or {}
    out: list[SelectorQuery] = []
    for layer in spec.layers:
        if isinstance(layer, MLALayer):
            q = SelectorQuery(
                layer.kv_lora_rank + layer.qk_rope_head_dim, dtype, kv, cap, block_size,
                use_mla=True, use_sparse=layer.indexer_head_dim is not None,
                num_heads=max(1, layer.num_heads // tp),
                qk_nope_head_dim=layer.qk_nope_head_dim,
                qk_rope_head_dim=layer.qk_rope_head_dim, v_head_dim=layer.v_head_dim,
                kv_lora_rank=layer.kv_lora_rank, index_topk=cfg.get("index_topk"))
        elif isinstance(layer, AttentionLayer):
            q = SelectorQuery(layer.head_dim_k, dtype, kv, cap, block_size,
                              has_sink=spec.model_type in SINK_MODEL_TYPES,
                              has_sliding_window=layer.kind == SLIDING)
        else:
            continue
        if q not in out:
            out.append(q)
    return out


def triton_impl_refusal(backend: str, q: SelectorQuery, device_name: str) -> str | None:
    """The ValueError the Triton backends' impls raise as the layer is built, for a KV dtype
    the GPU cannot store (``TritonAttentionImpl.__init__``, vllm/v1/attention/backends/
    triton_attn.py; ``TritonMLAImpl.__init__``, backends/mla/triton_mla.py; 0.33 and 0.34):
    fp8 needs native fp8e4nv (SM 8.9+), bfloat16 SM 8.0+. ``device_name``: what vLLM prints
    (``get_device_name``; kvcalc has the catalog's name)."""
    if backend not in ("TRITON_ATTN", "TRITON_MLA"):
        return None
    cap = q.capability
    where = (f"on {device_name} (compute capability {cap[0]}.{cap[1]})")
    kind = "Triton MLA backend" if backend == "TRITON_MLA" else "Triton attention backend"
    if q.kv_cache_dtype.startswith("fp8") and cap < FP8_KV_TRITON_CAPABILITY:
        suggested = "float16" if cap < (8, 0) else "bfloat16"
        return (f"FP8 KV cache is not supported by the {kind} {where}; native FP8 (fp8e4nv) "
                f"requires SM89+. Re-run with --kv-cache-dtype {suggested}.")
    if q.kv_cache_dtype == "bfloat16" and cap < (8, 0):
        by = " by the Triton MLA backend" if backend == "TRITON_MLA" else ""
        return (f"bfloat16 KV cache is not supported{by} {where}; bfloat16 requires SM80+. "
                "Re-run with --kv-cache-dtype float16.")
    return None


#: the Triton kernels store an fp8 KV cache natively (fp8e4nv) from SM 8.9 (Ada)
FP8_KV_TRITON_CAPABILITY = (8, 9)


def attention_backends(spec: ModelSpec, kv_dtype: str, rules: VllmRules, tp: int = 1,
                       block_size: int | None = None, model_dtype: str | None = None,
                       fa4_cute_dsl: bool = FA4_CUTE_DSL,
                       device_name: str = "the GPU") -> list[str]:
    """The attention backend of each distinct attention layer of ``spec`` (in layer order,
    deduplicated), as vLLM 0.33/0.34 selects them on the GPU of ``rules`` for
    ``--kv-cache-dtype kv_dtype``; raises :class:`BackendRefusal` with vLLM's message when vLLM
    stops (a float KV dtype that contradicts the model's, no backend for a layer, or a Triton
    backend that cannot store the KV dtype on that GPU: :func:`triton_impl_refusal`).
    ``block_size``: a --block-size given by the user (the selector then checks it)."""
    queries = selector_queries(spec, kv_dtype, rules, tp, block_size, model_dtype)
    if not queries:
        return []
    refusal = kv_dtype_refusal(queries[0].kv_cache_dtype, queries[0].dtype)
    if refusal:
        raise BackendRefusal(refusal, check="kv_cache_dtype")
    names: list[str] = []
    for q in queries:
        name = select_backend(replace(q, fa4_cute_dsl=fa4_cute_dsl), rules.parsed)
        impl = triton_impl_refusal(name, q, device_name)
        if impl:
            raise BackendRefusal(impl, check="kv_cache_dtype")
        if name not in names:
            names.append(name)
    return names


def backend_refusal(spec: ModelSpec, kv_dtype: str, rules: VllmRules, tp: int = 1,
                    block_size: int | None = None,
                    device_name: str = "the GPU") -> BackendRefusal | None:
    """:class:`BackendRefusal` when vLLM would stop building ``spec``'s layers, else None."""
    try:
        attention_backends(spec, kv_dtype, rules, tp, block_size, device_name=device_name)
    except BackendRefusal as exc:
        return exc
    return None

def default_block_size(spec: ModelSpec, kv_dtype: str, rules: VllmRules,
                       tp: int = 1) -> tuple[int, str]:
    """vLLM's block size when ``--block-size`` is not given, and the backend that chose it:
    the band's default for attention models (16; 64 from 0.34: FLASH_ATTN / FLASHINFER /
    TRITON_ATTN take multiples of 16; on SM 10.x FlashInfer, which vLLM installs, runs
    before FlashAttention 4 and its head-dim-256 blocks of 128), the MLA backend's preferred
    block for MLA models -- from 0.33 the backend vLLM's selector picks
    (:func:`attention_backends`, ``kv_dtype`` as given: fp8 and fp8_e4m3 can differ); when it
    picks none (:func:`backend_refusal`), the band's default and no backend."""
    if not spec.is_mla:
        return rules.default_block_size, ""
    if rules.cuda and rules.parsed >= V0_33 and kv_dtype in SELECTOR_KV_DTYPES:
        try:
            names = attention_backends(spec, kv_dtype, rules, tp)
        except BackendRefusal:
            return rules.default_block_size, ""
        backend = next((n for n in names if n in MLA_KERNEL_BLOCKS), "")
        if backend:
            block = preferred_block_size(backend, rules.default_block_size)
            if any(isinstance(l, MLALayer) and l.indexer_head_dim for l in spec.layers):
                block = common_block_size(backend, rules.default_block_size)
            return block, backend
    backend = mla_backend(spec, served_kv_dtype(spec, kv_dtype).name, rules)
    return preferred_block_size(backend, rules.default_block_size), backend


def preferred_block_size(backend: str, default: int) -> int:
    """``AttentionBackend.get_preferred_block_size(default)`` (vllm/platforms/interface.py): the
    default block when the backend's kernels take it (``MultipleOf(16)`` or listed), else its
    smallest kernel block."""
    kernel_blocks, multiple_of = MLA_KERNEL_BLOCKS[backend]
    if (multiple_of and default % multiple_of == 0) or default in kernel_blocks:
        return default
    return min(kernel_blocks) if kernel_blocks else multiple_of


#: the DeepSeek-V3.2 indexer's kernel block on CUDA (``DeepseekV32IndexerBackend
#: .get_supported_kernel_block_sizes``, vllm/v1/attention/backends/mla/indexer.py: [64])
INDEXER_KERNEL_BLOCK = 64


def common_block_size(backend: str, default: int) -> int:
    """``Platform._preferred_block_size_for_backends`` (vllm/platforms/interface.py) for a
    sparse MLA backend and the indexer's backend: the default block when both take it, else the
    smallest common multiple of their kernel blocks (0.33: FLASHINFER_MLA_SPARSE's multiples of
    32 and the indexer's 64 -> 64)."""
    kernel_blocks, multiple_of = MLA_KERNEL_BLOCKS[backend]

    def takes(block: int) -> bool:
        return bool((multiple_of and block % multiple_of == 0)
                    or any(block % b == 0 for b in kernel_blocks))

    if takes(default) and default % INDEXER_KERNEL_BLOCK == 0:
        return default
    return min(math.lcm(b, INDEXER_KERNEL_BLOCK) for b in (kernel_blocks or (multiple_of,)))


def served_model_dtype(model_dtype: str) -> str:
    """The dtype vLLM serves a checkpoint in: float32 checkpoints are downcast
    (:data:`SERVED_FLOAT32_AS`), every other dtype is kept."""
    return SERVED_FLOAT32_AS if model_dtype == "fp32" else model_dtype


def served_kv_dtype(spec: ModelSpec, kv_dtype: str) -> KVDtype:
    """``--kv-cache-dtype``: ``auto`` is the served model dtype (float32 -> bf16)."""
    return resolve_kv_dtype(kv_dtype, served_model_dtype(spec.dtype))


def tp_refusal(spec: ModelSpec, tp: int) -> str | None:
    """Why vLLM refuses tensor parallelism ``tp`` for ``spec``, in its words, or None.

    ``QKVParallelLinear`` divides the attention heads by tp, and the KV heads by tp when
    tp < KV heads (else tp by the KV heads, replicating them): ``vllm.distributed.utils.divide``
    asserts "{numerator} is not divisible by {denominator}"; the rule is
    :func:`kvcalc.layout.head_split_problem`. MLA layers replicate the latent.
    """
    problem = head_split_problem(spec, tp)
    if problem is None:
        return None
    kind, count, num, den = problem
    if kind == "heads":
        # ModelConfig.verify_with_parallel_config (vllm/config/model.py), before any layer
        return (f"--tp {tp} does not divide the {count} attention heads: vLLM stops with "
                f"'Total number of attention heads ({count}) must be divisible by tensor "
                f"parallel size ({tp}).'")
    relation = (f"does not divide the {count} KV heads" if tp < count
                else f"is not a multiple of the {count} KV heads")
    return (f"--tp {tp} {relation}: vLLM stops with '{num} is not divisible by {den}' "
            f"(QKVParallelLinear)")


def vllm_kv_heads_per_gpu(kv_heads: int, tp: int) -> int:
    """vLLM ``ModelConfig.get_num_kv_heads``: ``max(1, kv_heads // tp)`` (replicated past kv)."""
    return max(1, kv_heads // tp)


@lru_cache(maxsize=256)
def vllm_layout(spec: ModelSpec, kv_dtype: str = "auto", block_size: int = DEFAULT_BLOCK_SIZE,
                tp: int = 1, version: str | None = None) -> Layout:
    """``spec`` laid out by vLLM ``version`` (default: the newest band), per GPU at TP ``tp``."""
    require_at_least_one(tensor_parallel_size=tp, block_size=block_size)
    version = version or VLLM.default_version
    band = VLLM.band(version)
    refusal = tp_refusal(spec, tp)
    if refusal:
        raise UsageError(refusal)
    dtype = served_kv_dtype(spec, kv_dtype)
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
    served = served_model_dtype(spec.dtype)
    if served != spec.dtype:
        notes.append(f"{spec.dtype} checkpoint served as {served} (vLLM downcasts float32 "
                     f"models): KV 'auto' and the Mamba states are {served}")
    model_float = DTYPES[served].element_bytes
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
        if extra and dtype.name.startswith("fp8"):   # FLASHMLA_SPARSE serves fp8 as fp8_ds_mla
            latent = ds_mla_fp8_bytes_per_token(layer)
            text = (f"fp8_ds_mla latent ({layer.kv_lora_rank} fp8 + "
                    f"{layer.kv_lora_rank // DS_MLA_FP8_SCALE_BLOCK} fp32 scales + "
                    f"{layer.qk_rope_head_dim} rope x {DS_MLA_ROPE_BYTES} B = {latent} B)")
        else:
            latent = mla_latent_bytes_per_token(layer, dtype)
            text = mla_latent_formula(layer, dtype)
        text += f", whole blocks of {block_size}"
        if extra:
            text += (f" + indexer key {layer.indexer_head_dim} fp8 + "
                     f"{layer.indexer_head_dim // VLLM_INDEXER_QUANT_BLOCK} fp32 scales")
        return LayerCache(i, layer.kind, latent + extra, KEEP_ALL, None, block_size,
                          formula=text)
    if isinstance(layer, StateLayer):
        ssm_b = DTYPES[layer.ssm_dtype].element_bytes if layer.ssm_dtype else model_float
        fixed = state_bytes(layer, layer.conv_kernel - 1, model_float, ssm_b, tp)
        text = state_formula(layer, layer.conv_kernel - 1, model_float, ssm_b, tp)
        return LayerCache(i, layer.kind, 0, KEEP_NONE, fixed_bytes=fixed, formula=text,
                          mixer=layer.mixer, state_head_dim=_state_key_dim(layer))
    return LayerCache(i, layer.kind, 0, KEEP_NONE, formula=no_cache_formula(layer))


def _state_key_dim(layer: StateLayer) -> int:
    """GDN's head_k_dim (``linear_key_head_dim``: the recurrent state is heads x dk x dv)."""
    return layer.ssm_shape[1] if layer.mixer == GATED_DELTANET else 0



@dataclass(frozen=True)
class KVSpec:
    """One layer as vLLM's KVCacheSpec: its kind, page (one block of this layer) and block."""

    kind: str            # full | sliding | chunked | mamba
    page_bytes: int
    block_size: int
    window: int | None = None
    #: Mamba only: extra state blocks kept for speculative decoding (``num_speculative_blocks``)
    spec_blocks: int = 0
    #: Mamba only: ``mamba_cache_mode == "align"`` and its ``num_prefill_checkpoint_blocks``
    align: bool = False
    checkpoint_blocks: int = 0

    def blocks_needed(self, max_len: int, batched_tokens: int) -> int:
        """Blocks one request of ``max_len`` tokens needs (``max_memory_usage_bytes / page``)."""
        bs = self.block_size
        if self.kind == SLIDING:
            return cdiv(min(self.window - 1 + batched_tokens, max_len), bs) + 1
        if self.kind == CHUNKED:
            return cdiv(min(self.window + batched_tokens, max_len), bs)
        if self.kind == MAMBA:
            return mamba_blocks_per_request(self.align, self.spec_blocks, self.checkpoint_blocks)
        return cdiv(max_len, bs)


def mamba_blocks_per_request(align: bool, speculative: int, checkpoint: int) -> int:
    """``MambaSpec.max_memory_usage_bytes / page``: one state per request, plus the previous
    state and the prefill checkpoint in "align" mode (prefix caching on, 0.33), plus one block
    per speculative token: 1 + s ("none"), 2 + s + c ("align")."""
    if align:
        return MAMBA_BLOCKS_ALIGN + speculative + checkpoint
    return MAMBA_BLOCKS_NONE + speculative


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
                     async_scheduling: bool = True, rules: VllmRules | None = None) -> int:
    """``T`` in the sliding-window/chunked block counts.

    v0.9–v0.19 (``mid``): ``max_num_batched_tokens``. v0.20+ (``new``): ``max_in_flight_tokens``
    = ``max_concurrent_batches x max_num_batched_tokens`` (:meth:`VllmRules.max_concurrent_batches`:
    up to 0.33 the PP size with pipeline parallelism, 2 with async scheduling (on by default) at
    PP 1, else 1; from 0.34 pp + 1 with async scheduling at any PP). ``rules`` default to 0.33's.
    """
    if era != "new":
        return batched_tokens
    rules = rules or VllmRules("0.33")
    return rules.max_concurrent_batches(pp, async_scheduling) * batched_tokens


def layer_specs(layout: Layout, max_len: int, disable_hybrid: bool = False,
                rules: VllmRules | None = None) -> dict[int, KVSpec]:
    """Layer index -> KVSpec, with vLLM's attention block enlargement for Mamba hybrids.

    ``disable_hybrid`` (``--disable-hybrid-kv-cache-manager``) makes every sliding/chunked layer
    a full-attention spec, as ``unify_hybrid_kv_cache_specs`` does; vLLM refuses this when the
    model has no full-attention layer and its layer types differ. ``rules`` (default: the
    newest band on an H100) decide the Mamba blocks per request and the block alignment.
    """
    if layout.engine != "vllm":
        raise UsageError("vLLM capacity figures need the vllm layout")
    rules = rules or VllmRules()
    specs: dict[int, KVSpec] = {}
    states = [c for c in layout.layers if c.fixed_bytes]
    attn = [c for c in layout.layers if c.keep != KEEP_NONE]
    block = layout.block_size or DEFAULT_BLOCK_SIZE
    if states and attn:
        # Platform._align_hybrid_block_size: attention pages must hold one Mamba state
        block = max(block, hybrid_attention_block(
            max(c.fixed_bytes for c in states), max(c.bytes_per_token for c in attn),
            rules.hybrid_block_alignment([(c.mixer, c.state_head_dim) for c in states],
                                         block)))
    for c in layout.layers:
        if c.fixed_bytes:
            page = block * max(a.bytes_per_token for a in attn) if attn else c.fixed_bytes
            specs[c.index] = KVSpec(MAMBA, page, max_len, spec_blocks=rules.num_speculative_tokens,
                                    align=rules.mamba_align,
                                    checkpoint_blocks=rules.checkpoint_blocks(
                                        c.mixer, c.state_head_dim))
        elif c.keep != KEEP_NONE:
            kind = FULL if c.kind == MLA else c.kind
            specs[c.index] = KVSpec(kind, block * c.bytes_per_token, block, c.window)
    if (not disable_hybrid and not rules.allows_chunked_local_hybrid
            and any(s.kind == CHUNKED for s in specs.values())):
        # VllmConfig.__post_init__: attention_chunk_size switches the hybrid allocator off
        disable_hybrid = True
    if disable_hybrid and len({s.kind for s in specs.values()}) > 1:
        if not any(s.kind == FULL for s in specs.values()):
            raise UsageError("--disable-hybrid-kv-cache-manager needs at least one full-attention "
                             "layer when layer types differ (vLLM raises ValueError)")
        specs = {i: KVSpec(FULL, s.page_bytes, s.block_size, None)
                 if s.kind in (SLIDING, CHUNKED) else s for i, s in specs.items()}
    return specs


def hybrid_attention_block(mamba_page: int, attention_bytes_per_token: int, align: int) -> int:
    """The smallest attention block, a multiple of ``align``, whose page holds a Mamba state:
    ``align x ceil(mamba_page / (align x bytes per token))`` (Qwen3-Next on an H100:
    64 x ceil(1,097,728 / (64 x 2,048)) = 576; 544 with the alignment of 16)."""
    return align * cdiv(mamba_page, align * attention_bytes_per_token)


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
            unified[s] = replace(s, page_bytes=max_page)
        elif max_page % s.page_bytes == 0:
            ratio = max_page // s.page_bytes
            unified[s] = replace(s, page_bytes=max_page, block_size=s.block_size * ratio)
            notes.append(f"{s.kind} layers: block size scaled to {s.block_size * ratio} so pages "
                         f"are equal")
        else:
            unified[s] = replace(s, page_bytes=max_page)
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


_GROUPING_CACHE: dict[tuple[int, int, bool, VllmRules],
                     tuple[Layout, dict[int, KVSpec], Grouping, tuple[str, ...]]] = {}


_HAS_STATE: dict[int, tuple[Layout, bool]] = {}


def _specs_and_groups(layout: Layout, max_len: int, disable_hybrid: bool,
                      rules: VllmRules) -> tuple[dict[int, KVSpec], Grouping, tuple[str, ...]]:
    """layer_specs + kv_cache_groups (+ vLLM's block-size notes), memoised per layout object
    (layouts are cached and immutable; the grouping only depends on max_len through the Mamba
    block size)."""
    state = _HAS_STATE.get(id(layout))
    if state is None or state[0] is not layout:
        if len(_HAS_STATE) > 4096:
            _HAS_STATE.clear()
        state = _HAS_STATE[id(layout)] = (layout, any(c.fixed_bytes for c in layout.layers))
    key = (id(layout), max_len if state[1] else 0, disable_hybrid, rules)
    hit = _GROUPING_CACHE.get(key)
    if hit is not None and hit[0] is layout:
        return hit[1], hit[2], hit[3]
    specs = layer_specs(layout, max_len, disable_hybrid, rules)
    grouping = kv_cache_groups(specs)
    notes = grouping.notes
    if (not disable_hybrid and not rules.allows_chunked_local_hybrid
            and any(c.keep == KEEP_CHUNK for c in layout.layers)):
        notes = (f"attention_chunk_size is set: vLLM {rules.band.name} switches the hybrid KV "
                 f"cache manager off, so chunked-local layers keep every token as full "
                 f"attention ({CHUNKED_LOCAL_HYBRID_ENV}=1 keeps it on)",) + notes
    mamba = [sp for sp in specs.values() if sp.kind == MAMBA]
    if mamba:
        need = mamba[0].blocks_needed(max_len, 0)
        mode = "align" if rules.mamba_align else "none"
        notes = (f"Mamba cache mode '{mode}'"
                 + (" (prefix caching on)" if rules.mamba_align else "")
                 + f": {need} block(s) per request per Mamba group",) + notes
    attn_blocks = {sp.block_size for sp in specs.values() if sp.kind != MAMBA}
    if any(sp.kind == MAMBA for sp in specs.values()) and layout.block_size and \
            attn_blocks and min(attn_blocks) > layout.block_size:
        notes = (f"Setting attention block size to {min(attn_blocks)} tokens to ensure that "
                 f"attention page size is >= mamba page size (vLLM's log line)",) + notes
    if len(_GROUPING_CACHE) > 4096:
        _GROUPING_CACHE.clear()
    _GROUPING_CACHE[key] = (layout, specs, grouping, notes)
    return specs, grouping, notes


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
    #: the configuration modelled (version band, prefix caching, GPU)
    rules: VllmRules = field(default_factory=lambda: VllmRules())
    #: how the budget was sized (0.34's error hints name them): gpu_memory_utilization, whether
    #: the extensible KV cache sized it, and whether it falls short only after warm-up
    utilization: float = GPU_UTIL_EXTENSIBLE
    extensible: bool = False
    after_warmup: bool = False
    #: a start-up refusal other than the KV check, in vLLM's words (mamba_max_num_seqs_refusal)
    refusal: str | None = None

    def log_lines(self) -> list[str]:
        """The start-up lines as the band's vLLM formats them (0.33: one line from
        ``update_kv_cache_capacity``; before: "# GPU blocks" and two lines)."""
        if not self.fits:
            return [vllm_error_message(self)]
        size = f"GPU KV cache size: {self.kv_cache_tokens:,} tokens"
        concurrency = (f"Maximum concurrency for {self.max_model_len:,} tokens per request: "
                       f"{self.max_concurrency:.2f}x")
        if self.rules.parsed >= V0_33:
            return [f"{size}, {concurrency}"]
        return [f"# GPU blocks: {self.num_blocks:,}", size, concurrency]


def mamba_max_num_seqs_refusal(layout: Layout, max_num_seqs: int, num_blocks: int,
                               full_cudagraphs: bool = True) -> str | None:
    """vLLM's refusal when a model with Mamba layers runs more sequences than it has Mamba cache
    blocks, or None. With full CUDA graphs (vLLM's default mode, FULL_AND_PIECEWISE; off with
    --enforce-eager or a cudagraph_mode without FULL) each decode sequence needs one block, and
    ``CompilationConfig.resolve_cudagraph_mode_and_sizes`` (vllm/config/compilation.py, 0.33
    and 0.34; vllm-project/vllm#34094) raises when ``max_num_seqs > kv_cache_config.num_blocks``
    as the KV cache is initialised -- in 0.34 from the blocks reserved before warm-up."""
    has_mamba = any(isinstance(layer, StateLayer) for layer in layout.spec.layers)
    if not (full_cudagraphs and has_mamba and max_num_seqs > num_blocks):
        return None
    return (f"max_num_seqs ({max_num_seqs}) exceeds available Mamba cache blocks "
            f"({num_blocks}). Each decode sequence requires one Mamba cache block, so CUDA graph "
            f"capture cannot proceed. Please lower max_num_seqs to at most {num_blocks} or "
            "increase gpu_memory_utilization.")


def format_gib(n: int) -> str:
    """``vllm.utils.mem_utils.format_gib``: ``str(round(n / 2**30, 2))`` (0.33 messages)."""
    return f"{round(n / GiB, 2)}"


#: the link vLLM's memory errors end with
CONSERVING_MEMORY_URL = "https://docs.vllm.ai/en/latest/configuration/conserving_memory/"


def vllm_error_message(cap: VllmCapacity) -> str:
    """vLLM's ValueError text when one request of max_model_len does not fit: from
    ``_check_enough_kv_cache_memory`` (vllm/v1/core/kv_cache_planning.py) in 0.33, from
    ``check_enough_kv_cache_memory`` (kv_cache_utils.py, "models's" typo kept) before."""
    if cap.refusal:
        return cap.refusal
    if cap.rules.parsed >= V0_34:
        hint = more_kv_cache_memory_hint(cap)
        if cap.available_bytes <= 0:
            return (f"No available memory for the cache blocks. {hint} See "
                    f"{CONSERVING_MEMORY_URL} for more details.")
        est = cap.estimated_max_model_len
        estimate = (f"Based on the available memory, the estimated maximum model length is "
                    f"{est}. " if est else "")
        null = cap.bytes_per_block
        return (f"To serve at least one request with the model's max seq len "
                f"({cap.max_model_len}), ({format_gib(cap.needed_bytes - null)} GiB KV cache is "
                f"needed, which is larger than the available KV cache memory "
                f"({format_gib(cap.available_bytes - null)} GiB). {estimate}{hint} Decreasing "
                f"`max_model_len` also reduces what is needed. See {CONSERVING_MEMORY_URL} "
                "for more details.")
    if cap.rules.parsed >= V0_33:
        if cap.available_bytes <= 0:
            return ("No available memory for the cache blocks. Try increasing "
                    "`gpu_memory_utilization` when initializing the engine (this flag also "
                    "controls CPU memory reservation on the CPU backend, despite its name). "
                    f"See {CONSERVING_MEMORY_URL} for more details.")
        est = cap.estimated_max_model_len
        estimate = (f"Based on the available memory, the estimated maximum model length is "
                    f"{est}. " if est else "")
        # the check plans against the memory left after the null block
        null = cap.bytes_per_block if cap.rules.era == "new" else 0
        return (f"To serve at least one request with the model's max seq len "
                f"({cap.max_model_len}), ({format_gib(cap.needed_bytes - null)} GiB KV cache is "
                f"needed, which is larger than the available KV cache memory "
                f"({format_gib(cap.available_bytes - null)} GiB). {estimate}Try increasing "
                "`gpu_memory_utilization` (which also controls CPU memory on the CPU backend) "
                "or decreasing `max_model_len` when initializing the engine. "
                f"See {CONSERVING_MEMORY_URL} for more details.")
    if cap.available_bytes <= 0:
        return ("No available memory for the cache blocks. Try increasing "
                "`gpu_memory_utilization` when initializing the engine. See "
                f"{CONSERVING_MEMORY_URL} for more details.")
    est = cap.estimated_max_model_len
    estimate = (f"Based on the available memory, the estimated maximum model length is {est}."
                if est else "The available memory cannot hold even one block of a request.")
    return (f"To serve at least one request with the models's max seq len ({cap.max_model_len}), "
            f"({cap.needed_bytes / GiB:.2f} GiB KV cache is needed, which is larger than the "
            f"available KV cache memory ({cap.available_bytes / GiB:.2f} GiB). {estimate} Try "
            "increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
            "initializing the engine.")


def more_kv_cache_memory_hint(cap: VllmCapacity) -> str:
    """``_more_kv_cache_memory_hint`` (vllm/v1/core/kv_cache_planning.py, 0.34): how to make
    room for the KV cache, in vLLM's words, by how the budget was sized."""
    if not cap.extensible:
        return ("Try increasing `gpu_memory_utilization` when initializing the engine (this "
                "flag also controls CPU memory reservation on the CPU backend, despite its "
                "name).")
    used_by, graphs = "the model and its activations", ""
    if cap.after_warmup:
        used_by = "the model, its activations, CUDA graphs and warmup"
        graphs = (" CUDA graphs take less with fewer or smaller capture sizes in the "
                  "compilation config.")
    if cap.utilization < 1.0:
        return (f"The KV cache gets what is left after {used_by} within "
                f"`gpu_memory_utilization`={cap.utilization}; increase it (with the extensible "
                f"KV cache it defaults to 1.0) or decrease `max_model_len` or `max_num_seqs`."
                f"{graphs}")
    return (f"The extensible KV cache already takes all device memory left after {used_by}; "
            f"decrease `max_model_len` or `max_num_seqs`, or the model needs a device with more "
            f"memory.{graphs}")


def estimate_max_model_len(grouping: Grouping, available: int, max_len: int,
                           batched_tokens: int, null_block: bool = False) -> int:
    """Largest L in [1, max_len] whose request fits ``available`` (binary search, as vLLM)."""
    per_block = grouping.bytes_per_block()
    budget = available - (per_block if null_block else 0)

    def fits(length: int) -> bool:
        return per_block * grouping.blocks_needed(length, batched_tokens) <= budget

    return largest_satisfying(fits, max_len)


def vllm_capacity(layout: Layout, available_per_stage: list[int], max_len: int,
                  batched_tokens: int, rules: VllmRules | None = None,
                  num_blocks_override: int | None = None,
                  disable_hybrid: bool = False) -> VllmCapacity:
    """vLLM's figures for ``layout`` (per GPU, tp applied) with one budget per PP stage.

    ``batched_tokens`` is ``T`` of the sliding/chunked block counts, already multiplied by the
    concurrent batches (:func:`in_flight_tokens`). ``rules`` (default: the newest band on an
    H100, prefix caching on) pick the version band and the settings that change the plan.
    """
    rules = rules or VllmRules(layout.version or VLLM.default_version)
    specs, grouping, notes = _specs_and_groups(layout, max_len, disable_hybrid, rules)
    n_layers = len(layout.layers)
    stages = pp_partition(n_layers, len(available_per_stage))
    if grouping.mode == "attention_free":
        return VllmCapacity(1, 0, 0, float("inf"), max_len, 0, 0, 0, True, 0,
                            min(available_per_stage), None, ("attention-free model",), rules)
    blocks_needed = grouping.blocks_needed(max_len, batched_tokens)
    null = rules.era == "new"
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
    if null:
        tokens = int(concurrency * max_len)
    else:
        tokens = num_blocks // n_groups * grouping.block_size
    return VllmCapacity(num_blocks, grouping.block_size, tokens, concurrency, max_len, n_groups,
                        grouping.bytes_per_block(), blocks_needed, fits, needed, avail, est,
                        notes, rules)


# --------------------------------------------------------------------------------------------
# The budget vLLM plans with (docs/planning.md "The budget")

#: vLLM's "non-torch memory" (NCCL buffers, cuBLAS workspaces, the CUDA context) as kvcalc
#: estimates it: 0.5 GiB on one GPU, 1 GiB with tp x pp > 1
NON_TORCH_BYTES = 512 * MiB
NON_TORCH_MULTI_GPU_BYTES = 1 * GiB
#: the CUDA-graph memory vLLM >= 0.20 estimates and subtracts (PR #30515); 0 before
CUDA_GRAPH_BYTES = {"new": 512 * MiB, "mid": 0}


def batch_defaults(gpu, rules: VllmRules) -> tuple[int, int]:
    """``EngineArgs.get_batch_defaults`` for ``vllm serve``: (max_num_batched_tokens,
    max_num_seqs) from the GPU's total memory, name and compute capability (``gpu``: a catalog
    GPU; :data:`BATCH_DEFAULTS_LARGEST` and the rest)."""
    memory = gpu.memory_bytes
    if memory >= LARGEST_GPU_BYTES and rules.parsed >= LARGEST_DEFAULTS_SINCE:
        return BATCH_DEFAULTS_LARGEST
    name = f"{gpu.display_name} {gpu.name}".lower()
    gb10 = rules.capability == GB10_CAPABILITY and rules.cuda
    if memory >= LARGE_GPU_BYTES and "a100" not in name and not gb10:
        return BATCH_DEFAULTS_LARGE
    return BATCH_DEFAULTS_SMALL


def extensible_margin(transient_peak: int, cuda: bool = True) -> int:
    """``max(KV_CACHE_MARGIN_FLOOR_BYTES, int(transient peak x KV_CACHE_MARGIN_FRACTION))``:
    what the extensible KV cache keeps free after warm-up (``measure_kv_cache_bytes``)."""
    return max(EXTENSIBLE_MARGIN_FLOOR[cuda], int(transient_peak * EXTENSIBLE_MARGIN_FRACTION))


def extensible_kv_bytes(total: int, requested: int, resident: int, transient_peak: int,
                        cuda: bool = True) -> int:
    """The KV bytes vLLM 0.34's extensible KV cache settles on (before rounding to blocks).

    Reserved first from the profiled estimate, ``requested - resident - transient peak``
    (``Worker.determine_available_memory``), then measured after CUDA-graph capture and
    warm-up, ``min(requested - resident, headroom - margin) - transient peak`` with the
    headroom ``total - resident`` (``measure_kv_cache_bytes``); the block count is the smaller
    of the two (``finalize_extensible_kv_cache``). ``resident`` is everything that stays on the
    GPU besides the KV cache: weights, non-torch memory, CUDA graphs.
    """
    reserved = requested - resident - transient_peak
    measured = (min(requested - resident, total - resident
                    - extensible_margin(transient_peak, cuda)) - transient_peak)
    return min(reserved, max(measured, 0)) if reserved > 0 else reserved


def vllm_budgets(spec: ModelSpec, params, inp) -> list[Budget]:
    """The KV budget of one GPU of every pipeline stage, as vLLM ``inp.version`` sizes it
    (``inp``: :class:`kvcalc.planning.PlanInputs`).

    Up to 0.33: ``ceil(total x gpu_memory_utilization) - weights - activation peak -
    non-torch - CUDA graphs`` (utilization 0.92 by default, 0.9 before 0.20). From 0.34, with
    the extensible KV cache (on unless --num-gpu-blocks-override is given): utilization 1.0 by
    default and :func:`extensible_kv_bytes`, which also keeps the margin free.
    """
    defaults = inp.defaults()
    rules = defaults.rules
    stages = pp_partition(spec.num_layers, inp.pp)
    weights = stage_weight_bytes(spec, params, inp.weights_dtype, inp.tp, stages)
    if inp.weights is not None:
        weights = [inp.weights] * len(stages)
    tokens, seqs = defaults.batched_tokens, defaults.num_seqs
    act = (activation_bytes(spec, params, tokens, seqs, inp.tp)
           if inp.activation is None else inp.activation)
    non_torch = (NON_TORCH_MULTI_GPU_BYTES if inp.tp * inp.pp > 1 else NON_TORCH_BYTES) \
        if inp.non_torch is None else inp.non_torch
    graphs = CUDA_GRAPH_BYTES[rules.era] if inp.cuda_graph is None else inp.cuda_graph
    util = defaults.utilization
    total = inp.gpu.memory_bytes
    requested = requested_memory(total, util)
    out = []
    for w in weights:
        if inp.overhead is not None:   # --overhead: activations, non-torch and graphs in one
            terms = (0, 0, 0, inp.overhead)
            peak, resident = 0, w + inp.overhead
        else:
            terms = (act, non_torch, graphs, act + non_torch + graphs)
            peak, resident = act, w + non_torch + graphs
        estimate = requested - resident - peak
        kv, margin, source = estimate, 0, "computed"
        if defaults.extensible:
            kv = extensible_kv_bytes(total, requested, resident, peak, rules.cuda)
            margin, source = estimate - kv, EXTENSIBLE
        out.append(Budget(total, util, w, *terms, kv, source, margin))
    return out


# --------------------------------------------------------------------------------------------
# A plan's vLLM figures, behind the engine interface (kvcalc.planning names no engine)


@dataclass(frozen=True)
class VllmPlanDefaults:
    """What vLLM does with the settings a plan leaves open: the version band and settings
    modelled (:class:`VllmRules`), whether the extensible KV cache sizes the budget,
    ``gpu_memory_utilization``, ``get_batch_defaults`` and the tokens in flight for windows."""

    rules: VllmRules
    extensible: bool
    utilization: float
    batched_tokens: int
    num_seqs: int
    in_flight: int

    @property
    def era(self) -> str:
        return self.rules.era


def plan_defaults(inp) -> VllmPlanDefaults:
    """:class:`VllmPlanDefaults` for plan inputs ``inp``."""
    rules = rules_for_gpu(inp.version, inp.gpu.compute_capability, inp.gpu.vendor,
                          enable_prefix_caching=inp.prefix_caching,
                          num_speculative_tokens=inp.speculative_tokens,
                          chunked_local_hybrid=inp.chunked_local_hybrid)
    tokens, seqs = batch_defaults(inp.gpu, rules)
    if inp.max_batched_tokens is not None:
        tokens = inp.max_batched_tokens
    if inp.max_num_seqs is not None:
        seqs = inp.max_num_seqs
    # the extensible KV cache is on unless num_gpu_blocks_override is given (vLLM's rule)
    extensible = rules.extensible_kv_cache and inp.num_blocks_override is None
    util = inp.gpu_util if inp.gpu_util is not None else rules.default_gpu_utilization(
        extensible)
    return VllmPlanDefaults(rules, extensible, util, tokens, seqs,
                            in_flight_tokens(tokens, rules.era, inp.pp, inp.async_scheduling,
                                             rules))


@dataclass(frozen=True)
class VllmPlanFigures:
    """vLLM's start-up figures for one plan (the plan JSON's ``vllm`` object)."""

    capacity: VllmCapacity
    layout: Layout
    inputs: object
    key = "vllm"
    #: the CLI prints the budget term by term and these start-up figures beneath it
    budget_table = True

    @property
    def fits(self) -> bool:
        return self.capacity.fits

    @property
    def num_blocks(self) -> int:
        return self.capacity.num_blocks

    @property
    def kv_cache_tokens(self) -> int:
        return self.capacity.kv_cache_tokens

    @property
    def max_concurrency(self) -> float:
        return self.capacity.max_concurrency

    @property
    def block_size(self) -> int:
        return self.capacity.block_size or self.layout.block_size

    @property
    def estimated_max_model_len(self) -> int | None:
        """The longest context that would fit ("estimated maximum model length" of vLLM's
        error) when the plan does not fit."""
        return self.capacity.estimated_max_model_len

    @property
    def bytes_per_block(self) -> int:
        """Bytes of one block over every KV cache group (what --num-gpu-blocks-override
        counts)."""
        return self.capacity.bytes_per_block

    @property
    def error(self) -> str | None:
        return None if self.fits else vllm_error_message(self.capacity)

    @property
    def record_notes(self) -> tuple[str, ...]:
        """Notes the plan record adds after the plan's own (the grouping's)."""
        return self.capacity.notes

    def log_lines(self) -> list[str]:
        return self.capacity.log_lines()

    def record_fields(self) -> dict:
        """The plan record's fields this engine fills (the ``vllm`` object, in its place)."""
        return {"vllm": self.record()}

    def record(self) -> dict:
        inp, cap = self.inputs, self.capacity
        d = inp.defaults()
        return {
            "era": d.era,
            "version": self.layout.version,
            "band": self.layout.band,
            "attention_backend": inp.backend(self.layout.spec) or None,
            "enable_prefix_caching": inp.prefix_caching,
            "num_speculative_tokens": inp.speculative_tokens,
            "num_gpu_blocks": cap.num_blocks,
            "kv_cache_tokens": cap.kv_cache_tokens,
            "max_concurrency": round(cap.max_concurrency, 2),
            "kv_cache_groups": cap.groups,
            "max_num_batched_tokens": d.batched_tokens,
            "max_num_seqs": d.num_seqs,
            "async_scheduling": inp.async_scheduling,
            "hybrid_kv_cache_manager": not inp.disable_hybrid,
            "in_flight_tokens": d.in_flight,
            "max_model_len": inp.max_len,
            "bytes_per_block": cap.bytes_per_block,
            "blocks_per_request": cap.blocks_per_request,
            "block_size": cap.block_size,
            "fits": cap.fits,
            "estimated_max_model_len": cap.estimated_max_model_len,
            "log": cap.log_lines(),
        }

    def shortfall(self) -> tuple[str, int, int]:
        """Why one request of max_model_len does not fit, by how many bytes, and the longest
        length that would (vLLM's estimate; 0 when none)."""
        cap, inp = self.capacity, self.inputs
        b = min(self.budgets, key=lambda x: x.kv_bytes)
        longest = cap.estimated_max_model_len or 0
        if cap.refusal:        # vLLM stops for another reason than the KV check (Mamba blocks)
            return cap.refusal, 0, longest
        if b.kv_bytes <= 0:
            return (f"weights ({kvcalc_gib(b.weights_bytes)}) and runtime overhead "
                    f"({kvcalc_gib(b.overhead_bytes)}) exceed the "
                    f"{kvcalc_gib(b.requested_bytes)} vLLM may use at gpu_util "
                    f"{b.utilization}", cap.needed_bytes - b.kv_bytes, longest)
        return (f"one request of {inp.max_len:,} tokens needs "
                f"{kvcalc_gib(cap.needed_bytes)} of KV cache; "
                f"{kvcalc_gib(cap.available_bytes)} is available",
                cap.needed_bytes - cap.available_bytes, longest)

    budgets: tuple = ()


def vllm_plan_figures(spec: ModelSpec, inp, layout: Layout, budgets: list[Budget]
                      ) -> VllmPlanFigures:
    """vLLM's figures for a plan: :func:`vllm_capacity` on the budgets (tightest stage), how
    the budget was sized (its error hints), and the Mamba max_num_seqs check."""
    d = inp.defaults()
    cap = vllm_capacity(layout, [max(0, b.kv_bytes) for b in budgets], inp.max_len,
                        d.in_flight, d.rules, inp.num_blocks_override,
                        inp.disable_hybrid)
    tight = min(budgets, key=lambda b: b.kv_bytes)
    extensible = tight.source == EXTENSIBLE
    cap = replace(cap, utilization=tight.utilization, extensible=extensible,
                  after_warmup=extensible and not cap.fits
                  and cap.needed_bytes <= tight.kv_bytes + tight.margin_bytes)
    cap = mamba_check(cap, layout, tight, inp)
    # vLLM picks each layer's attention backend while it builds the model, before any KV
    # planning: a layer no backend takes stops it first
    refusal = backend_refusal(spec, inp.kv_dtype, d.rules, inp.tp, inp.block_size,
                              inp.gpu.display_name)
    if refusal:
        cap = replace(cap, fits=False, refusal=str(refusal), estimated_max_model_len=None)
    return VllmPlanFigures(cap, layout, inp, tuple(budgets))


def mamba_check(cap: VllmCapacity, layout: Layout, tight: Budget, inp) -> VllmCapacity:
    """``cap`` refused (``fits`` False, vLLM's message in ``refusal``) when vLLM would stop at
    CUDA-graph capture because max_num_seqs exceeds the Mamba cache blocks
    (:func:`mamba_max_num_seqs_refusal`). The check counts the blocks vLLM has when it
    initialises the cache: with 0.34's extensible KV cache those reserved before warm-up
    (the budget plus its margin), else the final ones."""
    if not cap.fits or not cap.bytes_per_block:
        return cap
    blocks = cap.num_blocks
    if tight.source == EXTENSIBLE:     # (never with num_gpu_blocks_override: vLLM's rule)
        blocks = (tight.kv_bytes + tight.margin_bytes) // cap.bytes_per_block
    refusal = mamba_max_num_seqs_refusal(layout, inp.num_seqs(), blocks, not inp.enforce_eager)
    return replace(cap, fits=False, refusal=refusal) if refusal else cap


#: report the difference between vLLM's figure and what requests hold above this ratio
ENGINE_GAP_NOTE_RATIO = 1.02


def engine_vs_held_note(layout: Layout, cap: VllmCapacity, budgets: list[Budget],
                        inp) -> str | None:
    """Why vLLM's "Maximum concurrency" is below what requests of max_len really hold, for
    models with sliding/chunked layers (vLLM sizes each window group for the window plus the
    tokens in flight, and pads groups to equal size)."""
    from ..workload import distinct, peak_bytes

    windowed = any(c.keep not in (KEEP_ALL, KEEP_NONE) and c.window for c, _ in distinct(layout))
    if not windowed or inp.pp > 1 or inp.num_blocks_override is not None or inp.disable_hybrid:
        return None
    held = peak_bytes(layout, inp.max_len)
    kv = max(0, budgets[0].kv_bytes)
    achievable = kv / held if held else 0.0
    if not cap.fits:
        if kv <= 0 or held > kv:
            return None
        doubled = inp.in_flight() > inp.batched_tokens() and inp.pp == 1
        return (f"vLLM refuses to start although one {inp.max_len:,}-token request holds only "
                f"{held / GiB:.2f} GiB at its peak: its check sizes every sliding/chunked group "
                f"for the window plus {inp.in_flight():,} tokens in flight (a smaller "
                f"--max-batched-tokens{', or --no-async-scheduling,' if doubled else ''} "
                f"shrinks that term)")
    if achievable < cap.max_concurrency * ENGINE_GAP_NOTE_RATIO:
        return None
    return (f"vLLM's maximum concurrency ({cap.max_concurrency:.2f}x) counts every sliding/chunked "
            f"group at its window plus {inp.in_flight():,} tokens in flight (and any padding "
            f"layers); {inp.max_len:,}-token requests hold only {held / GiB:.3f} GiB each at their "
            f"peak, so {achievable:.2f} fit in the same {kv / GiB:.2f} GiB once running")


def vllm_plan_notes(spec: ModelSpec, inp, layout: Layout, figures: VllmPlanFigures,
                    budgets: list[Budget], paged) -> tuple[str, ...]:
    """The notes a vLLM plan adds: windows sized for tokens in flight, max_num_seqs below what
    the cache holds, and the MLA backend that chose the block."""
    cap, notes = figures.capacity, []
    note = engine_vs_held_note(layout, cap, budgets, inp)
    if note:
        notes.append(note)
    if paged.max_sequences > inp.num_seqs():
        notes.append(f"vLLM runs at most max_num_seqs = {inp.num_seqs():,} sequences at once per "
                     f"replica (--max-num-seqs); the KV cache alone would hold "
                     f"{paged.max_sequences:,.0f}")
    if spec.is_mla and inp.block_size is None and inp.backend(spec):
        notes.append(f"MLA: block size {layout.block_size} of the {inp.backend(spec)} backend "
                     f"vLLM {layout.band} picks on {inp.gpu.name} (compute capability "
                     f"{inp.gpu.compute_capability or 'unknown'}) for KV {layout.kv_dtype.name}; "
                     f"--block-size overrides")
    return tuple(notes)


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
    Band("0.33", V0_33, V0_33,
         ("prefix caching (on by default) puts Mamba layers in 'align' mode: 2 blocks per "
          "request per Mamba group, + 1 prefill checkpoint block for Mamba-2 and for GDN "
          "layers whose prefill FlashInfer runs (3 blocks); --no-enable-prefix-caching: 1",
          "GDN hybrids align the attention block to FlashInfer's checkpoint grid of 64 tokens "
          "(Qwen3-Next: 576 on Hopper, not 544)",
          "MLA block size from the backend priority list per GPU generation and KV dtype: "
          "FLASH_ATTN_MLA (16) first on SM 9.0 for bf16/fp16, FlashMLA (64) for fp8; "
          "FlashInfer MLA (32) first on SM 10.x; TRITON_MLA (16) elsewhere",
          "attention_chunk_size switches the hybrid KV cache manager off (chunked-local layers "
          "become full attention, one group) unless "
          "VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE is set",
          "one capacity log line (update_kv_cache_capacity), no '# GPU blocks' line; the "
          "'To serve at least one request' error reworded (_check_enough_kv_cache_memory)"),
         ("vllm-project/vllm v0.33.0: vllm/v1/core/kv_cache_planning.py, "
          "vllm/v1/core/kv_cache_utils.py, vllm/v1/kv_cache_interface.py (MambaSpec), "
          "vllm/model_executor/models/config.py (MambaModelConfig), "
          "vllm/model_executor/layers/mamba/mamba_mixer2.py, "
          "vllm/model_executor/layers/mamba/gdn/qwen_gdn_linear_attn.py, "
          "vllm/platforms/interface.py (_align_hybrid_block_size), vllm/platforms/cuda.py "
          "(_get_backend_priorities), vllm/config/vllm.py (VllmConfig.__post_init__)",)),
    Band("0.34", V0_34, V0_34,
         ("default block size 64 (CacheConfig.DEFAULT_BLOCK_SIZE): attention and MLA backends "
          "that take multiples of 16 prefer 64; hybrid attention blocks align to max(16, 64)",
          "the extensible KV cache (on by default on CUDA/ROCm unless num_gpu_blocks_override "
          "or kv_cache_memory_bytes is given): gpu_memory_utilization defaults to 1.0, the "
          "cache is reserved from the profiled estimate and shrunk after warm-up to the "
          "measured free memory less max(1 GiB, 0.75 x transient peak) and the transient "
          "peak; blocks = min(measured, reserved)",
          "the capacity line is logged after warm-up from the measured block count",
          "with async scheduling pp + 1 batches are in flight at any PP (sliding/chunked "
          "layers reserve (pp + 1) x max_num_batched_tokens)",
          "'To serve at least one request' and 'No available memory' end with a hint on the "
          "extensible KV cache and 'Decreasing `max_model_len` also reduces what is needed.'"),
         ("vllm-project/vllm v0.34.0: vllm/config/cache.py (DEFAULT_BLOCK_SIZE, "
          "resolved_gpu_memory_utilization, enable_extensible_kv_cache), "
          "vllm/v1/worker/extensible_kv_cache.py (measure_kv_cache_bytes), "
          "vllm/v1/worker/gpu_worker.py (determine_available_memory), "
          "vllm/v1/core/kv_cache_planning.py (finalize_extensible_kv_cache, "
          "_more_kv_cache_memory_hint), vllm/config/vllm.py (max_concurrent_batches), "
          "vllm/platforms/interface.py (update_block_size_for_backend)",)),
)


class Vllm(Engine):
    name = "vllm"
    display_name = "vLLM"
    package = "vllm"
    bands = BANDS
    newest_checked = "0.34.0"
    default_version = "0.34"
    version_flag = "--vllm-version"
    version_example = "0.34"
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
        Setting("enable_prefix_caching", True, "--enable-prefix-caching/"
                "--no-enable-prefix-caching",
                "0.33: Mamba layers in 'align' mode (2-3 blocks per request) when on"),
        Setting("num_speculative_tokens", 0, "--num-speculative-tokens",
                "one extra Mamba state block per speculative token"),
        Setting(CHUNKED_LOCAL_HYBRID_ENV, None,
                "--allow-chunked-local-hybrid/--no-allow-chunked-local-hybrid (or the "
                "environment variable)",
                "0.33: keeps the hybrid KV cache manager on for chunked local attention"),
        Setting("compute_capability", "9.0", "--gpu",
                "from the GPU catalog: picks the attention backend, so the block size"),
    )

    def layout(self, spec, kv_dtype: str = "auto", *, version: str | None = None,
               block_size: int | None = None, tp: int = 1) -> Layout:
        if block_size is None:
            block_size = VllmRules(version or self.default_version).default_block_size
        return vllm_layout(spec, kv_dtype, block_size, tp, version)

    def describe(self, layout: Layout) -> str:
        band = f" (band {layout.band})" if layout.band != layout.version else ""
        detail = f"vLLM {layout.version}{band} PagedAttention, block {layout.block_size}"
        return detail + (f", tp {layout.tp} (per GPU)" if layout.tp > 1 else "")

    def served_dtype(self, model_dtype: str) -> str:
        return served_model_dtype(model_dtype)

    solves = True

    def plan_budgets(self, spec, params, inp) -> list[Budget]:
        return vllm_budgets(spec, params, inp)

    def plan_defaults(self, inp) -> VllmPlanDefaults:
        return plan_defaults(inp)

    def plan_block_size(self, spec, inp) -> int:
        return default_block_size(spec, inp.kv_dtype, inp.rules(), inp.tp)[0]

    def plan_backend(self, spec, inp) -> str:
        return default_block_size(spec, inp.kv_dtype, inp.rules(), inp.tp)[1]

    def plan_figures(self, spec, inp, layout, budgets) -> VllmPlanFigures:
        return vllm_plan_figures(spec, inp, layout, budgets)

    def plan_notes(self, spec, inp, layout, figures, budgets, paged) -> tuple[str, ...]:
        return vllm_plan_notes(spec, inp, layout, figures, budgets, paged)

    def tp_refusal(self, spec, tp: int) -> str | None:
        return tp_refusal(spec, tp)


VLLM = register(Vllm())
