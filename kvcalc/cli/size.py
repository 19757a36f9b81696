"""kvcalc size: the fewest GPUs -- of which kind, parallelism, dtypes and settings, behind which
router -- that serve a traffic within its latency objectives, at the lowest cost."""

from __future__ import annotations

import click

from ..api import SIMULATE_CALIBRATIONS, SIZE_ROUTERS
from ..errors import UsageError
from .common import (ByteSize, TokenList, check_writable, echo_output, echo_structured,
                     format_option, warn)


def _seconds(s: float) -> str:
    return f"{s:,.3f} s" if s >= 1 else f"{s * 1e3:,.1f} ms"


@click.command()
@click.option("--model", "-m", required=True,
              help="Preset name or alias, path to a config.json (or its directory), or a "
                   "Hugging Face hub id org/name[@revision].")
@click.option("--revision", default=None, help="Hub revision for a hub id.")
@click.option("--slo", multiple=True, required=True, metavar="METRIC_STAT=TIME",
              help="An objective every fleet must meet (repeat, or comma-separate): METRIC "
                   "ttft, tpot, e2e or queue; STAT p50, p90, p99 or mean; e.g. ttft_p99=2s, "
                   "tpot_p99=50ms, e2e_p90=30s.")
@click.option("--trace", default=None, metavar="NAME|FILE",
              help="Built-in trace (azure-conv-2023, azure-code-2023, mooncake-conv, "
                   "mooncake-synthetic) or a CSV/JSONL file, as kvcalc simulate reads them.")
@click.option("--rate-scale", type=float, default=1.0, show_default=True,
              help="Trace: arrivals this many times as fast.")
@click.option("--rate", type=float, default=None,
              help="Synthetic: Poisson arrivals at this many requests/s.")
@click.option("--concurrency", type=int, default=None, metavar="C",
              help="Synthetic closed loop: C requests in flight over the whole fleet.")
@click.option("--requests", "num_requests", type=int, default=None,
              help="Synthetic: how many requests (default 1000).")
@click.option("--warmup", type=int, default=0, show_default=True, metavar="N",
              help="Leave the first N requests out of the latency figures.")
@click.option("--input-len", type=TokenList("prompt length", single=True), default=None,
              help="Synthetic: prompt tokens per request (the mean with --dist).")
@click.option("--output-len", type=TokenList("output length", single=True), default=None,
              help="Synthetic: output tokens per request (the mean with --dist).")
@click.option("--dist", type=click.Choice(("uniform", "normal", "lognormal")), default=None,
              help="Synthetic: draw the lengths with --input-len/--output-len as means.")
@click.option("--input-std", type=float, default=None, help="--dist: prompt length std.")
@click.option("--output-std", type=float, default=None, help="--dist: output length std.")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic seed.")
@click.option("--gpu", default="h100", show_default=True, metavar="LIST",
              help="GPUs to search, comma-separated (kvcalc gpus lists them).")
@click.option("--engine", default="vllm", show_default=True, metavar="LIST",
              help="Engines, comma-separated; vllm is simulated, others are planned (do they "
                   "boot?) and reported as not simulated.")
@click.option("--tp", default="1,2,4,8", show_default=True, metavar="LIST",
              help="Tensor-parallel sizes of a replica.")
@click.option("--kv-dtype", default="auto", show_default=True, metavar="LIST",
              help="KV cache dtypes, e.g. auto,fp8.")
@click.option("--weights-dtype", default="auto", show_default=True, metavar="LIST",
              help="Weights dtypes, e.g. auto,fp8 (auto: the checkpoint's).")
@click.option("--max-num-seqs", default="auto", show_default=True, metavar="LIST",
              help="vLLM max_num_seqs values, e.g. 64,256,auto (auto: vLLM's default).")
@click.option("--prefix-caching", default="on", show_default=True, metavar="on|off|on,off",
              help="vLLM's prefix caching.")
@click.option("--router", default="least-outstanding", show_default=True, metavar="LIST",
              help=f"How requests are spread over the replicas: {', '.join(SIZE_ROUTERS)} "
                   "(comma-separate to compare).")
@click.option("--cpu-offload", default="0", show_default=True, metavar="LIST",
              help="CPU tier sizes for evicted prefix blocks, e.g. 0,64GiB.")
@click.option("--price", multiple=True, metavar="GPU=USD",
              help="USD per GPU-hour (repeat); default: the table in docs/sizing.md.")
@click.option("--max-len", type=TokenList("max length", single=True), default=None,
              help="vLLM max_model_len (default: the model's context length).")
@click.option("--gpu-util", type=float, default=None,
              help="vLLM gpu_memory_utilization (default 0.9).")
@click.option("--max-batched-tokens", type=int, default=None,
              help="vLLM max_num_batched_tokens (default: vLLM's for the GPU).")
@click.option("--calibration", type=click.Choice(SIMULATE_CALIBRATIONS), default=None,
              help="Step-time calibration (default: vllm).")
@click.option("--vllm-version", default=None, metavar="X.Y", help="vLLM version modelled.")
@click.option("--max-replicas", type=int, default=None,
              help="Most replicas of one configuration tried (default 64).")
@click.option("--jobs", "-j", type=int, default=None,
              help="Worker processes for the simulations (default: all cores).")
@click.option("--ray", "ray_address", default=None, is_flag=False, flag_value="local",
              metavar="[ADDRESS]",
              help="Run the simulations as Ray tasks: a local Ray, or the cluster at ADDRESS "
                   "(ray://head:10001); needs kvcalc[ray].")
@click.option("--pareto-span", default="1.25", show_default=True, metavar="X|all",
              help="Stop simulating a configuration once it cannot cost less than X times the "
                   "cheapest fleet found (all: search every configuration to its fewest "
                   "replicas: the whole Pareto front).")
@click.option("--disagg", is_flag=True, default=False,
              help="Disaggregated serving: P prefill and D decode replicas (docs/sizing.md).")
@click.option("--link-rate", type=ByteSize(), default=None, metavar="BYTES/S",
              help="--disagg: prefill-to-decode bandwidth per GPU (default 50GB, one "
                   "400 Gb/s NIC).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              metavar="FILE.json", help="Also write the JSON record to FILE (atomically).")
@format_option
def size(model, revision, slo, num_requests, ray_address, out_path, fmt, **options):
    """The fewest GPUs that meet latency objectives on a traffic, at the lowest cost: every
    configuration of the search space is planned (does it boot?) and simulated with R
    replicas behind a router (vLLM's scheduler and cache, the calibrated step time), R
    searched from an analytic floor. Times are modelled.

    \b
    Examples:
      kvcalc size -m llama-3.1-70b --trace azure-conv-2023 --slo ttft_p99=2s \\
          --slo tpot_p99=60ms --gpu h100,h200,b200 --tp 2,4,8 --max-len 16k
      kvcalc size -m llama-3.1-8b --rate 20 --requests 2000 --input-len 1000 \\
          --output-len 200 --dist lognormal --slo ttft_p90=1s --gpu l40s,h100 --tp 1,2
      kvcalc size -m llama-3.1-8b --trace mooncake-conv --slo ttft_p99=5s \\
          --router least-outstanding,prefix-aware --gpu h100 --tp 1
    """
    from .. import api

    if out_path:
        check_writable(out_path, "--out")
    ray = None if ray_address is None else (True if ray_address == "local" else ray_address)
    result = api.size(model, revision=revision, slo=list(slo), requests=num_requests,
                      ray=ray, **options)
    record = result.to_dict()
    for message in record["warnings"]:
        warn(message)
    if out_path:
        from ..api import atomic_write
        from ..render import to_json

        try:
            with atomic_write(out_path) as fh:
                fh.write(to_json(record))
        except OSError as exc:
            raise UsageError(f"cannot write --out {out_path}: {exc.strerror or exc}") from None
    _emit(record, fmt)


def _latencies(row: dict, record: dict) -> str:
    vals = row["answer"]["values_s"]
    return ", ".join(f"{o['name']} {_seconds(vals[o['name']])}" for o in record["objectives"])


def _emit(record: dict, fmt: str) -> None:
    from ..render import key_values, table, to_csv

    if echo_structured(record, fmt):
        return
    rows = record["configurations"]
    if fmt == "csv":
        flat = []
        for r in rows:
            flat.append({k: v for k, v in r.items() if not isinstance(v, (dict, list))})
        echo_output(to_csv(flat))
        return
    objectives = ", ".join(f"{o['name']} <= {_seconds(o['limit_s'])}"
                           for o in record["objectives"])
    answer = record["answer"]
    counts = record["counts"]
    prices = "; ".join(f"{g} ${p['usd_per_gpu_hour']:g}/GPU-h"
                       + (" (--price)" if p["source"] == "--price" else "")
                       for g, p in record["prices"].items())
    head = key_values([
        ("Model", record["model"]),
        ("Workload", record["workload"]),
        ("Objectives", objectives),
        ("Step time", f"{record['step_time_model']} (modelled)" if record["step_time_model"]
         else "-"),
        ("Prices", prices + " (default table: docs/sizing.md)"),
        ("Searched", f"{counts['configurations']:,} configurations, "
                     f"{counts['points_simulated']:,} simulations (+{counts['points_shared']:,} "
                     f"shared runs), {counts['configurations_decided_without_simulation']:,} "
                     f"decided without simulating; {record['runner']['runner']}"),
    ], fmt)
    if answer and answer.get("disagg"):
        link = answer["bounds"]["link"]
        best = (f"{answer['prefill_replicas']} prefill + {answer['decode_replicas']} decode x "
                f"({answer['label']}) = {answer['gpus']} GPUs, "
                f"${answer['usd_per_hour']:,.2f}/h; {_latencies(answer, record)} (modelled); "
                f"KV moved {link['kv_bytes_per_request_mean']:,} B per request on average, "
                f"{link['rate_needed_mean_bytes_per_s'] / 1e9:,.2f} GB/s mean, "
                f"{link['rate_needed_busiest_second_bytes_per_s'] / 1e9:,.2f} GB/s in the "
                f"busiest second; p99 prompt {_seconds(link['transfer_s_p99_prompt'])} at "
                f"{link['link_rate_bytes_per_s_per_gpu'] / 1e9:g} GB/s per GPU")
    elif answer:
        best = (f"{answer['replicas']} x ({answer['label']}) = {answer['gpus']} GPUs, "
                f"${answer['usd_per_hour']:,.2f}/h; {_latencies(answer, record)} (modelled); "
                + (f"{answer['replicas'] - 1} replicas: {answer['replicas_minus_one']}"
                   if answer["replicas"] > 1 else "one replica, nothing fewer"))
    else:
        best = "none of the configurations meets every objective (see why below)"
    out = [head, "", f"Cheapest: {best}", ""]
    met = [r for r in rows if r["status"] == "meets"]
    met.sort(key=lambda r: (r["usd_per_hour"], r["gpus"], r["answer"]["margin"]))
    names = [o["name"] for o in record["objectives"]]
    if met:
        table_rows = []
        for r in met:
            table_rows.append([
                "*" if r.get("pareto") else "", r["label"],
                f"{r['prefill_replicas']}P + {r['decode_replicas']}D" if r.get("disagg")
                else r["replicas"], r["gpus"],
                f"{r['usd_per_hour']:,.2f}", f"{r['output_tokens_per_s_per_gpu']:,.1f}",
                f"{r['usd_per_million_output_tokens']:,.3f}"
                if r["usd_per_million_output_tokens"] is not None else "-",
                *(_seconds(r["answer"]["values_s"][n]) for n in names)])
        out.append(table(table_rows, ["front", "configuration (meets every objective)",
                                      "replicas", "GPUs", "$/h", "out tok/s/GPU",
                                      "$/M out tok", *(f"{n} (modelled)" for n in names)],
                         fmt))
        out.append("front *: no cheaper fleet has a lower worst objective/limit ratio "
                   "(the Pareto front of cost against latency)")
        out.append("")
    rejected = [r for r in rows if r["status"] != "meets"]
    if rejected:
        out.append(table([[r["label"], r["status"], r["reason"]] for r in rejected],
                         ["configuration (rejected)", "status", "why"], fmt))
        out.append("")
    echo_output("\n".join(out))
