"""``llama-server`` / ``llama-cli``: llama.cpp's flags as plan keywords, and its start-up checks.

The flag table is common/arg.cpp of llama.cpp 0c1e57098 (the build llama-cpp-python 0.3.36
vendors; kvcalc/launch/flags/llamacpp.json), per program. Checks, with llama.cpp's messages:
``arguments`` ("error: invalid argument: ..."), ``cache_types`` (a quantized V cache without
flash attention, the plan's llama.cpp figures, kvcalc/engines/llamacpp.py), ``gpu_memory``
(the weights and the caches do not fit in the GPU; llama.cpp fails to allocate a buffer).
``-c`` beyond the model's trained context is a warning in llama.cpp ("n_ctx_seq (N) >
n_ctx_train (M) -- possible training context overflow", src/llama-context.cpp), not a refusal.
"""

from __future__ import annotations

from typing import Any

from .base import Change, Reading, Refusal, Setting, classify, given_token, read_flags
from .command import CommandError, Launch
from .flags import table

DISPLAY = "llama.cpp"
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


def _cache_type(value: str) -> str:
    if value not in CACHE_TYPES:
        raise ValueError(f"unsupported cache type (llama.cpp takes {', '.join(CACHE_TYPES)})")
    return value


def _flash(value: str) -> str:
    v = str(value).lower()
    if v in ("on", "1", "true", "enabled"):
        return "on"
    if v in ("off", "0", "false", "disabled"):
        return "off"
    if v == "auto":
        return "auto"
    raise ValueError("error: unknown value for --flash-attn")


def _ctx(value: str) -> int:
    return int(value)


def _ngl(value: str) -> str:
    """-ngl N | auto | all (common/arg.cpp): kept as given for kvcalc plan, which reads it."""
    text = str(value).strip().lower()
    if text in ("auto", "all") or text.lstrip("-").isdigit():
        return text
    raise ValueError("expected a number of layers, 'auto' or 'all'")


HONOURED: dict[str, Setting] = {
    "ctx_size": Setting("ctx_size", _ctx),
    "parallel": Setting("parallel", int),
    "kv_unified": Setting("kv_unified", bool),
    "cache_type_k": Setting("cache_type_k", _cache_type),
    "cache_type_v": Setting("cache_type_v", _cache_type),
    "flash_attn": Setting("flash_attn", _flash),
    "swa_full": Setting("swa_full", bool),
    "batch_size": Setting("batch_size", int),
    "ubatch_size": Setting("ubatch_size", int),
    # GPU layer offload, as kvcalc plan --engine llamacpp places it (issue 26)
    "n_gpu_layers": Setting("n_gpu_layers", _ngl),
    "tensor_split": Setting("tensor_split", str),
    "split_mode": Setting("split_mode", str),
    "kv_offload": Setting("no_kv_offload", lambda v: not v),
}
#: flags that place tensors in host memory: read together into one --override-tensor list
OVERRIDES = ("override_tensor", "cpu_moe", "n_cpu_moe")
#: llama.cpp's pattern for the MoE expert tensors (common/common.h, LLM_FFN_EXPS_REGEX)
EXPERTS = r"\.ffn_(up|down|gate)_exps"
NOT_MODELLED: dict[str, str] = {
    "fit_target": "llama.cpp's automatic fit: the free memory it leaves (kvcalc fits the "
                  "whole card)",
    "fit_ctx": "llama.cpp's automatic fit: the smallest context it may choose",
    "model_draft": "a draft model's weights and caches",
    "cache_type_k_draft": "the draft model's caches", "cache_type_v_draft": "the draft "
                                                                           "model's caches",
    "mmproj": "the multimodal projector's weights",
    "cache_ram": "the prompt cache in host memory",
    "kv_unified_per_slot": "a per-slot context limit",
    "lora": "LoRA adapters' weights",
}


def read(launch: Launch) -> Reading:
    rows = table("llamacpp")["programs"][launch.program]
    parsed = read_flags(launch, "llamacpp", rows, "llamacpp")
    model = parsed.value("model")
    if not model:
        hf = parsed.value("hf_repo")
        raise CommandError(f"cannot read the command at '{'-hf ' + hf if hf else launch.program}'"
                           f": kvcalc reads the model from -m FILE.gguf (a local GGUF file)")
    reading = Reading(launch, "llamacpp", DISPLAY, model, {"engine": "llamacpp"})
    classify(reading, parsed, HONOURED, NOT_MODELLED, {"model", "fit", *OVERRIDES})
    _read_fit(reading, parsed)
    _read_overrides(reading, parsed)
    if parsed.positionals and not reading.refusals:
        reading.refusals.append(Refusal(DISPLAY, "arguments",
                                        f"error: invalid argument: {parsed.positionals[0]}"))
    if launch.program == "llama-cli":
        reading.plan.setdefault("parallel", 1)
    return reading


def _read_fit(reading: Reading, parsed) -> None:
    """--fit on|off (default on): llama.cpp fits the options left unset to the free memory.
    Off, an unset -ngl offloads every layer (n_gpu_layers -1)."""
    g = given_token(parsed, "fit")
    if g is None:
        return
    value = str(g.value).lower()
    if value not in ("on", "off"):
        raise CommandError(f"cannot read the command at '{g.token}': invalid value {g.value!r} "
                           "(llama.cpp takes on or off)")
    if value == "off":
        reading.plan.setdefault("n_gpu_layers", "all")
    reading.honoured.append({"flag": g.token, "value": g.value, "setting": "fit",
                             "kvcalc": {"n_gpu_layers": reading.plan.get("n_gpu_layers",
                                                                          "auto")}})


def _read_overrides(reading: Reading, parsed) -> None:
    """-ot PATTERN=BUFT (repeatable, comma-separated), --cpu-moe and --n-cpu-moe N as the
    override list llama.cpp builds (common/arg.cpp): kvcalc places PATTERN=CPU; another
    buffer type (a second GPU) is listed as not modelled."""
    patterns: list[str] = []
    honoured = []               # the flags that gave patterns, in the order given
    for g in parsed.given:
        dest = g.option.dest
        if dest == "override_tensor":
            items = [i for i in str(g.value).split(",") if i]
            if any(i.rpartition("=")[2].upper() != "CPU" for i in items):
                reading.not_modelled.append({"flag": g.token, "reason": "tensors placed on "
                                             "another GPU (kvcalc models PATTERN=CPU)"})
                continue
            patterns += items
        elif dest == "cpu_moe":
            patterns.append(f"{EXPERTS}=CPU")
        elif dest == "n_cpu_moe":
            try:
                count = int(g.value)
            except ValueError:
                raise CommandError(f"cannot read the command at '{g.token}': invalid value "
                                   f"{g.value!r}") from None
            patterns += [rf"blk\.{i}{EXPERTS}=CPU" for i in range(max(count, 0))]
        else:
            continue
        honoured.append(g)
    if patterns:
        value = reading.plan["override_tensor"] = ",".join(patterns)
        reading.honoured += [{"flag": g.token, "value": g.value, "setting": g.option.dest,
                              "kvcalc": {"override_tensor": value}} for g in honoured]


def pre_checks(reading: Reading, model) -> list[Refusal]:
    return []


def plan_refusals(record: dict[str, Any]) -> list[Refusal]:
    """The plan's llama.cpp figures as llama.cpp fails: a cache type it refuses, or the first
    buffer that does not fit on a GPU, in the order llama.cpp allocates them (the model's
    weights when the model loads, then the KV cache and the compute buffer when the context is
    created), each with llama.cpp's own lines (src/llama-model.cpp, src/llama-kv-cache.cpp,
    src/llama-context.cpp; the CUDA backend's allocation error)."""
    l = record.get("llamacpp") or {}
    if l.get("fits", True):
        return []
    if l.get("error"):
        message = l["error"].split("refuses these settings: ", 1)[-1].split(" (use ")[0]
        return [Refusal(DISPLAY, "cache_types", message)]
    cap = record.get("gpu_memory_bytes", 0)
    devices = (l.get("placement") or {}).get("devices") or []
    for i, d in enumerate(devices):
        if d.get("total", 0) <= cap:
            continue
        if d["weights"] > cap:
            return [Refusal(DISPLAY, "gpu_memory", "llama_model_load: error loading model: "
                            f"unable to allocate CUDA{i} buffer")]
        if d["weights"] + d["kv"] > cap:
            return [Refusal(DISPLAY, "gpu_memory",
                            f"ggml_backend_cuda_buffer_type_alloc_buffer: allocating "
                            f"{d['kv'] / 2**20:.2f} MiB on device {i}: cudaMalloc failed: out "
                            "of memory; llama_init_from_model: failed to initialize the "
                            "context: failed to allocate buffer for kv cache")]
        return [Refusal(DISPLAY, "gpu_memory",
                        f"ggml_gallocr_reserve_n: failed to allocate CUDA{i} buffer of size "
                        f"{d['compute']}; graph_reserve: failed to allocate compute buffers; "
                        "llama_init_from_model: failed to initialize the context: failed to "
                        "allocate compute pp buffers")]
    total = l.get("total_bytes", 0)
    return [Refusal(DISPLAY, "gpu_memory",
                    f"ggml_backend_cuda_buffer_type_alloc_buffer: allocating "
                    f"{total / 2**20:.2f} MiB on device 0: cudaMalloc failed: out of memory; "
                    "llama_init_from_model: failed to initialize the context: failed to "
                    "allocate buffer for kv cache")]


def lines(record: dict[str, Any]) -> list[str]:
    l = record.get("llamacpp") or {}
    return list(l.get("log") or ())


def concurrency(record: dict[str, Any]) -> float:
    l = record.get("llamacpp") or {}
    return float(l.get("n_seq_max") or 0) if l.get("fits") else 0.0


def notes(reading: Reading, model, record: dict[str, Any] | None) -> list[str]:
    """Where the layers go: llama.cpp's --fit choice when -ngl is left to it, else the host
    memory the layers kept on the CPU use. (A -c beyond the trained context is in the plan's
    notes, in llama.cpp's words.)"""
    l = (record or {}).get("llamacpp") or {}
    offload = l.get("offload") or {}
    fit = offload.get("fit") or {}
    placement = l.get("placement") or {}
    if fit.get("changed") and "n_gpu_layers" not in reading.plan:
        return [f"llama.cpp's --fit (on by default) puts {fit['n_gpu_layers']} of "
                f"{offload.get('n_layer', 0) + 1} layers on the GPU at -c {fit['ctx_size']}; "
                "the rest run on the CPU"]
    host = (placement.get("host") or {}).get("total", 0)
    if host and l.get("fits"):
        return [f"{placement['n_gpu_layers']} of {offload.get('n_layer', 0) + 1} layers on the "
                f"GPU; {host:,} B of weights and caches in host memory"]
    return []


def candidates(reading: Reading, model, record, refusals, target) -> list[Change]:
    from . import scale_down

    out = []
    checks = {r.check for r in refusals}
    plan = reading.plan
    if "cache_types" in checks:
        out.append(Change("-fa on", {"flash_attn": "on"}))
        out.append(Change("-ctv f16", {"cache_type_v": "f16"}))
    if "gpu_memory" in checks:
        l = (record or {}).get("llamacpp") or {}
        if plan.get("parallel", 0) not in (0, 1) or l.get("n_seq_max", 1) > 1:
            out.append(Change("-np 1", {"parallel": 1}))
        if plan.get("cache_type_k", "f16") == "f16":
            out.append(Change("-ctk q8_0 -ctv q8_0", {"cache_type_k": "q8_0",
                                                      "cache_type_v": "q8_0"}))
        best = (l.get("offload") or {}).get("max_ngl") or 0
        if best > 0:   # the largest -ngl that fits at this -c: the rest on the CPU
            out.append(Change(f"-ngl {best}", {"n_gpu_layers": str(best)}))
        ctx = l.get("n_ctx") or plan.get("ctx_size") or 0
        for c in scale_down(int(ctx)):
            out.append(Change(f"-c {c}", {"ctx_size": c}))
    return out
