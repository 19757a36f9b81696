"""Turn ``kvcalc verify --format json`` reports into the with/without-cache timing table.

    python benchmarks/verify_timing_table.py report.json [more.json ...]

Rows from several reports of the same model are merged (e.g. a 1/10/100 run with 3 repeats and
a separate 1000 run); a run that did not finish shows "-".
"""

from __future__ import annotations

import json
import sys


def fmt_s(run: dict | None) -> str:
    if not run or not run.get("seconds_mean"):
        return "-"
    return f"{run['seconds_mean']:,.2f} ± {run['seconds_std']:,.2f} s (n={run['repeats']})"


def main(paths: list[str]) -> None:
    reports = [json.loads(open(p, encoding="utf-8").read()) for p in paths]
    by_g: dict[int, dict[bool, dict]] = {}
    for rep in reports:
        for r in rep["runs"]:
            by_g.setdefault(r["new_tokens"], {})[r["use_cache"]] = r | {
                "predicted": rep["predicted_by_new_tokens"].get(str(r["new_tokens"]))}
    first = reports[0]
    print(f"{first['model']}, {first['parameters']:,} parameters, {first['dtype']}, "
          f"{first['device']} ({first['device_name']}), prompt {first['prompt_len']} tokens, "
          f"transformers {first['versions']['transformers']}, torch {first['versions']['torch']}\n")
    print("| new tokens | with cache | without cache | speed-up | cache bytes measured / predicted |")
    print("|---|---|---|---|---|")
    for g in sorted(by_g):
        w, wo = by_g[g].get(True), by_g[g].get(False)
        speed = (f"{wo['seconds_mean'] / w['seconds_mean']:.1f}×"
                 if w and wo and w["seconds_mean"] else "-")
        cache = (f"{w['cache_bytes']:,} / {w['predicted']:,}"
                 if w and w.get("cache_bytes") is not None else "-")
        print(f"| {g:,} | {fmt_s(w)} | {fmt_s(wo)} | {speed} | {cache} |")


if __name__ == "__main__":
    main(sys.argv[1:])
