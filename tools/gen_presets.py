"""Compile the built-in presets (presets/models, presets/gpus) to one JSON file per folder.

Usage: python tools/gen_presets.py [--check]

kvcalc reads ``presets/<kind>/_compiled.json`` instead of importing PyYAML and parsing every
preset on each command that names a model or a GPU (issue 22's cold start). The YAML files stay
the source: the compiled file records each file's size and is used only while it lists exactly
the folder's YAML files at those sizes, and tests/test_presets.py checks that its data equals
the YAML's. Run this after adding or editing a preset; with --check, exit 1 when a compiled file
is out of date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvcalc.files import atomic_write  # noqa: E402
from kvcalc.sources import COMPILED_PRESETS, compile_presets  # noqa: E402

KINDS = ("models", "gpus")


def render(kind: str) -> str:
    return json.dumps(compile_presets(ROOT / "presets" / kind), indent=1, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    stale = []
    for kind in KINDS:
        path = ROOT / "presets" / kind / COMPILED_PRESETS
        text = render(kind)
        current = path.read_text("utf-8") if path.exists() else None
        if current == text:
            continue
        if "--check" in argv:
            stale.append(str(path.relative_to(ROOT)))
        else:
            with atomic_write(path) as fh:
                fh.write(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python tools/gen_presets.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
