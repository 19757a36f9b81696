"""Print the tiny-model CPU table of docs/verification.md.

Runs ``kvcalc verify --device cpu`` on every config in tests/fixtures/tiny-configs (random
weights, fp32, prompt 10 tokens, 1 and 12 new tokens) and prints one markdown row per config:
predicted / measured cache bytes at both lengths and whether they match to the byte.

    python benchmarks/verify_tiny_table.py
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from click.testing import CliRunner

from kvcalc.arch import build_spec
from kvcalc.cli import cli

TINY = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny-configs"
PROMPT, NEW = 10, (1, 12)


def main() -> None:
    import torch
    import transformers

    print(f"transformers {transformers.__version__}, torch {torch.__version__}, fp32, prompt "
          f"{PROMPT} tokens, random weights\n")
    print(f"| config | model_type | layers | {NEW[0]} new token ({PROMPT + NEW[0] - 1} cached) | "
          f"{NEW[1]} new tokens ({PROMPT + NEW[1] - 1} cached) | match |")
    print("|---|---|---|---|---|---|")
    for path in sorted(TINY.glob("*.json")):
        raw = json.loads(path.read_text())
        spec = build_spec(raw, path.stem)
        kinds = " + ".join(f"{n} {k}" for k, n in Counter(l.kind for l in spec.layers).items())
        res = CliRunner().invoke(cli, ["verify", "-m", str(path), "--device", "cpu",
                                       "--prompt-len", str(PROMPT), "--new-tokens",
                                       ",".join(map(str, NEW)), "--repeats", "1",
                                       "--no-without-cache", "-f", "json"])
        d = json.loads(res.stdout)
        cells = []
        for r in d["runs"]:
            pred = d["predicted_by_new_tokens"][str(r["new_tokens"])]
            cells.append(f"{pred:,} / {r['cache_bytes']:,}")
        print(f"| {path.stem} | {raw['model_type']} | {kinds} | {cells[0]} | {cells[1]} | "
              f"{'yes' if d['passed'] else 'NO'} |")


if __name__ == "__main__":
    main()
