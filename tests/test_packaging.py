"""Presets must work from an installed wheel, not only from a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_presets(tmp_path):
    pytest.importorskip("hatchling")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    wheel = next(tmp_path.glob("kvcalc-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "kvcalc/presets/models/llama-2-7b.yaml" in names
    assert "kvcalc/presets/gpus/h100-sxm.yaml" in names
    model_presets = [n for n in names if n.startswith("kvcalc/presets/models/") and n.endswith(".yaml")]
    assert len(model_presets) >= 35
