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

from .base import Change, Reading, Refusal, Setting, classify, read_flags
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
}
NOT_MODELLED: dict[str, str] = {
    "n_gpu_layers": "layers kept on the CPU hold their weights and KV cache in host memory "
                    "(kvcalc puts every layer on the GPU)",
    "cpu_moe": "expert weights in host memory", "n_cpu_moe": "expert weights in host memory",
    "override_tensor": "tensors placed on other devices",
    "tensor_split": "the model split over several GPUs", "split_mode": "the model split over "
                                                                     "several GPUs",
    "kv_offload": "-nkvo keeps the KV cache in host memory",
    "fit": "llama.cpp's automatic fit of unset options to the free memory",
    "fit_target": "llama.cpp's automatic fit", "fit_ctx": "llama.cpp's automatic fit",
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
    classify(reading, parsed, HONOURED, NOT_MODELLED, {"model"})
    if parsed.positionals and not reading.refusals:
        reading.refusals.append(Refusal(DISPLAY, "arguments",
                                        f"error: invalid argument: {parsed.positionals[0]}"))
    if launch.program == "llama-cli":
        reading.plan.setdefault("parallel", 1)
    return reading


def pre_checks(reading: Reading, model) -> list[Refusal]:
    return []


def plan_refusals(record: dict[str, Any]) -> list[Refusal]:
    l = record.get("llamacpp") or {}
    if l.get("fits", True):
        return []
    if l.get("error"):
        message = l["error"].split("refuses these settings: ", 1)[-1].split(" (use ")[0]
        return [Refusal(DISPLAY, "cache_types", message)]
    total = sum(c.get("total_bytes", 0) for c in l.get("caches") or ())
    return [Refusal(DISPLAY, "gpu_memory",
                    f"failed to allocate the buffers: weights {l.get('weights_bytes', 0) / 2**30:.2f}"
                    f" GiB + KV cache {total / 2**30:.2f} GiB exceed the "
                    f"{record.get('gpu_memory_bytes', 0) / 2**30:.2f} GiB of the GPU "
                    "(llama.cpp: cudaMalloc failed: out of memory)")]


def lines(record: dict[str, Any]) -> list[str]:
    l = record.get("llamacpp") or {}
    return list(l.get("log") or ())


def concurrency(record: dict[str, Any]) -> float:
    l = record.get("llamacpp") or {}
    return float(l.get("n_seq_max") or 0) if l.get("fits") else 0.0


def trained_context_note(reading: Reading, model, record: dict[str, Any] | None) -> None:
    l = (record or {}).get("llamacpp") or {}
    train = model.spec.max_position_embeddings
    seq = l.get("n_ctx_seq")
    if train and seq and seq > train:
        reading.notes.append(f"llama.cpp warns: n_ctx_seq ({seq}) > n_ctx_train ({train}) -- "
                             "possible training context overflow")


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
        ctx = l.get("n_ctx") or plan.get("ctx_size") or 0
        for c in scale_down(int(ctx)):
            out.append(Change(f"-c {c}", {"ctx_size": c}))
    return out
