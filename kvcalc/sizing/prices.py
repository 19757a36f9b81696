"""GPU prices per GPU-hour, for ranking fleets by cost.

The default table is one public price list, so that GPUs compare on one provider's terms:
RunPod's serverless "active worker" rates (workers that run 24/7 -- what a serving fleet is),
published per second at https://docs.runpod.io/serverless/pricing, multiplied by 3,600. Read
in December 2026 (a stored copy of that page); prices change: pass ``--price GPU=USD`` for yours
(kvcalc size --price h100=2.5). The page names GPU families ("H100 PRO 80 GB", "L40, L40S,
6000 Ada PRO"); each catalog GPU below takes its family's rate.
"""

from __future__ import annotations

import math

from ..errors import UsageError

PRICE_SOURCE = ("RunPod serverless active-worker rates, https://docs.runpod.io/serverless/"
                "pricing (USD per second x 3,600; read December 2026)")

#: catalog GPU name -> (USD per GPU-hour, the page's GPU family and its USD per second)
DEFAULT_PRICES: dict[str, tuple[float, str]] = {
    "h100-sxm": (3.348, "H100 PRO 80 GB: $0.00093/s"),
    "h200": (4.464, "H200 PRO 141 GB: $0.00124/s"),
    "b200": (6.84, "B200 180 GB: $0.00190/s"),
    "a100-80gb": (2.16, "A100 80 GB: $0.00060/s"),
    "l40s": (1.332, "L40, L40S, 6000 Ada PRO 48 GB: $0.00037/s"),
    "l40": (1.332, "L40, L40S, 6000 Ada PRO 48 GB: $0.00037/s"),
    "rtx-6000-ada": (1.332, "L40, L40S, 6000 Ada PRO 48 GB: $0.00037/s"),
    "rtx-a6000": (0.864, "A6000, A40 48 GB: $0.00024/s"),
    "a40": (0.864, "A6000, A40 48 GB: $0.00024/s"),
    "l4": (0.468, "L4, A5000, 3090 24 GB: $0.00013/s"),
    "rtx-3090": (0.468, "L4, A5000, 3090 24 GB: $0.00013/s"),
    "rtx-4090": (0.756, "4090 PRO 24 GB: $0.00021/s"),
}


def parse_prices(items, resolve) -> dict[str, float]:
    """``--price h100=2.5`` values (each may hold several, comma-separated) as catalog GPU
    name -> USD per GPU-hour; ``resolve`` maps a GPU name or alias to its catalog name."""
    out: dict[str, float] = {}
    if isinstance(items, dict):
        items = [f"{k}={v}" for k, v in items.items()]
    for item in items or ():
        for part in str(item).split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            try:
                usd = float(value)
            except ValueError:
                usd = float("nan")
            if not sep or not name.strip() or not (math.isfinite(usd) and usd > 0):
                raise UsageError(f"invalid --price {part!r}: write GPU=USD_PER_GPU_HOUR, e.g. "
                                 "h100=2.5")
            out[resolve(name.strip())] = usd
    return out


def price_table(gpus, given: dict[str, float]) -> dict[str, dict]:
    """Each GPU's price and where it comes from; a GPU with neither is an error."""
    table = {}
    for gpu in gpus:
        if gpu in given:
            table[gpu] = {"usd_per_gpu_hour": given[gpu], "source": "--price"}
        elif gpu in DEFAULT_PRICES:
            usd, family = DEFAULT_PRICES[gpu]
            table[gpu] = {"usd_per_gpu_hour": usd, "source": f"{PRICE_SOURCE}: {family}"}
        else:
            raise UsageError(f"no default price for {gpu}: give --price {gpu}=USD_PER_GPU_HOUR "
                             f"(the default table has {', '.join(DEFAULT_PRICES)})")
    return table
