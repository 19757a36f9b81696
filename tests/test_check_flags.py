"""The flag tables of kvcalc check against the engines' own parsers (tools/gen_engine_flags.py),
wherever those engines are installed, and kvcalc's mappings against the tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvcalc.launch import llamacpp, sglang, trtllm, vllm
from kvcalc.launch.flags import table

ROOT = Path(__file__).resolve().parent.parent
VENVS = {"vllm": ROOT / ".vllm-venv-0.34.0" / "bin" / "python",
         "sglang": ROOT / ".sglang-venv" / "bin" / "python"}


@pytest.mark.parametrize("engine", sorted(VENVS))
def test_committed_table_equals_the_engines_parser(engine):
    python = VENVS[engine]
    if not python.exists():
        pytest.skip(f"{python} not built (tests/vllm_diff/make_venv.sh, "
                    "tests/sglang_diff/install.sh)")
    done = subprocess.run([sys.executable, "tools/gen_engine_flags.py", engine, "--python",
                           str(python), "--check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr


def test_llamacpp_table_equals_arg_cpp():
    source = os.environ.get("KVCALC_LLAMACPP_ARG_CPP")
    if not source:
        pytest.skip("KVCALC_LLAMACPP_ARG_CPP (llama.cpp 0c1e57098's common/arg.cpp) not given")
    done = subprocess.run([sys.executable, "tools/gen_engine_flags.py", "llamacpp", "--source",
                           source, "--version", "0c1e57098", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("module, rows", [
    (vllm, lambda: table("vllm")["options"]), (sglang, lambda: table("sglang")["options"]),
    (trtllm, lambda: table("trtllm")["options"]),
    (llamacpp, lambda: table("llamacpp")["programs"]["llama-server"])])
def test_every_mapped_flag_is_one_of_the_parsers(module, rows):
    dests = {r["dest"] for r in rows()}
    mapped = set(module.HONOURED) | set(module.NOT_MODELLED)
    assert mapped - dests == set()


def test_tables_are_complete():
    assert table("vllm")["version"] == "0.34.0" and len(table("vllm")["options"]) > 300
    assert table("sglang")["version"] == "0.5.23" and len(table("sglang")["options"]) > 500
    assert len(table("llamacpp")["programs"]["llama-server"]) > 200
    assert "OLLAMA_NUM_PARALLEL" in table("ollama")["variables"]
