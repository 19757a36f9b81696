"""TensorRT-LLM: its pool's bytes per token and blocks, against the real logs listed in the
engines reference (Part E). TensorRT-LLM does not install on a CPU, so real logs are the check."""

from __future__ import annotations

import json

from click.testing import CliRunner

from kvcalc.cli import cli
from kvcalc.engines import get_engine
from kvcalc.engines.trtllm import (TOKENS_PER_BLOCK_OLD_ENGINES, trtllm_bytes_per_token,
                                   trtllm_capacity, trtllm_layout)
from kvcalc.model import load_spec
from kvcalc.units import GiB


def bpt(model, kv="auto", tp=1, block=32):
    return trtllm_bytes_per_token(trtllm_layout(load_spec(model)[1], kv, block, tp))


def test_bytes_per_token_of_the_pool():
    # gpt-oss-120b keeps every layer at full length without max_attention_window
    assert bpt("gpt-oss-120b") == 73_728
    # MLA: one latent "head" of 576, not split by TP
    assert bpt("deepseek-v3") == 70_272 and bpt("deepseek-v3", "fp8") == 35_136
    assert bpt("deepseek-v3", tp=8) == 70_272
    # ceil(kv_heads / tp): Qwen3-30B-A3B's 4 KV heads on 8 ranks keep one head each
    assert bpt("qwen3-30b-a3b", tp=8) == 24_576


def test_qwen15_7b_engine_log_issue_2268():
    """NVIDIA/TensorRT-LLM#2268 (engine 0.13, tokens_per_block 64): 'Memory usage when
    calculating max tokens in paged kv cache: total: 39.39 GiB, available: 21.89 GiB' and
    'Number of blocks in KV cache primary pool: 631'. Qwen1.5-7B caches 32 layers x 32 KV heads x
    128 x 2 x 2 B = 524,288 B per token, the geometry of Llama-2-7B."""
    per_token = bpt("llama-2-7b", block=TOKENS_PER_BLOCK_OLD_ENGINES)
    assert per_token == 524_288
    cap = trtllm_capacity(int(21.89 * GiB), per_token,
                          tokens_per_block=TOKENS_PER_BLOCK_OLD_ENGINES)
    assert cap.blocks == 631
    assert "Number of blocks in KV cache primary pool: 631" in cap.log_lines()


def test_gpt_oss_120b_rounds_blocks_up():
    """A DGX Spark gpt-oss-120b run on 1.1.0rc3: 86,711 max tokens become 2,710 blocks of 32,
    86,720 tokens in the "Allocated ... for max tokens in paged KV cache (86720)" line."""
    cap = trtllm_capacity(86_711 * 73_728, bpt("gpt-oss-120b"), fraction=1.0)
    assert (cap.max_tokens, cap.blocks, cap.kv_cache_tokens) == (86_711, 2_710, 86_720)
    assert cap.log_lines()[1].endswith("in paged KV cache (86720).")
    floored = trtllm_capacity(86_711 * 73_728, 73_728, fraction=1.0, round_up=False)
    assert floored.blocks == 2_709


def test_caps_and_host_blocks():
    cap = trtllm_capacity(10 * GiB, 131_072, max_tokens=1000, host_cache_size=1 * GiB)
    assert cap.max_tokens == 1000 and cap.blocks == 32
    assert cap.host_blocks == GiB // (32 * 131_072)
    capped = trtllm_capacity(10 * GiB, 131_072, max_gpu_total_bytes=GiB)
    assert capped.max_tokens == GiB // 131_072


def test_plan_json_trtllm_object():
    out = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--engine", "trtllm",
                                   "--max-len", "8k", "--kv-budget", "40GiB", "-f", "json"])
    assert out.exit_code == 0, out.output
    rec = json.loads(out.output)
    t = rec["trtllm"]
    assert rec["vllm"] is None and rec["engine"] == "trtllm"
    assert t["tokens_per_block"] == 32 and t["max_tokens"] == int(40 * GiB * 0.9) // 131_072
    assert t["blocks"] == -(-t["max_tokens"] // 32)
    assert t["kv_cache_bytes"] == t["blocks"] * 32 * 131_072
    assert get_engine("tensorrt-llm").name == "trtllm"
