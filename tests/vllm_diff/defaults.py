"""The defaults and the budget kvcalc assumes for `vllm serve MODEL` (no flags) against vLLM's
own configuration and memory functions, per GPU.

For each (preset, GPU) case kvcalc's `plan -m PRESET --gpu GPU --max-len 4096 --format json`
gives its defaults and its budget terms (weights, activation peak, non-torch memory, CUDA
graphs); `vllm_side.py --defaults` builds vLLM's own `EngineArgs(...).create_engine_config()`
on a simulated GPU of that name, memory and compute capability and reports
gpu_memory_utilization (resolved), the extensible KV cache, the block size after the backend's
choice, max_num_seqs, max_num_batched_tokens, async scheduling, prefix caching, the hybrid KV
cache manager, the CUDA-graph estimate, the tokens in flight, and the KV budget vLLM's
`request_memory` / `measure_kv_cache_bytes` give for kvcalc's terms.

    python tests/vllm_diff/defaults.py                 # vLLM 0.34.0
    python tests/vllm_diff/defaults.py --vllm 0.33.0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402

#: kvcalc catalog name -> (the name torch reports for the device, compute capability)
GPUS = {
    "h100-sxm": ("NVIDIA H100 80GB HBM3", (9, 0)),
    "h200": ("NVIDIA H200", (9, 0)),
    "a100-80gb": ("NVIDIA A100-SXM4-80GB", (8, 0)),
    "b200": ("NVIDIA B200", (10, 0)),
    "l4": ("NVIDIA L4", (8, 9)),
    "rtx-4090": ("NVIDIA GeForce RTX 4090", (8, 9)),
}
#: one preset per kind of model kvcalc plans differently
PRESETS = ("llama-3.1-8b", "qwen3-8b", "mistral-7b-v0.1", "gemma-3-27b", "gpt-oss-20b",
           "deepseek-v2-lite", "llama-4-scout", "qwen3-next-80b-a3b", "nemotron-3-nano-30b",
           "jamba-v0.1", "olmo-2-7b", "gemma-3n-e4b", "mixtral-8x7b")
FIELDS = ("gpu_memory_utilization", "extensible_kv_cache", "block_size", "max_num_seqs",
          "max_num_batched_tokens", "async_scheduling", "enable_prefix_caching",
          "hybrid_kv_cache_manager", "cuda_graph_estimate", "in_flight_tokens",
          "requested_bytes", "kv_bytes")


def kvcalc_side(model: str, gpu: str, band: str | None) -> dict:
    """kvcalc's defaults and budget terms from `kvcalc plan --format json`."""
    from click.testing import CliRunner

    from kvcalc.cli import cli

    args = ["plan", "-m", model, "--gpu", gpu, "--max-len", "4096", "--format", "json"]
    res = CliRunner().invoke(cli, args + (["--vllm-version", band] if band else []))
    d = json.loads(res.stdout)
    b, v = d["budget"], d["vllm"]
    return {"gpu_memory_utilization": b["utilization"],
            "extensible_kv_cache": b["source"] == "extensible",
            "block_size": v["block_size"], "max_num_seqs": v["max_num_seqs"],
            "max_num_batched_tokens": v["max_num_batched_tokens"],
            "async_scheduling": v["async_scheduling"],
            "enable_prefix_caching": v["enable_prefix_caching"],
            "hybrid_kv_cache_manager": v["hybrid_kv_cache_manager"],
            "cuda_graph_estimate": b["cuda_graph_bytes"] > 0,
            "in_flight_tokens": v["in_flight_tokens"],
            "requested_bytes": b["requested_bytes"], "kv_bytes": b["kv_bytes"],
            "terms": {"weights": b["weights_bytes"], "activation": b["activation_bytes"],
                      "non_torch": b["non_torch_bytes"], "cuda_graph": b["cuda_graph_bytes"]}}


def run(version: str = compare.DEFAULT_VLLM, presets=PRESETS, gpus=tuple(GPUS)) -> dict:
    """Both sides for every (preset, GPU); returns {"cases": [...], "vllm_version": ...}."""
    from kvcalc.hardware import find_gpu

    band = compare.PINNED.get(version)
    configs = compare.preset_configs(list(presets))
    mine = {(m, g): kvcalc_side(m, g, band) for m in presets for g in gpus}
    cases = [{"model": m, "gpu": {"key": g, "name": GPUS[g][0], "capability": GPUS[g][1],
                                  "memory": find_gpu(g).memory_bytes},
              "terms": mine[m, g]["terms"]} for m in presets for g in gpus]
    with tempfile.TemporaryDirectory() as d:
        req, out = os.path.join(d, "request.json"), os.path.join(d, "out.json")
        with open(req, "w") as f:
            json.dump({"presets": configs, "cases": cases}, f)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        proc = subprocess.run([compare.vllm_python(version), os.path.join(HERE, "vllm_side.py"),
                               req, "--out", out, "--defaults"], capture_output=True,
                              text=True, env=env, cwd=d, timeout=3600)
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"vllm_side.py --defaults failed:\n{proc.stderr[-4000:]}")
        with open(out) as f:
            doc = json.load(f)
    result = []
    for rec in doc["records"]:
        got = mine[rec["model"], rec["gpu"]]
        diffs = ({"harness_error": (rec["harness_error"], None)} if "harness_error" in rec else
                 {k: (rec[k], got[k]) for k in FIELDS if rec[k] != got[k]})
        result.append({"model": rec["model"], "gpu": rec["gpu"], "diffs": diffs})
    return {"cases": result, "vllm_version": doc["vllm_version"], "band": band}


def describe(case: dict) -> str:
    return (f"{case['model']} on {case['gpu']}: "
            + "; ".join(f"{k}: vLLM {v!r} vs kvcalc {m!r}" for k, (v, m) in case["diffs"].items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm", default=compare.DEFAULT_VLLM)
    args = ap.parse_args(argv)
    sys.path.insert(0, compare.ROOT)
    res = run(args.vllm)
    bad = [c for c in res["cases"] if c["diffs"]]
    print(f"vLLM {res['vllm_version']} defaults and budget vs kvcalc"
          + (f" --vllm-version {res['band']}" if res["band"] else "")
          + f": {len(res['cases']) - len(bad)} of {len(res['cases'])} (preset, GPU) cases agree")
    for c in bad:
        print("  " + describe(c))
    return 0


if __name__ == "__main__":
    sys.exit(main())
