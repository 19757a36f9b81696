"""``trtllm-serve MODEL``: TensorRT-LLM's flags as plan keywords, and its start-up checks.

The flag table is trtllm-serve's click options (tensorrt_llm/commands/serve.py; kvcalc/launch/
flags/trtllm.json). Checks: ``arguments`` (click: "Error: No such option: ..."),
``kv_cache_memory`` (no memory left for the KV pool after weights and the profiling run, the
plan's TensorRT-LLM figures, kvcalc/engines/trtllm.py).
"""

from __future__ import annotations

from typing import Any

from .base import Change, Reading, Refusal, Setting, classify, read_flags
from .command import CommandError, Launch
from .flags import table

DISPLAY = "TensorRT-LLM"

HONOURED: dict[str, Setting] = {
    "tensor_parallel_size": Setting("tp", int),
    "pipeline_parallel_size": Setting("pp", int),
    "max_seq_len": Setting("max_len", int),
    "free_gpu_memory_fraction": Setting("free_gpu_memory_fraction", float),
}
NOT_MODELLED: dict[str, str] = {
    "extra_llm_api_options": "the YAML's kv_cache_config (max_tokens, dtype, tokens_per_block, "
                             "free_gpu_memory_fraction) is not read: give its values to kvcalc "
                             "plan --engine trtllm",
    "max_num_tokens": "the profiling run's batch (kvcalc uses TensorRT-LLM's 8,192 default)",
    "max_batch_size": "the scheduler's batch cap",
    "context_parallel_size": "context parallelism splits the KV cache",
    "moe_expert_parallel_size": "expert placement changes the weights per GPU",
    "moe_cluster_parallel_size": "expert placement changes the weights per GPU",
    "max_beam_width": "beam search keeps more sequences per request",
    "backend": "the TensorRT engine path sizes its pool from a prebuilt engine",
}


def read(launch: Launch) -> Reading:
    parsed = read_flags(launch, "trtllm", table("trtllm")["options"], "click")
    if not parsed.positionals:
        raise CommandError("cannot read the command at 'trtllm-serve': no MODEL "
                           "(trtllm-serve MODEL [options])")
    reading = Reading(launch, "trtllm", DISPLAY, parsed.positionals[0], {"engine": "trtllm"})
    classify(reading, parsed, HONOURED, NOT_MODELLED)
    if len(parsed.positionals) > 1 and not reading.refusals:
        reading.refusals.append(Refusal(DISPLAY, "arguments",
                                        f"Error: Got unexpected extra argument "
                                        f"({parsed.positionals[1]})"))
    return reading


def pre_checks(reading: Reading, model) -> list[Refusal]:
    return []


def plan_refusals(record: dict[str, Any]) -> list[Refusal]:
    t = record.get("trtllm") or {}
    if t.get("fits", True):
        return []
    reason = ((record.get("does_not_fit") or {}).get("engine_error")
              or t.get("error") or "Executor creation failed due to insufficient GPU memory. "
              "The following component could not be created: KV cache")
    return [Refusal(DISPLAY, "kv_cache_memory", reason)]


def lines(record: dict[str, Any]) -> list[str]:
    return list((record.get("trtllm") or {}).get("log") or ())


def concurrency(record: dict[str, Any]) -> float:
    t = record.get("trtllm") or {}
    max_len = record.get("max_len") or 1
    return (t.get("blocks", 0) * t.get("tokens_per_block", 0)) / max_len * \
        int(record.get("replicas") or 1)


def candidates(reading: Reading, model, record, refusals, target) -> list[Change]:
    out = []
    frac = reading.plan.get("free_gpu_memory_fraction")
    if frac is None or frac < 0.95:
        out.append(Change("--free_gpu_memory_fraction 0.95",
                          {"free_gpu_memory_fraction": 0.95}))
    tp = reading.plan.get("tp", 1)
    heads = model.spec.num_attention_heads or 0
    for t in (2, 4, 8):
        if t > tp and (not heads or heads % t == 0):
            out.append(Change(f"--tp_size {t}", {"tp": t}))
    return out
