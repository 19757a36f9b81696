"""Run SGLang 0.5.23's own argument resolution and KV-cache sizing on a CPU.

Runs in the separate environment built by tests/sglang_diff/install.sh (``.sglang-venv``:
``sglang==0.5.23 --no-deps``, the CPU build of torch, the pure-Python packages its sizing path
imports). Reads a JSON list of cases on stdin, prints one JSON object per case on stdout:

    {"config": "path/to/config.json", "tp": 1, "kv_cache_dtype": "auto",
     "mem_fraction_static": null, "gpu_mem_mib": 81559, "free_before": 84416331776,
     "weights": 16060522496, "context_length": 8192}
 -> {"mem_fraction_static": 0.835, "max_total_num_tokens": ..., "max_running_requests": ...,
     "swa_max_total_num_tokens": null, "max_mamba_cache_size": null,
     "chunked_prefill_size": 8192, "page_size": 1}

SGLang's code runs unchanged: ``ServerArgs.resolve_once`` (``handle_gpu_memory_settings`` and
every other resolution hook), ``ModelConfig.from_server_args``, ``resolve_layer_indices``,
``KVCacheConfigurator._resolve_memory_pool_config`` (``_profile_available_bytes``,
``config_from_budget``, ``resolve_max_num_reqs``). What is patched, and why -- nothing else:

1. ``get_device_memory_capacity`` (``arg_groups/memory_hook.py``): SGLang runs ``nvidia-smi``;
   here it answers the GPU's nvidia-smi total in MiB (``gpu_mem_mib``).
2. ``get_available_gpu_memory`` (``mem_cache/kv_cache_configurator.py``): SGLang asks CUDA for
   the free memory after the weights loaded; here it answers ``free_before - weights`` in GB.
   The free memory before loading (``pre_model_load_memory``) is passed as SGLang's runner
   passes it.
3. ``get_parallel().world_group``: the process group SGLang hands to (2) for a cross-rank
   minimum; there is no process group on a CPU, so a stand-in with ``cpu_group=None`` (the
   patched query ignores it).
4. ``torchvision``: PyPI only has CUDA builds of torchvision, which do not load beside the CPU
   build of torch; SGLang imports it at module level for multimodal preprocessing
   (``multimodal/internvl_utils.py``), which sizing never calls, so a stand-in module is put in
   ``sys.modules`` (after transformers has decided that torchvision is absent).
5. ``quantization_config`` is dropped from the config SGLang reads: the weights per GPU are given
   as a number (``weights``), and some methods (gpt-oss's mxfp4) register only on a CUDA
   platform; the KV pool does not depend on the weights' format.
6. ``_platform_supports_mamba_cache_extra_buffer`` (``arg_groups/mamba_hook.py``): for Mamba
   hybrids (Qwen3-Next, Nemotron-H) SGLang turns on the radix cache's "extra_buffer" strategy and
   asserts that the platform can snapshot Mamba states; it answers True for CUDA (and ROCm, NPU,
   XPU, MUSA) and False for the CPU platform, so SGLang refuses the model on a CPU ("extra_buffer
   requires platform support for Mamba cache state snapshots"). Here it answers as on CUDA. The
   strategy is what sizes the state pool (2 tracking slots per request on top of 3, in
   ``_calculate_mamba_ratio``), so answering it as CUDA does is what a GPU run resolves.

Models the KV pool does depend on are SGLang's own decisions: ``ModelConfig.is_hybrid_swa``,
``resolve_sliding_window_size`` and ``resolve_layer_indices`` (the SWA / full layer ids).
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import sys
import tempfile
import types
import warnings

warnings.filterwarnings("ignore")

import transformers  # noqa: E402,F401
import transformers.utils.import_utils  # noqa: E402,F401  (decides torchvision is absent)

GiB = 1 << 30


class _StandIn(types.ModuleType):
    """A module whose every attribute is another stand-in; calling one is an error."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        child = _module(f"{self.__name__}.{name}")
        setattr(self, name, child)
        return child

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is a stand-in: SGLang's sizing never calls it")


def _module(name: str) -> _StandIn:
    m = _StandIn(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = m
    return m


for _name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
              "torchvision.transforms.v2", "torchvision.transforms.v2.functional",
              "torchvision.io", "torchvision.ops"):
    _module(_name)

import torch  # noqa: E402

import sglang.srt.arg_groups.mamba_hook as mamba_hook  # noqa: E402
import sglang.srt.arg_groups.memory_hook as memory_hook  # noqa: E402
import sglang.srt.mem_cache.kv_cache_configurator as kcc  # noqa: E402
from sglang.srt.arg_groups.overrides import resolution_result  # noqa: E402
from sglang.srt.configs.model_config import AttentionArch, ModelConfig  # noqa: E402
from sglang.srt.model_executor.model_runner_components.layer_setup import (  # noqa: E402
    resolve_layer_indices)
from sglang.srt.model_executor.model_runner_components.load_model_utils import (  # noqa: E402
    resolve_sliding_window_size)
from sglang.srt.model_executor.model_runner_components.spec_aux_hidden_state import (  # noqa: E402
    SpecAuxHiddenStateConfig)
from sglang.srt.runtime_context import get_context, get_parallel, get_schedule  # noqa: E402
from sglang.srt.server_args import ServerArgs  # noqa: E402
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm  # noqa: E402

KV_DTYPES = {"auto": None, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def run_case(case: dict) -> dict:
    model_dir = tempfile.mkdtemp(prefix="sglang-diff-")
    try:
        with open(case["config"], encoding="utf-8") as f:
            config = json.load(f)
        config.pop("quantization_config", None)                                  # patch 5
        with open(os.path.join(model_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f)
        return _run(case, model_dir)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


def _run(case: dict, model_dir: str) -> dict:
    gpu_mib = float(case["gpu_mem_mib"])
    memory_hook.get_device_memory_capacity = lambda device=None: gpu_mib           # patch 1
    free_after = (case["free_before"] - case["weights"]) / GiB
    kcc.get_available_gpu_memory = lambda *args, **kwargs: free_after              # patch 2
    mamba_hook._platform_supports_mamba_cache_extra_buffer = lambda: True          # patch 6
    sa = ServerArgs(model_path=model_dir, tp_size=case["tp"], device="cuda",
                    skip_tokenizer_init=True, kv_cache_dtype=case["kv_cache_dtype"],
                    mem_fraction_static=case["mem_fraction_static"],
                    context_length=case["context_length"],
                    page_size=case.get("page_size"))
    sa.resolve_once()
    get_context().set_server_args(sa)
    get_parallel().override_permanently(                                          # patch 3
        world_group=types.SimpleNamespace(cpu_group=None))
    mc = ModelConfig.from_server_args(sa)
    layers = resolve_layer_indices(model=None, model_config=mc, is_draft_worker=False)
    kv_dtype = KV_DTYPES[case["kv_cache_dtype"]] or mc.dtype
    page_size = resolution_result(sa, "page_size")
    kvc = kcc.KVCacheConfigurator(
        device="cuda", gpu_id=0, attn_dp_size=1, pp_size=1, pp_group=None, model=None,
        model_config=mc, server_args=sa, kv_cache_dtype=kv_dtype,
        kv_cache_dtype_str=case["kv_cache_dtype"], model_dtype=mc.dtype, page_size=page_size,
        sliding_window_size=resolve_sliding_window_size(None, mc),
        spec_algorithm=SpeculativeAlgorithm.from_string(None),
        is_draft_worker=False, post_capture_kv_active=False,
        spec_aux_config=SpecAuxHiddenStateConfig(), is_hybrid_swa=mc.is_hybrid_swa,
        is_hybrid_swa_compress=False, use_mla_backend=mc.attention_arch == AttentionArch.MLA,
        layer_info=layers, forward_stream=None, req_to_token_pool=None,
        token_to_kv_pool_allocator=None, memory_pool_config=None)
    out = {"mem_fraction_static": resolution_result(sa, "mem_fraction_static"),
           "chunked_prefill_size": resolution_result(sa, "chunked_prefill_size"),
           "page_size": page_size, "context_len": mc.context_len}
    try:
        cfg = kvc._resolve_memory_pool_config(case["free_before"] / GiB)
    except (ValueError, RuntimeError) as exc:
        out["error"] = str(exc)
        return out
    out.update(max_total_num_tokens=cfg.max_total_num_tokens,
               max_running_requests=cfg.max_running_requests,
               swa_max_total_num_tokens=cfg.swa_max_total_num_tokens,
               max_mamba_cache_size=(get_schedule().max_mamba_cache_size
                                     if kvc.mambaish_config is not None else None))
    return out


def main() -> None:
    cases = json.load(sys.stdin)
    for case in cases:
        print(json.dumps({**case, "sglang": run_case(case)}), flush=True)


if __name__ == "__main__":
    main()
