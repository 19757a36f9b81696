"""TensorRT-LLM: its pool's bytes per token and blocks, against the real logs listed in the
engines reference (Part E). TensorRT-LLM does not install on a CPU, so real logs are the check."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from kvcalc.cli import cli
from kvcalc.engines import get_engine
from kvcalc.engines.trtllm import (TOKENS_PER_BLOCK_OLD_ENGINES, trtllm_bytes_per_token,
                                   trtllm_capacity, trtllm_estimation_tokens, trtllm_layout,
                                   trtllm_rounds_up)
from kvcalc.model import load_spec
from kvcalc.units import GiB

FIXTURES = Path(__file__).parent / "fixtures" / "trtllm-logs"


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


def printed_interval(gib: float) -> tuple[int, int]:
    """The bytes a log's ``%0.2f GiB`` figure stands for: ``[x - 0.005, x + 0.005)`` GiB."""
    return int((gib - 0.005) * GiB), int((gib + 0.005) * GiB) - 1


def blocks_over(interval, per_token, **kw) -> tuple[int, int]:
    """kvcalc's block count at both ends of a printed figure's interval (monotone in between)."""
    lo, hi = interval
    return (trtllm_capacity(lo, per_token, **kw).blocks, trtllm_capacity(hi, per_token, **kw).blocks)


def test_llama31_8b_fp8_rtx5090_engine_log_issue_4275():
    """NVIDIA/TensorRT-LLM#4275 (comment of 2025-06-05): Llama-3.1-8B-Instruct quantized to FP8
    with an FP8 KV cache, a TRT engine built with 0.19.0 (tritonserver 25.05 image), served on an
    RTX 5090 with kv_cache_free_gpu_mem_fraction 0.9 and the default 32 tokens per block. Its log:

        Memory usage when calculating max tokens in paged kv cache: total: 31.84 GiB, available: 17.83 GiB
        Number of blocks in KV cache primary pool: 8219
        Number of tokens per block: 32.
        [MemUsageChange] Allocated 16.05 GiB for max tokens in paged KV cache (263008)

    The pool caches 32 layers x 8 KV heads x 128 x 2 x 1 B = 65,536 B per token. "17.83 GiB" is
    rounded: any free memory printed so is 17.825..17.835 GiB, where kvcalc's blocks run from
    8,214 to 8,219; the log's 8,219 lies at the top (free memory 17.8344..17.835 GiB)."""
    per_token = bpt("llama-3.1-8b", "fp8")
    assert per_token == 65_536
    lo, hi = blocks_over(printed_interval(17.83), per_token)
    assert (lo, hi) == (8_214, 8_219)
    # a free-memory figure within the printed one gives every printed figure exactly
    cap = trtllm_capacity(int(17.8349 * GiB), per_token)
    assert f"{cap.available_bytes / GiB:0.2f}" == "17.83"
    assert (cap.blocks, cap.kv_cache_tokens) == (8_219, 263_008)
    assert cap.log_lines()[0] == "Number of tokens per block: 32."
    # 0.19.0 printed this line without the closing full stop
    assert cap.log_lines()[1].rstrip(".") == \
        "[MemUsageChange] Allocated 16.05 GiB for max tokens in paged KV cache (263008)"
    assert cap.log_lines()[2] == "Number of blocks in KV cache primary pool: 8219"
    # the block count is ceil(max_tokens / 32): flooring whole blocks from the bytes would need
    # at least 17.8355 GiB free, which prints as 17.84, not 17.83
    floor_blocks = int(int(17.835 * GiB) * 0.9) // (32 * per_token)
    assert floor_blocks == 8_218


def test_smollm2_135m_pytorch_backend_log():
    """lmontigny/lm7 docs/tensorrt-llm.md: trtllm-serve 1.2.1 (PyTorch backend) with
    SmolLM2-135M-Instruct on an RTX 4070 SUPER (12 GiB), --max_seq_len 2049, defaults otherwise:

        Estimated max memory in KV cache : 9.06 GiB
        Max KV cache blocks per sequence: 65 [window size=2049], tokens per block=32,
          primary blocks=13189, max sequence length=2049
        [MemUsageChange] Allocated 9.06 GiB for max tokens in paged KV cache (422048).

    and with --free_gpu_memory_fraction 0.25 "2.52 GiB / 117,216 tokens". The estimated memory is
    the budget after the fraction (``KvCacheCreator.configure_kv_cache_capacity``), so kvcalc takes
    it with fraction 1. SmolLM2 caches 30 x 3 x 64 x 2 x 2 B = 23,040 B per token."""
    spec = load_spec(str(FIXTURES / "HuggingFaceTB__SmolLM2-135M.partial.json"))[1]
    per_token = trtllm_bytes_per_token(trtllm_layout(spec))
    assert per_token == 23_040
    lo, hi = blocks_over(printed_interval(9.06), per_token, fraction=1.0)
    assert lo <= 13_189 <= hi and (lo, hi) == (13_188, 13_202)
    cap = trtllm_capacity(int(9.056 * GiB), per_token, fraction=1.0, max_seq_len=2049)
    assert (cap.blocks, cap.kv_cache_tokens) == (13_189, 422_048)
    assert cap.log_lines()[1] == \
        "[MemUsageChange] Allocated 9.06 GiB for max tokens in paged KV cache (422048)."
    # blocks per sequence: ceil(2049 / 32) = 65
    assert -(-2049 // cap.tokens_per_block) == 65
    # the run at free_gpu_memory_fraction 0.25: 3,663 blocks of 32 tokens
    quarter = trtllm_capacity(3_663 * 32 * per_token, per_token, fraction=1.0)
    assert quarter.kv_cache_tokens == 117_216
    assert f"{quarter.kv_cache_bytes / GiB:.2f}" == "2.52"


def test_bands_are_closed_at_the_newest_checked_release():
    trt = get_engine("trtllm")
    assert trt.newest_checked == "1.2.1" and trt.default_version == "1.2"
    assert [(b.name, b.low, b.high) for b in trt.bands] == [
        ("0.10-1.1", (0, 10), (1, 1)), ("1.2", (1, 2), (1, 2))]
    assert trt.band().name == "1.2" and trt.band("1.2.1").name == "1.2"
    assert trt.band("1.1.0rc3").name == "0.10-1.1" and trt.band("0.19").name == "0.10-1.1"
    # both bands round the final pool up (1.2's rounding is the unverified part of its band)
    assert trtllm_rounds_up("1.1") and trtllm_rounds_up("1.2")
    assert any(c.startswith("unverified") for c in trt.band("1.2").changes)


def test_smollm2_135m_trtllm_serve_121_log_under_the_12_band():
    """The trtllm-serve 1.2.1 log of lmontigny/lm7 docs/tensorrt-llm.md (see
    test_smollm2_135m_pytorch_backend_log), laid out under the 1.2 band:

        Estimated max memory in KV cache : 9.06 GiB
        Max KV cache blocks per sequence: 65 [window size=2049], tokens per block=32,
          primary blocks=13189, max sequence length=2049
        [MemUsageChange] Allocated 9.06 GiB for max tokens in paged KV cache (422048).

    KvCacheCreator sets max_tokens = estimated memory // 23,040 B. Any estimate of 422,048 x 23,040
    to 422,049 x 23,040 - 1 bytes (9.05617..9.05619 GiB, printed 9.06) gives every printed figure
    whether the pool rounds max_tokens up to whole blocks (1.1.0rc3) or floors (later main): the
    log cannot tell the two apart."""
    spec = load_spec(str(FIXTURES / "HuggingFaceTB__SmolLM2-135M.partial.json"))[1]
    layout = trtllm_layout(spec, version="1.2.1")
    assert (layout.version, layout.band) == ("1.2.1", "1.2")
    per_token = trtllm_bytes_per_token(layout)
    assert per_token == 23_040
    for estimated in (422_048 * per_token, 9_723_990_000, 422_049 * per_token - 1):
        assert f"Estimated max memory in KV cache : {estimated / GiB:.2f} GiB" == \
            "Estimated max memory in KV cache : 9.06 GiB"
        for round_up in (True, False):
            cap = trtllm_capacity(estimated, per_token, fraction=1.0, max_seq_len=2049,
                                  round_up=round_up)
            assert (cap.max_tokens, cap.blocks, cap.kv_cache_tokens) == (422_048, 13_189, 422_048)
            assert cap.log_lines() == [
                "Number of tokens per block: 32.",
                "[MemUsageChange] Allocated 9.06 GiB for max tokens in paged KV cache (422048).",
                "Number of blocks in KV cache primary pool: 13189"]
            assert f"{cap.kv_cache_bytes / GiB:.2f}" == "9.06"
    # one byte less and the rules part: ceil keeps 13,189 blocks, floor drops to 13,188
    below = 422_048 * per_token - 1
    assert trtllm_capacity(below, per_token, fraction=1.0).blocks == 13_189
    assert trtllm_capacity(below, per_token, fraction=1.0, round_up=False).blocks == 13_188
    # Max KV cache blocks per sequence: 65 for the 2,049-token window
    assert -(-2049 // 32) == 65
    # the plan path uses the band's rounding
    assert get_engine("trtllm").layout(spec, version="1.2").band == "1.2"


def test_gpt_oss_120b_rounds_blocks_up():
    """A DGX Spark gpt-oss-120b run on 1.1.0rc3: 86,711 max tokens become 2,710 blocks of 32,
    86,720 tokens in the "Allocated ... for max tokens in paged KV cache (86720)" line."""
    cap = trtllm_capacity(86_711 * 73_728, bpt("gpt-oss-120b"), fraction=1.0)
    assert (cap.max_tokens, cap.blocks, cap.kv_cache_tokens) == (86_711, 2_710, 86_720)
    assert cap.log_lines()[1].endswith("in paged KV cache (86720).")
    floored = trtllm_capacity(86_711 * 73_728, 73_728, fraction=1.0, round_up=False)
    assert floored.blocks == 2_709


def test_gpt_oss_120b_profiling_pool():
    """The same DGX Spark gpt-oss-120b run, profiling stage: "max_seq_len is not specified, using
    inferred value 131072", "Both free_gpu_memory_fraction and max_tokens are set (to
    0.8999999761581421 and 8224, respectively)", "Allocated 0.56 GiB for max tokens in paged KV
    cache (8224)", "max_num_tokens=8192". One dummy request of 8,192 tokens + 2 generated (overlap
    scheduler on) = 257 blocks of 32."""
    tokens = trtllm_estimation_tokens(8192, 131_072)
    assert tokens == 8_224
    cap = trtllm_capacity(100 * GiB, bpt("gpt-oss-120b"), max_tokens=tokens)
    assert (cap.blocks, cap.kv_cache_tokens) == (257, 8_224)
    assert cap.log_lines()[1] == \
        "[MemUsageChange] Allocated 0.56 GiB for max tokens in paged KV cache (8224)."


def test_gpt_oss_20b_dgx_spark_profiling_pool_forum_354807():
    """NVIDIA developer forum, "TensorRT-LLM PyTorch Memory Fraction Automatically Limited to 0.14
    Despite KV Cache Configuration", https://forums.developer.nvidia.com/t/tensorrt-llm-pytorch-memory-fraction-automatically-limited-to-0-14-despite-kv-cache-configuration/354807:
    trtllm-serve 1.1.0rc3
    (spark-single-gpu-dev image) with openai/gpt-oss-20b on a DGX Spark, --max_seq_len 16384
    --max_num_tokens 4096, disable_overlap_scheduler: true. Its profiling stage:

        max_tokens is set by kv_cache_config.max_tokens: 4128
        [MemUsageChange] Allocated 0.19 GiB for max tokens in paged KV cache (4128).
        max_seq_len=4128, max_num_requests=64, ...

    One dummy request of min(4096, 16383) tokens + 1 generated token (no overlap scheduler) = 129
    blocks of 32 = 4,128 tokens. gpt-oss-20b caches 24 layers x 8 KV heads x 64 x 2 x 2 B =
    49,152 B per token, every layer at full length (sliding layers unshortened without
    max_attention_window): 4,128 x 49,152 B = 0.189 GiB. An FP8 cache (24,576 B) would print 0.09
    and the 12 full-attention layers alone 0.09: the log rules both out."""
    per_token = bpt("gpt-oss-20b")
    assert per_token == 49_152
    tokens = trtllm_estimation_tokens(4096, 16_384, overlap_scheduler=False)
    assert tokens == 4_128
    cap = trtllm_capacity(100 * GiB, per_token, max_tokens=tokens)
    assert (cap.max_tokens, cap.blocks, cap.kv_cache_tokens) == (4_128, 129, 4_128)
    assert cap.log_lines()[1] == \
        "[MemUsageChange] Allocated 0.19 GiB for max tokens in paged KV cache (4128)."
    assert f"{4_128 * 24_576 / GiB:.2f}" == "0.09"
    # with the overlap scheduler on, 2 generated tokens still fit in the 129th block
    assert trtllm_estimation_tokens(4096, 16_384) == 4_128
    # the final pool is not in the thread's text we could read; its YAML caps max_tokens at
    # 200,000, which binds on a DGX Spark's 128 GB unless the profiling run left under 10.2 GiB:
    # then 6,250 blocks, 9.16 GiB (kvcalc's figure, not one the thread shows)
    final = trtllm_capacity(90 * GiB, per_token, max_tokens=200_000)
    assert (final.blocks, f"{final.kv_cache_bytes / GiB:.2f}") == (6_250, "9.16")


def test_llama31_8b_pp2_profiling_pool_issue_8961():
    """NVIDIA/TensorRT-LLM#8961 (comment of 2025-11-07): trtllm-serve llama3.1-8b --pp_size 2
    --max_seq_len 8192 --max_num_tokens 8192 --max_batch_size 32, two nodes. Profiling stage:

        Both free_gpu_memory_fraction and max_tokens are set (to 0.9 and 8256 with free memory
          1.687347412109375 of total memory 5.879119873046875, respectively). ...
        Max KV cache blocks per sequence: 257 [window size=8193], tokens per block=32,
          primary blocks=258, secondary blocks=0, max sequence length=8193
        [MemUsageChange] Allocated 1.01 GiB for max tokens in paged KV cache (8256).

    Dummy requests of min(8192, 8192 - 1) = 8,191 tokens and then 1 token, each + 2 generated
    (overlap scheduler): 257 + 1 = 258 blocks = 8,256 tokens. That release divides the memory it
    prints by 1 << 32 (``KVCacheManager.calculate_max_num_blocks``, resource_manager.py), so
    "1.687" is 6.75 GiB free of 23.5 GiB; 0.9 x 6.75 GiB holds far more than 8,256 tokens, and the
    max_tokens cap binds. Not reproduced: "1.01 GiB" is 8,256 x 131,072 B, all 32 layers, while a
    pipeline stage of 2 holds 16 layers (65,536 B per token, 0.50 GiB); the thread does not say
    which process printed it (the run hung), so kvcalc's per-stage pool is left as it is."""
    tokens = trtllm_estimation_tokens(8192, 8192)
    assert tokens == 8_256
    free = int(1.687347412109375 * (1 << 32))
    assert f"{free / GiB:.2f}" == "6.75"
    full = trtllm_capacity(free, bpt("llama-3.1-8b"), max_tokens=tokens)
    assert (full.blocks, full.kv_cache_tokens) == (258, 8_256)
    assert -(-8193 // 32) == 257
    assert full.log_lines()[1] == \
        "[MemUsageChange] Allocated 1.01 GiB for max tokens in paged KV cache (8256)."
    stage = trtllm_capacity(free, bpt("llama-3.1-8b") // 2, max_tokens=tokens)
    assert f"{stage.kv_cache_bytes / GiB:.2f}" == "0.50"


def test_tinyllama_triton_llmapi_log_tutorials_pr_150():
    """triton-inference-server/tutorials#150 (comment of 2026-04-10, "Tested on H100x2", Triton
    25.12 container, LLM API / PyTorch backend through the tensorrtllm backend's llmapi template,
    whose model.yaml defaults to TinyLlama/TinyLlama-1.1B-Chat-v1.0 with no kv_cache_config):

        Max KV cache blocks per sequence: 65 [window size=2051], tokens per block=32,
          primary blocks=116617, secondary blocks=0
        Number of tokens per block: 32.
        [MemUsageChange] Allocated 78.30 GiB for max tokens in paged KV cache (3731744).

    TinyLlama caches 22 layers x 4 KV heads x 64 x 2 x 2 B = 22,528 B per token: 116,617 blocks
    x 32 = 3,731,744 tokens = 78.30 GiB, every printed figure. The window is TinyLlama's 2,048
    positions + 3 (the guide's max_draft_len), ceil(2051 / 32) = 65 blocks. The log does not print
    the free memory, so the block count is checked from the one free-memory interval that gives it:
    at the default fraction 0.9, 86.9938..86.9946 GiB after the profiling run. That is more than an
    80 GB H100 holds (79.2 GiB in all), so the card had more memory (an H100 NVL has 94 GB)."""
    spec = load_spec(str(FIXTURES / "TinyLlama__TinyLlama-1.1B-Chat-v1.0.partial.json"))[1]
    per_token = trtllm_bytes_per_token(trtllm_layout(spec))
    assert per_token == 22_528
    cap = trtllm_capacity(int(86.994 * GiB), per_token, max_seq_len=2051)
    assert (cap.blocks, cap.kv_cache_tokens) == (116_617, 3_731_744)
    assert cap.log_lines() == [
        "Number of tokens per block: 32.",
        "[MemUsageChange] Allocated 78.30 GiB for max tokens in paged KV cache (3731744).",
        "Number of blocks in KV cache primary pool: 116617"]
    assert -(-2051 // cap.tokens_per_block) == 65
    # the interval of free memory (fraction 0.9) that yields exactly 116,617 blocks
    lo = -(-(116_616 * 32 + 1) * per_token * 10 // 9)
    hi = -(-(116_617 * 32 + 1) * per_token * 10 // 9) - 1
    assert trtllm_capacity(lo, per_token).blocks == trtllm_capacity(hi, per_token).blocks == 116_617
    assert trtllm_capacity(lo - 1, per_token).blocks == 116_616
    assert trtllm_capacity(hi + 1, per_token).blocks == 116_618
    assert f"{lo / GiB:.4f}" == "86.9938" and 86.994 < hi / GiB < 86.995
    assert lo > 85_045_477_376  # an 80 GB H100's whole memory (section 3.10)


def test_estimation_tokens_with_draft_tokens():
    # 1 generated + 1 overlap + 2 x 3 draft tokens: 8192 + 8 tokens -> 257 blocks
    assert trtllm_estimation_tokens(8192, 131_072, draft_tokens=3) == 257 * 32
    assert trtllm_estimation_tokens(4096, 16_384, beam_width=2) == 2 * 129 * 32


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
