"""The attention backend kvcalc says vLLM picks, or vLLM's refusal when none takes the model,
against vLLM's own selector, per GPU generation and KV cache dtype.

For each (preset, GPU, --kv-cache-dtype, TP) case ``vllm_side.py --backends`` builds vLLM's own
``EngineArgs(...).create_engine_config()`` and the model's layers on a simulated GPU of that
name and compute capability; every attention layer asks vLLM's selector for its backend
(``get_attn_backend`` -> ``CudaPlatform.get_attn_backend_cls`` -> ``_get_backend_priorities``
and each backend's ``validate_configuration``). vLLM's answer is the set of backends the layers
got and the block size they leave, or the selector's ``ValueError`` ("No valid attention
backend found for cuda with AttentionSelectorConfig(...). Reasons: {...}."), word for word.

kvcalc's answer: ``kvcalc.engines.vllm.attention_backends`` (the backends, or the refusal), and
``kvcalc plan --engine vllm --gpu GPU --kv-dtype D --tp T --format json``: its block size, and
for a refusal its exit status 3 and the same message in ``does_not_fit.reason``.

    python tests/vllm_diff/backends.py                  # vLLM 0.34.0
    python tests/vllm_diff/backends.py --vllm 0.33.0
    python tests/vllm_diff/backends.py --save-vllm /tmp/b.json    # keep vLLM's side ...
    python tests/vllm_diff/backends.py --vllm-json /tmp/b.json    # ... and re-compare fast
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

#: kvcalc catalog name -> the name torch reports for the device (the capability is the
#: catalog's, presets/gpus/*.yaml): one card per GPU generation vLLM's selector tells apart
GPUS = {
    "v100-32gb": "Tesla V100-SXM2-32GB",           # SM 7.0 (Volta)
    "t4": "Tesla T4",                              # SM 7.5 (Turing)
    "a100-80gb": "NVIDIA A100-SXM4-80GB",          # SM 8.0 (Ampere)
    "a10": "NVIDIA A10",                           # SM 8.6
    "l40s": "NVIDIA L40S",                         # SM 8.9 (Ada)
    "rtx-4090": "NVIDIA GeForce RTX 4090",         # SM 8.9
    "h100-sxm": "NVIDIA H100 80GB HBM3",           # SM 9.0 (Hopper)
    "b200": "NVIDIA B200",                         # SM 10.0 (Blackwell)
    "b300": "NVIDIA B300 SXM6 AC",                 # SM 10.3
    "rtx-5090": "NVIDIA GeForce RTX 5090",         # SM 12.0 (Blackwell, consumer)
    "gb10": "NVIDIA GB10",                         # SM 12.1 (DGX Spark)
}
#: one preset per thing the selector looks at: head size (64 / 80 / 96 / 128 / 256), sliding
#: windows, attention sinks (gpt-oss), dense MLA (16 / 64 / 128 heads), sparse MLA (V3.2)
PRESETS = ("llama-3.1-8b", "qwen3-8b", "gemma-3-27b", "gemma-3-1b", "phi-3-mini", "phi-2",
           "gpt-oss-20b", "qwen3-next-80b-a3b", "deepseek-v2-lite", "deepseek-v3", "kimi-k2",
           "deepseek-v3.2")
#: --kv-cache-dtype values (vLLM's spelling)
KV_DTYPES = ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2")
#: TP 8 too where the heads per GPU change the choice (sparse MLA on SM 10.x: <= 16 heads)
TP8_PRESETS = ("deepseek-v3", "deepseek-v3.2")
#: cases vLLM refuses before it selects a backend, for the weights' quantization (not the KV
#: dtype): "The quantization method gpt_oss_mxfp4 is not supported for the current GPU. Minimum
#: capability: 80" (gpt-oss) and "... fp8 ... Minimum capability: 75" (the fp8 checkpoints of
#: DeepSeek V3 / V3.2 and Kimi K2 on a V100)
EXCLUDED = {("gpt-oss-20b", "t4"), ("gpt-oss-20b", "v100-32gb"), ("deepseek-v3", "v100-32gb"),
            ("deepseek-v3.2", "v100-32gb"), ("kimi-k2", "v100-32gb")}


def cases(presets=PRESETS, gpus=tuple(GPUS), kv_dtypes=KV_DTYPES) -> list[tuple]:
    return [(m, g, kv, tp) for m in presets for g in gpus for kv in kv_dtypes
            for tp in ((1, 8) if m in TP8_PRESETS else (1,)) if (m, g) not in EXCLUDED]


def kvcalc_side(model: str, gpu: str, kv_dtype: str, tp: int, band: str | None,
                fa4_cute_dsl: bool = True) -> dict:
    """kvcalc's backends (or refusal) and its plan's block size / refusal for one case;
    ``fa4_cute_dsl``: whether FA4's cute-DSL entry point imports where vLLM ran (it needs
    nvidia-cutlass-dsl, which the CPU harness does not install: vLLM then skips
    FLASH_ATTN_MLA_SPARSE_FA4, and kvcalc is asked the same)."""
    from click.testing import CliRunner

    from kvcalc.cli import cli
    from kvcalc.engines.vllm import BackendRefusal, attention_backends, rules_for_gpu
    from kvcalc.hardware import find_gpu
    from kvcalc.api import resolve

    spec = resolve(model).spec
    g = find_gpu(gpu)
    rules = rules_for_gpu(band, g.compute_capability, g.vendor)
    try:
        out = {"backends": sorted(set(attention_backends(
            spec, kv_dtype, rules, tp=tp, fa4_cute_dsl=fa4_cute_dsl, device_name=GPUS[gpu])))}
    except BackendRefusal as exc:
        out = {"refused": str(exc)}
    args = ["plan", "-m", model, "--engine", "vllm", "--gpu", gpu, "--tp", str(tp),
            "--max-len", "4096", "--kv-dtype", _plan_kv_dtype(kv_dtype), "--format", "json"]
    res = CliRunner().invoke(cli, args + (["--vllm-version", band] if band else []))
    try:
        d = json.loads(res.stdout)
    except ValueError:
        out["plan"] = {"exit_code": res.exit_code, "error": res.output.strip()[-300:]}
        return out
    v = d.get("vllm") or {}
    out["plan"] = {"exit_code": res.exit_code, "block_size": v.get("block_size"),
                   "reason": (d.get("does_not_fit") or {}).get("reason")}
    return out


def _plan_kv_dtype(kv_dtype: str) -> str:
    """vLLM's --kv-cache-dtype spelling -> kvcalc plan's --kv-dtype."""
    return {"bfloat16": "bf16", "float16": "fp16"}.get(kv_dtype, kv_dtype)


def vllm_side(version: str, keys: list[tuple], presets) -> dict:
    from kvcalc.hardware import find_gpu

    configs = compare.preset_configs(list(presets))
    req_cases = []
    for m, g, kv, tp in keys:
        spec = find_gpu(g)
        major, minor = (int(x) for x in spec.compute_capability.split("."))
        req_cases.append({"model": m, "kv_dtype": kv, "tp": tp,
                          "gpu": {"key": g, "name": GPUS[g], "capability": (major, minor),
                                  "memory": spec.memory_bytes}})
    with tempfile.TemporaryDirectory() as d:
        req, out = os.path.join(d, "request.json"), os.path.join(d, "out.json")
        with open(req, "w") as f:
            json.dump({"presets": configs, "cases": req_cases}, f)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        proc = subprocess.run([compare.vllm_python(version), os.path.join(HERE, "vllm_side.py"),
                               req, "--out", out, "--backends"], capture_output=True,
                              text=True, env=env, cwd=d, timeout=3600)
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"vllm_side.py --backends failed:\n{proc.stderr[-4000:]}")
        with open(out) as f:
            return json.load(f)


def diffs(rec: dict, mine: dict) -> dict:
    """field -> (vLLM, kvcalc) for every field that differs in one case."""
    case_gpu = rec["gpu"]
    if "harness_error" in rec:
        return {"harness_error": (rec["harness_error"], None)}
    out = {}
    plan = mine.get("plan", {})
    if "refused" in rec:
        if mine.get("refused") != rec["refused"]:
            out["refusal"] = (rec["refused"], mine.get("refused") or mine.get("backends"))
        # the plan names the GPU as kvcalc's catalog does (vLLM: as torch reports it)
        from kvcalc.hardware import find_gpu

        want = rec["refused"].replace(GPUS[case_gpu], find_gpu(case_gpu).display_name)
        if plan.get("exit_code") != 3 or plan.get("reason") != want:
            out["plan_refusal"] = (rec["refused"], plan)
        return out
    if mine.get("backends") != rec["backends"]:
        out["backends"] = (rec["backends"], mine.get("backends") or mine.get("refused"))
    if plan.get("exit_code") not in (0, 3) or plan.get("block_size") != rec["block_size"]:
        out["block_size"] = (rec["block_size"], plan)
    return out


def run(version: str = compare.DEFAULT_VLLM, presets=PRESETS, gpus=tuple(GPUS),
        vllm_json: str | None = None, save_vllm: str | None = None) -> dict:
    """Both sides for every case; returns {"cases": [...], "vllm_version": ..., "band": ...}."""
    band = compare.PINNED.get(version)
    keys = cases(presets, gpus)
    if vllm_json:
        with open(vllm_json) as f:
            doc = json.load(f)
    else:
        doc = vllm_side(version, keys, presets)
        if save_vllm:
            with open(save_vllm, "w") as f:
                json.dump(doc, f)
    result = []
    for rec in doc["records"]:
        key = (rec["model"], rec["gpu"], rec["kv_dtype"], rec["tp"])
        if key not in keys:
            continue
        mine = kvcalc_side(*key, band, fa4_cute_dsl=rec.get("fa4_cute_mla") is None)
        result.append({"model": key[0], "gpu": key[1], "kv_dtype": key[2], "tp": key[3],
                       "vllm": rec, "diffs": diffs(rec, mine)})
    return {"cases": result, "vllm_version": doc["vllm_version"], "band": band}


def describe(case: dict) -> str:
    return (f"{case['model']} on {case['gpu']} --kv-cache-dtype {case['kv_dtype']} tp "
            f"{case['tp']}: " + "; ".join(f"{k}: vLLM {v!r} vs kvcalc {m!r}"
                                           for k, (v, m) in case["diffs"].items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm", default=compare.DEFAULT_VLLM)
    ap.add_argument("-m", "--model", action="append", help="presets (default: PRESETS)")
    ap.add_argument("--vllm-json", help="reuse a saved vLLM side")
    ap.add_argument("--save-vllm", help="save vLLM's side here")
    args = ap.parse_args(argv)
    sys.path.insert(0, compare.ROOT)
    res = run(args.vllm, tuple(args.model or PRESETS), vllm_json=args.vllm_json,
              save_vllm=args.save_vllm)
    bad = [c for c in res["cases"] if c["diffs"]]
    refused = sum("refused" in c["vllm"] for c in res["cases"])
    print(f"vLLM {res['vllm_version']} attention backends vs kvcalc"
          + (f" --vllm-version {res['band']}" if res["band"] else "")
          + f": {len(res['cases']) - len(bad)} of {len(res['cases'])} (preset, GPU, KV dtype, "
          f"TP) cases agree ({refused} refused by vLLM)")
    for c in bad:
        print("  " + describe(c))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
