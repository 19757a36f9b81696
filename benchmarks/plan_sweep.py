"""Plan sweep speed: every catalog GPU x TP {1,2,4,8} x 5 context lengths x 3 KV dtypes for one
model, in-process (target: under one second on the project's 2-core machine).

Usage: python benchmarks/plan_sweep.py [MODEL]
"""

from __future__ import annotations

import sys
import time

from kvcalc.hardware import load_catalog
from kvcalc.model import load_spec
from kvcalc.planning import PlanInputs, make_plan
from kvcalc.workload import fixed

TARGET_S = 1.0
CONTEXTS = (4096, 8192, 32768, 65536, 131072)
KV_DTYPES = ("bf16", "fp8", "int8")
TPS = (1, 2, 4, 8)


def main() -> int:
    model = sys.argv[1] if len(sys.argv) > 1 else "llama-3.1-70b"
    _, spec = load_spec(model)
    gpus = load_catalog()
    start = time.perf_counter()
    n = fits = 0
    for gpu in gpus:
        for tp in TPS:
            for ctx in CONTEXTS:
                for kv in KV_DTYPES:
                    inp = PlanInputs(gpu=gpu, tp=tp, max_len=ctx, kv_dtype=kv)
                    fits += make_plan(spec, inp, fixed(ctx, 0)).fits
                    n += 1
    elapsed = time.perf_counter() - start
    print(f"plan sweep for {model}: {n} plans ({len(gpus)} GPUs x {len(TPS)} TP x "
          f"{len(CONTEXTS)} contexts x {len(KV_DTYPES)} KV dtypes; {fits} fit) in "
          f"{elapsed * 1000:.0f} ms; target {TARGET_S * 1000:.0f} ms: "
          f"{'OK' if elapsed <= TARGET_S else 'MISSED'}")
    return 0 if elapsed <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
