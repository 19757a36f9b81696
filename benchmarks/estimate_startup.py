"""Cold-start wall time of `kvcalc estimate --model llama-7b --seq 4096` (target: <= 0.3 s).

Runs the installed console script in a fresh process N times (default 15) and prints the
median, min and max. Usage: python benchmarks/estimate_startup.py [N]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time

TARGET_S = 0.3


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    exe = shutil.which("kvcalc")
    cmd = [exe] if exe else [sys.executable, "-m", "kvcalc"]
    cmd += ["estimate", "--model", "llama-7b", "--seq", "4096"]
    subprocess.run(cmd, check=True, capture_output=True)  # warm the OS file cache once
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"kvcalc estimate --model llama-7b --seq 4096: median {median * 1000:.0f} ms over "
          f"{runs} runs (min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms); "
          f"target {TARGET_S * 1000:.0f} ms: {'OK' if median <= TARGET_S else 'MISSED'}")
    return 0 if median <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
