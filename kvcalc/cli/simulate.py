"""kvcalc simulate: the KV cache over time on a request trace (vLLM v1's scheduler and cache, and
the PagedAttention paper's contiguous baselines), on the capacity ``kvcalc plan`` computes."""

from __future__ import annotations

import csv
import io

import click

from ..errors import UsageError
from ..api import (SIMULATE_ALLOCATORS, SIMULATE_CALIBRATIONS, SIMULATED_ENGINES,
                   TRTLLM_CAPACITY_POLICIES)
from .common import (ByteSize, TokenList, check_writable, echo_output, echo_structured,
                     format_option, llamacpp_options, warn, with_allocation_settings)

#: ``kvcalc plan`` options reused as they are (the same click objects: same names, help, types)
PLAN_OPTIONS = ("model", "revision", "gpu", "tp", "pp", "max_len", "kv_dtype", "block_size",
                "gpu_util", "weights_dtype", "overhead", "weights_memory",
                "activation_memory", "non_torch_memory", "cuda_graph_memory", "kv_budget",
                "max_batched_tokens", "max_num_seqs", "num_gpu_blocks_override", "vllm_version",
                # SGLang's and TensorRT-LLM's pool settings
                "mem_fraction_static", "max_running_requests", "max_total_tokens",
                "chunked_prefill_size", "cuda_graph_max_bs", "disable_cuda_graph", "free_memory",
                "free_gpu_memory_fraction", "max_tokens", "max_gpu_total_bytes",
                "host_cache_size")


def plan_options(f):
    """Attach ``kvcalc plan``'s model/GPU/budget/engine options to ``f``."""
    from .plan import plan as plan_command

    by_name = {p.name: p for p in plan_command.params}
    for name in reversed(PLAN_OPTIONS):
        f.__click_params__ = getattr(f, "__click_params__", [])
        f.__click_params__.append(by_name[name])
    return f


@click.command()
@plan_options
@click.option("--engine", type=click.Choice(SIMULATED_ENGINES), default="vllm",
              show_default=True,
              help="Engine whose scheduler and cache are replayed: vllm (paged blocks and the "
                   "contiguous baselines), llamacpp (llama-server's slots: give --parallel), "
                   "sglang (radix-tree token pool, retraction), trtllm (capacity scheduler, "
                   "block reuse).")
@llamacpp_options
@click.option("--trace", default=None, metavar="NAME|FILE",
              help="Built-in trace (azure-conv-2023, azure-code-2023, mooncake-conv, "
                   "mooncake-synthetic) or a CSV/JSONL file: prompt_len, output_len and an "
                   "optional arrival_s (seconds), Azure's or Mooncake's columns; .gz read too.")
@click.option("--rate-scale", type=float, default=1.0, show_default=True,
              help="Trace: arrivals this many times as fast (2 = twice the traffic).")
@click.option("--rate", type=float, default=None,
              help="Synthetic: Poisson arrivals at this many requests/s (default: all at once).")
@click.option("--requests", "num_requests", type=int, default=None,
              help="Synthetic: how many requests (default 1000).")
@click.option("--input-len", type=TokenList("prompt length", single=True), default=None,
              help="Synthetic: prompt tokens per request (the mean with --dist).")
@click.option("--output-len", type=TokenList("output length", single=True), default=None,
              help="Synthetic: output tokens per request (the mean with --dist).")
@click.option("--dist", type=click.Choice(("uniform", "normal", "lognormal")), default=None,
              help="Synthetic: draw prompt and output lengths with --input-len/--output-len "
                   "as means (plan's distributions).")
@click.option("--input-std", type=float, default=None,
              help="--dist: standard deviation of the prompt length (default: its mean).")
@click.option("--output-std", type=float, default=None,
              help="--dist: standard deviation of the output length (default: its mean).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of synthetic arrivals and lengths.")
@click.option("--allocator", "allocators", multiple=True,
              type=click.Choice(SIMULATE_ALLOCATORS),
              help="KV allocator to simulate; repeat for several (default: the engine's: the "
                   "four vLLM ones, llamacpp-slots, sglang-radix or trtllm-paged).")
@click.option("--prefix-caching/--no-prefix-caching", "--enable-prefix-caching/"
              "--no-enable-prefix-caching", "prefix_caching", default=True, show_default=True,
              help="vLLM's automatic prefix caching (on by default in vLLM v1); SGLang's radix "
                   "cache; TensorRT-LLM's KV block reuse.")
@click.option("--cpu-offload", type=ByteSize(), default=0, metavar="SIZE",
              help="CPU tier for evicted prefix-cache blocks, e.g. 64GiB (default none).")
@click.option("--concurrency", type=int, default=None, metavar="C",
              help="Closed loop, as serving benchmarks run (vllm bench serve "
                   "--max-concurrency, aiperf --concurrency): C requests in flight, a new one "
                   "as each finishes (arrival times ignored).")
@click.option("--warmup", type=int, default=0, show_default=True, metavar="N",
              help="Leave the first N requests out of the latency and throughput figures.")
@click.option("--ignore-eos", "ignore_eos", is_flag=True, default=False,
              help="sglang: requests sent with ignore_eos (sglang.bench_serving's default): "
                   "their remaining output is reserved whole, not x new_token_ratio.")
@click.option("--capacity-scheduler-policy", type=click.Choice(TRTLLM_CAPACITY_POLICIES),
              default=None,
              help="trtllm: GUARANTEED_NO_EVICT (default: reserve each request's blocks to "
                   "completion) or MAX_UTILIZATION (pack, pause the newest when short).")
@click.option("--max-batch-size", type=int, default=None,
              help="trtllm: requests per iteration (default 2048).")
@click.option("--max-num-tokens", type=int, default=None,
              help="trtllm: tokens per iteration (default 8192).")
@click.option("--enable-chunked-prefill", "enable_chunked_prefill", is_flag=True, default=False,
              help="trtllm: chunk prompts longer than the token budget (off by default; "
                   "without it a prompt over --max-num-tokens is rejected).")
@click.option("--calibration", type=click.Choice(SIMULATE_CALIBRATIONS), default=None,
              help="Step-time coefficients: fitted on the measured vLLM, SGLang or TensorRT-LLM "
                   "runs nearest this configuration, or the uncalibrated roofline (default: "
                   "the engine's own; roofline for --engine llamacpp). docs/simulation.md "
                   "gives the method and its accuracy.")
@click.option("--step-time", type=float, default=None, metavar="SECONDS",
              help="Every engine step takes this long (replaces the calibrated model).")
@click.option("--step-overhead", type=float, default=None, metavar="SECONDS",
              help="Fixed cost of every engine step (default: the calibration's).")
@click.option("--timeline", "timeline_path", type=click.Path(dir_okay=False, writable=True),
              default=None, metavar="FILE.csv",
              help="Write the memory breakdown over time (one row per allocator per "
                   "--timeline-interval) for `kvcalc plot timeline`.")
@click.option("--timeline-interval", type=float, default=1.0, show_default=True,
              metavar="SECONDS", help="Modelled seconds between two --timeline rows.")
@format_option
def simulate(model, num_requests, allocators, timeline_path, timeline_interval, engine, fmt,
             **options):
    """Replay requests over time through vLLM v1's scheduler (chunked prefill, preemption by
    recompute, prefix caching, CPU tier) and the contiguous baselines of the PagedAttention
    paper, on the KV capacity `kvcalc plan` computes. Times are modelled (a step-time model
    calibrated on measured vLLM, SGLang and TensorRT-LLM runs; docs/simulation.md).

    \b
    Examples:
      kvcalc simulate -m llama-3.1-8b --gpu h100 --trace azure-conv-2023
      kvcalc simulate -m llama-3.1-8b --trace mooncake-conv --allocator paged --cpu-offload 64GiB
      kvcalc simulate -m llama-3.1-8b --trace azure-conv-2023 --rate-scale 4 --timeline t.csv
      kvcalc simulate -m llama-3.1-70b --gpu h200 --tp 4 --weights-dtype fp8 \\
          --concurrency 64 --requests 1408 --warmup 128 --input-len 1024 --output-len 1024
      kvcalc simulate -m llama-2-13b --gpu a100-40gb --max-len 2048 --rate 2 --requests 1000 \\
          --dist lognormal --input-len 161 --output-len 338
      kvcalc simulate -m llama-3.1-8b --engine llamacpp --parallel 8 --ctx-size 64k \\
          --trace azure-conv-2023
    """
    from .. import api

    if timeline_path:
        check_writable(timeline_path, "--timeline")
    options = with_allocation_settings(engine, options)
    result = api.simulate(
        model, requests=num_requests, allocator=list(allocators), engine=engine,
        timeline_interval=timeline_interval if timeline_path else None, **options)
    record = result.to_dict()
    if timeline_path:
        _write_timeline(timeline_path, result.timeline())
    for message in record["warnings"]:
        warn(message)
    _emit(record, fmt)


def _engine_line(record: dict) -> str:
    if record.get("engine") == "sglang":
        ratio = record["new_token_ratio"]
        return (f"SGLang {record['engine_version']} (band {record['version_band']}): "
                f"max_total_num_tokens {record['max_total_num_tokens']:,}, page_size "
                f"{record['page_size']}, max_running_requests "
                f"{record['max_running_requests']:,}, chunked_prefill_size "
                f"{record['chunked_prefill_size'] or 'off'}, new_token_ratio "
                f"{ratio['init']:g} -> {ratio['min']:g}, radix cache "
                f"{'on' if record['prefix_caching'] else 'off'}")
    if record.get("engine") == "trtllm":
        return (f"TensorRT-LLM {record['engine_version']} (band {record['version_band']}): "
                f"{record['blocks']:,} blocks of {record['tokens_per_block']} tokens, "
                f"{record['capacity_scheduler_policy']}, max_batch_size "
                f"{record['max_batch_size']:,}, max_num_tokens {record['max_num_tokens']:,}, "
                f"block reuse {'on' if record['enable_block_reuse'] else 'off'}, chunked "
                f"prefill {'on' if record['enable_chunked_prefill'] else 'off'}")
    if record.get("engine") == "llamacpp":
        return (f"llama.cpp {record['engine_version']} (band {record['version_band']}): "
                f"{record['slots']} slots of {record['n_ctx_seq']:,} tokens (n_ctx "
                f"{record['n_ctx']:,}, {record['kv_allocated_bytes']:,} B allocated), "
                f"n_batch {record['n_batch']:,}")
    return (f"vLLM {record['engine_version']} (band {record['version_band']}): "
            f"{record['num_gpu_blocks']:,} blocks of {record['block_size']} tokens, "
            f"max_model_len {record['max_len']:,}, max_num_batched_tokens "
            f"{record['max_num_batched_tokens']:,}, max_num_seqs "
            f"{record['max_num_seqs']:,}, prefix caching "
            f"{'on' if record['prefix_caching'] else 'off'}"
            + (f", CPU tier {record['cpu_offload_blocks']:,} blocks"
               if record["cpu_offload_blocks"] else ""))


def _write_timeline(path: str, rows) -> None:
    from ..api import MEMORY_CATEGORIES as CATEGORIES

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["allocator", "time_s", "running", "waiting", "preemptions", *CATEGORIES])
    for r in rows:
        w.writerow([r["allocator"], f"{r['time_s']:.6f}", r["running"], r["waiting"],
                    r["preemptions"], *(f"{r[c]:.6f}" for c in CATEGORIES)])
    from ..api import atomic_write

    try:   # the CSV appears only when complete
        with atomic_write(path) as fh:
            fh.write(out.getvalue())
    except OSError as exc:
        raise UsageError(f"cannot write --timeline {path}: {exc.strerror or exc}") from None


def _emit(record: dict, fmt: str) -> None:
    from ..render import key_values, table, to_csv

    if echo_structured(record, fmt):
        return
    runs = record["allocators"]
    if fmt == "csv":
        rows = []
        for name, a in runs.items():
            row = {"allocator": name}
            for k, v in a.items():
                if isinstance(v, dict):
                    row.update({f"{k}_{kk}": vv for kk, vv in v.items()})
                else:
                    row[k] = v
            rows.append(row)
        echo_output(to_csv(rows))
        return
    names = list(runs)
    head = key_values([
        ("Model", record["model"]),
        ("GPU", f"{record['gpu']}: KV budget {record['kv_budget_bytes']:,} B, "
                f"{record['bytes_per_token']:,} B/token"
                + (f" (per GPU of the tightest of {record['pp']} pipeline stages)"
                   if record.get("pp", 1) > 1 else "")),
        ("Engine", _engine_line(record)),
        ("Workload", record["workload"]),
        ("Step time", f"{record['step_time_model']} (modelled)"),
    ], fmt)

    def row(label, fn):
        return [label] + [fn(runs[n]) for n in names]

    def pct(x):
        return f"{100 * x:.1f}%"

    def spread(key, p50_fmt=",.3f"):
        """'mean / p50 / p99' of a batch-size summary, or 'p50 / p99' of a latency one."""
        def cell(a):
            d = a[key]
            head = f"{d['mean']:,.1f} / " if p50_fmt == "," else ""
            return head + f"{d['p50']:{p50_fmt}} / {d['p99']:{p50_fmt}}"
        return cell

    def latency(key):
        """'mean / p50 / p90 / p99' of a latency summary, seconds."""
        def cell(a):
            d = a[key]
            return " / ".join(f"{d[k]:,.4f}" for k in ("mean", "p50", "p90", "p99"))
        return cell

    summary = table([
        row("requests completed / rejected", lambda a: f"{a['completed']:,} / {a['rejected']:,}"),
        row("seconds modelled", lambda a: f"{a['seconds_modelled']:,.1f}"),
        row("output tokens/s (modelled)", lambda a: f"{a['output_tokens_per_s_modelled']:,.1f}"),
        row("running mean / p50 / p99", spread("running", ",")),
        row("waiting mean / p50 / p99", spread("waiting", ",")),
        row("preemptions (recomputed tokens)", lambda a: f"{a['preemptions']:,} "
            f"({a['recomputed_tokens']:,})"),
        row("prefix-cache hit rate (tokens saved)", lambda a: f"{pct(a['prefix_hit_rate'])} "
            f"({a['prefix_hit_tokens']:,})"),
        row("CPU-tier hits (tokens)", lambda a: f"{a['offload_hit_tokens']:,}"),
        row("hits of resumed preempted requests", lambda a: f"{a['resume_hit_tokens']:,}"),
        row("queueing delay p50 / p99 (s, modelled)", spread("queue_delay_s")),
        row("TTFT mean / p50 / p90 / p99 (s, modelled)", latency("ttft_s")),
        row("TPOT mean / p50 / p90 / p99 (s, modelled)", latency("tpot_s")),
        row("E2E mean / p50 / p90 / p99 (s, modelled)", latency("e2e_s")),
        row("output tok/s: all / per GPU / per user (modelled)", lambda a: " / ".join(
            f"{a['throughput_modelled'][k]:,.1f}" for k in (
                "output_tokens_per_s", "output_tokens_per_s_per_gpu",
                "output_tokens_per_s_per_user"))),
    ], ["summary"] + names, fmt)
    labels = {"token_states": "token states", "reservation": "reservation",
              "internal_fragmentation": "internal fragmentation",
              "external_fragmentation": "external fragmentation", "free": "free"}
    memory = table([row(label, lambda a, k=k: pct(a["memory"][k])) for k, label in labels.items()],
                   ["KV memory, averaged over time"] + names, fmt)
    echo_output(head + "\n\n" + summary + "\n\n" + memory + "\n")
