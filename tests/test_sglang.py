"""SGLang 0.5.23: the automatic fraction, per-token bytes, pools and the CLI contract (the grid
against SGLang's own code is tests/sglang_diff/)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kvcalc.cli import cli
from kvcalc.engines.sglang import (auto_mem_fraction_static, sglang_capacity, sglang_cell_size,
                                   sglang_layout, sglang_max_running_requests, sglang_swa_pools)
from kvcalc.model import load_spec
from kvcalc.units import GiB


def run(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("mib,tp,mfs", [(81_559, 1, 0.835), (81_559, 8, 0.818),
                                        (143_771, 8, 0.897), (40_960, 1, 0.833)])
def test_automatic_mem_fraction_static(mib, tp, mfs):
    """H100 / H200 / A100-40GB nvidia-smi totals (the figures SGLang 0.5.23 resolves)."""
    assert auto_mem_fraction_static(mib, tp).mem_fraction_static == mfs


def test_cell_size_and_k_size_of_issue_16526():
    """sgl-project/sglang#16526: Qwen3-32B, tp 2, page 128: '#tokens: 143104, K size: 8.74 GB'
    (64 layers x 4 KV heads x 128 x 2 B per K; the pool holds tokens + page rows)."""
    layout = sglang_layout(load_spec("qwen3-32b")[1], "auto", 128, 2)
    assert sglang_cell_size(layout) == 131_072
    cap = sglang_capacity(layout, free_before=80 * GiB, weights=0, context_len=40_960,
                          gpu_mem_mib=None, tp=2,
                          settings=__import__("kvcalc.engines.sglang", fromlist=["x"])
                          .SglangSettings(mem_fraction_static=0.8, max_total_tokens=143_104))
    assert cap.max_total_num_tokens == 143_104
    assert "#tokens: 143104, K size: 8.74 GB, V size: 8.74 GB" in cap.log_lines()[0]


def test_mla_and_fp8_cell_sizes():
    assert sglang_cell_size(sglang_layout(load_spec("deepseek-v3")[1], "auto", 1, 8)) == 70_272
    assert sglang_cell_size(sglang_layout(load_spec("llama-3.1-8b")[1], "fp8_e4m3")) == 65_536


def test_only_gpt_oss_and_llama4_get_swa_pools():
    assert any(c.keep == "window" for c in sglang_layout(load_spec("gpt-oss-120b")[1]).layers)
    for model in ("gemma-3-27b", "mistral-7b-v0.1"):
        assert all(c.keep != "window" for c in sglang_layout(load_spec(model)[1]).layers)
    full, swa = sglang_swa_pools(10 * GiB, 36_864, 36_864, 1)
    assert full == int(10 * GiB // (36_864 + 0.8 * 36_864)) and swa == int(full * 0.8)


def test_max_running_requests():
    assert sglang_max_running_requests(415_245, 8192) == 4096
    assert sglang_max_running_requests(415_245, 131_072) == 2048
    assert sglang_max_running_requests(1_000, 8192) == 500
    assert sglang_max_running_requests(415_245, 8192, requested=100) == 100
    assert sglang_max_running_requests(415_245, 8192, mamba_cache_size=600) == 120


def test_plan_json_sglang_object_and_its_options():
    out = run("plan", "-m", "llama-3.1-8b", "--engine", "sglang", "--context-length", "8k",
              "-f", "json")
    assert out.exit_code == 0, out.output
    rec = json.loads(out.output)
    s = rec["sglang"]
    assert rec["vllm"] is None
    for key in ("mem_fraction_static", "max_total_num_tokens", "max_running_requests",
                "page_size", "swa_max_total_num_tokens", "max_mamba_cache_size"):
        assert key in s
    assert (s["mem_fraction_static"], s["page_size"], s["max_running_requests"]) == (0.835, 1, 4096)
    assert s["max_total_num_tokens"] == s["available_bytes"] // 131_072
    assert s["log"][1].startswith(f"max_total_num_tokens={s['max_total_num_tokens']}, ")
    bad = run("plan", "-m", "llama-3.1-8b", "--mem-fraction-static", "0.9")
    assert bad.exit_code != 0 and "setting of SGLang" in bad.output
    assert run("plan", "-m", "llama-3.1-8b", "--engine", "sglang",
               "--mem-fraction-static", "1.5").exit_code != 0


def test_no_memory_for_the_kv_cache_is_sglangs_error():
    out = run("plan", "-m", "llama-3.1-70b", "--engine", "sglang", "--gpu", "h100", "-f", "json")
    assert out.exit_code == 3
    err = json.loads(out.output)["sglang"]["error"]
    assert err.startswith("Loaded weights leave no GPU memory for the KV cache under "
                          "--mem-fraction-static=0.835. Raise --mem-fraction-static above")


def test_three_engines_on_one_h100_as_docs_engines_md_says():
    """docs/engines.md 3.10: Llama-3.1-8B on one H100, 8k context."""
    def plan(engine):
        out = run("plan", "-m", "llama-3.1-8b", "--gpu", "h100", "--max-len", "8k",
                  "--engine", engine, "-f", "json")
        assert out.exit_code == 0, out.output
        return json.loads(out.output)
    assert plan("vllm")["vllm"]["kv_cache_tokens"] == 470_016
    assert plan("sglang")["sglang"]["max_total_num_tokens"] == 415_245
    t = plan("trtllm")["trtllm"]
    assert (t["blocks"], t["blocks"] * t["tokens_per_block"]) == (14_459, 462_688)


def test_mamba_state_per_request_in_sglangs_dtypes():
    """SGLang's ``mamba_cache_per_req`` (configs/mamba_utils.py): conv state bfloat16, SSM state
    float32 (``mamba2_state_dtype``'s default; the model dtype and vLLM's mamba_ssm_cache_dtype do
    not enter). SGLang's error text prints it: 'mamba_cache_per_req=73.69 MB' for Qwen3-Next."""
    def per_request(model, tp=1):
        layout = sglang_layout(load_spec(model)[1], tp=tp)
        return sum(c.fixed_bytes for c in layout.layers)
    # Qwen3-Next: 36 Gated DeltaNet layers x (conv 8192 x 3 x 2 B + 32 x 128 x 128 x 4 B)
    assert per_request("qwen3-next-80b-a3b") == 36 * (8192 * 3 * 2 + 32 * 128 * 128 * 4)
    assert f"{per_request('qwen3-next-80b-a3b') / (1 << 20):.2f}" == "73.69"
    assert per_request("qwen3-next-80b-a3b", tp=2) == 38_633_472
    # Nemotron-3-Nano: 23 Mamba-2 layers x (conv (64 x 64 + 2 x 8 x 128) x 3 x 2 B
    # + 64 x 64 x 128 x 4 B)
    assert per_request("nemotron-3-nano-30b") == 23 * (6144 * 3 * 2 + 64 * 64 * 128 * 4)


@pytest.mark.parametrize("model,gpu,tp,fraction,expected", [
    # (max_mamba_cache_size, max_total_num_tokens, max_running_requests) as SGLang 0.5.23's own
    # _handle_max_mamba_cache / _resolve_memory_pool_config computed them for the same inputs
    # (tests/sglang_diff, harness patch 6)
    ("qwen3-next-80b-a3b", "h200", 2, None, (678, 2_373_358, 135)),
    ("nemotron-3-nano-30b", "h100", 1, None, (69, 634_114, 13)),
    ("nemotron-3-nano-30b", "h100", 1, "0.8", (41, 376_909, 8)),
])
def test_mamba_pool_equals_sglangs_code(model, gpu, tp, fraction, expected):
    args = ["plan", "-m", model, "--engine", "sglang", "--gpu", gpu, "--tp", str(tp),
            "--context-length", "32768", "-f", "json"]
    if fraction:
        args += ["--mem-fraction-static", fraction]
    out = run(*args)
    assert out.exit_code == 0, out.output
    s = json.loads(out.output)["sglang"]
    assert (s["max_mamba_cache_size"], s["max_total_num_tokens"],
            s["max_running_requests"]) == expected
    # running requests: at most max_mamba_cache_size // 5 (3 slots + 2 extra-buffer tracking)
    assert s["max_running_requests"] == min(s["max_mamba_cache_size"] // 5,
                                            s["max_total_num_tokens"] // 2)


def test_mamba_hybrid_with_no_room_gets_sglangs_state_pool_error():
    """Weights that leave nothing: SGLang raises from _handle_max_mamba_cache first."""
    out = run("plan", "-m", "qwen3-next-80b-a3b", "--engine", "sglang", "--gpu", "h100",
              "--context-length", "32768", "-f", "json")
    s = json.loads(out.output)["sglang"]
    assert s["error"].startswith("Not enough GPU memory for hybrid (mamba/linear-attention) "
                                 "state cache. Computed max_mamba_cache_size=-545 "
                                 "(total_rest_memory=-82.57 GB, mamba_cache_per_req=73.69 MB).")
