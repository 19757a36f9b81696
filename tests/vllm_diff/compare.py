"""kvcalc plan --engine vllm against vLLM's own capacity code (0.34.0, 0.33.0, or the newest
release: the drift sentinel), case by case.

    python tests/vllm_diff/compare.py                      # every preset, the whole grid (0.34.0)
    python tests/vllm_diff/compare.py --vllm 0.33.0        # against 0.33.0 (--vllm-version 0.33)
    python tests/vllm_diff/compare.py -m phi-4 -m jamba-v0.1 --diffs 20
    python tests/vllm_diff/compare.py --vllm-json /tmp/vllm.json   # reuse a vLLM run
    python tests/vllm_diff/compare.py --save-vllm /tmp/vllm.json   # keep this one

Run it with the project's interpreter (kvcalc importable); it starts the vLLM side
(`vllm_side.py`) in the separate environment built by `make_venv.sh` (default
<repo>/.vllm-venv-<version>; override with KVCALC_VLLM_PYTHON=/path/to/python). kvcalc's
figures come from its documented JSON output: `kvcalc plan -m PRESET --engine vllm --kv-budget B
--max-len L --tp T --kv-dtype D [--vllm-version X.Y] --format json`, invoked in-process
through click's CliRunner. Against a pinned release kvcalc is asked for that release's band;
against "latest" (the sentinel) kvcalc runs with its default band, so a release that moves any
figure fails until kvcalc models it.

Compared per case (model x KV budget x max length x TP x KV dtype, H100 defaults):
block size, number of GPU blocks, GPU KV cache tokens, maximum concurrency (2 decimals, as
kvcalc prints it), whether one request of max length fits, the estimated maximum model
length when it does not, and a TP layout vLLM refuses (kvcalc must exit non-zero and quote
vLLM's reason).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
from collections import OrderedDict, defaultdict
from concurrent.futures import ProcessPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GiB = 2**30

#: The grid (issue 11): KV budgets, max lengths, TP sizes, KV cache dtypes; H100 defaults.
BUDGETS = OrderedDict([("2.89GiB", int(2.89 * GiB)), ("8GiB", 8 * GiB),
                       ("24GiB", 24 * GiB), ("60GiB", 60 * GiB)])
MAX_LENS = (4096, 32768, 131072)
TPS = (1, 2, 8)
KV_DTYPES = ("auto", "fp8")

FIELDS = ("block_size", "num_blocks", "kv_cache_tokens", "max_concurrency", "fits",
          "estimated_max_model_len")


#: the vLLM releases kvcalc is checked against -> the --vllm-version kvcalc is asked for
#: ("latest": the newest release on the registry, kvcalc's default band)
PINNED = {"0.34.0": "0.34", "0.33.0": "0.33"}
DEFAULT_VLLM = "0.34.0"


def vllm_python(version: str = DEFAULT_VLLM) -> str:
    return os.environ.get("KVCALC_VLLM_PYTHON",
                          os.path.join(ROOT, f".vllm-venv-{version}", "bin", "python"))


def preset_configs(names=None) -> dict:
    import yaml

    out = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "presets", "models", "*.yaml"))):
        name = os.path.basename(path)[:-5]
        if names and name not in names:
            continue
        with open(path) as f:
            out[name] = yaml.safe_load(f)["config"]
    missing = set(names or ()) - set(out)
    if missing:
        raise SystemExit(f"unknown preset(s): {', '.join(sorted(missing))}")
    return out


class VllmSide:
    """vllm_side.py for the whole grid in one subprocess, started now, read by result()."""

    def __init__(self, configs: dict, version: str = DEFAULT_VLLM):
        python = vllm_python(version)
        self.dir = tempfile.TemporaryDirectory()
        req = {"presets": configs, "budgets": list(BUDGETS.values()),
               "max_lens": list(MAX_LENS), "tps": list(TPS), "kv_dtypes": list(KV_DTYPES)}
        req_path = os.path.join(self.dir.name, "request.json")
        self.out_path = os.path.join(self.dir.name, "vllm.json")
        with open(req_path, "w") as f:
            json.dump(req, f)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        self.err = open(os.path.join(self.dir.name, "stderr.txt"), "w+")
        self.proc = subprocess.Popen([python, os.path.join(HERE, "vllm_side.py"), req_path,
                                      "--out", self.out_path], stdout=subprocess.DEVNULL,
                                     stderr=self.err, env=env, cwd=self.dir.name)

    def result(self, timeout: float = 3600) -> dict:
        try:
            code = self.proc.wait(timeout)
            self.err.seek(0)
            if code != 0 or not os.path.exists(self.out_path):
                raise RuntimeError(f"vllm_side.py failed ({code}):\n{self.err.read()[-4000:]}")
            with open(self.out_path) as f:
                return json.load(f)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.err.close()
            self.dir.cleanup()


def run_vllm_side(configs: dict, timeout: float = 3600, version: str = DEFAULT_VLLM) -> dict:
    """One subprocess for the whole grid; returns vllm_side.py's JSON document."""
    return VllmSide(configs, version).result(timeout)


def grid_keys(models) -> list:
    return [(m, b, L, tp, kv) for m in models for b in BUDGETS.values() for L in MAX_LENS
            for tp in TPS for kv in KV_DTYPES]


def run_both(configs: dict, workers: int | None = None, version: str = DEFAULT_VLLM) -> dict:
    """The vLLM side (subprocess) and kvcalc's side (worker processes) at the same time,
    then the comparison."""
    side = VllmSide(configs, version)
    band = PINNED.get(version)
    try:
        mine = kvcalc_cases(grid_keys(configs), workers, band)
    except BaseException:
        side.proc.kill()
        raise
    return compare(side.result(), configs, workers, mine, band)


def _budget_label(n: int) -> str:
    for label, value in BUDGETS.items():
        if value == n:
            return label
    return f"{n}B"


def kvcalc_case(model: str, budget: int, max_len: int, tp: int, kv_dtype: str,
                band: str | None = None) -> dict:
    """kvcalc's figures from `kvcalc plan ... --format json` (CliRunner, in-process); ``band``
    is the --vllm-version asked for (None: kvcalc's default)."""
    from click.testing import CliRunner

    from kvcalc.cli import cli

    args = ["plan", "-m", model, "--engine", "vllm", "--kv-budget", f"{budget}B",
            "--max-len", str(max_len), "--tp", str(tp), "--kv-dtype", kv_dtype,
            "--format", "json"] + (["--vllm-version", band] if band else [])
    res = CliRunner().invoke(cli, args)
    stdout = getattr(res, "stdout", res.output)
    text = stdout.strip()
    if res.exit_code not in (0, 3) or not text.startswith("{"):
        err = (getattr(res, "stderr", "") or res.output or repr(res.exception)).strip()
        return {"exit_code": res.exit_code, "error": err.splitlines()[-1] if err else ""}
    v = json.loads(text)["vllm"]
    return {"exit_code": res.exit_code, "block_size": v["block_size"],
            "num_blocks": v["num_gpu_blocks"], "kv_cache_tokens": v["kv_cache_tokens"],
            "max_concurrency": v["max_concurrency"], "fits": v["fits"],
            "estimated_max_model_len": v["estimated_max_model_len"]}


def _kvcalc_batch(keys, band=None):
    return [kvcalc_case(*k, band=band) for k in keys]


def kvcalc_cases(keys, workers: int | None = None, band: str | None = None) -> dict:
    """kvcalc's figures for many (model, budget, max_len, tp, kv_dtype) keys, on
    `workers` processes (default: the CPU count), for --vllm-version ``band``."""
    keys = list(keys)
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(keys) < 50:
        return dict(zip(keys, _kvcalc_batch(keys, band)))
    chunks = [keys[i::workers * 4] for i in range(workers * 4)]
    out = {}
    with ProcessPoolExecutor(workers) as pool:
        for chunk, res in zip(chunks, pool.map(_kvcalc_batch, chunks, [band] * len(chunks))):
            out.update(zip(chunk, res))
    return out


def case_key(rec: dict) -> tuple:
    return (rec["model"], rec["budget"], rec["max_len"], rec["tp"], rec["kv_dtype"])


def expected(rec: dict) -> dict:
    """vLLM's figures for one case, in kvcalc's terms."""
    if "refused" in rec:
        return {"refused": rec["refused"]}
    out = {"block_size": rec["block_size"], "num_blocks": rec["num_blocks"],
           "fits": rec["fits"]}
    if rec["fits"]:
        out.update(kv_cache_tokens=rec["kv_cache_tokens"],
                   max_concurrency=round(rec["max_concurrency"], 2))
    else:
        out["estimated_max_model_len"] = rec["estimated_max_model_len"]
    return out


def differences(rec: dict, got: dict) -> dict:
    """field -> (vLLM, kvcalc) for every field that differs; empty when they agree."""
    want = expected(rec)
    if "refused" in want:
        if got.get("exit_code") in (0, 3):
            return {"refused": (want["refused"], "plan printed")}
        if want["refused"] not in got.get("error", ""):
            return {"refused": (want["refused"], got.get("error"))}
        return {}
    if "error" in got:
        return {"error": ("plan", got["error"])}
    diffs = {}
    for field, value in want.items():
        mine = got.get(field)
        if field == "max_concurrency" and mine is not None:
            mine = round(mine, 2)
        if mine != value:
            diffs[field] = (value, mine)
    return diffs


def family(name: str, config: dict, recs: list) -> str:
    """The model family a preset belongs to, for the agreement table."""
    text = config.get("text_config") or config
    mt = (text.get("model_type") or config.get("model_type") or "").lower()
    dtype = config.get("torch_dtype") or config.get("dtype") or text.get("torch_dtype")
    if mt in ("jamba", "nemotron_h", "qwen3_next"):
        return "hybrid Mamba / GDN"
    if mt in ("deepseek_v2", "deepseek_v3", "kimi_k2", "deepseek_v32"):
        return "MLA"
    if mt.startswith("llama4"):
        return "chunked local (Llama 4)"
    if mt.startswith("gemma3n"):
        return "shared KV (Gemma 3n)"
    if dtype == "float32":
        return "float32 checkpoint"
    if mt in ("nemotron-nas", "deci", "decilm"):
        return "per-layer heads (DeciLM)"
    kinds = {k for r in recs for k in r.get("group_kinds", ())}
    if "SlidingWindowSpec" in kinds:
        return ("interleaved sliding" if "FullAttentionSpec" in kinds
                else "sliding (all layers)")
    if mt in ("gpt2", "gpt_neox", "gptj", "falcon", "phi"):
        return "legacy (GPT-2, NeoX, GPT-J, Falcon, Phi-2)"
    return "dense GQA / MHA"


def compare(doc: dict, configs: dict, workers: int | None = None,
            got: dict | None = None, band: str | None = None) -> dict:
    """Every case of a vllm_side.py document against kvcalc (`got`: kvcalc's figures by
    case key, computed here when absent). Returns {"cases": [...], "skipped": {...},
    "harness_errors": [...]}."""
    recs = [r for r in doc["records"] if "harness_error" not in r]
    errors = [r for r in doc["records"] if "harness_error" in r]
    got = dict(got or {})
    missing = [case_key(r) for r in recs if case_key(r) not in got]
    got.update(kvcalc_cases(missing, workers, band))
    by_model = defaultdict(list)
    for r in recs:
        by_model[r["model"]].append(r)
    fams = {m: family(m, configs[m], rs) for m, rs in by_model.items()}
    cases = []
    for r in recs:
        k = case_key(r)
        cases.append({"model": r["model"], "family": fams[r["model"]], "budget": r["budget"],
                      "max_len": r["max_len"], "tp": r["tp"], "kv_dtype": r["kv_dtype"],
                      "vllm": expected(r), "kvcalc": got[k], "diffs": differences(r, got[k]),
                      "vllm_backends": r.get("backends"), "groups": r.get("groups")})
    return {"cases": cases, "skipped": doc.get("skipped", {}), "harness_errors": errors,
            "vllm_version": doc.get("vllm_version"), "seconds": doc.get("seconds"),
            "band": band}


def describe(case: dict) -> str:
    diffs = "; ".join(f"{f}: vLLM {v!r} vs kvcalc {k!r}" for f, (v, k) in case["diffs"].items())
    return (f"{case['model']} budget {_budget_label(case['budget'])} max_len {case['max_len']} "
            f"tp {case['tp']} kv {case['kv_dtype']}: {diffs}")


def agreement_table(result: dict, by: str = "family") -> str:
    rows = defaultdict(lambda: [0, 0])
    for c in result["cases"]:
        rows[c[by]][0] += 1
        rows[c[by]][1] += not c["diffs"]
    width = max([len(k) for k in rows] + [len(by)])
    lines = [f"{by:<{width}}  cases  agree      %", "-" * (width + 22)]
    total = [0, 0]
    for key in sorted(rows):
        n, ok = rows[key]
        total[0] += n
        total[1] += ok
        lines.append(f"{key:<{width}}  {n:5d}  {ok:5d}  {100 * ok / n:5.1f}")
    if total[0]:
        lines.append("-" * (width + 22))
        lines.append(f"{'all':<{width}}  {total[0]:5d}  {total[1]:5d}  "
                     f"{100 * total[1] / total[0]:5.1f}")
    return "\n".join(lines)


def summary(result: dict, max_diffs: int = 30, by: str = "family") -> str:
    parts = [f"vLLM {result.get('vllm_version')} (simulated H100, SM90) vs kvcalc plan "
             f"--engine vllm" + (f" --vllm-version {result['band']}" if result.get("band")
                                 else ""), "", agreement_table(result, by)]
    bad = [c for c in result["cases"] if c["diffs"]]
    if bad:
        fields = defaultdict(int)
        for c in bad:
            for f in c["diffs"]:
                fields[f] += 1
        parts += ["", "fields that differ: " + ", ".join(f"{f} ({n})" for f, n in
                                                        sorted(fields.items()))]
        groups = defaultdict(list)
        for c in bad:
            groups[(c["model"], tuple(sorted(c["diffs"])))].append(c)
        parts += ["", f"{len(bad)} disagreements in {len(groups)} groups (model, fields that "
                      f"differ); an example of each:"]
        for (model, fields), cs in list(groups.items())[:max_diffs]:
            parts.append(f"  [{len(cs):3d} cases] {describe(cs[0])}")
    if result["skipped"]:
        parts += ["", "presets not checked:"]
        parts += [f"  {m}: {why}" for m, why in sorted(result["skipped"].items())]
    if result["harness_errors"]:
        parts += ["", f"harness errors ({len(result['harness_errors'])}):"]
        seen = set()
        for r in result["harness_errors"]:
            if r["model"] not in seen:
                seen.add(r["model"])
                parts.append(f"  {r['model']}: {r['harness_error'][:300]}")
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", action="append", help="preset (repeatable; default all)")
    ap.add_argument("--vllm-json", help="reuse a saved vLLM-side document")
    ap.add_argument("--save-vllm", help="save the vLLM-side document here")
    ap.add_argument("--diffs", type=int, default=30,
                    help="groups of disagreements to list (one example each)")
    ap.add_argument("--by", choices=("family", "model"), default="family")
    ap.add_argument("--json", help="write every compared case here")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--vllm", default=DEFAULT_VLLM,
                    help=f"the vLLM release (its .vllm-venv-<version>): {', '.join(PINNED)} or "
                         "latest (default %(default)s)")
    args = ap.parse_args(argv)
    band = PINNED.get(args.vllm)
    sys.path.insert(0, ROOT)
    configs = preset_configs(args.model)
    if args.vllm_json:
        with open(args.vllm_json) as f:
            doc = json.load(f)
        doc["records"] = [r for r in doc["records"] if r["model"] in configs]
        result = compare(doc, configs, args.workers, band=band)
    else:
        if not os.path.exists(vllm_python(args.vllm)):
            raise SystemExit(f"{vllm_python(args.vllm)} not found: run VLLM_VERSION="
                             f"{args.vllm} tests/vllm_diff/make_venv.sh")
        side = VllmSide(configs, args.vllm)
        mine = kvcalc_cases(grid_keys(configs), args.workers, band)
        doc = side.result()
        result = compare(doc, configs, args.workers, mine, band)
    if args.save_vllm:
        with open(args.save_vllm, "w") as f:
            json.dump(doc, f)
    print(summary(result, args.diffs, args.by))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
