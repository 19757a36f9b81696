"""Cold start of `kvcalc estimate --model llama-7b --seq 4096`, paired with llm-analysis.

Each round runs, in a fresh process each, kvcalc's estimate and then llm-analysis's ``infer``
for the same model (Llama-2-7B from its bundled configs, 4096 tokens, batch 1, offline), so both
see the same machine load; it reports the medians of wall time and CPU time (user + system of
the child) and the ratio kvcalc / llm-analysis. Target: ratio <= 0.25 for both (issue 22) and
kvcalc <= 0.3 s wall. Without llm-analysis only kvcalc's figures are printed.

Usage: python benchmarks/estimate_startup.py [ROUNDS] [--llm-analysis PYTHON]
  PYTHON: an interpreter with llm-analysis installed (default: $LLM_ANALYSIS_PYTHON, else this
  one); e.g. python3 -m venv /tmp/llma && /tmp/llma/bin/pip install llm-analysis==0.2.2
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

TARGET_S = 0.3
TARGET_RATIO = 0.25
LLM_ANALYSIS_ARGS = ["-m", "llm_analysis.analysis", "infer",
                     "--model_name", "NousResearch_Llama-2-7b-hf", "--gpu_name", "a100-sxm-80gb",
                     "--seq_len", "4096", "--batch_size_per_gpu", "1", "--log_level", "ERROR"]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, cpu) seconds of one run of ``cmd``; cpu = the child's user + system time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def has_llm_analysis(python: str) -> bool:
    return subprocess.run([python, "-c", "import llm_analysis"], capture_output=True).returncode == 0


def main() -> int:
    args = sys.argv[1:]
    python = os.environ.get("LLM_ANALYSIS_PYTHON", sys.executable)
    if "--llm-analysis" in args:
        i = args.index("--llm-analysis")
        python = args[i + 1]
        del args[i:i + 2]
    rounds = int(args[0]) if args else 15
    exe = shutil.which("kvcalc")
    kvcalc = ([exe] if exe else [sys.executable, "-m", "kvcalc"]) + [
        "estimate", "--model", "llama-7b", "--seq", "4096"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # An installed package runs from byte-code that pip compiled at install time; an editable
    # checkout gets the same once Python may write its caches (the warm-up run below does).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    other = [python, *LLM_ANALYSIS_ARGS] if has_llm_analysis(python) else None
    for cmd in filter(None, (kvcalc, other)):   # warm the OS file cache and byte-code once
        subprocess.run(cmd, check=True, capture_output=True, env=env)
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(timed(kvcalc, env))
        if other:
            theirs.append(timed(other, env))
    wall = statistics.median(w for w, _ in ours)
    cpu = statistics.median(c for _, c in ours)
    print(f"kvcalc estimate --model llama-7b --seq 4096: wall median {wall * 1000:.0f} ms "
          f"(min {min(w for w, _ in ours) * 1000:.0f}, max {max(w for w, _ in ours) * 1000:.0f}), "
          f"CPU median {cpu * 1000:.0f} ms over {rounds} runs; target {TARGET_S * 1000:.0f} ms: "
          f"{'OK' if wall <= TARGET_S else 'MISSED'}")
    ok = wall <= TARGET_S
    if other:
        owall = statistics.median(w for w, _ in theirs)
        ocpu = statistics.median(c for _, c in theirs)
        # the ratio of each pair (same moment, same load), then its median
        rwall = statistics.median(a[0] / b[0] for a, b in zip(ours, theirs))
        rcpu = statistics.median(a[1] / b[1] for a, b in zip(ours, theirs))
        print(f"llm-analysis infer (Llama-2-7B, 4096 tokens): wall median {owall * 1000:.0f} ms, "
              f"CPU median {ocpu * 1000:.0f} ms")
        verdict = "OK" if max(rwall, rcpu) <= TARGET_RATIO else "MISSED"
        print(f"paired ratio kvcalc / llm-analysis: wall {rwall:.2f}x, CPU {rcpu:.2f}x; "
              f"target <= {TARGET_RATIO}x: {verdict}")
        ok = ok and verdict == "OK"
    else:
        print("llm-analysis not found (--llm-analysis PYTHON): no paired ratio")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
