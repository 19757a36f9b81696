"""kvcalc size's search speed: >= 500 configurations on the Azure conversation hour
(azure-conv-2023, 19,366 requests) in <= 60 s on 2 cores (issue 28).

    python benchmarks/size_search.py [--jobs 2] [--out benchmarks/size_search.json]

Llama-3.1-70B, TTFT p99 <= 2 s and TPOT p99 <= 60 ms, max_model_len 16k; the search space:
3 GPUs (H100, H200, B200) x tp 1, 2, 4, 8 x KV auto, fp8 x weights auto, fp8 x max_num_seqs
128, 256, vLLM's default x prefix caching on, off x routers round-robin, least-outstanding =
576 configurations. Wall-clock seconds (the search's own figure) and CPU seconds of this
process and its workers, with the machine's load average, are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import kvcalc.api as api  # noqa: E402

SPACE = dict(gpu="h100,h200,b200", tp="1,2,4,8", kv_dtype="auto,fp8", weights_dtype="auto,fp8",
             max_num_seqs="128,256,auto", prefix_caching="on,off",
             router="round-robin,least-outstanding")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    load = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    r = api.size("llama-3.1-70b", trace="azure-conv-2023", slo=["ttft_p99=2s", "tpot_p99=60ms"],
                 max_len="16k", jobs=args.jobs, **SPACE).to_dict()
    wall = time.perf_counter() - t0
    own = time.process_time() - c0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    counts = r["counts"]
    ans = r["answer"]
    rec = {
        "workload": r["workload"], "configurations": counts["configurations"],
        "by_status": counts["by_status"], "simulations": counts["points_simulated"],
        "shared_runs": counts["points_shared"],
        "decided_without_simulation": counts["configurations_decided_without_simulation"],
        "jobs": args.jobs, "wall_s": round(wall, 2),
        "cpu_s_parent": round(own, 2), "cpu_s_workers": round(kids.ru_utime + kids.ru_stime, 2),
        "load_average_before": [round(x, 2) for x in load],
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        "answer": f"{ans['replicas']} x ({ans['label']}) = {ans['gpus']} GPUs, "
                  f"${ans['usd_per_hour']}/h" if ans else None,
    }
    print(json.dumps(rec, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rec, fh, indent=2)
            fh.write("\n")


if __name__ == "__main__":
    main()
