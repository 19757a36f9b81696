"""``vllm serve`` (and ``python -m vllm.entrypoints.openai.api_server``): vLLM's flags as
kvcalc plan keywords, and vLLM's start-up checks.

The flag table is vLLM 0.34.0's own ``vllm serve`` parser (kvcalc/launch/flags/vllm.json,
tools/gen_engine_flags.py). Checks, each with vLLM's message:

- ``arguments``: a flag the parser does not know ("vllm serve: error: unrecognized arguments");
- ``kv_cache_dtype``: ``CacheConfig._validate_cache_dtype`` (vllm/config/cache.py);
- ``max_model_len``: ``_get_and_verify_max_len`` (vllm/config/model.py): --max-model-len above
  the derived length (``max_position_embeddings`` x a RoPE scaling factor, printed as vLLM's
  float) without ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1``;
- ``tensor_parallel``: attention heads / KV heads not divisible (the engine's ``tp_refusal``);
- ``kv_cache_memory``: "To serve at least one request ..." / "No available memory ..."
  (the plan's vLLM figures, vllm/v1/core/kv_cache_planning.py);
- ``mamba_cache_blocks``: "max_num_seqs (N) exceeds available Mamba cache blocks (M) ..."
  (vllm/config/compilation.py; engines.vllm.mamba_max_num_seqs_refusal, applied by plan too);
- ``attention_backend``: "No valid attention backend found for cuda with
  AttentionSelectorConfig(...). Reasons: {...}." when no attention backend takes a layer on
  that GPU generation with that KV dtype (vllm/platforms/cuda.py ``get_attn_backend_cls``), and
  ``kv_cache_dtype``: 'kv_cache_dtype="float16" is incompatible with dtype="bfloat16" ...'
  (vllm/config/vllm.py ``_reject_mismatched_float_kv_cache``) or "FP8 KV cache is not supported
  by the Triton MLA backend on GPU (compute capability 8.0) ..." (the Triton backends' impls
  below SM 8.9) -- all from engines.vllm.attention_backends, applied by plan too; the
  suggestion is a KV dtype that boots.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..engines import get_engine
from .base import Change, Reading, Refusal, Setting, classify, human_int, read_flags
from .command import CommandError, Launch
from .flags import table

DISPLAY = "vLLM"

#: vLLM's kv_cache_dtype values kvcalc models -> kvcalc's KV dtype (fp8_e4m3 and fp8_e5m2 kept:
#: the attention backends take different fp8 formats)
KV_DTYPES = {"auto": "auto", "float16": "fp16", "bfloat16": "bf16", "fp8": "fp8",
             "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2", "fp8_inc": "fp8"}
#: --dtype -> the weights dtype (and the KV dtype of "auto")
DTYPES = {"auto": "auto", "half": "fp16", "float16": "fp16", "bfloat16": "bf16",
          "float": "fp32", "float32": "fp32"}
#: --quantization values whose weight bytes kvcalc models
QUANTIZATION = {"fp8": "fp8", "fbgemm_fp8": "fp8", "modelopt": "fp8", "awq": "int4",
                "awq_marlin": "int4", "gptq": "int4", "gptq_marlin": "int4", "mxfp4": "mxfp4",
                "bitsandbytes": "int4"}
#: the RoPE types whose factor vLLM does not apply to the derived length (vllm/config/model.py)
ROPE_NOT_SCALING = ("su", "longrope", "llama3", "yarn", "deepseek_yarn",
                    "deepseek_llama_scaling")


def _bool(value: Any) -> bool:
    return bool(value)


def _kv_dtype(value: str) -> str:
    return KV_DTYPES.get(value, value)


def _speculative(value: str) -> int:
    config = json.loads(value) if isinstance(value, str) else dict(value)
    return int(config.get("num_speculative_tokens") or 0)


HONOURED: dict[str, Setting] = {
    "max_model_len": Setting("max_len", human_int),
    "gpu_memory_utilization": Setting("gpu_util", float),
    "kv_cache_memory_bytes": Setting("kv_budget", human_int),
    "block_size": Setting("block_size", int),
    "max_num_seqs": Setting("max_num_seqs", int),
    "max_num_batched_tokens": Setting("max_batched_tokens", human_int),
    "enable_prefix_caching": Setting("enable_prefix_caching", _bool),
    "num_gpu_blocks_override": Setting("num_gpu_blocks_override", int),
    "tensor_parallel_size": Setting("tp", int),
    "pipeline_parallel_size": Setting("pp", int),
    "data_parallel_size": Setting("replicas", int),
    "kv_cache_dtype": Setting("kv_dtype", _kv_dtype),
    "dtype": Setting("weights_dtype", lambda v: DTYPES.get(v, v)),
    "async_scheduling": Setting("async_scheduling", _bool),
    "disable_hybrid_kv_cache_manager": Setting("disable_hybrid_kv_cache_manager", _bool),
    "speculative_config": Setting("num_speculative_tokens", _speculative),
    "enforce_eager": Setting("enforce_eager", _bool),
}
#: flags that change memory in ways kvcalc does not model (the reason)
NOT_MODELLED: dict[str, str] = {
    "cpu_offload_gb": "weights offloaded to CPU memory: give --weights-memory to kvcalc plan",
    "kv_offloading_size": "KV cache offloaded to CPU memory (host memory)",
    "kv_offloading_backend": "KV cache offloaded to CPU memory (host memory)",
    "enable_lora": "LoRA adapters' weights and buffers",
    "max_loras": "LoRA adapters' weights and buffers",
    "max_lora_rank": "LoRA adapters' weights and buffers",
    "max_cpu_loras": "LoRA adapters in host memory",
    "limit_mm_per_prompt": "multimodal encoder budget in the profiling run",
    "mm_processor_cache_gb": "multimodal processor cache (host memory)",
    "enable_expert_parallel": "expert placement changes the weights per GPU",
    "decode_context_parallel_size": "decode context parallelism splits the KV cache",
    "prefill_context_parallel_size": "prefill context parallelism",
    "kv_transfer_config": "a KV connector's buffers",
    "load_format": "weights loading",
    "mamba_ssm_cache_dtype": "Mamba state dtype (kvcalc reads the config's mamba_ssm_cache_dtype)",
    "mamba_cache_dtype": "Mamba state dtype",
    "max_cudagraph_capture_size": "CUDA graph capture sizes (kvcalc: 0.5 GiB of graphs)",
    "cudagraph_capture_sizes": "CUDA graph capture sizes (kvcalc: 0.5 GiB of graphs)",
    "quantization": "weights quantization (fp8, int4 and mxfp4 are modelled)",
}


def read(launch: Launch) -> Reading:
    rows = table("vllm")
    parsed = read_flags(launch, "vllm", rows["options"], "flexible", positionals=1)
    model = parsed.value("model")
    if parsed.positionals:
        model = parsed.positionals[0]
    if not model:
        raise CommandError(f"cannot read the command at '{launch.program}': no model "
                           "(vllm serve MODEL, or --model MODEL)")
    extra = parsed.positionals[1:]
    reading = Reading(launch, "vllm", DISPLAY, model, {"engine": "vllm"})
    if launch.image_version:
        reading.plan["vllm_version"] = launch.image_version
    quant = parsed.value("quantization")
    skip = {"model", "compilation_config", "quantization"}
    classify(reading, parsed, HONOURED, NOT_MODELLED, skip)
    if quant is not None:
        if quant in QUANTIZATION:
            reading.plan["weights_dtype"] = QUANTIZATION[quant]
            reading.honoured.append({"flag": "--quantization", "value": quant,
                                     "setting": "quantization",
                                     "kvcalc": {"weights_dtype": QUANTIZATION[quant]}})
        else:
            reading.not_modelled.append({"flag": "--quantization",
                                         "reason": NOT_MODELLED["quantization"]})
    for g in parsed.given:
        if g.option.dest == "compilation_config":
            mode = _cudagraph_mode(g.value, g.subkey)
            if mode is not None:
                full = "FULL" in mode.upper()
                reading.settings["full_cudagraphs"] = full
                reading.honoured.append({"flag": g.token, "value": g.value,
                                         "setting": "compilation_config.cudagraph_mode",
                                         "kvcalc": {"full_cudagraphs": full}})
            else:
                reading.no_effect.append(g.token)
    if extra:
        message = f"{launch.program}: error: unrecognized arguments: {' '.join(extra)}"
        if not any(r.check == "arguments" for r in reading.refusals):
            reading.refusals.append(Refusal(DISPLAY, "arguments", message))
    if "kv_dtype" in reading.plan and reading.plan["kv_dtype"] not in KV_DTYPES.values():
        value = reading.plan.pop("kv_dtype")
        if value in CACHE_DTYPES:
            raise CommandError(f"cannot read the command at '--kv-cache-dtype {value}': "
                               f"kvcalc models vLLM's KV dtypes {', '.join(KV_DTYPES)}")
        reading.refusals.append(Refusal(DISPLAY, "kv_cache_dtype",
                                        f"Invalid kv_cache_dtype: {value!r}. Valid values are: "
                                        f"{list(CACHE_DTYPES)}"))
    if reading.plan.get("enforce_eager"):
        reading.settings["full_cudagraphs"] = False
        reading.plan["cuda_graph_memory"] = 0
    env = launch.env
    if env.get("VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE") is not None:
        reading.plan["allow_chunked_local_hybrid"] = \
            env["VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE"].strip() not in ("0", "")
    if reading.plan.get("max_len") == -1:
        reading.plan.pop("max_len")
        reading.notes.append("--max-model-len auto (-1): vLLM fits the length to the memory; "
                             "kvcalc checks the model's full context length")
    return reading


#: vLLM 0.34.0's CacheDType literal (vllm/config/cache.py): what --kv-cache-dtype accepts
CACHE_DTYPES = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc",
                "fp8_ds_mla", "nvfp4_ds_mla", "turboquant_k8v4", "turboquant_4bit_nc",
                "turboquant_k3v4_nc", "turboquant_3bit_nc", "octave_k3v4", "octave_k3v3",
                "octave_k3v3_compact", "ultraquant_4bit", "int4_per_token_head",
                "int8_per_token_head", "fp8_per_token_head", "nvfp4", "nvfp4_4over6")


def _cudagraph_mode(value: Any, subkey: str | None) -> str | None:
    if subkey:
        return str(value) if subkey.replace("-", "_") == "cudagraph_mode" else None
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            mode = json.loads(value).get("cudagraph_mode")
        except (ValueError, AttributeError):
            return None
        return None if mode is None else str(mode)
    return None


def derived_max_len(config: dict[str, Any]) -> tuple[float | int | None, str]:
    """vLLM's derived max_model_len and the key it came from (``_get_and_verify_max_len``):
    the config's length key, times a RoPE scaling factor for RoPE types other than
    ``ROPE_NOT_SCALING`` (Gemma 3 excepted); a float whenever RoPE parameters exist."""
    cfg = config.get("text_config") or config
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                "model_max_length", "max_sequence_length", "max_seq_length", "seq_len"):
        if isinstance(cfg.get(key), int):
            derived: float | int = cfg[key]
            break
    else:
        return None, ""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    has_rope = rope is not None or "rope_theta" in cfg
    if has_rope and "gemma3" not in str(cfg.get("model_type", "")):
        factor = 1.0
        if isinstance(rope, dict):
            kind = rope.get("rope_type") or rope.get("type") or "default"
            if kind not in ROPE_NOT_SCALING:
                factor = rope.get("factor", factor) or 1.0
        derived = derived * factor
    return derived, key


def pre_checks(reading: Reading, model) -> list[Refusal]:
    """vLLM's checks of the configuration, before any memory is planned."""
    out = []
    tp = reading.plan.get("tp", 1)
    refusal = get_engine("vllm").tp_refusal(model.spec, tp)
    if refusal:
        message = refusal.split("vLLM stops with '", 1)[-1].rstrip("')").rstrip("'")
        message = message.split("' (QKVParallelLinear")[0]
        out.append(Refusal(DISPLAY, "tensor_parallel", message))
    max_len = reading.plan.get("max_len")
    derived, key = derived_max_len(dict(model.config))
    allow = reading.launch.env.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0").strip().lower() \
        in ("1", "true")
    if max_len is not None and derived is not None and max_len > derived and not allow:
        msg = (f"User-specified max_model_len ({max_len}) is greater than the derived "
               f"max_model_len ({key}={derived} or model_max_length=None in model's "
               "config.json).")
        out.append(Refusal(DISPLAY, "max_model_len", (
            f"{msg} To allow overriding this maximum, set the env var "
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with "
            "extreme caution. If the model uses relative position encoding (RoPE), positions "
            "exceeding derived_max_model_len lead to nan. If the model uses absolute position "
            "encoding, positions exceeding derived_max_model_len will cause a CUDA array "
            "out-of-bounds error.")))
    return out


#: how vLLM's KV-dtype refusals start (engines.vllm.kv_dtype_refusal, triton_impl_refusal)
KV_DTYPE_REFUSALS = ('kv_cache_dtype="', "FP8 KV cache is not supported",
                     "bfloat16 KV cache is not supported")


def plan_refusals(record: dict[str, Any]) -> list[Refusal]:
    v = record.get("vllm") or {}
    if v.get("fits", True):
        return []
    message = v["log"][0]
    check = ("mamba_cache_blocks" if message.startswith("max_num_seqs (") else
             "no_kv_cache_memory" if message.startswith("No available memory") else
             "attention_backend" if message.startswith("No valid attention backend") else
             "kv_cache_dtype" if message.startswith(KV_DTYPE_REFUSALS) else
             "kv_cache_memory")
    return [Refusal(DISPLAY, check, message)]


def lines(record: dict[str, Any]) -> list[str]:
    v = record.get("vllm") or {}
    return list(v.get("log") or ())


def concurrency(record: dict[str, Any]) -> float:
    return float((record.get("vllm") or {}).get("max_concurrency") or 0) * \
        int(record.get("replicas") or 1)


def candidates(reading: Reading, model, record: dict[str, Any] | None,
               refusals: list[Refusal], target: int | None) -> list[Change]:
    """Changes to try, smallest first; each is verified by re-running the check."""
    out: list[Change] = []
    checks = {r.check for r in refusals}
    plan = reading.plan
    tp = plan.get("tp", 1)
    heads = model.spec.num_attention_heads or 0
    if "tensor_parallel" in checks:
        for t in sorted({t for t in (1, 2, 4, 8, 16) if t != tp}, key=lambda t: abs(t - tp)):
            if not get_engine("vllm").tp_refusal(model.spec, t):
                out.append(Change(f"--tensor-parallel-size {t}", {"tp": t}))
    if "max_model_len" in checks:
        derived, _ = derived_max_len(dict(model.config))
        if derived:
            out.append(Change(f"--max-model-len {int(derived)}", {"max_len": int(derived)}))
        out.append(Change("VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 (in front of the command)",
                          settings={"env": {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}}))
    v = (record or {}).get("vllm") or {}
    if checks & {"attention_backend", "kv_cache_dtype"}:
        # a KV dtype a backend takes on this GPU: the model's own first, then fp8 (the same
        # memory as fp8_e5m2); a --block-size that ruled backends out goes
        given = plan.get("kv_dtype", "auto")
        for kv in ("auto", "fp8"):
            if kv != given:
                out.append(Change(f"--kv-cache-dtype {kv}", {"kv_dtype": kv}))
        if plan.get("block_size") is not None:
            out.append(Change("drop --block-size (the backend's own block)",
                              {"block_size": None}))
    if "mamba_cache_blocks" in checks:
        blocks = int(refusals[[r.check for r in refusals].index("mamba_cache_blocks")]
                     .message.split("at most ")[1].split(" ")[0])
        out.append(Change(f"--max-num-seqs {blocks}", {"max_num_seqs": blocks}))
        out.append(Change("--enforce-eager", {"enforce_eager": True, "cuda_graph_memory": 0},
                          {"full_cudagraphs": False}))
    memory = checks & {"kv_cache_memory", "no_kv_cache_memory"}
    if memory or (target and record and not refusals):
        if memory:
            dnf = (record or {}).get("does_not_fit") or {}
            est = dnf.get("estimated_max_model_len") or v.get("estimated_max_model_len")
            if est:
                out.append(Change(f"--max-model-len {est}", {"max_len": int(est)}))
        util = plan.get("gpu_util")
        if util is not None and util < 0.95:
            out.append(Change("--gpu-memory-utilization 0.95", {"gpu_util": 0.95}))
        if not str(plan.get("kv_dtype", "auto")).startswith("fp8"):
            out.append(Change("--kv-cache-dtype fp8", {"kv_dtype": "fp8"}))
        for t in (2, 4, 8):
            if t > tp and not get_engine("vllm").tp_refusal(model.spec, t) and (not heads or t <= heads):
                out.append(Change(f"--tensor-parallel-size {t}", {"tp": t}))
        if target and record and not memory:
            per = concurrency(record) / int(record.get("replicas") or 1)
            if per > 0:
                dp = math.ceil(target / min(per, v.get("max_num_seqs") or per))
                if dp > int(record.get("replicas") or 1):
                    out.append(Change(f"--data-parallel-size {dp}", {"replicas": dp}))
    return out
