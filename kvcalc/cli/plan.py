"""kvcalc plan: GPU sizing (budget, vLLM capacity, contiguous vs paged, parallelism, solvers)."""

from __future__ import annotations

import click

from ..hardware import load_catalog, resolve_gpu
from ..model import load_spec
from ..params import default_weights_dtype, weights_dtype_bytes
from ..plan import (DEFAULT_GPU_UTIL, Plan, PlanInputs, make_plan, smallest_deployment,
                    solve_max_len)
from ..render import key_values, table, to_csv, to_json, to_yaml
from ..reports import source_record
from ..units import GiB, format_bytes
from ..engines import Engine, engine_names, get_engine
from ..engines.vllm import CHUNKED_LOCAL_HYBRID_ENV, ERAS, VLLM, vllm_error_message
from ..workload import DEFAULT_SAMPLES, DISTRIBUTIONS, fixed, from_trace, sampled
from .common import (ByteSize, TokenList, allocation_options, allocation_settings, echo_output,
                     format_option, warn)

EXIT_DOES_NOT_FIT = 3
#: the hidden --vllm-era of earlier kvcalc releases, as a version of its band
ERA_VERSIONS = {"new": "0.32", "mid": "0.19"}
WEIGHT_CHOICES = ("auto", "bf16", "fp16", "fp32", "fp8", "int8", "int4", "mxfp4")


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
@click.option("--engine", type=click.Choice(engine_names(planning=True)), default="vllm",
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
@click.option("--gpu-util", type=float, default=DEFAULT_GPU_UTIL, show_default=True,
              help="vLLM gpu_memory_utilization: share of total memory the engine may use.")
@click.option("--weights-dtype", type=click.Choice(WEIGHT_CHOICES), default="auto",
              show_default=True, help="Weight storage; auto = the checkpoint's.")
@click.option("--overhead", type=ByteSize(), default=None,
              help="Replace the activation + non-torch + CUDA-graph estimate, e.g. 3GiB.")
@click.option("--weights-memory", "weights_mem", type=ByteSize(), default=None,
              help="Replace the computed weights per GPU (vLLM logs 'Model loading took X GiB').")
@click.option("--activation-memory", "activation_mem", type=ByteSize(), default=None,
              help="Replace the activation-peak estimate (vLLM's 'torch peak memory increase').")
@click.option("--non-torch-memory", "non_torch_mem", type=ByteSize(), default=None,
              help="Replace the non-torch default (0.5GiB; 1GiB with several GPUs).")
@click.option("--cuda-graph-memory", "cuda_graph", type=ByteSize(), default=None,
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
@click.option("--disable-hybrid-kv-cache-manager", "disable_hybrid", is_flag=True,
              help="As vLLM's flag: sliding/chunked layers keep every token (one group).")
@click.option("--num-gpu-blocks-override", "blocks_override", type=int, default=None,
              help="As vLLM's flag: use this many GPU blocks instead of the computed number.")
@click.option("--vllm-version", default=None, metavar="X.Y",
              help=f"vLLM version whose rules are modelled (default {VLLM.default_version}; "
                   f"bands {', '.join(b.name for b in VLLM.bands)}).")
@click.option("--vllm-era", type=click.Choice(ERAS), default=None, hidden=True,
              help="Old name of --vllm-version: new = 0.32, mid = 0.19.")
@click.option("--enable-prefix-caching/--no-enable-prefix-caching", "prefix_caching",
              default=True, show_default=True,
              help="As vLLM's flag: with prefix caching (its default) vLLM >= 0.33 keeps Mamba "
                   "states in 'align' mode, 2-3 blocks per request.")
@click.option("--num-speculative-tokens", "speculative_tokens", type=int, default=0,
              show_default=True,
              help="As vLLM's speculative_config: one more Mamba state block per token.")
@click.option("--allow-chunked-local-hybrid/--no-allow-chunked-local-hybrid",
              "chunked_local_hybrid", default=None, envvar=CHUNKED_LOCAL_HYBRID_ENV,
              help=f"As vLLM's {CHUNKED_LOCAL_HYBRID_ENV} (read from the environment too): keep "
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
@click.option("--max-tokens", "trt_max_tokens", type=int, default=None,
              help="TensorRT-LLM KvCacheConfig.max_tokens: cap on the pool's tokens.")
@click.option("--max-gpu-total-bytes", "max_gpu_total_bytes", type=ByteSize(), default=None,
              help="TensorRT-LLM: cap on the pool's bytes.")
@click.option("--host-cache-size", "host_cache_size", type=ByteSize(), default=None,
              help="TensorRT-LLM: host (secondary) pool bytes.")
@click.option("--prompt-len", type=TokenList("prompt length", single=True), default=None,
              help="Fixed workload: prompt tokens per request.")
@click.option("--output-len", type=TokenList("output length", single=True), default=None,
              help="Fixed workload: generated tokens per request.")
@click.option("--dist", type=click.Choice(DISTRIBUTIONS), default=None,
              help="Workload: total length drawn from this distribution.")
@click.option("--mean", type=float, default=None, help="Mean length for --dist (tokens).")
@click.option("--std", type=float, default=None, help="Standard deviation for --dist.")
@click.option("--samples", type=int, default=DEFAULT_SAMPLES, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--trace", type=click.Path(dir_okay=False), default=None,
              help="Workload trace: JSONL or CSV with prompt_len and output_len.")
@click.option("--target-concurrency", type=int, default=None,
              help="Solve: the fewest GPUs (and TP/PP) that serve this many requests of "
                   "--max-len tokens at once.")
@click.option("--solve-max-len", "concurrency_for_len", type=int, default=None,
              help="Solve: the largest --max-len at which this many requests fit at once.")
@click.option("--compare-gpus", is_flag=True,
              help="Run the plan on every catalog GPU and compare.")
@allocation_options
@format_option
def plan(model, revision, gpu, tp, pp, replicas, max_len, engine, kv_dtype, block_size, gpu_util,
         weights_dtype, overhead, weights_mem, activation_mem, non_torch_mem, cuda_graph, kv_budget, max_batched_tokens, max_num_seqs,
         async_scheduling, disable_hybrid, blocks_override, vllm_version, vllm_era, prefix_caching,
         speculative_tokens, chunked_local_hybrid, mem_fraction_static, max_running_requests,
         max_total_tokens, chunked_prefill_size, cuda_graph_max_bs, disable_cuda_graph,
         free_memory, free_gpu_memory_fraction, trt_max_tokens, max_gpu_total_bytes,
         host_cache_size, prompt_len, output_len, dist, mean, std,
         samples, seed, trace,
         target_concurrency, concurrency_for_len, compare_gpus, fmt, **engine_settings):
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
    from ..errors import UsageError

    for name, value in (("--target-concurrency", target_concurrency),
                        ("--solve-max-len", concurrency_for_len)):
        if value is not None and value < 1:
            raise UsageError(f"invalid {name} {value}: must be at least 1")
    resolved, spec = load_spec(model, revision)
    for message in spec.warnings:
        warn(message)
    gpu_spec = resolve_gpu(gpu)
    runtime = get_engine(engine)
    own_settings = allocation_settings(engine, engine_settings)  # llama-server's, Ollama's
    if max_len is None:
        max_len = (runtime.plan_max_len(spec, own_settings) or spec.max_position_embeddings
                   or 4096)
    kv_dtype = runtime.plan_kv_dtype(own_settings) or kv_dtype
    wdtype = (runtime.served_dtype(default_weights_dtype(spec)) if weights_dtype == "auto"
              else weights_dtype)
    if vllm_version is None and vllm_era is not None:
        vllm_version = ERA_VERSIONS[vllm_era]
    weights_dtype_bytes(wdtype)
    engine_options = _engine_options(runtime, {
        "--mem-fraction-static": ("mem_fraction_static", mem_fraction_static),
        "--max-running-requests": ("max_running_requests", max_running_requests),
        "--max-total-tokens": ("max_total_tokens", max_total_tokens),
        "--chunked-prefill-size": ("chunked_prefill_size", chunked_prefill_size),
        "--cuda-graph-max-bs": ("cuda_graph_max_bs", cuda_graph_max_bs),
        "--disable-cuda-graph": ("disable_cuda_graph", disable_cuda_graph),
        "--free-memory": ("free_memory", free_memory),
        "--free-gpu-memory-fraction": ("free_gpu_memory_fraction", free_gpu_memory_fraction),
        "--max-tokens": ("max_tokens", trt_max_tokens),
        "--max-gpu-total-bytes": ("max_gpu_total_bytes", max_gpu_total_bytes),
        "--host-cache-size": ("host_cache_size", host_cache_size),
    })
    # llama-server's and Ollama's options (--ctx-size, --num-ctx, ...; OLLAMA_* read only for ollama)
    engine_options += _engine_options(runtime, {
        f"--{k.replace('_', '-')}": (k, v)
        for k, v in own_settings.items()})
    inp = PlanInputs(gpu=gpu_spec, tp=tp, pp=pp, replicas=replicas, gpu_util=gpu_util,
                     weights_dtype=wdtype, kv_dtype=kv_dtype, block_size=block_size,
                     max_len=max_len, max_batched_tokens=max_batched_tokens,
                     max_num_seqs=max_num_seqs, overhead=overhead, cuda_graph=cuda_graph,
                     activation=activation_mem, non_torch=non_torch_mem, weights=weights_mem,
                     kv_budget=kv_budget, version=vllm_version, engine=engine,
                     async_scheduling=async_scheduling, disable_hybrid=disable_hybrid,
                     num_blocks_override=blocks_override, prefix_caching=prefix_caching,
                     speculative_tokens=speculative_tokens,
                     chunked_local_hybrid=chunked_local_hybrid, free_memory=free_memory,
                     engine_options=engine_options)
    if type(runtime).plan_figures is not Engine.plan_figures:
        vllm_only = [flag for flag, given in (
            ("--gpu-util", gpu_util != DEFAULT_GPU_UTIL), ("--max-batched-tokens",
                                                          max_batched_tokens is not None),
            ("--max-num-seqs", max_num_seqs is not None), ("--cuda-graph-memory",
                                                           cuda_graph is not None),
            ("--activation-memory", activation_mem is not None),
            ("--non-torch-memory", non_torch_mem is not None),
            ("--num-gpu-blocks-override", blocks_override is not None)) if given]
        if vllm_only:
            warn(f"{', '.join(vllm_only)}: vLLM setting(s), not used by --engine {engine} "
                 f"(docs/engines.md)")
    workload = _workload(max_len, prompt_len, output_len, dist, mean, std, samples, seed, trace)
    if compare_gpus:
        rows = _compare(spec, inp, workload, target_concurrency)
        _emit_compare(rows, fmt, resolved.name, inp, target_concurrency)
        return
    result = make_plan(spec, inp, workload)
    if result.engine_figures is not None and (target_concurrency or concurrency_for_len):
        raise UsageError(f"--target-concurrency and --solve-max-len solve with vLLM's rules; "
                         f"--engine {engine} does not take them (use --engine vllm)")
    for message in result.warnings:
        warn(message)
    record = plan_record(result, resolved)
    if not result.fits:
        record["does_not_fit"] = _shortfall(result, spec, inp)
    if target_concurrency is not None:
        sizing = smallest_deployment(spec, inp, target_concurrency)
        record["sizing"] = _sizing_record(sizing, target_concurrency, inp)
    if concurrency_for_len is not None:
        if concurrency_for_len > inp.num_seqs():
            warn(f"--solve-max-len {concurrency_for_len:,} exceeds max_num_seqs "
                 f"({inp.num_seqs():,}): vLLM never runs that many at once (--max-num-seqs)")
        limit = max(max_len, spec.max_position_embeddings or max_len)
        best = solve_max_len(spec, inp, concurrency_for_len, limit)
        record["max_len_for_concurrency"] = {"concurrency": concurrency_for_len,
                                             "max_len": best}
    _emit(record, result, fmt)
    if not result.fits:
        click.get_current_context().exit(EXIT_DOES_NOT_FIT)


def _engine_options(runtime, given: dict) -> tuple:
    """The engine-only options given, as (setting name, value) pairs; one the engine does not
    take is an error naming the engine that does."""
    from ..engines import engines
    from ..errors import UsageError

    out = []
    for flag, (name, value) in given.items():
        if value is None:
            continue
        if flag not in runtime.plan_options:
            owners = [e.display_name for e in engines() if flag in e.plan_options]
            raise UsageError(f"{flag} is a setting of {' / '.join(owners) or 'another engine'}; "
                             f"--engine {runtime.name} does not take it")
        out.append((name, value))
    for name, value in out:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            bad = (not 0 < value <= 1) if isinstance(value, float) else value < 1 \
                if name != "free_memory" else value <= 0
            if bad:
                rule = "in (0, 1]" if isinstance(value, float) else "positive"
                raise UsageError(f"invalid --{name.replace('_', '-')} {value}: must be {rule}")
    return tuple(out)


def _workload(max_len, prompt_len, output_len, dist, mean, std, samples, seed, trace):
    from ..errors import UsageError

    given = sum(x is not None for x in (prompt_len or output_len or None, dist, trace))
    if given > 1:
        raise UsageError("give one workload: --prompt-len/--output-len, --dist, or --trace")
    if trace:
        workload, clipped = from_trace(trace, max_len)
        if clipped:
            warn(f"{clipped:,} sequences of the trace exceed --max-len {max_len:,}: clipped")
        return workload
    if dist:
        if mean is None or std is None:
            raise UsageError("--dist needs --mean and --std (tokens)")
        return sampled(dist, mean, std, max_len, samples, seed)
    if prompt_len is not None or output_len is not None:
        p, o = prompt_len or 0, output_len or 0
        if p + o > max_len:
            raise UsageError(f"--prompt-len + --output-len = {p + o:,} exceeds --max-len {max_len:,}")
        return fixed(p, o)
    return fixed(max_len, 0).__class__(f"every request at --max-len ({max_len:,} tokens)", (max_len,))


def plan_record(p: Plan, resolved) -> dict:
    """The documented JSON contract (docs/planning.md)."""
    b, inp, cap = p.budget, p.inputs, p.vllm
    c, g = p.contiguous, p.paged
    record = _plan_record(p, resolved, b, inp, cap, c, g)
    figures = p.engine_figures
    if figures is not None:
        record["engine"] = inp.engine
        record[figures.key] = figures.record()
        record["block_size"] = p.layout.block_size
    return record


def _plan_record(p: Plan, resolved, b, inp: PlanInputs, cap, c, g) -> dict:
    """The record every engine shares."""
    return {
        "model": resolved.name,
        "source": source_record(resolved),
        "gpu": inp.gpu.name,
        "gpu_memory_bytes": inp.gpu.memory_bytes,
        "num_gpus": p.num_gpus,
        "tp": inp.tp,
        "pp": inp.pp,
        "replicas": inp.replicas,
        "kv_dtype": p.layout.kv_dtype.name,
        "weights_dtype": inp.weights_dtype,
        "parameters": p.params.total,
        "active_parameters": p.params.active,
        "max_len": inp.max_len,
        "budget": {
            "total_bytes": b.total_bytes,
            "utilization": b.utilization,
            "requested_bytes": b.requested_bytes,
            "weights_bytes": b.weights_bytes,
            "activation_bytes": b.activation_bytes,
            "non_torch_bytes": b.non_torch_bytes,
            "cuda_graph_bytes": b.cuda_graph_bytes,
            "overhead_bytes": b.overhead_bytes,
            "kv_bytes": b.kv_bytes,
            "source": b.source,
            "per_stage_kv_bytes": [s.kv_bytes for s in p.budgets],
        },
        "human": {
            "gpu_memory": format_bytes(inp.gpu.memory_bytes),
            "requested": format_bytes(b.requested_bytes),
            "weights": format_bytes(b.weights_bytes),
            "overhead": format_bytes(b.overhead_bytes),
            "kv_budget": format_bytes(b.kv_bytes) if b.kv_bytes >= 0
            else "-" + format_bytes(-b.kv_bytes),
            "bytes_per_token": format_bytes(p.bytes_per_token),
        },
        "bytes_per_token": p.bytes_per_token,
        "kv_capacity_tokens": p.kv_capacity_tokens,
        "block_size": (cap.block_size if cap is not None else 0) or p.layout.block_size,
        "num_blocks": p.num_blocks,
        "max_concurrency": {
            "contiguous": int(c.max_sequences) * inp.replicas,
            "paged": round(g.max_sequences * inp.replicas, 2),
        },
        "engine_version": p.layout.version,
        "version_band": p.layout.band,
        "vllm": _vllm_record(p, inp, cap),
        "workload": {
            "description": p.workload.description,
            "mean_tokens": round(p.workload.mean_length, 1),
            "allocators": {a.name: _alloc_record(a, inp.replicas) for a in (c, g)},
            "paged_gain": round(g.max_sequences / c.max_sequences, 2) if c.max_sequences else None,
        },
        "fits": p.fits,
        "notes": list(p.notes) + (list(cap.notes) if cap is not None else []),
        "warnings": list(p.warnings),
    }


def _vllm_record(p: Plan, inp: PlanInputs, cap) -> dict | None:
    """The ``vllm`` object: vLLM's start-up figures (null when another engine plans)."""
    if cap is None:
        return None
    return {
        "era": inp.era,
        "version": p.layout.version,
        "band": p.layout.band,
        "attention_backend": inp.backend(p.spec) or None,
        "enable_prefix_caching": inp.prefix_caching,
        "num_speculative_tokens": inp.speculative_tokens,
        "num_gpu_blocks": cap.num_blocks,
        "kv_cache_tokens": cap.kv_cache_tokens,
        "max_concurrency": round(cap.max_concurrency, 2),
        "kv_cache_groups": cap.groups,
        "max_num_batched_tokens": inp.batched_tokens(),
        "in_flight_tokens": inp.in_flight(),
        "max_model_len": inp.max_len,
        "bytes_per_block": cap.bytes_per_block,
        "blocks_per_request": cap.blocks_per_request,
        "block_size": cap.block_size,
        "fits": cap.fits,
        "estimated_max_model_len": cap.estimated_max_model_len,
        "log": cap.log_lines(),
    }


def _alloc_record(a, replicas: int) -> dict:
    return {
        "max_sequences_per_replica": round(a.max_sequences, 2),
        "slots_reserved_per_sequence": round(a.slots_reserved_per_sequence, 1),
        "slots_used_per_sequence": round(a.slots_used_per_sequence, 1),
        "bytes_per_sequence": int(a.bytes_per_sequence),
        "token_bytes_per_sequence": int(a.token_bytes_per_sequence),
        "memory_utilization": round(a.utilization, 4),
        "waste_bytes": int(a.waste_bytes),
        "waste_fraction": round(a.waste_bytes / a.budget_bytes, 4) if a.budget_bytes else 0,
        "free_bytes": int(a.free_bytes),
    }


def _shortfall(p: Plan, spec, inp: PlanInputs) -> dict:
    """Why a plan does not fit, by how much, and what would."""
    if p.engine_figures is not None:
        figures = p.engine_figures
        return {"reason": figures.error or "the pool holds no token", "shortfall_bytes":
                max(0, -p.budget.kv_bytes), "shortfall_gib": round(max(0, -p.budget.kv_bytes)
                                                                   / GiB, 2),
                "estimated_max_model_len": 0, "engine_error": figures.error,
                "would_fit": {"fits": False}}
    cap, b = p.vllm, p.budget
    if b.kv_bytes <= 0:
        reason = (f"weights ({_gib(b.weights_bytes)}) and runtime overhead "
                  f"({_gib(b.overhead_bytes)}) exceed the {_gib(b.requested_bytes)} vLLM may use "
                  f"at gpu_util {b.utilization}")
        shortfall = cap.needed_bytes - b.kv_bytes
    else:
        reason = (f"one request of {inp.max_len:,} tokens needs {_gib(cap.needed_bytes)} of KV "
                  f"cache; {_gib(cap.available_bytes)} is available")
        shortfall = cap.needed_bytes - cap.available_bytes
    sizing = smallest_deployment(spec, inp, 1)
    return {
        "reason": reason,
        "shortfall_bytes": int(shortfall),
        "shortfall_gib": round(shortfall / GiB, 2),
        "estimated_max_model_len": cap.estimated_max_model_len or 0,
        "vllm_error": vllm_error_message(cap),
        "would_fit": _sizing_record(sizing, 1, inp),
    }


def _sizing_record(s, target, inp) -> dict:
    return {"target_concurrency": target, "max_len": inp.max_len, "gpu": s.gpu.name,
            "fits": s.fits, "tp": s.tp, "pp": s.pp, "replicas": s.replicas,
            "num_gpus": s.num_gpus, "per_replica_concurrency": round(s.per_replica_concurrency, 2),
            "kv_concurrency": round(s.kv_concurrency, 2), "limited_by": s.limited_by,
            "reason": s.reason}


def _emit(record: dict, p: Plan, fmt: str) -> None:
    if fmt == "json":
        echo_output(to_json(record))
    elif fmt == "yaml":
        echo_output(to_yaml(record))
    elif fmt == "csv":
        flat = {k: v for k, v in record.items()
                if not isinstance(v, (dict, list)) and not (k == "vllm" and v is None)}
        flat.update({f"budget_{k}": v for k, v in record["budget"].items()
                     if not isinstance(v, list)})
        figures = p.engine_figures
        key = figures.key if figures is not None else "vllm"
        flat.update({f"{key}_{k}": v for k, v in record[key].items()
                     if k != "log" and not isinstance(v, (dict, list))})
        flat["max_concurrency_contiguous"] = record["max_concurrency"]["contiguous"]
        flat["max_concurrency_paged"] = record["max_concurrency"]["paged"]
        echo_output(to_csv([flat]))
    else:
        echo_output(_table(record, p, fmt))


def _gib(n: float) -> str:
    return f"{n / GiB:,.2f} GiB"


def _table(r: dict, p: Plan, fmt: str) -> str:
    inp, b = p.inputs, r["budget"]
    gpu = inp.gpu
    layout = f"tp {inp.tp} x pp {inp.pp} x {inp.replicas} replica(s) = {r['num_gpus']} GPU(s)"
    figures = p.engine_figures
    if figures is not None:
        return _engine_table(r, p, fmt, figures)
    head = key_values([
        ("Model", f"{r['model']} ({p.spec.model_type}, {r['parameters']:,} parameters, "
                  f"{r['active_parameters']:,} active)"),
        ("GPU", f"{gpu.display_name}: {gpu.memory_bytes:,} B = {_gib(gpu.memory_bytes)} "
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
        rows = [("KV budget (--kv-budget)", f"{b['kv_bytes']:,}", _gib(b["kv_bytes"]))]
    else:
        wnum, wden, wdesc = weights_dtype_bytes(inp.weights_dtype)
        rows = [
            ("total memory", f"{b['total_bytes']:,}", _gib(b["total_bytes"])),
            (f"x gpu_util {b['utilization']}", f"{b['requested_bytes']:,}",
             _gib(b["requested_bytes"])),
            (f"- weights (--weights-memory)" if inp.weights is not None else
             f"- weights ({inp.weights_dtype}: {wdesc}; / tp {inp.tp}"
             f"{'; this stage' if inp.pp > 1 else ''})",
             f"{b['weights_bytes']:,}", _gib(b["weights_bytes"])),
        ]
        if inp.overhead is None:
            graphs = ("--cuda-graph-memory" if inp.cuda_graph is not None else
                      "vLLM >= 0.20 estimate" if inp.era == "new" else "not counted before 0.20")
            rows += [
                ("- activations (--activation-memory)" if inp.activation is not None else
                 f"- activations ({inp.batched_tokens():,} batched tokens + sampler over "
                 f"{min(inp.num_seqs(), inp.batched_tokens()):,} seqs, estimate)",
                 f"{b['activation_bytes']:,}", _gib(b["activation_bytes"])),
                ("- non-torch memory (--non-torch-memory)" if inp.non_torch is not None else
                 "- non-torch memory (NCCL, cuBLAS; default)", f"{b['non_torch_bytes']:,}",
                 _gib(b["non_torch_bytes"])),
                (f"- CUDA graphs ({graphs})", f"{b['cuda_graph_bytes']:,}",
                 _gib(b["cuda_graph_bytes"])),
            ]
        else:
            rows.append(("- overhead (--overhead)", f"{b['overhead_bytes']:,}",
                         _gib(b["overhead_bytes"])))
        rows.append(("= KV budget per GPU", f"{b['kv_bytes']:,}", _gib(b["kv_bytes"])))
    budget = table(rows, ("budget (per GPU" + (", tightest stage)" if inp.pp > 1 else ")"),
                          "bytes", "GiB = 2^30"), fmt)
    v = r["vllm"]
    cap_rows = [
        ("KV bytes per token (per GPU)", f"{r['bytes_per_token']:,}"),
        ("KV capacity (tokens at that rate)", f"{r['kv_capacity_tokens']:,}"),
        ("GPU blocks (num_gpu_blocks)", f"{v['num_gpu_blocks']:,}"),
        ("GPU KV cache size", f"{v['kv_cache_tokens']:,} tokens"),
        (f"Maximum concurrency for {inp.max_len:,} tokens per request",
         f"{p.vllm.max_concurrency:.2f}x"),
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
        lines = [f"DOES NOT FIT: {d['reason']}; short by {d['shortfall_gib']:,.2f} GiB per GPU.",
                 f"vLLM would stop with: {d['vllm_error']}"]
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


def _engine_table(r: dict, p: Plan, fmt: str, figures) -> str:
    """The plan of an engine with its own figures (SGLang): its budget and capacity rows."""
    inp = p.inputs
    gpu = inp.gpu
    head = key_values([
        ("Model", f"{r['model']} ({p.spec.model_type}, {r['parameters']:,} parameters, "
                  f"{r['active_parameters']:,} active)"),
        ("GPU", f"{gpu.display_name}: {gpu.memory_bytes:,} B = {_gib(gpu.memory_bytes)} "
                f"as the runtime reports it"),
        ("Layout", f"tp {inp.tp} x pp {inp.pp} x {inp.replicas} replica(s) = "
                   f"{r['num_gpus']} GPU(s)"),
        ("Engine", f"{get_engine(inp.engine).describe(p.layout)}, KV {r['kv_dtype']}, "
                   f"context {inp.max_len:,}"),
    ], fmt)
    budget = table([(k, f"{v:,}", _gib(v)) for k, v in figures.budget_rows()],
                   ("budget (per GPU)", "bytes", "GiB = 2^30"), fmt)
    capacity = table(figures.capacity_rows(), (f"{get_engine(inp.engine).display_name} "
                                               "figures", "value"), fmt)
    parts = [head, "", budget, "", capacity, ""]
    parts += [f"log: {line}" for line in figures.log_lines()]
    if "does_not_fit" in r:
        parts.append(f"DOES NOT FIT: {r['does_not_fit']['reason']}")
    for note in r["notes"]:
        parts.append(f"note: {note}")
    return "\n".join(parts) + "\n"


def _compare(spec, inp, workload, target):
    rows = []
    for gpu in load_catalog():
        trial = PlanInputs(**{**inp.__dict__, "gpu": gpu})
        try:
            p = make_plan(spec, trial, workload)
        except Exception as exc:  # noqa: BLE001 - one bad row must not hide the others
            rows.append({"gpu": gpu.name, "error": str(exc)})
            continue
        cap = p.engine_figures if p.engine_figures is not None else p.vllm
        row = {"gpu": gpu.name, "memory_bytes": gpu.memory_bytes,
               "kv_bytes": p.budget.kv_bytes, "num_gpu_blocks": p.num_blocks,
               "kv_cache_tokens": cap.kv_cache_tokens,
               "max_concurrency": round(cap.max_concurrency, 2), "fits": p.fits}
        if target is not None:
            s = smallest_deployment(spec, trial, target)
            row.update({"gpus_needed": s.num_gpus if s.fits else None, "tp": s.tp, "pp": s.pp,
                        "replicas": s.replicas})
        rows.append(row)
    key = (lambda r: (r.get("gpus_needed") is None, r.get("gpus_needed") or 0, -r.get("kv_bytes", 0))) \
        if target is not None else (lambda r: -r.get("max_concurrency", 0))
    return sorted(rows, key=key)


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
        line = [r["gpu"], _gib(r["memory_bytes"]), _gib(r["kv_bytes"]), f"{r['num_gpu_blocks']:,}",
                f"{r['kv_cache_tokens']:,}",
                f"{r['max_concurrency']:.2f}x" if r["fits"] else "does not fit"]
        if target is not None:
            line += [str(r["gpus_needed"]) if r["gpus_needed"] else "-",
                     f"{r['tp']} x {r['pp']} x {r['replicas']}" if r["gpus_needed"] else "-"]
        body.append(line)
    title = f"{model} on every catalog GPU (tp {inp.tp}, KV {inp.kv_dtype}, weights {inp.weights_dtype})"
    echo_output(title + "\n\n" + table(body, headers, fmt) + "\n")
