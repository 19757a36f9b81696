"""kvcalc plan: GPU sizing, a thin client of kvcalc.api.plan (the record) that draws its tables."""

from __future__ import annotations

import click

from .. import api
from ..render import key_values, table, to_csv, to_json, to_yaml
from ..units import format_bytes, format_gib
from .common import (ByteSize, TokenList, allocation_options, echo_output, format_option, warn,
                     with_allocation_settings)

EXIT_DOES_NOT_FIT = 3
#: the hidden --vllm-era of earlier kvcalc releases, as a version of its band
ERA_VERSIONS = {"new": "0.32", "mid": "0.19"}
#: vLLM's registry card: the default version and bands --vllm-version's help names
_VLLM = api.engine_card("vllm")
WEIGHT_CHOICES = ("auto", "bf16", "fp16", "fp32", "fp8", "int8", "int4", "mxfp4", "nvfp4") + tuple(
    t for t in api.LLAMACPP_FILE_TYPES if t not in ("bf16",))


@click.command()
@click.option("--model", "-m", required=True, help="Preset, config.json path, or hub id.")
@click.option("--revision", default=None, help="Hub revision for a hub id.")
@click.option("--gpu", "-g", default="h100", show_default=True,
              help="Catalog GPU (kvcalc gpus) or a memory size such as 48GiB.")
@click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel size.")
@click.option("--pp", type=int, default=1, show_default=True, help="Pipeline-parallel size.")
@click.option("--replicas", type=int, default=1, show_default=True,
              help="Independent engine replicas (data parallel).")
@click.option("--max-len", "--context-length", "max_len",
              type=TokenList("max length", single=True), default=None,
              help="vLLM max_model_len / SGLang context_length: tokens one request may reach "
                   "(default: the model's context length).")
@click.option("--engine", type=click.Choice(api.engine_names(planning=True)), default="vllm",
              show_default=True,
              help="Engine whose figures the plan models: vllm (PagedAttention start-up "
                   "figures), sglang (token pool from mem_fraction_static), trtllm (blocks "
                   "from free_gpu_memory_fraction); docs/engines.md.")
@click.option("--kv-dtype", type=click.Choice(("auto", "fp32", "fp16", "bf16", "fp8", "fp8_e4m3",
                                               "fp8_e5m2", "int8", "int4")),
              default="auto", show_default=True)
@click.option("--block-size", "--page-size", "--tokens-per-block", "block_size", type=int,
              default=None,
              help="Tokens per KV block (default 16; MLA models get the block of the backend "
                   "vLLM picks for the GPU and KV dtype: on an H100 FLASH_ATTN_MLA 16 for "
                   "bf16, FlashMLA 64 for fp8; docs/engines.md). --page-size: SGLang's name "
                   "(default 1; 64 on Blackwell).")
@click.option("--gpu-util", type=float, default=None,
              help="vLLM gpu_memory_utilization: share of total memory the engine may use "
                   "(default: the version's -- 1.0 with 0.34's extensible KV cache, 0.92 from "
                   "0.25, 0.9 before).")
@click.option("--weights-dtype", type=click.Choice(WEIGHT_CHOICES, case_sensitive=False),
              default="auto", show_default=True,
              help="Weight storage; auto = the checkpoint's. llamacpp/ollama: a llama.cpp file "
                   "type (q4_k_m, q5_k_m, q8_0, iq4_xs ...) with llama-quantize's per-tensor "
                   "mix; auto = the GGUF file's tensors, Q4_K_M for a preset.")
@click.option("--overhead", type=ByteSize(), default=None,
              help="Replace the activation + non-torch + CUDA-graph estimate, e.g. 3GiB.")
@click.option("--weights-memory", "weights_memory", type=ByteSize(), default=None,
              help="Replace the computed weights per GPU (vLLM logs 'Model loading took X GiB').")
@click.option("--activation-memory", "activation_memory", type=ByteSize(), default=None,
              help="Replace the activation-peak estimate (vLLM's 'torch peak memory increase').")
@click.option("--non-torch-memory", "non_torch_memory", type=ByteSize(), default=None,
              help="Replace the non-torch default (0.5GiB; 1GiB with several GPUs).")
@click.option("--cuda-graph-memory", "cuda_graph_memory", type=ByteSize(), default=None,
              help="CUDA graph memory per GPU (default 512MiB; 0 with --vllm-version 0.19 or older).")
@click.option("--kv-budget", type=ByteSize(), default=None,
              help="Skip the budget: KV memory per GPU, as vLLM logs 'Available KV cache memory'.")
@click.option("--max-batched-tokens", type=int, default=None,
              help="vLLM max_num_batched_tokens (default 8192 on >= 70 GiB GPUs, else 2048).")
@click.option("--max-num-seqs", type=int, default=None,
              help="vLLM max_num_seqs (default 1024 on >= 70 GiB GPUs, else 256).")
@click.option("--async-scheduling/--no-async-scheduling", "async_scheduling", default=True,
              show_default=True,
              help="vLLM >= 0.20 counts 2 batches in flight with async scheduling (its "
                   "default) when sizing sliding-window blocks.")
@click.option("--disable-hybrid-kv-cache-manager", "disable_hybrid_kv_cache_manager", is_flag=True,
              help="As vLLM's flag: sliding/chunked layers keep every token (one group).")
@click.option("--num-gpu-blocks-override", "num_gpu_blocks_override", type=int, default=None,
              help="As vLLM's flag: use this many GPU blocks instead of the computed number.")
@click.option("--vllm-version", default=None, metavar="X.Y",
              help=f"vLLM version whose rules are modelled (default {_VLLM.default_version}; "
                   f"bands {', '.join(_VLLM.bands)}).")
@click.option("--vllm-era", type=click.Choice(tuple(ERA_VERSIONS)), default=None, hidden=True,
              help="Old name of --vllm-version: new = 0.32, mid = 0.19.")
@click.option("--enable-prefix-caching/--no-enable-prefix-caching", "enable_prefix_caching",
              default=True, show_default=True,
              help="As vLLM's flag: with prefix caching (its default) vLLM >= 0.33 keeps Mamba "
                   "states in 'align' mode, 2-3 blocks per request.")
@click.option("--enforce-eager", "enforce_eager", is_flag=True, default=False,
              help="As vLLM's flag: no CUDA graphs, so no full-graph check of max_num_seqs "
                   "against the Mamba cache blocks.")
@click.option("--num-speculative-tokens", "num_speculative_tokens", type=int, default=0,
              show_default=True,
              help="As vLLM's speculative_config: one more Mamba state block per token.")
@click.option("--allow-chunked-local-hybrid/--no-allow-chunked-local-hybrid",
              "allow_chunked_local_hybrid", default=None, envvar=api.CHUNKED_LOCAL_HYBRID_ENV,
              help=f"As vLLM's {api.CHUNKED_LOCAL_HYBRID_ENV} (read from the environment too): keep "
                   "the hybrid KV cache manager for chunked local attention (Llama 4). Default: "
                   "on (vLLM reads the variable with a default of 1).")
@click.option("--mem-fraction-static", "mem_fraction_static", type=float, default=None,
              help="SGLang: weights + KV pool as a share of the free memory before loading "
                   "(default: SGLang's automatic value for the GPU, TP/PP, chunked prefill and "
                   "CUDA graphs).")
@click.option("--max-running-requests", "max_running_requests", type=int, default=None,
              help="SGLang: cap on running requests (default from the pool, 2048-4096).")
@click.option("--max-total-tokens", "max_total_tokens", type=int, default=None,
              help="SGLang: cap on the pool's tokens.")
@click.option("--chunked-prefill-size", "chunked_prefill_size", type=int, default=None,
              help="SGLang: prefill chunk (default 2048-16384 by GPU memory); enters the "
                   "automatic fraction.")
@click.option("--cuda-graph-max-bs", "cuda_graph_max_bs", type=int, default=None,
              help="SGLang: largest decode CUDA-graph batch (default 8-512 by GPU and TP).")
@click.option("--disable-cuda-graph", "disable_cuda_graph", is_flag=True, default=None,
              help="SGLang: no CUDA graphs (their reserve leaves the automatic fraction).")
@click.option("--free-memory", "free_memory", type=ByteSize(), default=None,
              help="SGLang: the free GPU memory measured before loading weights, per GPU "
                   "(its 'Load weight begin. avail mem'; default: the runtime total less the "
                   "CUDA context).")
@click.option("--free-gpu-memory-fraction", "free_gpu_memory_fraction", type=float, default=None,
              help="TensorRT-LLM: share of the free memory for the KV pool (default 0.9).")
@click.option("--max-tokens", "max_tokens", type=int, default=None,
              help="TensorRT-LLM KvCacheConfig.max_tokens: cap on the pool's tokens.")
@click.option("--max-gpu-total-bytes", "max_gpu_total_bytes", type=ByteSize(), default=None,
              help="TensorRT-LLM: cap on the pool's bytes.")
@click.option("--host-cache-size", "host_cache_size", type=ByteSize(), default=None,
              help="TensorRT-LLM: host (secondary) pool bytes.")
@click.option("--prompt-len", type=TokenList("prompt length", single=True), default=None,
              help="Fixed workload: prompt tokens per request.")
@click.option("--output-len", type=TokenList("output length", single=True), default=None,
              help="Fixed workload: generated tokens per request.")
@click.option("--dist", type=click.Choice(api.DISTRIBUTIONS), default=None,
              help="Workload: total length drawn from this distribution.")
@click.option("--mean", type=float, default=None, help="Mean length for --dist (tokens).")
@click.option("--std", type=float, default=None, help="Standard deviation for --dist.")
@click.option("--samples", type=int, default=api.DEFAULT_SAMPLES, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--trace", type=click.Path(dir_okay=False), default=None,
              help="Workload trace: JSONL or CSV with prompt_len and output_len.")
@click.option("--target-concurrency", type=int, default=None,
              help="Solve: the fewest GPUs (and TP/PP) that serve this many requests of "
                   "--max-len tokens at once.")
@click.option("--solve-max-len", "solve_max_len", type=int, default=None,
              help="Solve: the largest --max-len at which this many requests fit at once.")
@click.option("--compare-gpus", is_flag=True,
              help="Run the plan on every catalog GPU and compare.")
@click.option("--n-gpu-layers", "-ngl", "--gpu-layers", "n_gpu_layers", default=None,
              metavar="N|all|auto",
              help="llamacpp: layers on the GPU, the output layer counted (default auto: "
                   "llama.cpp's --fit, all when they fit).")
@click.option("--tensor-split", "-ts", "tensor_split", default=None, metavar="P0,P1,...",
              help="llamacpp: share of the layers per GPU (several GPUs of --gpu's kind).")
@click.option("--split-mode", "-sm", "split_mode", type=click.Choice(("layer", "row", "none")),
              default=None, help="llamacpp: split the layers (default) or each matrix's rows.")
@click.option("--no-kv-offload", "-nkvo", "no_kv_offload", is_flag=True, default=None,
              help="llamacpp: keep the KV cache in RAM.")
@click.option("--override-tensor", "-ot", "override_tensor", default=None,
              metavar="PATTERN=CPU,...",
              help="llamacpp: tensors whose name matches stay in RAM ('exps=CPU': MoE experts).")
@click.option("--mmproj", "mmproj", default=None, metavar="FILE.gguf",
              help="llamacpp, ollama: a multimodal projector's GGUF: its weights and compute "
                   "buffer go on the first GPU.")
@click.option("--num-gpu", "num_gpu", default=None, metavar="N",
              help="ollama: num_gpu, layers on the GPU (default: what fits).")
@click.option("--ollama-version", "ollama_version", default=None, metavar="X.Y[.Z]",
              help="ollama: the release whose memory rules are modelled (default 0.33; "
                   "<= 0.12.10: llm/memory.go's estimate decides the layers; >= 0.30: "
                   "llama-server's --fit).")
@click.option("--gpu-overhead", "gpu_overhead", type=ByteSize(), default=None,
              help="ollama: OLLAMA_GPU_OVERHEAD, memory set aside per GPU (Ollama's estimate "
                   "before 0.13; its default num_ctx and 'gpu memory' line from 0.30).")
@allocation_options
@format_option
def plan(model, vllm_era, compare_gpus, solve_max_len, fmt, **options):
    """GPU sizing: memory budget, KV capacity, vLLM's start-up figures, contiguous versus paged
    concurrency, tensor/pipeline parallelism, and the GPUs a target needs.

    \b
    Examples:
      kvcalc plan -m llama-7b --gpu h100 --max-len 4096
      kvcalc plan -m llama-3.1-70b --gpu h100 --tp 2 --max-len 32k
      kvcalc plan -m deepseek-v3 --gpu h200 --tp 8 --weights-dtype fp8 --block-size 64
      kvcalc plan -m llama-3.1-8b --kv-budget 51.63GiB --max-len 128k
      kvcalc plan -m qwen2.5-7b --max-len 4k --dist lognormal --mean 900 --std 700
      kvcalc plan -m llama-3.1-70b --target-concurrency 64 --max-len 32k --compare-gpus
    """
    from .. import api

    if options["vllm_version"] is None and vllm_era is not None:
        options["vllm_version"] = ERA_VERSIONS[vllm_era]
    options = with_allocation_settings(options["engine"], options)
    if compare_gpus:
        compared = api.run_compare(model, solve_max_len=solve_max_len, **options)
        for message in compared.warnings:
            warn(message)
        _emit_compare(compared.rows, fmt, compared.model.name, compared.inputs,
                      options["target_concurrency"])
        return
    run = api.run_plan(model, solve_max_len=solve_max_len, **options)
    record = run.result.to_dict()
    for message in record["warnings"]:
        warn(message)
    _emit(record, run.plan, fmt)
    if not record["fits"]:
        click.get_current_context().exit(EXIT_DOES_NOT_FIT)


def _emit(record: dict, p, fmt: str) -> None:
    if fmt == "json":
        echo_output(to_json(record))
    elif fmt == "yaml":
        echo_output(to_yaml(record))
    elif fmt == "csv":
        flat = {k: v for k, v in record.items()
                if not isinstance(v, (dict, list)) and not (k == "vllm" and v is None)}
        flat.update({f"budget_{k}": v for k, v in record["budget"].items()
                     if not isinstance(v, list)})
        key = p.engine_figures.key
        flat.update({f"{key}_{k}": v for k, v in record[key].items()
                     if k != "log" and not isinstance(v, (dict, list))})
        flat["max_concurrency_contiguous"] = record["max_concurrency"]["contiguous"]
        flat["max_concurrency_paged"] = record["max_concurrency"]["paged"]
        echo_output(to_csv([flat]))
    else:
        echo_output(_table(record, p, fmt))


def _table(r: dict, p, fmt: str) -> str:
    inp, b = p.inputs, r["budget"]
    gpu = inp.gpu
    layout = f"tp {inp.tp} x pp {inp.pp} x {inp.replicas} replica(s) = {r['num_gpus']} GPU(s)"
    figures = p.engine_figures
    if not getattr(figures, "budget_table", False):
        return _engine_table(r, p, fmt, figures)
    head = key_values([
        ("Model", f"{r['model']} ({p.spec.model_type}, {r['parameters']:,} parameters, "
                  f"{r['active_parameters']:,} active)"),
        ("GPU", f"{gpu.display_name}: {gpu.memory_bytes:,} B = {format_gib(gpu.memory_bytes)} "
                f"as the runtime reports it"),
        ("Layout", layout),
        ("Engine", f"vLLM {p.layout.version} (version band {p.layout.band}), block "
                   f"{r['block_size']}, KV {r['kv_dtype']}, max_model_len {inp.max_len:,}, "
                   f"max_num_batched_tokens {inp.batched_tokens():,} "
                   f"({inp.in_flight():,} in flight for windows"
                   f"{', async scheduling' if inp.async_scheduling and inp.era == 'new' else ''})"
                   f"{', hybrid KV cache manager off' if inp.disable_hybrid else ''}"
                   f"{', prefix caching off' if not inp.prefix_caching else ''}"
                   f"{f', {inp.speculative_tokens} speculative tokens' if inp.speculative_tokens else ''}"),
    ], fmt)
    if b["source"] == "--kv-budget":
        rows = [("KV budget (--kv-budget)", f"{b['kv_bytes']:,}", format_gib(b["kv_bytes"]))]
    else:
        wdesc = api.weights_dtype_text(inp.weights_dtype)
        rows = [
            ("total memory", f"{b['total_bytes']:,}", format_gib(b["total_bytes"])),
            (f"x gpu_util {b['utilization']}", f"{b['requested_bytes']:,}",
             format_gib(b["requested_bytes"])),
            ("- weights (--weights-memory)" if inp.weights is not None else
             f"- weights ({inp.weights_dtype}: {wdesc}; / tp {inp.tp}"
             f"{'; this stage' if inp.pp > 1 else ''})",
             f"{b['weights_bytes']:,}", format_gib(b["weights_bytes"])),
        ]
        if inp.overhead is None:
            graphs = ("--cuda-graph-memory" if inp.cuda_graph is not None else
                      "vLLM >= 0.20 estimate" if inp.era == "new" else "not counted before 0.20")
            rows += [
                ("- activations (--activation-memory)" if inp.activation is not None else
                 f"- activations ({inp.batched_tokens():,} batched tokens + sampler over "
                 f"{min(inp.num_seqs(), inp.batched_tokens()):,} seqs, estimate)",
                 f"{b['activation_bytes']:,}", format_gib(b["activation_bytes"])),
                ("- non-torch memory (--non-torch-memory)" if inp.non_torch is not None else
                 "- non-torch memory (NCCL, cuBLAS; default)", f"{b['non_torch_bytes']:,}",
                 format_gib(b["non_torch_bytes"])),
                (f"- CUDA graphs ({graphs})", f"{b['cuda_graph_bytes']:,}",
                 format_gib(b["cuda_graph_bytes"])),
            ]
        else:
            rows.append(("- overhead (--overhead)", f"{b['overhead_bytes']:,}",
                         format_gib(b["overhead_bytes"])))
        if b["source"] == "extensible":
            rows.append(("- margin after warm-up (extensible KV cache: max(1 GiB, "
                         "0.75 x activations))",
                         f"{b['margin_bytes']:,}", format_gib(b["margin_bytes"])))
        rows.append(("= KV budget per GPU", f"{b['kv_bytes']:,}", format_gib(b["kv_bytes"])))
    budget = table(rows, ("budget (per GPU" + (", tightest stage)" if inp.pp > 1 else ")"),
                          "bytes", "GiB = 2^30"), fmt)
    v = r["vllm"]
    cap_rows = [
        ("KV bytes per token (per GPU)", f"{r['bytes_per_token']:,}"),
        ("KV capacity (tokens at that rate)", f"{r['kv_capacity_tokens']:,}"),
        ("GPU blocks (num_gpu_blocks)", f"{v['num_gpu_blocks']:,}"),
        ("GPU KV cache size", f"{v['kv_cache_tokens']:,} tokens"),
        (f"Maximum concurrency for {inp.max_len:,} tokens per request",
         f"{p.engine_figures.max_concurrency:.2f}x"),
    ]
    capacity = table(cap_rows, (f"vLLM {p.layout.version} start-up figures", "value"), fmt)
    c, g = r["workload"]["allocators"]["contiguous"], r["workload"]["allocators"]["paged"]
    wl_rows = [
        ("max concurrent sequences / replica", f"{c['max_sequences_per_replica']:,.0f}",
         f"{g['max_sequences_per_replica']:,.2f}"),
        ("token slots reserved / sequence", f"{c['slots_reserved_per_sequence']:,.1f}",
         f"{g['slots_reserved_per_sequence']:,.1f}"),
        ("token slots used / sequence", f"{c['slots_used_per_sequence']:,.1f}",
         f"{g['slots_used_per_sequence']:,.1f}"),
        ("KV memory holding token states", f"{100 * c['memory_utilization']:.1f}%",
         f"{100 * g['memory_utilization']:.1f}%"),
        ("reservation waste / internal fragmentation", f"{100 * c['waste_fraction']:.1f}%",
         f"{100 * g['waste_fraction']:.1f}%"),
        ("free (less than one more sequence)", format_bytes(c["free_bytes"]),
         format_bytes(g["free_bytes"])),
    ]
    wl = table(wl_rows, (f"workload: {r['workload']['description']}", "contiguous", "paged"), fmt)
    parts = [head, "", budget, "", capacity, ""]
    if "does_not_fit" in r:
        d = r["does_not_fit"]
        w = d["would_fit"]
        if d["shortfall_gib"] > 0 or d["reason"] != d["vllm_error"]:
            lines = [f"DOES NOT FIT: {d['reason']}"
                     + (f"; short by {d['shortfall_gib']:,.2f} GiB per GPU."
                        if d["shortfall_gib"] > 0 else ""),
                     f"vLLM would stop with: {d['vllm_error']}"]
        else:   # a start-up check, not memory: the attention backend, the Mamba blocks ...
            lines = [f"DOES NOT FIT: vLLM would stop with: {d['vllm_error']}"]
        if d["estimated_max_model_len"]:
            lines.append(f"What fits: --max-len {d['estimated_max_model_len']:,} on this layout")
        if w["fits"]:
            lines.append(f"What fits: one request of {inp.max_len:,} tokens on {w['num_gpus']} "
                         f"{w['gpu']} GPUs (--tp {w['tp']} --pp {w['pp']}), "
                         f"{w['per_replica_concurrency']:.2f}x concurrency")
        parts += lines + [""]
    parts.append(wl)
    if r["workload"]["paged_gain"]:
        parts.append(f"\npaged gain: {r['workload']['paged_gain']:.2f}x the contiguous "
                     f"concurrency; cluster: {r['max_concurrency']['contiguous']:,} contiguous, "
                     f"{r['max_concurrency']['paged']:,.2f} paged over {inp.replicas} replica(s)")
    if "sizing" in r:
        s = r["sizing"]
        if s["fits"]:
            parts.append(f"\nsmallest deployment for {s['target_concurrency']:,} concurrent "
                         f"requests of {s['max_len']:,} tokens on {s['gpu']}: {s['num_gpus']} GPUs "
                         f"(tp {s['tp']} x pp {s['pp']} x {s['replicas']} replicas, "
                         f"{s['per_replica_concurrency']:.2f}x per replica"
                         + (f", capped by max_num_seqs; the KV cache holds "
                            f"{s['kv_concurrency']:.2f}x" if s["limited_by"] == "max_num_seqs"
                            else "") + ")")
        else:
            parts.append(f"\nno deployment found: {s['reason']}")
    if "max_len_for_concurrency" in r:
        m = r["max_len_for_concurrency"]
        parts.append(f"\nlargest max length at which {m['concurrency']:,} requests fit at once: "
                     f"{m['max_len']:,} tokens")
    for note in r["notes"]:
        parts.append(f"note: {note}")
    return "\n".join(parts) + "\n"


def _engine_table(r: dict, p, fmt: str, figures) -> str:
    """The plan of an engine with its own figures (SGLang): its budget and capacity rows."""
    inp = p.inputs
    gpu = inp.gpu
    head = key_values([
        ("Model", f"{r['model']} ({p.spec.model_type}, {r['parameters']:,} parameters, "
                  f"{r['active_parameters']:,} active)"),
        ("GPU", f"{gpu.display_name}: {gpu.memory_bytes:,} B = {format_gib(gpu.memory_bytes)} "
                f"as the runtime reports it"),
        ("Layout", f"tp {inp.tp} x pp {inp.pp} x {inp.replicas} replica(s) = "
                   f"{r['num_gpus']} GPU(s)"),
        ("Engine", f"{api.engine_info(inp.engine).describe(p.layout)}, KV {r['kv_dtype']}, "
                   f"context {inp.max_len:,}"),
    ], fmt)
    budget = table([(k, f"{v:,}", format_gib(v)) for k, v in figures.budget_rows()],
                   ("budget (per GPU)", "bytes", "GiB = 2^30"), fmt)
    capacity = table(figures.capacity_rows(), (f"{api.engine_info(inp.engine).display_name} "
                                               "figures", "value"), fmt)
    parts = [head, "", budget, "", capacity, ""]
    parts += [f"log: {line}" for line in figures.log_lines()]
    if "does_not_fit" in r:
        parts.append(f"DOES NOT FIT: {r['does_not_fit']['reason']}")
    for note in r["notes"]:
        parts.append(f"note: {note}")
    return "\n".join(parts) + "\n"


def _emit_compare(rows, fmt, model, inp, target):
    if fmt == "json":
        echo_output(to_json(rows))
        return
    if fmt == "yaml":
        echo_output(to_yaml(rows))
        return
    if fmt == "csv":
        echo_output(to_csv(rows, list({k: None for r in rows for k in r})))
        return
    headers = ["gpu", "memory", "KV budget/GPU", "vLLM blocks", "KV cache tokens",
               f"max conc. @ {inp.max_len:,}"]
    if target is not None:
        headers += [f"GPUs for {target:,}", "tp x pp x replicas"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["gpu"], "error: " + r["error"]] + [""] * (len(headers) - 2))
            continue
        line = [r["gpu"], format_gib(r["memory_bytes"]), format_gib(r["kv_bytes"]), f"{r['num_gpu_blocks']:,}",
                f"{r['kv_cache_tokens']:,}",
                f"{r['max_concurrency']:.2f}x" if r["fits"] else "does not fit"]
        if target is not None:
            line += [str(r["gpus_needed"]) if r["gpus_needed"] else "-",
                     f"{r['tp']} x {r['pp']} x {r['replicas']}" if r["gpus_needed"] else "-"]
        body.append(line)
    title = f"{model} on every catalog GPU (tp {inp.tp}, KV {inp.kv_dtype}, weights {inp.weights_dtype})"
    echo_output(title + "\n\n" + table(body, headers, fmt) + "\n")
