"""``ollama run|serve`` with ``OLLAMA_*`` variables: Ollama's settings as plan keywords.

Ollama reads its server settings from the environment (envconfig/config.go; the variables in
kvcalc/launch/flags/ollama.json) and runs llama-server with them (kvcalc/engines/ollama.py).
Honoured: ``OLLAMA_CONTEXT_LENGTH``, ``OLLAMA_NUM_PARALLEL``, ``OLLAMA_KV_CACHE_TYPE``,
``OLLAMA_FLASH_ATTENTION``, ``OLLAMA_GPU_OVERHEAD``; the release from ``ollama/ollama:TAG``.
``ollama run``'s own flags do not change memory. The model is an Ollama name (``gemma3:4b``),
matched to kvcalc's presets (``gemma-3-4b``), or a GGUF path.

A model larger than the GPU is not a refusal: Ollama puts fewer layers on the GPU and runs the
rest on the CPU (slower) -- from 0.30 llama-server's ``--fit`` picks them ("load_tensors:
offloaded N/M layers to GPU"), up to 0.12.10 Ollama's own estimate does (the ``offload`` log
line). The check prints those lines and "N of M layers on the GPU". Refusals: ``cache_types``
(a quantized V cache without flash attention, llama.cpp's message) and ``gpu_memory`` only
where the layers are not left to Ollama (a plan's ``num_gpu``).
"""

from __future__ import annotations

import re
from typing import Any

from . import llamacpp as _llamacpp
from .base import Change, Reading, Refusal
from .command import CommandError, Launch
from .flags import parse, table

DISPLAY = "Ollama"
KV_TYPES = ("f16", "q8_0", "q4_0")
HONOURED_ENV = {"OLLAMA_CONTEXT_LENGTH": "num_ctx", "OLLAMA_NUM_PARALLEL": "num_parallel",
                "OLLAMA_KV_CACHE_TYPE": "kv_cache_type",
                "OLLAMA_FLASH_ATTENTION": "flash_attention", "OLLAMA_GPU_OVERHEAD": "gpu_overhead"}
NOT_MODELLED_ENV = {
    "OLLAMA_MAX_LOADED_MODELS": "several models loaded at once",
    "OLLAMA_SCHED_SPREAD": "the model spread over every GPU",
}


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "t", "yes", "on")


def read(launch: Launch) -> Reading:
    variables = set(table("ollama")["variables"])
    parsed = parse(list(launch.args), table("ollama")["run_options"], "argparse",
                   launch.program)
    if launch.program == "ollama run":
        if not parsed.positionals:
            raise CommandError("cannot read the command at 'ollama run': no MODEL")
        model = parsed.positionals[0]
    else:
        model = launch.env.get("KVCALC_MODEL")
        if not model:
            raise CommandError("cannot read the command at 'ollama serve': it loads no model "
                               "until one is asked for; check 'ollama run MODEL' with the same "
                               "OLLAMA_* variables")
    reading = Reading(launch, "ollama", DISPLAY, model, {"engine": "ollama"})
    if launch.image_version:              # ollama/ollama:0.12.6 -> that release's rules
        reading.plan["ollama_version"] = launch.image_version
    for name, value in launch.env.items():
        if not name.startswith("OLLAMA_"):
            continue
        if name in HONOURED_ENV:
            key = HONOURED_ENV[name]
            try:
                converted: Any = (int(value) if key in ("num_ctx", "num_parallel",
                                                        "gpu_overhead") else
                                  _truthy(value) if key == "flash_attention" else value)
            except ValueError:
                raise CommandError(f"cannot read the command at '{name}={value}': not a "
                                   "number") from None
            if key == "kv_cache_type" and converted not in KV_TYPES:
                reading.notes.append(f"{name}={value}: Ollama falls back to f16 for an "
                                     f"unsupported cache type ({', '.join(KV_TYPES)})")
                converted = "f16"
            if key == "gpu_overhead" and converted < 0:
                raise CommandError(f"cannot read the command at '{name}={value}': a number of "
                                   "bytes")
            if key != "gpu_overhead" or converted > 0:   # 0 = Ollama's default
                reading.plan[key] = converted
            reading.honoured.append({"flag": f"{name}={value}", "value": value,
                                     "setting": name, "kvcalc": {key: converted}})
        elif name in NOT_MODELLED_ENV:
            reading.not_modelled.append({"flag": f"{name}={value}",
                                         "reason": NOT_MODELLED_ENV[name]})
        elif name in variables:
            reading.no_effect.append(f"{name}={value}")
        else:
            reading.notes.append(f"{name}: not a variable Ollama reads (envconfig/config.go); "
                                 "it is ignored")
    reading.no_effect.extend(g.token for g in parsed.given)
    if parsed.rejected:
        reading.refusals.append(Refusal(DISPLAY, "arguments",
                                        f"Error: unknown flag: {parsed.unknown[0]}"))
    return reading


def model_candidates(name: str) -> list[str]:
    """kvcalc names for an Ollama model name: ``gemma3:4b`` -> gemma3-4b, gemma-3-4b;
    ``llama3.1:8b`` -> llama3.1-8b, llama-3.1-8b; a path is itself."""
    if "/" in name and name.endswith(".gguf") or name.endswith(".gguf"):
        return [name]
    base, _, tag = name.partition(":")
    base = base.split("/")[-1]
    tag = tag.split("-")[0] if tag and tag != "latest" else ""
    out = [f"{base}-{tag}" if tag else base]
    hyphen = re.sub(r"^([a-zA-Z]+)(\d)", r"\1-\2", base)
    out.append(f"{hyphen}-{tag}" if tag else hyphen)
    return list(dict.fromkeys(out))


def pre_checks(reading: Reading, model) -> list[Refusal]:
    return []


def plan_refusals(record: dict[str, Any]) -> list[Refusal]:
    """llama.cpp's refusals for the context Ollama creates, less running out of GPU memory when
    Ollama (<= 0.12.10: its estimate) or llama-server (>= 0.30: --fit) chose the layers: then
    the model runs partly on the CPU instead."""
    refusals = _llamacpp.plan_refusals(record)
    l = record.get("llamacpp") or {}
    chosen = ((l.get("offload") or {}).get("fit") is not None
              or ((l.get("ollama_memory") or {}).get("estimate") or {}).get("layers_requested")
              == -1)
    return [Refusal(DISPLAY, r.check, r.message) for r in refusals
            if not (chosen and r.check == "gpu_memory")]


lines = _llamacpp.lines


def notes(reading: Reading, model, record: dict[str, Any] | None) -> list[str]:
    """How many layers Ollama runs on the GPU; with fewer than all, that it boots slower."""
    l = (record or {}).get("llamacpp") or {}
    o = l.get("ollama_memory") or {}
    if o.get("layers_on_gpu") is None:
        return []
    on, total = o["layers_on_gpu"], o["layers_model"]
    if on >= total:
        return [f"all {total} layers on the GPU"]
    host = ((l.get("placement") or {}).get("host") or {}).get("total", 0)
    return [f"{on} of {total} layers on the GPU: Ollama offloads the rest to the CPU and runs "
            f"(slower); {host:,} B of weights and caches in host memory"]


def concurrency(record: dict[str, Any]) -> float:
    return _llamacpp.concurrency(record)


def candidates(reading: Reading, model, record, refusals, target) -> list[Change]:
    from . import scale_down

    out = []
    plan = reading.plan
    if plan.get("num_parallel", 1) > 1:
        out.append(Change("OLLAMA_NUM_PARALLEL=1", {"num_parallel": 1}))
    if plan.get("kv_cache_type", "f16") == "f16":
        out.append(Change("OLLAMA_KV_CACHE_TYPE=q8_0 OLLAMA_FLASH_ATTENTION=1",
                          {"kv_cache_type": "q8_0", "flash_attention": True}))
    l = (record or {}).get("llamacpp") or {}
    ctx = ((l.get("ollama") or {}).get("num_ctx") or plan.get("num_ctx") or 0)
    for c in scale_down(int(ctx), 2048):
        out.append(Change(f"OLLAMA_CONTEXT_LENGTH={c}", {"num_ctx": c}))
    return out
