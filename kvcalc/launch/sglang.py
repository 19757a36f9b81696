"""``python -m sglang.launch_server``: SGLang's flags as plan keywords, and its start-up checks.

The flag table is SGLang 0.5.23's ``ServerArgs.add_cli_args`` (kvcalc/launch/flags/sglang.json).
Checks, with SGLang's messages: ``arguments`` (argparse: "launch_server.py: error:
unrecognized arguments"), ``tensor_parallel`` (attention heads not divisible by tp: SGLang's
``ModelConfig`` asserts it), ``kv_cache_memory`` (the pool errors of the plan's SGLang figures:
"Loaded weights leave no GPU memory for the KV cache ...", "Not enough GPU memory for hybrid
(mamba/linear-attention) state cache ...", kvcalc/engines/sglang.py).
"""

from __future__ import annotations

from typing import Any

from .base import Change, Reading, Refusal, Setting, classify, read_flags
from .command import CommandError, Launch
from .flags import table

DISPLAY = "SGLang"
#: argparse names the program by the script: python -m sglang.launch_server
PROG = "launch_server.py"
KV_DTYPES = {"auto": "auto", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "bf16": "bf16",
             "bfloat16": "bf16"}
QUANTIZATION = {"fp8": "fp8", "w8a8_fp8": "fp8", "modelopt_fp8": "fp8", "awq": "int4",
                "awq_marlin": "int4", "gptq": "int4", "gptq_marlin": "int4", "mxfp4": "mxfp4"}

HONOURED: dict[str, Setting] = {
    "tp_size": Setting("tp", int),
    "pp_size": Setting("pp", int),
    "dp_size": Setting("replicas", int),
    "context_length": Setting("max_len", int),
    "mem_fraction_static": Setting("mem_fraction_static", float),
    "max_running_requests": Setting("max_running_requests", int),
    "max_total_tokens": Setting("max_total_tokens", int),
    "chunked_prefill_size": Setting("chunked_prefill_size", int),
    "cuda_graph_max_bs_decode": Setting("cuda_graph_max_bs", int),
    "disable_cuda_graph": Setting("disable_cuda_graph", bool),
    "page_size": Setting("block_size", int),
    "kv_cache_dtype": Setting("kv_dtype", lambda v: KV_DTYPES[v]),
    "quantization": Setting("weights_dtype", lambda v: QUANTIZATION[v]),
    "dtype": Setting("weights_dtype", lambda v: {"half": "fp16", "float16": "fp16",
                                                  "bfloat16": "bf16", "float": "fp32",
                                                  "float32": "fp32", "auto": "auto"}[v]),
}
NOT_MODELLED: dict[str, str] = {
    "max_mamba_cache_size": "a cap on the Mamba state pool",
    "mamba_ssm_dtype": "the Mamba SSM state dtype (kvcalc uses SGLang's float32 default)",
    "enable_dp_attention": "data-parallel attention (+4 GiB reserve in SGLang's fraction)",
    "speculative_algorithm": "speculative decoding's draft model and its reserve",
    "speculative_draft_model_path": "a draft model's weights and KV cache",
    "enable_lora": "LoRA adapters' memory",
    "max_loras_per_batch": "LoRA adapters' memory",
    "enable_hierarchical_cache": "the host KV cache tier",
    "hicache_ratio": "the host KV cache tier",
    "hicache_size": "the host KV cache tier",
    "swa_full_tokens_ratio": "the SWA pool's share (kvcalc uses SGLang's 0.8 default)",
    "cpu_offload_gb": "weights offloaded to CPU memory",
    "torch_compile_max_bs": "torch.compile graphs",
    "enable_torch_compile": "torch.compile graphs",
    "attention_backend": "the attention backend (its default page size is modelled)",
    "prefill_attention_backend": "the attention backend",
    "decode_attention_backend": "the attention backend",
}


def read(launch: Launch) -> Reading:
    rows = table("sglang")
    parsed = read_flags(launch, "sglang", rows["options"], "argparse")
    model = parsed.value("model_path")
    if not model:
        raise CommandError(f"cannot read the command at '{launch.program}': no --model-path "
                           "(SGLang requires it)")
    reading = Reading(launch, "sglang", DISPLAY, model, {"engine": "sglang"})
    bad = [(g, d) for g in parsed.given for d, table_ in (("kv_cache_dtype", KV_DTYPES),
                                                           ("quantization", QUANTIZATION))
           if g.option.dest == d and g.value not in table_]
    for g, dest in bad:
        parsed.given.remove(g)
        reading.not_modelled.append({"flag": g.token, "reason": f"{dest} {g.value} is not "
                                     "modelled by kvcalc"})
    classify(reading, parsed, HONOURED, NOT_MODELLED, {"model_path"})
    if parsed.positionals:
        reading.refusals.append(Refusal(DISPLAY, "arguments",
                                        f"{PROG}: error: unrecognized arguments: "
                                        f"{' '.join(parsed.positionals)}"))
    for r in reading.refusals:
        if r.check == "arguments":
            reading.refusals[reading.refusals.index(r)] = Refusal(
                DISPLAY, "arguments", r.message.replace(launch.program, PROG, 1))
    return reading


def pre_checks(reading: Reading, model) -> list[Refusal]:
    tp = reading.plan.get("tp", 1)
    heads = model.spec.num_attention_heads
    if heads and tp > 1 and heads % tp:
        # python/sglang/srt/configs/model_config.py (ModelConfig.__init__ via _verify_...)
        return [Refusal(DISPLAY, "tensor_parallel",
                        f"Total number of attention heads ({heads}) must be divisible by "
                        f"tensor parallel size ({tp}).")]
    return []


def plan_refusals(record: dict[str, Any]) -> list[Refusal]:
    s = record.get("sglang") or {}
    if s.get("fits", True):
        return []
    return [Refusal(DISPLAY, "kv_cache_memory", s.get("error") or "the KV pool holds no token")]


def lines(record: dict[str, Any]) -> list[str]:
    s = record.get("sglang") or {}
    return list(s.get("log") or ())


def concurrency(record: dict[str, Any]) -> float:
    s = record.get("sglang") or {}
    ctx = s.get("context_len") or 1
    return min(s.get("max_running_requests") or 0,
               (s.get("max_total_num_tokens") or 0) / ctx) * int(record.get("replicas") or 1)


def candidates(reading: Reading, model, record, refusals, target) -> list[Change]:
    out = []
    plan = reading.plan
    tp = plan.get("tp", 1)
    heads = model.spec.num_attention_heads or 0
    checks = {r.check for r in refusals}
    if "tensor_parallel" in checks:
        for t in sorted((1, 2, 4, 8), key=lambda t: abs(t - tp)):
            if t != tp and heads % t == 0:
                out.append(Change(f"--tp-size {t}", {"tp": t}))
    if "kv_cache_memory" in checks or target:
        frac = plan.get("mem_fraction_static")
        for f in (0.85, 0.9):
            if frac is None or frac < f:
                out.append(Change(f"--mem-fraction-static {f}", {"mem_fraction_static": f}))
        if plan.get("kv_dtype", "auto") != "fp8":
            out.append(Change("--kv-cache-dtype fp8_e4m3", {"kv_dtype": "fp8"}))
        for t in (2, 4, 8):
            if t > tp and heads % t == 0:
                out.append(Change(f"--tp-size {t}", {"tp": t}))
    return out
