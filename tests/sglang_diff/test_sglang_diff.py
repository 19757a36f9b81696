"""kvcalc plan --engine sglang against SGLang 0.5.23's own sizing code, on a grid of presets x
GPUs x TP x KV dtypes x fractions.

The SGLang side runs in ``.sglang-venv`` (tests/sglang_diff/install.sh; ``SGLANG_VENV``
overrides the path) through tests/sglang_diff/harness.py, which documents the only queries it
answers (GPU memory, platform). Both sides get the same inputs: the nvidia-smi total of the
catalog GPU, and the free memory before loading and the weights per GPU that kvcalc's plan uses.
Skipped when the environment is absent (the README's test command); .ci/run builds it and runs
this file with ``SGLANG_DIFF_REQUIRED=1``, which turns the skip into a failure.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvcalc.cli import cli
from kvcalc.engines.vllm import tp_refusal
from kvcalc.hardware import find_gpu
from kvcalc.model import load_spec

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "hf-configs"
VENV = Path(os.environ.get("SGLANG_VENV", ROOT / ".sglang-venv"))
PYTHON = VENV / "bin" / "python"

#: preset -> the config.json SGLang reads (the same hub snapshot the preset pins)
MODELS = {
    "llama-3.1-8b": "meta-llama__Llama-3.1-8B.json",
    "llama-3.1-70b": "meta-llama__Llama-3.1-70B.json",
    "qwen3-8b": "Qwen__Qwen3-8B.json",
    "qwen3-32b": "Qwen__Qwen3-32B.json",
    "qwen2.5-7b": "Qwen__Qwen2.5-7B.json",
    "mistral-7b-v0.1": "mistralai__Mistral-7B-v0.1.json",
    "deepseek-v3": "deepseek-ai__DeepSeek-V3.json",
    "gpt-oss-120b": "openai__gpt-oss-120b.json",     # hybrid SWA: full and SWA pools
    # Mamba hybrids: the state pool first (max_mamba_cache_size), then the attention layers'
    # tokens; runs with harness.py's patch 6 (SGLang's CPU platform refuses Mamba snapshots)
    "qwen3-next-80b-a3b": "Qwen__Qwen3-Next-80B-A3B-Thinking.json",            # Gated DeltaNet
    "nemotron-3-nano-30b": "nvidia__NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.json",  # Mamba-2
}
MAMBA_HYBRIDS = ("qwen3-next-80b-a3b", "nemotron-3-nano-30b")
GPUS = ("h100", "h200", "a100-40gb")
TPS = (1, 2, 4, 8)
KV_DTYPES = ("auto", "fp8_e4m3")
FRACTIONS = (None, 0.8)
CONTEXT = 32768


@lru_cache(maxsize=None)
def kvcalc_plan(model, gpu, tp, kv, fraction) -> dict:
    args = ["plan", "-m", model, "--engine", "sglang", "--gpu", gpu, "--tp", str(tp),
            "--kv-dtype", kv, "--context-length", str(CONTEXT), "-f", "json"]
    if model == "deepseek-v3":
        args += ["--weights-dtype", "fp8"]
    if fraction is not None:
        args += ["--mem-fraction-static", str(fraction)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (0, 3), result.output
    return json.loads(result.stdout)


def grid():
    """Every combination whose TP the model's heads allow (SGLang refuses the others too)."""
    for model, gpu, tp, kv, fraction in itertools.product(MODELS, GPUS, TPS, KV_DTYPES,
                                                          FRACTIONS):
        if tp_refusal(load_spec(model)[1], tp) is None:
            yield model, gpu, tp, kv, fraction


@lru_cache(maxsize=1)
def sglang_results() -> dict:
    """Every grid case through SGLang's own code, in one run of the harness."""
    cases, keys = [], []
    for key in grid():
        model, gpu, tp, kv, fraction = key
        plan = kvcalc_plan(*key)
        cases.append({"config": str(CONFIGS / MODELS[model]), "tp": tp, "kv_cache_dtype": kv,
                      "mem_fraction_static": fraction,
                      "gpu_mem_mib": find_gpu(gpu).smi_memory_mib,
                      "free_before": plan["sglang"]["free_memory_bytes"],
                      "weights": plan["budget"]["weights_bytes"], "context_length": CONTEXT})
        keys.append(key)
    run = subprocess.run([str(PYTHON), str(Path(__file__).with_name("harness.py"))],
                         input=json.dumps(cases), capture_output=True, text=True, timeout=1800,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr[-4000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(keys)
    return {key: line["sglang"] for key, line in zip(keys, lines)}


needs_sglang = pytest.mark.skipif(
    not PYTHON.exists() and not os.environ.get("SGLANG_DIFF_REQUIRED"),
    reason=f"no SGLang environment at {VENV} (tests/sglang_diff/install.sh builds it)")


@needs_sglang
@pytest.mark.parametrize("model,gpu,tp,kv,fraction", list(grid()))
def test_kvcalc_equals_sglang(model, gpu, tp, kv, fraction):
    theirs = sglang_results()[(model, gpu, tp, kv, fraction)]
    ours = kvcalc_plan(model, gpu, tp, kv, fraction)["sglang"]
    assert ours["mem_fraction_static"] == theirs["mem_fraction_static"]
    assert ours["chunked_prefill_size"] == theirs["chunked_prefill_size"]
    assert ours["page_size"] == theirs["page_size"]
    if "error" in theirs:
        assert ours["error"] == theirs["error"]
        return
    assert ours["error"] is None
    assert ours["max_total_num_tokens"] == theirs["max_total_num_tokens"]
    assert ours["max_running_requests"] == theirs["max_running_requests"]
    assert ours["swa_max_total_num_tokens"] == theirs["swa_max_total_num_tokens"]
    assert ours["max_mamba_cache_size"] == theirs["max_mamba_cache_size"]
    if model == "gpt-oss-120b":
        assert ours["swa_max_total_num_tokens"] is not None
    if model in MAMBA_HYBRIDS:
        assert ours["max_mamba_cache_size"] > 0


@needs_sglang
def test_the_grid_covers_fits_and_errors():
    """The grid holds pools that fit and weights that leave no memory (SGLang's error)."""
    results = sglang_results().values()
    assert sum("error" in r for r in results) >= 5
    assert sum("error" not in r for r in results) >= 100
    mamba = [r for key, r in sglang_results().items() if key[0] in MAMBA_HYBRIDS]
    assert sum(r.get("max_mamba_cache_size") is not None for r in mamba) >= 40
    # weights that leave nothing: SGLang's state-pool error comes before the KV-cache one
    assert any(r.get("error", "").startswith("Not enough GPU memory for hybrid") for r in mamba)
