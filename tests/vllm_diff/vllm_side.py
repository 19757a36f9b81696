"""vLLM's own KV-cache capacity figures for kvcalc's presets, on a simulated H100 (0.33.0 and
0.34.0; ``--defaults``: vLLM's defaults and budget on other simulated GPUs too; ``--backends``:
the attention backend each layer gets, or vLLM's refusal, per GPU and KV dtype -- see
docs/vllm-check.md for the two host facts that mode sets).

Run with the interpreter of the separate environment that `make_venv.sh` builds
(`.vllm-venv/bin/python tests/vllm_diff/vllm_side.py --help`). It reads a JSON request
(presets with their raw Hugging Face config, and the grid) and prints one JSON document with
one record per case. It does not import kvcalc: the point is an independent answer.

What runs is vLLM's code, in the order its engine runs it
---------------------------------------------------------

1. ``EngineArgs(model=<dir with the preset's config.json>, tensor_parallel_size=tp,
   kv_cache_dtype=..., max_model_len=..., skip_tokenizer_init=True, load_format="dummy")
   .create_engine_config(UsageContext.OPENAI_API_SERVER)`` (``vllm/engine/arg_utils.py``):
   ``ModelConfig`` (dtype resolution, float32 -> bf16 on CUDA), ``CacheConfig`` (prefix
   caching on, ``sliding_window`` for all-sliding models), ``SchedulerConfig`` (``vllm serve``
   defaults for an 80 GB GPU: ``max_num_batched_tokens`` 8192), ``VllmConfig.__post_init__``
   (whether the hybrid KV cache manager stays on - for chunked local attention only when
   ``VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE=0``, default 1; ``MambaModelConfig`` /
   ``HybridAttentionMambaModelConfig`` hooks: Mamba "align" mode with prefix caching).
   The config.json is written to a temporary directory; nothing is fetched from a hub.
2. The model's KV-carrying layers are created as vLLM layer objects (see *Layer mapping*)
   and registered in ``compilation_config.static_forward_context``, as the model's
   constructor does; each attention layer's backend is chosen by vLLM's selector
   (``vllm.v1.attention.selector.get_attn_backend`` -> ``CudaPlatform.get_attn_backend_cls``
   -> ``_get_backend_priorities`` for SM90 and each backend's ``validate_configuration``).
3. ``current_platform.update_block_size_for_backend(vllm_config)`` (what
   ``UniProcExecutor`` calls after loading the model): the backend's preferred block size,
   ``_align_hybrid_block_size`` for hybrids (Mamba page vs attention page, GDN checkpoint
   alignment).
4. Per layer ``layer.get_kv_cache_spec(vllm_config)`` + ``customize_attention_spec(backend,
   spec)``, skipping KV-sharing layers - the loop of ``GPUModelRunner.get_kv_cache_spec``.
5. ``register_all_kvcache_specs``, ``get_global_kv_cache_groups``, ``get_kv_cache_configs``
   (which runs ``_check_enough_kv_cache_memory`` with the null block held back and, when it
   fails, ``_estimate_max_model_len_from_groups``), ``generate_scheduler_kv_cache_config``,
   the engine core's block size (smallest prefix-cacheable group block), then
   ``get_kv_cache_capacity`` / ``get_max_concurrency_for_kv_cache_config``
   (``vllm/v1/core/kv_cache_planning.py``, ``kv_cache_utils.py``, ``vllm/v1/engine/core.py``
   ``EngineCore._initialize_kv_caches``).

The KV budget stands for what ``Worker.determine_available_memory`` would measure
("Available KV cache memory"). Every TP rank has the same specs and budget, so one worker is
planned (``get_kv_cache_configs`` takes the minimum over identical workers).

What is faked: the GPU, nothing else
------------------------------------

* Platform detection: ``vllm.platforms.current_platform`` is set to vLLM's
  ``CudaPlatform`` (NVML is not there to detect it).
* The GPU queries of that class: ``get_device_capability`` -> 9.0 (SM90),
  ``get_device_name`` -> "NVIDIA H100 80GB HBM3", ``get_device_total_memory`` -> 79.2 GiB
  (85,045,477,376 B, what an H100 SXM reports), ``device_count`` -> 8.
* vLLM's compiled CUDA extension modules (``vllm/_C_stable_libtorch.abi3.so``,
  ``vllm/vllm_flash_attn/_vllm_fa{2,3}_C.abi3.so``, ``_flashmla_C`` …) link against the
  NVIDIA driver (``libcuda.so.1``) and cannot be loaded on a machine without one; they hold
  GPU kernels, no Python logic. Empty modules stand in for them, so their presence is what it
  is on a real H100 install, and one kernel capability query that runs at import time,
  ``torch.ops._C.cutlass_scaled_mm_supports_block_fp8(cap)``, answers ``cap >= 90``.
* vLLM inspects a model class (``_ModelInfo``: hybrid? attention-free? ...) in a child
  process (``registry._run_in_subprocess``) so that the parent never initialises CUDA; with no
  CUDA here that same inspection runs in-process.
* Nothing in vLLM's configuration, backend selection, spec or planning code is replaced.
  The layer objects are real vLLM classes; only their ``__init__`` is not run, because it
  builds weights and kernels (and needs a TP process group): the harness sets the attributes
  that ``__init__`` sets and that ``get_kv_cache_spec`` reads (listed per class below).

Layer mapping (HF config -> vLLM layer, as the vLLM 0.33.0 model files build them)
-----------------------------------------------------------------------------------

Per-rank KV heads follow ``QKVParallelLinear.__init__`` (``layers/linear.py``):
``divide(total_kv_heads, tp)`` when tp < total, else 1 head replicated
``divide(tp, total_kv_heads)`` times - ``vllm.distributed.utils.divide`` raises
"10 is not divisible by 8" for phi-4 at TP 8, recorded as the TP refusal. ``total_kv_heads``
= ``ModelConfig.get_total_num_kv_heads()``, head size = ``ModelConfig.get_head_size()``.

* ``Attention`` (``layers/attention/attention.py``), every decoder layer of Llama, Mistral,
  Mixtral, Qwen2/3(-MoE), Gemma 1/2/3, Phi-2/3/4, GPT-2, GPT-J, GPT-NeoX, Falcon,
  StarCoder2, InternLM2, OLMo-2, gpt-oss; the attention layers of Jamba, Nemotron-H,
  Qwen3-Next; the NoPE layers of Llama 4. Attributes: ``num_kv_heads``, ``head_size``,
  ``head_size_v`` (= head size), ``kv_cache_dtype``, ``kv_cache_torch_dtype``
  (``kv_cache_dtype_str_to_dtype``), ``attn_type`` DECODER, ``sliding_window``,
  ``attn_backend``, ``kv_sharing_target_layer_name``. Sliding window: the per-layer window
  where the model file passes one - ``layer_types[i] == "sliding_attention"`` (Llama/Mistral
  family, Gemma 2/3/3n), every even layer (gpt-oss, with attention sinks) - otherwise
  ``cache_config.sliding_window`` (set by ``EngineArgs`` only when the model is all-sliding,
  e.g. Mistral-7B-v0.1, Phi-3-mini, StarCoder2).
* DeciLM / Nemotron-NAS (``nemotron_nas.py``): per layer ``block_configs[i].attention``;
  ``no_op`` layers have no attention, others ``num_attention_heads // n_heads_in_group``
  KV heads.
* Gemma 3n (``gemma3n.py``): the last ``num_kv_shared_layers`` layers share the KV of an
  earlier layer (``kv_sharing_target_layer_name``) and get no spec.
* ``ChunkedLocalAttention`` (``chunked_local_attention.py``), Llama 4 layers with RoPE
  (``no_rope_layers[i] != 0``) when ``attention_chunk_size`` is set; backend =
  ``create_chunked_local_attention_backend(get_attn_backend(...), chunk)``; NoPE layers are
  plain ``Attention``.
* ``MLAAttention`` (``mla_attention.py``), every layer of DeepSeek V2/V3/R1 and Kimi K2:
  ``head_size = kv_lora_rank + qk_rope_head_dim``, ``num_kv_heads`` 1, backend from
  ``get_attn_backend(head_size, dtype, kv_cache_dtype, use_mla=True, num_heads=heads/tp)``
  (SM90: FLASH_ATTN_MLA for bf16, FlashMLA for fp8), ``topk_buffer_width`` None, no indexer.
* DeepSeek V3.2 (``index_topk`` in the config): sparse ``MLAAttention`` (backend from
  ``get_attn_backend(..., use_mla=True, use_sparse=True)``; the KV dtype canonicalised with
  ``_canonicalize_sparse_mla_kv_cache_dtype`` and written back to ``cache_config`` as
  ``MLAAttention.__init__`` does - fp8 becomes ``fp8_ds_mla``, 656 B/token, on
  FLASHMLA_SPARSE; ``topk_buffer_width`` = ``index_topk``), plus a real
  ``DeepseekV32IndexerCache`` (its ``__init__`` is light; head ``index_head_dim`` + 4 B of
  scale per 128, uint8) on each layer the IndexCache rule of ``DeepseekV2MLAAttention``
  (``index_topk_freq`` / ``index_topk_pattern``) gives an indexer.
* Mamba layers: ``MambaMixer`` (Jamba, ``layers_block_type[i] == "mamba"``),
  ``MambaMixer2`` (Nemotron-H, ``hybrid_override_pattern[i] == "M"``),
  ``QwenGatedDeltaNetAttention`` (Qwen3-Next, ``layer_types[i] == "linear_attention"``,
  with ``_checkpoint_alignment`` set as its ``__init__`` does from
  ``_resolve_gdn_prefill_backend``). Their state shapes and dtypes are the model class's own
  ``get_mamba_state_shape_from_config`` / ``get_mamba_state_dtype_from_config`` (the
  functions vLLM's ``_align_hybrid_block_size`` uses for the same purpose).

Presets whose architecture the harness does not map are reported with ``skipped`` and the
reason; see ``SKIPPED`` below.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
import traceback
import types

H100_MEMORY_BYTES = 85_045_477_376
H100_NAME = "NVIDIA H100 80GB HBM3"
SM90 = (9, 0)
#: the CUDA runtime major of vLLM's CUDA wheels (cu13)
CUDA_RUNTIME_MAJOR = 13
#: the simulated GPU the fakes answer for (``--defaults`` switches it per case)
GPU = {"name": H100_NAME, "memory": H100_MEMORY_BYTES, "capability": SM90}

# Compiled CUDA extension modules of the vllm 0.33.0 wheel (find vllm -name '*.so').
CUDA_EXTENSION_MODULES = (
    "vllm._C_stable_libtorch",
    "vllm._moe_C_stable_libtorch",
    "vllm._qutlass_C",
    "vllm.cumem_allocator",
    "vllm._flashmla_C",
    "vllm._flashmla_extension_C",
    "vllm._flashkda_C",
    "vllm._deepselect_C",
    "vllm.spinloop",
    "vllm.fs_io_C",
    "vllm.vllm_flash_attn._vllm_fa2_C",
    "vllm.vllm_flash_attn._vllm_fa3_C",
    "vllm.third_party.deep_gemm._C_extension",
)

# Architectures (HF `architectures[0]`) that vLLM 0.33.0 serves but this harness does not
# map to layers yet, with the reason.
SKIPPED: dict[str, str] = {}


REMOTE_CODE_MARKERS = ("contains custom code which must be executed",
                       "Transformers does not recognize this architecture")
#: vLLM's own refusals of a layout, raised while it validates the configuration.
REFUSAL_PATTERNS = (r"Total number of attention heads \(\d+\) must be divisible by tensor "
                    r"parallel size \(\d+\)",)


def _config_refusal(msg: str) -> str | None:
    for pattern in REFUSAL_PATTERNS:
        if m := re.search(pattern, msg):
            return m.group(0)
    return None


def install_gpu_fakes() -> None:
    """Make vLLM see one SM90 H100; see the module docstring for the exact list."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="vllm-cache-"))
    # The grid asks for max lengths beyond some models' context (e.g. 131,072 for Llama 2);
    # vLLM's documented switch lets the capacity code run for them.
    os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    for name in CUDA_EXTENSION_MODULES:
        sys.modules.setdefault(name, types.ModuleType(name))
    import torch

    # Kernel capability queries vLLM makes while importing its quantization modules (they pick
    # fp8 GEMM kernels for the weights, not the KV cache); answered as the SM90 build does.
    lib = torch.library.Library("_C", "DEF")
    for op, answer in KERNEL_QUERIES.items():
        lib.define(f"{op}(int cap) -> bool")
        lib.impl(op, answer, "CompositeExplicitAutograd")
    # Kernel operators the torch.compile fusion passes name as pattern keys at import time (read
    # when FlashInfer's all-reduce fusion sizes its buffers at TP > 1); declared, never run.
    for op in FUSION_PATTERN_OPS:
        lib.define(f"{op}(Tensor x) -> Tensor")
    libs = [lib]
    try:
        torch.ops.load_library(_torchvision_ops_path())
    except Exception:  # noqa: BLE001 - PyPI's torchvision ops are linked to CUDA torch
        # `import torchvision` registers fake kernels for these two operators; declare their
        # schemas (no kernel: no torchvision op runs here).
        tv = torch.library.Library("torchvision", "DEF")
        tv.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        tv.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        libs.append(tv)
    install_gpu_fakes.libs = libs  # keep the registrations alive

    import vllm.platforms
    import vllm.platforms.cuda as cuda
    from vllm.platforms.interface import DeviceCapability

    cls = cuda.CudaPlatform
    cls.get_device_capability = classmethod(
        lambda c, device_id=0: DeviceCapability(*GPU["capability"]))
    cls.get_device_name = classmethod(lambda c, device_id=0: GPU["name"])
    cls.get_device_total_memory = classmethod(lambda c, device_id=0: GPU["memory"])
    cls.device_count = classmethod(lambda c: 8)
    # torch.version.cuda of the CUDA build vLLM's wheels run on (0.33 and 0.34 require the
    # cu13 stack: nvidia-cutlass-dsl[cu13], torch 2.14.0); the CPU build here reports none
    if hasattr(cls, "get_cuda_runtime_major"):
        cls.get_cuda_runtime_major = classmethod(lambda c: CUDA_RUNTIME_MAJOR)
    vllm.platforms._current_platform = cls()

    # CUTLASS MLA (SM 10.x) allocates a 128 MB workspace on the GPU and asks for the SM count
    # when its module is imported; there is no GPU here, so that one import gets its buffer on
    # the CPU and a B200's 148 SMs (neither is read by the capacity code).
    real_empty = torch.empty

    def cpu_empty(*args, **kwargs):
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return real_empty(*args, **kwargs)

    import vllm.utils.platform_utils as platform_utils

    real_units = platform_utils.num_compute_units
    torch.empty = cpu_empty
    platform_utils.num_compute_units = lambda device_id=0: 148   # a B200's SM count
    try:
        import vllm.v1.attention.backends.mla.cutlass_mla  # noqa: F401
    except ImportError:
        pass
    finally:
        torch.empty = real_empty
        platform_utils.num_compute_units = real_units

    # vLLM inspects each model class (is it hybrid, attention-free, ...) in a child process so
    # that the parent never initialises CUDA; there is no CUDA here, so the same inspection
    # function runs in this process (and sees the same simulated GPU).
    import vllm.model_executor.models.registry as registry

    registry._run_in_subprocess = lambda fn: fn()

    from vllm.triton_utils import HAS_TRITON, triton

    if not HAS_TRITON:
        # Triton needs a GPU driver; vLLM then uses its TritonPlaceholder, whose Config is a
        # no-op decorator. Kernel modules imported on the SM90 path read autotune configs'
        # fields at import time, so Config records its arguments here.
        def config(kwargs=None, num_warps=4, num_stages=3, num_ctas=1, **extra):
            return types.SimpleNamespace(kwargs=kwargs or {}, num_warps=num_warps,
                                         num_stages=num_stages, num_ctas=num_ctas, **extra)

        triton.Config = config


#: torch.ops._C kernels vllm/compilation/passes/fusion/*.py reference at import time
FUSION_PATTERN_OPS = ("rotary_embedding", "static_scaled_fp8_quant", "dynamic_scaled_fp8_quant",
                      "dynamic_per_token_scaled_fp8_quant", "silu_and_mul",
                      "fused_add_rms_norm", "rms_norm_static_fp8_quant",
                      "fused_add_rms_norm_static_fp8_quant",
                      "rms_norm_dynamic_per_token_quant")

#: torch.ops._C capability queries made at import time -> the answer of vLLM's SM90 build.
KERNEL_QUERIES = {
    "cutlass_scaled_mm_supports_block_fp8": lambda cap: cap >= 90,
    "cutlass_scaled_mm_supports_fp8": lambda cap: cap >= 89,
}


def _torchvision_ops_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision")
    return os.path.join(list(spec.submodule_search_locations)[0], "_C.so")


class Refused(Exception):
    """vLLM refuses the configuration before any KV planning (e.g. TP vs KV heads)."""


def _shell(cls, **attrs):
    """A vLLM layer object whose __init__ (weights, kernels) is not run; attrs are the
    attributes that __init__ sets and get_kv_cache_spec reads."""
    import torch.nn as nn

    obj = cls.__new__(cls)
    nn.Module.__init__(obj)
    for k, v in attrs.items():
        object.__setattr__(obj, k, v)
    return obj


def _register(vc, name, layer):
    ctx = vc.compilation_config.static_forward_context
    if name in ctx:
        raise ValueError(f"Duplicate layer name: {name}")
    ctx[name] = layer


def per_rank_kv_heads(total: int, tp: int) -> int:
    """QKVParallelLinear.__init__'s rule, with vLLM's own divide()."""
    from vllm.distributed.utils import divide

    try:
        if tp >= total:
            divide(tp, total)
            return 1
        return divide(total, tp)
    except (AssertionError, ValueError) as exc:
        raise Refused(str(exc)) from exc


def _attention(vc, name, num_kv_heads, head_size, window=None, has_sink=False,
               kv_sharing_target=None, backend=None):
    import torch
    from vllm.model_executor.layers.attention.attention import Attention
    from vllm.utils.torch_utils import kv_cache_dtype_str_to_dtype
    from vllm.v1.attention.backend import AttentionType
    from vllm.v1.attention.selector import get_attn_backend

    cc = vc.cache_config
    sliding = window if window is not None else cc.sliding_window
    kv_dtype = cc.cache_dtype
    if backend is None:
        backend = get_attn_backend(head_size, torch.get_default_dtype(), kv_dtype,
                                   use_mla=False, has_sink=has_sink,
                                   attn_type=AttentionType.DECODER,
                                   has_sliding_window=sliding is not None)
    layer = _shell(Attention, layer_name=name, num_heads=None, num_kv_heads=num_kv_heads,
                   head_size=head_size, head_size_v=head_size, sliding_window=sliding,
                   kv_cache_dtype=kv_dtype,
                   kv_cache_torch_dtype=kv_cache_dtype_str_to_dtype(kv_dtype, vc.model_config),
                   attn_type=AttentionType.DECODER, attn_backend=backend,
                   kv_sharing_target_layer_name=kv_sharing_target, has_sink=has_sink)
    _register(vc, name, layer)


def _chunked(vc, name, num_kv_heads, head_size, chunk):
    import torch
    from vllm.model_executor.layers.attention.chunked_local_attention import (
        ChunkedLocalAttention, create_chunked_local_attention_backend)
    from vllm.utils.torch_utils import kv_cache_dtype_str_to_dtype
    from vllm.v1.attention.backend import AttentionType
    from vllm.v1.attention.selector import get_attn_backend

    cc = vc.cache_config
    under = get_attn_backend(head_size, torch.get_default_dtype(), cc.cache_dtype)
    backend = create_chunked_local_attention_backend(under, chunk)
    layer = _shell(ChunkedLocalAttention, layer_name=name, num_kv_heads=num_kv_heads,
                   head_size=head_size, head_size_v=head_size, sliding_window=None,
                   kv_cache_dtype=cc.cache_dtype,
                   kv_cache_torch_dtype=kv_cache_dtype_str_to_dtype(cc.cache_dtype,
                                                                    vc.model_config),
                   attn_type=AttentionType.DECODER, attn_backend=backend,
                   attention_chunk_size=chunk, kv_sharing_target_layer_name=None)
    _register(vc, name, layer)


def _mla(vc, name, head_size, num_heads_rank, use_sparse=False, indexer=None,
         topk_buffer_width=None):
    import torch
    from vllm.model_executor.layers.attention.mla_attention import (
        MLAAttention, _canonicalize_sparse_mla_kv_cache_dtype)
    from vllm.v1.attention.selector import get_attn_backend

    kv_dtype = vc.cache_config.cache_dtype
    backend = get_attn_backend(head_size, torch.get_default_dtype(), kv_dtype, use_mla=True,
                               use_sparse=use_sparse, num_heads=num_heads_rank)
    normalized = _canonicalize_sparse_mla_kv_cache_dtype(backend, kv_dtype)
    if normalized != kv_dtype:  # as MLAAttention.__init__ does
        vc.cache_config.cache_dtype = normalized
    cfg = vc.model_config.hf_text_config
    # 0.34: get_kv_cache_spec asks the backend's impl for the fp8_ds_mla row bytes
    # (MLAAttentionImpl.get_fp8_ds_mla_row_bytes); the impl's __init__ builds kernels, so a
    # shell of the backend's own impl class carries the two attributes that method reads.
    impl_cls = backend.get_impl_cls()
    impl = impl_cls.__new__(impl_cls)
    impl.kv_lora_rank, impl.qk_rope_head_dim = cfg.kv_lora_rank, cfg.qk_rope_head_dim
    layer = _shell(MLAAttention, layer_name=name, head_size=head_size, num_kv_heads=1,
                   num_heads=num_heads_rank, kv_cache_dtype=normalized, attn_backend=backend,
                   sliding_window=None, indexer=indexer, topk_buffer_width=topk_buffer_width,
                   non_causal_multi_token_decode=False, impl=impl)
    _register(vc, name, layer)


def _v32_has_indexer(cfg, layer_id: int) -> bool:
    """DeepseekV2MLAAttention.__init__'s IndexCache rule (index_topk_freq / pattern)."""
    freq = getattr(cfg, "index_topk_freq", 1)
    pattern = getattr(cfg, "index_topk_pattern", None)
    offset = getattr(cfg, "index_skip_topk_offset", 2)
    if pattern is None:
        return max(layer_id - offset + 1, 0) % freq == 0
    return not (0 <= layer_id < len(pattern) and pattern[layer_id] == "S")


def _mamba(vc, name, layer_cls, model_cls, **extra):
    shapes = tuple(model_cls.get_mamba_state_shape_from_config(vc))
    dtypes = tuple(model_cls.get_mamba_state_dtype_from_config(vc))
    layer = _shell(layer_cls, layer_name=name, prefix=name, vllm_config=vc,
                   model_config=vc.model_config, cache_config=vc.cache_config, **extra)
    object.__setattr__(layer, "get_state_shape", lambda: shapes)
    object.__setattr__(layer, "get_state_dtype", lambda: dtypes)
    _register(vc, name, layer)


def build_layers(vc) -> None:
    """Create the model's KV-carrying vLLM layers (module docstring: Layer mapping)."""
    mc, pc = vc.model_config, vc.parallel_config
    tp = pc.tensor_parallel_size
    cfg = mc.hf_text_config
    arch = mc.architecture
    n = cfg.num_hidden_layers
    head = mc.get_head_size()
    total_kv = mc.get_total_num_kv_heads()
    prefix = "model.layers"

    if mc.use_mla:
        heads_rank = cfg.num_attention_heads // tp
        sparse = hasattr(cfg, "index_topk")  # DeepSeek V3.2: sparse MLA + indexer cache
        for i in range(n):
            indexer = None
            if sparse and _v32_has_indexer(cfg, i):
                import torch
                from vllm.model_executor.models.deepseek_v2 import DeepseekV32IndexerCache

                # Indexer.__init__: fp8 keys + one fp32 scale per 128 values, uint8
                indexer = DeepseekV32IndexerCache(
                    head_dim=cfg.index_head_dim + cfg.index_head_dim // 128 * 4,
                    dtype=torch.uint8, prefix=f"{prefix}.{i}.self_attn.indexer.k_cache",
                    cache_config=vc.cache_config)
            _mla(vc, f"{prefix}.{i}.self_attn.attn", head, heads_rank, use_sparse=sparse,
                 indexer=indexer, topk_buffer_width=cfg.index_topk if sparse else None)
        return

    if arch == "DeciLMForCausalLM":
        for i, block in enumerate(cfg.block_configs):
            att = block.attention if not isinstance(block, dict) else block["attention"]
            get = (lambda k, a=att: a.get(k) if isinstance(a, dict) else getattr(a, k, None))
            if get("no_op") or get("replace_with_linear"):
                continue
            kv = cfg.num_attention_heads // get("n_heads_in_group")
            _attention(vc, f"{prefix}.{i}.self_attn.attn", per_rank_kv_heads(kv, tp), head)
        return

    kv_rank = per_rank_kv_heads(total_kv, tp)

    if arch.startswith("Llama4"):
        chunk = getattr(cfg, "attention_chunk_size", None)
        for i in range(n):
            name = f"language_model.model.layers.{i}.self_attn.attn"
            nope = cfg.no_rope_layers[i] == 0
            if chunk and not nope:
                _chunked(vc, name, kv_rank, head, chunk)
            else:
                _attention(vc, name, kv_rank, head)
        return

    if arch == "JambaForCausalLM":
        from vllm.model_executor.layers.mamba.mamba_mixer import MambaMixer
        from vllm.model_executor.models.jamba import JambaForCausalLM

        for i, kind in enumerate(cfg.layers_block_type):
            if kind == "mamba":
                _mamba(vc, f"{prefix}.{i}.mamba", MambaMixer, JambaForCausalLM)
            else:
                _attention(vc, f"{prefix}.{i}.self_attn.attn", kv_rank, head)
        return

    if arch == "NemotronHForCausalLM":
        from vllm.model_executor.layers.mamba.mamba_mixer2 import MambaMixer2
        from vllm.model_executor.models.nemotron_h import NemotronHForCausalLM

        for i, kind in enumerate(cfg.hybrid_override_pattern):
            if kind == "M":
                _mamba(vc, f"{prefix}.{i}.mixer", MambaMixer2, NemotronHForCausalLM)
            elif kind == "*":
                _attention(vc, f"{prefix}.{i}.mixer.attn", kv_rank, head,
                           window=getattr(cfg, "sliding_window", None))
        return

    if arch == "Qwen3NextForCausalLM":
        from vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn import (
            QwenGatedDeltaNetAttention, _resolve_gdn_prefill_backend)
        from vllm.model_executor.models.qwen3_next import Qwen3NextForCausalLM
        from vllm.v1.attention.backends.gdn_attn import FLASHINFER_GDN_CHECKPOINT_ALIGNMENT

        _, active = _resolve_gdn_prefill_backend(vc)
        align = (FLASHINFER_GDN_CHECKPOINT_ALIGNMENT
                 if vc.cache_config.mamba_cache_mode == "align" and active == "flashinfer"
                 else None)
        for i, kind in enumerate(cfg.layer_types):
            if kind == "linear_attention":
                _mamba(vc, f"{prefix}.{i}.linear_attn", QwenGatedDeltaNetAttention,
                       Qwen3NextForCausalLM, gdn_prefill_backend=active,
                       _checkpoint_alignment=align)
            else:
                _attention(vc, f"{prefix}.{i}.self_attn.attn", kv_rank, head)
        return

    layer_types = getattr(cfg, "layer_types", None)
    shared_from = None
    if arch.startswith("Gemma3n"):
        shared_from = n - cfg.num_kv_shared_layers
    for i in range(n):
        window = None
        if arch.startswith("GptOss"):
            window = cfg.sliding_window if i % 2 == 0 else None
        elif layer_types and len(set(layer_types)) > 1:
            window = cfg.sliding_window if layer_types[i] == "sliding_attention" else None
        target = None
        if shared_from is not None and i >= shared_from:
            offset = 2 if window is not None else 1
            target = f"{prefix}.{shared_from - offset}.self_attn.attn"
        _attention(vc, f"{prefix}.{i}.self_attn.attn", kv_rank, head, window=window,
                   has_sink=arch.startswith("GptOss"), kv_sharing_target=target)


def kv_cache_specs(vc) -> dict:
    """GPUModelRunner.get_kv_cache_spec's loop."""
    from dataclasses import replace

    from vllm.config import get_layers_from_vllm_config
    from vllm.model_executor.layers.attention import Attention
    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
    from vllm.v1.kv_cache_interface import AttentionSpec
    from vllm.v1.worker.utils import customize_attention_spec

    specs = {}
    for name, module in get_layers_from_vllm_config(vc, AttentionLayerBase).items():
        if isinstance(module, Attention) and module.kv_sharing_target_layer_name:
            continue
        if spec := module.get_kv_cache_spec(vc):
            if isinstance(spec, AttentionSpec):
                spec = customize_attention_spec(module.get_attn_backend(), spec)
            if module.is_draft_layer:
                spec = replace(spec, is_draft=True)
            specs[name] = spec
    return specs


def engine_config(config_dir: str, tp: int, kv_dtype: str, max_len: int):
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    args = EngineArgs(model=config_dir, skip_tokenizer_init=True, tensor_parallel_size=tp,
                      max_model_len=max_len, kv_cache_dtype=kv_dtype, load_format="dummy",
                      trust_remote_code=False)
    return args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)


def plan(vc, specs: dict, budget: int) -> dict:
    """EngineCore._initialize_kv_caches from the grouping to the capacity line."""
    from vllm.v1.core.kv_cache_config_builder import get_kv_cache_config_builder
    from vllm.v1.core.kv_cache_planning import (
        _estimate_max_model_len_from_groups, _pool_bytes_per_block_from_builder,
        get_global_kv_cache_groups, get_kv_cache_configs)
    from vllm.v1.core.kv_cache_utils import (
        generate_scheduler_kv_cache_config, get_kv_cache_capacity)
    from vllm.v1.core.single_type_kv_cache_manager import register_all_kvcache_specs

    from types import SimpleNamespace

    from vllm.v1.attention.backends.utils import (record_kv_cache_layout,
                                                  resolve_kv_cache_layout)
    from vllm.v1.worker.worker_base import WorkerBase

    register_all_kvcache_specs(vc)
    worker_specs = [dict(specs)]
    # The worker reports its backends' layouts; the core resolves one and records it.
    supported = WorkerBase.get_supported_kv_cache_layouts(SimpleNamespace(vllm_config=vc))
    layout = resolve_kv_cache_layout(vc, [supported], list(specs.values()))
    groups = get_global_kv_cache_groups(vc, worker_specs)
    vc.adjust_dcp_kv_cache_interleave_size(groups)
    record_kv_cache_layout(vc.cache_config, layout.name)
    builder = get_kv_cache_config_builder(vc)
    bytes_per_block = _pool_bytes_per_block_from_builder(builder, vc, groups)
    rec = {"groups": len(groups), "bytes_per_block": bytes_per_block,
           "group_block_sizes": [g.kv_cache_spec.block_size for g in groups],
           "group_kinds": [type(g.kv_cache_spec).__name__ for g in groups]}
    rec["block_size"] = min(
        [g.kv_cache_spec.block_size for g in groups if g.kv_cache_spec.prefix_cacheable]
        or [g.kv_cache_spec.block_size for g in groups])
    try:
        configs = get_kv_cache_configs(vc, worker_specs, [budget], groups)
    except ValueError as exc:
        rec.update(fits=False, error=str(exc), num_blocks=budget // bytes_per_block,
                   estimated_max_model_len=_estimate_max_model_len_from_groups(
                       builder, vc, groups, budget - bytes_per_block))
        return rec
    worker = configs[0]
    max_seqs = vc.scheduler_config.max_num_seqs
    mode = vc.compilation_config.cudagraph_mode
    if (mode is not None and mode.has_full_cudagraphs() and worker.has_mamba_layers
            and max_seqs > worker.num_blocks):
        # CompilationConfig's check as the KV cache is initialised (vllm/config/compilation.py,
        # vllm-project/vllm#34094): its condition on vLLM's own objects, and its message
        rec.update(fits=False, num_blocks=worker.num_blocks, estimated_max_model_len=None,
                   error=(f"max_num_seqs ({max_seqs}) exceeds available Mamba cache blocks "
                          f"({worker.num_blocks})"))
        return rec
    sched = generate_scheduler_kv_cache_config(configs)
    tokens, concurrency = get_kv_cache_capacity(vc, sched)
    rec.update(fits=True, error=None, num_blocks=sched.num_blocks, kv_cache_tokens=tokens,
               max_concurrency=concurrency, estimated_max_model_len=None)
    return rec


def run_case(config_dir: str, tp: int, kv_dtype: str, max_len: int, budgets) -> list[dict]:
    from vllm.config import set_current_vllm_config

    try:
        vc = engine_config(config_dir, tp, kv_dtype, max_len)
    except Exception as exc:  # pydantic's ValidationError wraps vLLM's ValueError
        refusal = _config_refusal(str(exc))
        if refusal:
            raise Refused(refusal) from exc
        raise
    from vllm.utils.torch_utils import set_default_torch_dtype

    with set_current_vllm_config(vc), set_default_torch_dtype(vc.model_config.dtype):
        build_layers(vc)
        from vllm.platforms import current_platform

        current_platform.update_block_size_for_backend(vc)
        specs = kv_cache_specs(vc)
        backends = sorted({m.get_attn_backend().get_name() for m in
                           vc.compilation_config.static_forward_context.values()})
        out = []
        for budget in budgets:
            rec = plan(vc, specs, budget)
            rec.update(budget=budget, backends=backends,
                       mamba_cache_mode=vc.cache_config.mamba_cache_mode,
                       max_num_batched_tokens=vc.scheduler_config.max_num_batched_tokens,
                       model_dtype=str(vc.model_config.dtype).replace("torch.", ""))
            out.append(rec)
    return out


def defaults_case(config_dir: str, gpu: dict, terms: dict) -> dict:
    """What vLLM itself assumes for one model on one GPU with no flags (``vllm serve MODEL``):
    the defaults kvcalc models, and the KV budget vLLM's own memory functions give for kvcalc's
    measured inputs (``terms``: weights, activation peak, non-torch memory, CUDA graphs).

    ``request_memory`` (vllm/v1/worker/utils.py) gives the requested memory from the
    resolved ``gpu_memory_utilization``; the profiled estimate is
    ``Worker.determine_available_memory``'s ``requested - non-KV memory - CUDA-graph
    estimate``; with the extensible KV cache (0.34), ``measure_kv_cache_bytes``
    (vllm/v1/worker/extensible_kv_cache.py) sizes the cache after warm-up from the free memory
    those terms leave, and the smaller of the two wins (``finalize_extensible_kv_cache``).
    """
    import vllm.envs as envs
    from vllm.config import set_current_vllm_config
    from vllm.utils.mem_utils import MemorySnapshot
    from vllm.utils.torch_utils import set_default_torch_dtype
    from vllm.v1.worker.utils import request_memory

    if (GPU["name"], tuple(GPU["capability"])) != (gpu["name"], tuple(gpu["capability"])):
        # vLLM caches backend choices per process, keyed by the layer's shape, not the GPU
        _clear_gpu_caches()
    GPU.update(name=gpu["name"], memory=gpu["memory"], capability=tuple(gpu["capability"]))
    vc = engine_config(config_dir, 1, "auto", 4096)
    cc, sc = vc.cache_config, vc.scheduler_config
    with set_current_vllm_config(vc), set_default_torch_dtype(vc.model_config.dtype):
        build_layers(vc)
        from vllm.platforms import current_platform

        current_platform.update_block_size_for_backend(vc)
        specs = kv_cache_specs(vc)
        block = plan(vc, specs, 8 * 2**30)["block_size"]
    util = getattr(cc, "resolved_gpu_memory_utilization", cc.gpu_memory_utilization)
    extensible = bool(getattr(cc, "enable_extensible_kv_cache", False))
    total = gpu["memory"]
    snapshot = MemorySnapshot(auto_measure=False, device="cpu", total_memory=total,
                              free_memory=total)
    requested = request_memory(snapshot, cc)
    w, act, non_torch, graphs = (terms[k] for k in ("weights", "activation", "non_torch",
                                                     "cuda_graph"))
    if not envs.VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS:
        graphs = 0
    kv = requested - (w + act + non_torch) - graphs
    if extensible:
        from vllm.v1.worker.extensible_kv_cache import measure_kv_cache_bytes

        measured = measure_kv_cache_bytes(
            init_free_memory=total, free_memory=total - w - non_torch - graphs,
            committed_bytes=0, requested_memory=requested, transient_peak_bytes=act)
        kv = min(kv, measured) if kv > 0 else kv
    return {"gpu_memory_utilization": util, "extensible_kv_cache": extensible,
            "block_size": block, "max_num_seqs": sc.max_num_seqs,
            "max_num_batched_tokens": sc.max_num_batched_tokens,
            "async_scheduling": bool(sc.async_scheduling),
            "enable_prefix_caching": bool(cc.enable_prefix_caching),
            "hybrid_kv_cache_manager": not sc.disable_hybrid_kv_cache_manager,
            "cuda_graph_estimate": bool(envs.VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS),
            "in_flight_tokens": vc.max_in_flight_tokens, "requested_bytes": requested,
            "kv_bytes": kv}


def _clear_gpu_caches() -> None:
    """Forget what vLLM memoised about the previous simulated GPU (functools caches of the
    attention selector, the FlashAttention version and the platform's capability queries)."""
    import functools
    import sys as _sys

    for name, module in list(_sys.modules.items()):
        if not name.startswith("vllm.") or module is None:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, functools._lru_cache_wrapper):
                value.cache_clear()


def run_defaults(req: dict) -> dict:
    """``--defaults``: :func:`defaults_case` for every (preset, GPU) of the request."""
    records = []
    for case in req["cases"]:
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(req["presets"][case["model"]], f)
            try:
                rec = defaults_case(d, case["gpu"], case["terms"])
            except Exception as exc:  # noqa: BLE001 - reported, not hidden
                rec = {"harness_error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()[-2000:]}
        records.append({"model": case["model"], "gpu": case["gpu"]["key"], **rec})
    return {"records": records}


#: vLLM's message when no attention backend takes a layer (CudaPlatform.get_attn_backend_cls,
#: vllm/platforms/cuda.py)
NO_BACKEND = "No valid attention backend found for "


def backends_case(config_dir: str, gpu: dict, kv_dtype: str, tp: int) -> dict:
    """The attention backend vLLM's selector picks for every KV-carrying layer of one model on
    one simulated GPU (``get_attn_backend`` -> ``CudaPlatform.get_attn_backend_cls``, each
    backend's ``validate_configuration``), the block size the backend leaves
    (``update_block_size_for_backend``), or the selector's refusal, word for word."""
    from vllm.config import set_current_vllm_config
    from vllm.utils.torch_utils import set_default_torch_dtype

    if (GPU["name"], tuple(GPU["capability"])) != (gpu["name"], tuple(gpu["capability"])):
        _clear_gpu_caches()
    GPU.update(name=gpu["name"], memory=gpu["memory"], capability=tuple(gpu["capability"]))
    try:
        vc = engine_config(config_dir, tp, kv_dtype, 4096)
    except Exception as exc:  # pydantic's ValidationError wraps vLLM's ValueError
        # VllmConfig._reject_mismatched_float_kv_cache (vllm/config/vllm.py)
        m = re.search(r'kv_cache_dtype="\w+" is incompatible with dtype="\w+"\. Please set '
                      r'`--kv-cache-dtype` to [^.]*\.', str(exc))
        if m:
            return {"refused": m.group(0)}
        raise
    from vllm.v1.attention.backends.mla.flashattn_mla_sparse import _fa4_cute_mla_available

    env = {"fa4_cute_mla": _fa4_cute_mla_available()}
    with set_current_vllm_config(vc), set_default_torch_dtype(vc.model_config.dtype):
        try:
            build_layers(vc)
        except ValueError as exc:
            if NO_BACKEND in str(exc):
                return {"refused": str(exc), **env}
            raise
        for layer in vc.compilation_config.static_forward_context.values():
            if refused := _impl_refusal(layer):
                return {"refused": refused, **env}
        from vllm.platforms import current_platform

        current_platform.update_block_size_for_backend(vc)
        from vllm.model_executor.layers.attention.attention import Attention
        from vllm.model_executor.layers.attention.mla_attention import MLAAttention

        # the attention layers' backends (not the Mamba/GDN mixers' nor the V3.2 indexer's)
        layers = vc.compilation_config.static_forward_context.values()
        backends = sorted({m.get_attn_backend().get_name() for m in layers
                           if isinstance(m, (Attention, MLAAttention))})
    return {"backends": backends, "block_size": vc.cache_config.block_size,
            "model_dtype": str(vc.model_config.dtype).replace("torch.", ""), **env}


#: the start of the ValueErrors the Triton backends' impls raise for a KV dtype the GPU cannot
#: store (TritonAttentionImpl / TritonMLAImpl.__init__: fp8 below SM 8.9, bfloat16 below 8.0)
IMPL_REFUSALS = ("FP8 KV cache is not supported", "bfloat16 KV cache is not supported")


def _impl_refusal(layer) -> str | None:
    """Construct the impl of a Triton layer's backend as ``Attention.__init__`` /
    ``MLAAttention.__init__`` do, so that its own KV dtype check runs; its message, or None.
    TritonAttentionImpl is built as it is (it holds no weights); for TritonMLAImpl the parent
    ``MLACommonImpl.__init__`` (projections, kernels) is replaced for the call by one that sets
    the two attributes the check reads (``kv_cache_dtype``, ``dcp_world_size``)."""
    from vllm.v1.attention.backend import AttentionType

    if not hasattr(layer, "get_attn_backend"):
        return None
    backend = layer.get_attn_backend()
    name, kv = backend.get_name(), getattr(layer, "kv_cache_dtype", "auto")
    if name not in ("TRITON_ATTN", "TRITON_MLA"):
        return None
    impl_cls = backend.get_impl_cls()
    try:
        if name == "TRITON_ATTN":
            impl_cls(1, layer.head_size, 1.0, 1, None, layer.sliding_window, kv)
        else:
            parent = impl_cls.__mro__[1]
            saved = parent.__init__

            def light(self, *args, **kwargs):
                self.kv_cache_dtype, self.dcp_world_size = args[6], 1

            parent.__init__ = light
            try:
                impl_cls(1, layer.head_size, 1.0, 1, None, None, kv, None,
                         AttentionType.DECODER, None)
            finally:
                parent.__init__ = saved
    except ValueError as exc:
        if str(exc).startswith(IMPL_REFUSALS):
            return str(exc)
        raise
    except Exception:  # noqa: BLE001 - past the check (state the shell does not carry)
        return None
    return None


def run_backends(req: dict) -> dict:
    """``--backends``: :func:`backends_case` for every (preset, GPU, KV dtype, TP)."""
    records = []
    for case in req["cases"]:
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(req["presets"][case["model"]], f)
            try:
                rec = backends_case(d, case["gpu"], case["kv_dtype"], case["tp"])
            except Exception as exc:  # noqa: BLE001 - reported, not hidden
                rec = {"harness_error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()[-2000:]}
        records.append({"model": case["model"], "gpu": case["gpu"]["key"],
                        "kv_dtype": case["kv_dtype"], "tp": case["tp"], **rec})
    return {"records": records}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("request", help="JSON file: {presets: {name: config}, budgets, "
                                    "max_lens, tps, kv_dtypes}")
    ap.add_argument("--out", default="-", help="where to write the JSON result")
    ap.add_argument("--defaults", action="store_true",
                    help="the request lists (preset, GPU, budget terms) cases: report vLLM's "
                         "defaults and budget for each (defaults_case)")
    ap.add_argument("--backends", action="store_true",
                    help="the request lists (preset, GPU, KV dtype, TP) cases: report the "
                         "attention backend vLLM's selector picks, or its refusal "
                         "(backends_case)")
    args = ap.parse_args(argv)
    req = json.load(open(args.request))
    if args.backends:
        # FlashInfer's TRT-LLM kernels (attention sinks on SM 9.0 decode / SM 10.x / SM 12.x)
        # are available where NVIDIA's artifactory is reachable or flashinfer-cubin is
        # installed (vllm/utils/flashinfer.py has_nvidia_artifactory); this host has no
        # network, so vLLM's own switch says so, as on a served GPU host.
        os.environ.setdefault("VLLM_HAS_FLASHINFER_CUBIN", "1")
    t0 = time.time()
    install_gpu_fakes()
    import logging

    logging.disable(logging.WARNING)
    import vllm

    if args.defaults or args.backends:
        doc = {"vllm_version": vllm.__version__,
               **(run_backends(req) if args.backends else run_defaults(req)),
               "seconds": round(time.time() - t0, 1)}
        with (sys.stdout if args.out == "-" else open(args.out, "w")) as f:
            f.write(json.dumps(doc))
        return 0

    records, skipped = [], {}
    for name, config in req["presets"].items():
        arch = (config.get("architectures") or ["?"])[0]
        if arch in SKIPPED:
            skipped[name] = SKIPPED[arch]
            continue
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(config, f)
            for tp in req["tps"]:
                for kv in req["kv_dtypes"]:
                    for max_len in req["max_lens"]:
                        key = dict(model=name, tp=tp, kv_dtype=kv, max_len=max_len)
                        t = time.time()
                        try:
                            for rec in run_case(d, tp, kv, max_len, req["budgets"]):
                                records.append({**key, **rec})
                        except Refused as exc:
                            for b in req["budgets"]:
                                records.append({**key, "budget": b, "refused": str(exc)})
                        except Exception as exc:  # noqa: BLE001 - reported, not hidden
                            msg = f"{type(exc).__name__}: {exc}"
                            if REMOTE_CODE_MARKERS[0] in msg or REMOTE_CODE_MARKERS[1] in msg:
                                skipped.setdefault(name, "its config class is remote code in "
                                                   "the model repository "
                                                   "(trust_remote_code), not available "
                                                   "offline")
                                break
                            if "are not supported for now" in msg:  # vLLM's registry
                                skipped.setdefault(name, "vLLM 0.33.0 does not serve "
                                                   f"{arch}")
                                break
                            for b in req["budgets"]:
                                records.append({**key, "budget": b, "harness_error": msg,
                                                "traceback": traceback.format_exc()[-2000:]})
                        print(f"{name} tp{tp} {kv} {max_len}: {time.time() - t:.1f} s",
                              file=sys.stderr)
                    else:
                        continue
                    break
                else:
                    continue
                break
    doc = {"vllm_version": vllm.__version__, "gpu": H100_NAME, "compute_capability": SM90,
           "seconds": round(time.time() - t0, 1), "records": records, "skipped": skipped}
    text = json.dumps(doc, indent=None)
    if args.out == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
