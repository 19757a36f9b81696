"""Shell completion: preset names, GPU names, engines and dtypes, in a real bash."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

KVCALC = Path(sys.executable).with_name("kvcalc")
pytestmark = pytest.mark.skipif(not KVCALC.exists() or not shutil.which("bash"),
                                reason="needs the installed kvcalc script and bash")


def complete(*words: str) -> list[str]:
    """What bash offers after ``kvcalc WORDS`` (the last word is the one being completed),
    through the script `_KVCALC_COMPLETE=bash_source kvcalc` installs."""
    script = ('eval "$(_KVCALC_COMPLETE=bash_source kvcalc)"; COMP_WORDS=(kvcalc "$@"); '
              'COMP_CWORD=$#; _kvcalc_completion kvcalc; printf "%s\\n" "${COMPREPLY[@]}"')
    env = {**os.environ, "PATH": f"{KVCALC.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run(["bash", "-c", script, "bash", *words], capture_output=True, text=True,
                         env=env, check=True)
    return [line for line in out.stdout.splitlines() if line]


def test_preset_names():
    assert complete("estimate", "-m", "llama-3.1-8") == ["llama-3.1-8b"]
    offered = complete("plan", "--model", "deepseek-v")
    assert {"deepseek-v3", "deepseek-v3.2", "deepseek-v2-lite"} <= set(offered)
    assert "llama-7b" in complete("plot", "memory", "-m", "llama-7")   # aliases too


def test_gpu_names_engines_and_dtypes():
    assert {"h100-sxm", "h100-pcie"} <= set(complete("plan", "--gpu", "h100"))
    assert "vllm" in complete("estimate", "-m", "llama-7b", "--engine", "v")
    assert set(complete("estimate", "-m", "llama-7b", "--kv-dtype", "fp")) >= {"fp8", "fp16"}


def test_paths_fall_back_to_file_completion():
    assert complete("estimate", "-m", "./") == []   # bash completes file names itself
