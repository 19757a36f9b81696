"""How fast ``kvcalc simulate`` runs, and whether its memory stays flat in the trace length.

Issue 14's targets: the Azure conversation trace (19,366 requests, one hour) on Llama-3.1-8B /
H100 in under 2 s; 1,000,000 synthetic requests in under 60 s on 2 cores; memory flat in the
number of requests. Times are CPU seconds of this process (``time.process_time``), so a busy
machine does not inflate them; wall seconds are recorded next to them.

    .venv/bin/python benchmarks/simulate_speed.py                 # all cases
    .venv/bin/python benchmarks/simulate_speed.py --synthetic 200000 --skip-azure
    .venv/bin/python benchmarks/simulate_speed.py --out benchmarks/simulate_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

from kvcalc.hardware import resolve_gpu
from kvcalc.model import load_spec
from kvcalc.planning import PlanInputs
from kvcalc.simulation import Options, simulate
from kvcalc.simulation.requests import load_trace, synthetic


def timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--synthetic", type=int, default=1_000_000)
    ap.add_argument("--skip-azure", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-hybrid", action="store_true",
                    help="leave out the hybrid case (Gemma 3 27B, KV cache groups)")
    args = ap.parse_args()
    spec = load_spec("llama-3.1-8b")[1]
    inp = PlanInputs(gpu=resolve_gpu("h100"), max_len=131072)
    rows = []
    if not args.skip_azure:
        trace, cpu, wall = timed(lambda: load_trace("azure-conv-2023"))
        rows.append({"case": "read azure-conv-2023", "cpu_s": round(cpu, 2),
                     "wall_s": round(wall, 2)})
        for allocators in (("paged",), ("paged", "orca-max", "orca-pow2", "orca-oracle")):
            res, cpu, wall = timed(lambda: simulate(spec, inp, trace,
                                                    Options(allocators=allocators)))
            t = res.runs["paged"].totals
            rows.append({"case": f"azure-conv-2023, llama-3.1-8b / h100, {'+'.join(allocators)}",
                         "requests": t.requests, "completed": t.completed, "steps": t.steps,
                         "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                         "requests_per_cpu_s": round(len(allocators) * t.requests / cpu)})
        if not args.skip_hybrid:
            # a hybrid model (issue 24): 6 sliding-window groups + 1 full group, every step in
            # detail (paged.HybridCache)
            g3 = load_spec("gemma-3-27b")[1]
            g3_inp = PlanInputs(gpu=resolve_gpu("h100"), max_len=32768)
            res, cpu, wall = timed(lambda: simulate(g3, g3_inp, trace,
                                                    Options(allocators=("paged",))))
            t = res.runs["paged"].totals
            rows.append({"case": "azure-conv-2023, gemma-3-27b / h100 (7 KV cache groups), "
                                 "paged", "requests": t.requests, "completed": t.completed,
                         "steps": t.steps, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                         "requests_per_cpu_s": round(t.requests / cpu)})
    for n in sorted({min(100_000, args.synthetic), args.synthetic}):
        before = maxrss_mib()

        def arrivals(n=n):
            return synthetic(n, 10.0, 1000, 200, "lognormal", max_len=131072, seed=0)

        res, cpu, wall = timed(lambda: simulate(spec, inp, arrivals,
                                                Options(allocators=("paged",))))
        t = res.runs["paged"].totals
        rows.append({"case": f"synthetic {n:,}: Poisson 10/s, lognormal 1,000 in / 200 out, "
                             "paged", "requests": t.requests, "completed": t.completed,
                     "steps": t.steps, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                     "requests_per_cpu_s": round(t.requests / cpu),
                     "max_rss_mib_before": round(before, 1),
                     "max_rss_mib_after": round(maxrss_mib(), 1)})
    # a closed loop (issue 23): 64 in flight, lognormal lengths, the vLLM calibration
    res, cpu, wall = timed(lambda: simulate(
        spec, inp, lambda: synthetic(100_000, None, 1000, 200, "lognormal", max_len=131072,
                                     seed=0),
        Options(allocators=("paged",), concurrency=64, warmup=128)))
    t = res.runs["paged"].totals
    rows.append({"case": "closed loop 100,000: 64 in flight, lognormal 1,000 in / 200 out, "
                         "paged", "requests": t.requests, "completed": t.completed,
                 "steps": t.steps, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                 "requests_per_cpu_s": round(t.requests / cpu)})
    report = {"python": platform.python_version(), "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
