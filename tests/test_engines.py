"""The engines registry and vLLM 0.33.0's rules (docs/engines.md), with real figures: each number
below is what vLLM 0.33.0's own capacity code prints for the same inputs (the issue 11 runs,
../shared/reference/engines.md A.7), or what its source sets (platforms/cuda.py, gdn_attn.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kvcalc.cli import cli
from kvcalc.engines import Band, build_layout, engine_names, engines, get_engine
from kvcalc.engines.vllm import (CHUNKED_LOCAL_HYBRID_ENV, VllmRules, hybrid_attention_block,
                                 mamba_blocks_per_request, tp_refusal)
from kvcalc.errors import UsageError
from kvcalc.hardware import load_catalog
from kvcalc.model import load_spec


def plan(*args: str, env: dict | None = None) -> dict:
    result = CliRunner().invoke(cli, ["plan", "-m", *args, "-f", "json"], env=env)
    assert result.exit_code in (0, 3), result.output
    return json.loads(result.stdout)


# ---------------------------------------------------------------- registry and interface

def test_registry_names_versions_and_bands():
    assert [e.name for e in engines()][:4] == ["hf", "vllm", "llamacpp", "ollama"]
    assert get_engine("transformers") is get_engine("hf")
    assert set(engine_names()) >= {"hf", "transformers", "vllm"}
    assert {"vllm", "sglang", "llamacpp", "ollama"} <= set(engine_names(planning=True))
    assert "hf" not in engine_names(planning=True)
    vllm, hf = get_engine("vllm"), get_engine("hf")
    assert (vllm.newest_checked, hf.newest_checked) == ("0.34.0", "5.25.0")
    assert (vllm.display_name, hf.display_name) == ("vLLM", "transformers")
    assert [b.name for b in vllm.bands] == ["0.9-0.19", "0.20-0.32", "0.33", "0.34"]
    assert [b.name for b in hf.bands] == ["<4.56", "4.56-5.14", "5.15-5.17", "5.18-5.24",
                                         ">=5.25"]
    for engine in engines():
        assert all(isinstance(b, Band) and b.changes and b.sources for b in engine.bands)
        # no band is open-ended: the newest ends at the newest version checked, and a later
        # version gets its rules with a "newer than checked" line
        assert engine.modelled_bands()[-1].high == engine.checked_version, engine.name
        assert engine.band().name == engine.band(engine.default_version).name
        assert engine.newer_notice(engine.newest_checked) is None
        major, minor = engine.checked_version
        later = f"{major}.{minor + 1}"
        assert engine.band(later).name == engine.modelled_bands()[-1].name
        assert engine.newer_notice(later) == (
            f"{engine.display_name} {later} is newer than the newest version kvcalc checked "
            f"({engine.newest_checked}): figures use the {engine.modelled_bands()[-1].name} "
            "rules, unverified")
    assert vllm.band("0.25").name == "0.20-0.32" and vllm.band("0.33.0").name == "0.33"
    assert vllm.band("0.34.0").name == "0.34" and vllm.band("0.99").name == "0.34"
    assert vllm.modelled_bands()[-1].versions == "0.34"
    assert hf.installed_version() is not None           # transformers is installed here
    with pytest.raises(UsageError, match="unknown engine 'vlm'.*did you mean vllm"):
        get_engine("vlm")
    with pytest.raises(UsageError, match="outside the bands"):
        vllm.band("0.5")


def test_every_catalog_gpu_has_a_compute_capability():
    for gpu in load_catalog():
        assert gpu.compute_capability, gpu.name
        if gpu.vendor == "nvidia":
            assert gpu.cuda_capability is not None, gpu.name
    caps = {g.name: g.cuda_capability for g in load_catalog()}
    assert caps["h100-sxm"] == (9, 0) and caps["a100-80gb"] == (8, 0) and caps["b200"] == (10, 0)


def test_outputs_name_the_band():
    d = plan("llama-3.1-8b", "--max-len", "8k")
    assert (d["engine_version"], d["version_band"]) == ("0.34", "0.34")
    assert (d["vllm"]["version"], d["vllm"]["band"]) == ("0.34", "0.34")
    old = plan("llama-3.1-8b", "--max-len", "8k", "--vllm-version", "0.25")
    assert old["version_band"] == "0.20-0.32"
    table = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--max-len", "8k"]).stdout
    assert "vLLM 0.34 (version band 0.34)" in table
    est = json.loads(CliRunner().invoke(cli, ["estimate", "-m", "llama-3.1-8b", "--engine",
                                              "vllm", "--vllm-version", "0.19", "-f",
                                              "json"]).stdout)
    assert (est["engine_version"], est["version_band"]) == ("0.19", "0.9-0.19")
    assert "vLLM 0.19 (band 0.9-0.19)" in est["engine_detail"]
    hf = json.loads(CliRunner().invoke(cli, ["estimate", "-m", "llama-3.1-8b", "-f",
                                             "json"]).stdout)
    assert hf["version_band"] == ">=5.25"


# ---------------------------------------------------------------- vLLM 0.33.0's rules
# (pinned with --vllm-version 0.33; the 0.34 figures of the same cases follow each test)

def test_mamba_align_mode_nemotron_3_nano():
    # 2.89 GiB, max_len 4096, bf16: 2 attention blocks of 2,096 + 4 Mamba groups x 3 blocks
    # (max_num_seqs 128: the default 1,024 exceeds the 240 Mamba blocks, and vLLM stops at
    # CUDA-graph capture -- checked below)
    base = ("nemotron-3-nano-30b", "--vllm-version", "0.33", "--kv-budget", "2.89GiB",
            "--max-len", "4k")
    d = plan(*base, "--max-num-seqs", "128")["vllm"]
    assert (d["blocks_per_request"], d["max_concurrency"], d["kv_cache_tokens"]) == \
        (14, 17.14, 70_217)
    assert d["block_size"] == 2096
    assert d["log"] == ["GPU KV cache size: 70,217 tokens, Maximum concurrency for 4,096 tokens "
                        "per request: 17.14x"]
    refused = plan(*base)
    assert refused["fits"] is False and refused["does_not_fit"]["reason"].startswith(
        "max_num_seqs (1024) exceeds available Mamba cache blocks (240).")
    assert plan(*base, "--enforce-eager")["fits"] is True      # no CUDA graphs, no check
    # --no-enable-prefix-caching: mode "none", 1 block per Mamba group (and vLLM <= 0.32)
    off = plan(*base, "--no-enable-prefix-caching")["vllm"]
    assert (off["blocks_per_request"], off["max_concurrency"]) == (6, 40.0)
    old = plan(*base, "--vllm-version", "0.32")["vllm"]
    assert old["max_concurrency"] == 40.0
    # each speculative token adds one state block per Mamba group: 2 + 4 x (3 + 2)
    spec = plan(*base, "--num-speculative-tokens", "2")["vllm"]
    assert spec["blocks_per_request"] == 22
    # 0.34: blocks of 2,112 (aligned to max(16, 64)), 239 of them, 17.07x
    new = plan("nemotron-3-nano-30b", "--kv-budget", "2.89GiB", "--max-len", "4k",
               "--max-num-seqs", "128")["vllm"]
    assert (new["block_size"], new["num_gpu_blocks"], new["max_concurrency"]) == \
        (2112, 239, 17.07)


def test_mamba_blocks_per_request_by_mixer():
    assert mamba_blocks_per_request(False, 0, 0) == 1
    assert mamba_blocks_per_request(True, 0, 1) == 3     # Mamba-2, GDN with FlashInfer
    assert mamba_blocks_per_request(True, 0, 0) == 2     # Jamba's Mamba-1
    rules = VllmRules()
    assert rules.checkpoint_blocks("mamba2", 0) == 1
    assert rules.checkpoint_blocks("mamba", 0) == 0
    assert rules.checkpoint_blocks("gated_deltanet", 128) == 1
    assert VllmRules(capability=(8, 0)).checkpoint_blocks("gated_deltanet", 128) == 0
    assert VllmRules(enable_prefix_caching=False).checkpoint_blocks("mamba2", 0) == 0
    jamba = plan("jamba-v0.1", "--kv-budget", "8GiB", "--max-len", "4k")
    assert any("2 block(s) per request per Mamba group" in n for n in jamba["notes"])


def test_a_request_that_cannot_start_estimates_length_zero():
    # Nemotron-3-Nano needs 14 blocks at 4k and 13 at one token (1 attention + 12 Mamba);
    # memory for 13 blocks leaves 12 after the null block: vLLM stops, estimated length 0,
    # and its 0.33 message then has no "Based on the available memory" sentence
    per_block = 6 * 2096 * 1024     # group size 6 (6 attention layers; 23 Mamba in 4 groups)
    d = plan("nemotron-3-nano-30b", "--vllm-version", "0.33", "--kv-budget", str(13 * per_block), "--max-len", "4k")
    assert d["fits"] is False and d["does_not_fit"]["estimated_max_model_len"] == 0
    err = d["does_not_fit"]["vllm_error"]
    assert err.startswith("To serve at least one request with the model's max seq len (4096), "
                          "(0.17 GiB KV cache is needed, which is larger than the available KV "
                          "cache memory (0.14 GiB). Try increasing `gpu_memory_utilization` "
                          "(which also controls CPU memory on the CPU backend)")
    assert "estimated maximum model length" not in err


def test_gdn_checkpoint_alignment_qwen3_next():
    _, spec = load_spec("qwen3-next-80b-a3b")
    # GDN state 1,097,728 B per layer, 2,048 B per token per attention layer (bf16, TP 1)
    assert hybrid_attention_block(1_097_728, 2048, 64) == 576
    assert hybrid_attention_block(1_097_728, 2048, 16) == 544
    h100 = plan("qwen3-next-80b-a3b", "--vllm-version", "0.33", "--kv-budget", "8GiB", "--max-len", "4k")["vllm"]
    assert h100["block_size"] == 576 and h100["blocks_per_request"] == 8 + 3 * 3
    # Ampere runs the GDN prefill on Triton: no alignment, no checkpoint block
    a100 = plan("qwen3-next-80b-a3b", "--vllm-version", "0.33", "--gpu", "a100", "--kv-budget", "8GiB", "--max-len",
                "4k")["vllm"]
    assert a100["block_size"] == 544 and a100["blocks_per_request"] == 8 + 3 * 2
    assert plan("qwen3-next-80b-a3b", "--kv-budget", "8GiB", "--max-len", "4k",
                "--vllm-version", "0.32")["vllm"]["block_size"] == 544


@pytest.mark.parametrize("args, blocks, block, concurrency", [
    # DeepSeek-V3, 8 GiB, 32k: FLASH_ATTN_MLA (16) first on SM 9.0 for bf16 KV
    (("--vllm-version", "0.33"), 7639, 16, 3.73),
    # fp8 KV: FLASH_ATTN_MLA takes no fp8, FlashMLA (64) is next; 1 B per element
    (("--vllm-version", "0.33", "--kv-dtype", "fp8"), 3819, 64, 7.46),
    # 0.34: the default block is 64, which FLASH_ATTN_MLA (multiples of 16) prefers
    ((), 1909, 64, 3.73),
    (("--kv-dtype", "fp8"), 3819, 64, 7.46),
    # before 0.33: FlashMLA (64) on Hopper whatever the dtype
    (("--vllm-version", "0.32"), 1909, 64, 3.73),
])
def test_mla_backend_block_size(args, blocks, block, concurrency):
    d = plan("deepseek-v3", "--kv-budget", "8GiB", "--max-len", "32k", *args)
    v = d["vllm"]
    assert (v["num_gpu_blocks"], v["block_size"], v["max_concurrency"]) == (blocks, block,
                                                                           concurrency)


def test_chunked_local_attention_keeps_the_hybrid_manager_unless_told_not_to():
    # Llama-4-Scout, 8 GiB, 32k: vLLM 0.33.0 reads
    # VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE with a default of "1": 4 groups
    for on in (plan("llama-4-scout", "--vllm-version", "0.33", "--kv-budget", "8GiB", "--max-len", "32k")["vllm"],
               plan("llama-4-scout", "--vllm-version", "0.33", "--kv-budget", "8GiB", "--max-len", "32k",
                    env={CHUNKED_LOCAL_HYBRID_ENV: "1"})["vllm"],
               plan("llama-4-scout", "--vllm-version", "0.33", "--kv-budget", "8GiB", "--max-len", "32k",
                    "--vllm-version", "0.32")["vllm"]):
        assert (on["num_gpu_blocks"], on["kv_cache_groups"], on["max_concurrency"]) == \
            (10_922, 4, 1.64)
    # set to 0: chunked layers promoted to full attention, one group
    for off in (plan("llama-4-scout", "--vllm-version", "0.33", "--kv-budget", "8GiB", "--max-len", "32k",
                     "--no-allow-chunked-local-hybrid")["vllm"],
                plan("llama-4-scout", "--vllm-version", "0.33", "--kv-budget", "8GiB", "--max-len", "32k",
                     env={CHUNKED_LOCAL_HYBRID_ENV: "0"})["vllm"]):
        assert (off["num_gpu_blocks"], off["kv_cache_groups"], off["max_concurrency"]) == \
            (2730, 1, 1.33)


def test_float32_checkpoints_are_served_in_bf16():
    _, spec = load_spec("olmo-2-7b")
    assert spec.dtype == "fp32"
    lay = build_layout(spec, "vllm")
    assert lay.kv_dtype.name == "bf16" and lay.bytes_per_token == 32 * 32 * 256 * 2
    assert any("served as bf16" in n for n in lay.notes)
    assert build_layout(spec, "hf").kv_dtype.name == "fp32"     # transformers keeps fp32
    d = plan("olmo-2-7b", "--max-len", "4k")
    assert d["weights_dtype"] == "bf16" and d["kv_dtype"] == "bf16"


def test_tp_that_does_not_divide_the_kv_heads_is_refused():
    _, phi4 = load_spec("phi-4")            # 40 attention heads, 10 KV heads
    assert tp_refusal(phi4, 8) == ("--tp 8 does not divide the 10 KV heads: vLLM stops with "
                                   "'10 is not divisible by 8' (QKVParallelLinear)")
    assert tp_refusal(phi4, 2) is None
    result = CliRunner().invoke(cli, ["plan", "-m", "phi-4", "--tp", "8"])
    assert result.exit_code not in (0, 3)
    assert "10 is not divisible by 8" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    _, llama70 = load_spec("llama-3.1-70b")  # 8 KV heads: TP 16 replicates them (16 % 8 == 0)
    assert tp_refusal(llama70, 16) is None
    # attention heads are checked first, by ModelConfig (vllm/config/model.py), in its words
    _, qwen = load_spec("qwen2.5-7b")        # 28 attention heads, 4 KV heads
    assert tp_refusal(qwen, 8).endswith("'Total number of attention heads (28) must be "
                                        "divisible by tensor parallel size (8).'")


def test_sliding_window_counts_two_batches_in_flight():
    # gpt-oss-120b, 128 window, 8,192 batched tokens x 2 (async scheduling): per sliding group
    # ceil((127 + 16,384) / 16) + 1 = 1,033 blocks
    d = plan("gpt-oss-120b", "--vllm-version", "0.33", "--kv-budget", "40GiB", "--max-len", "32k")["vllm"]
    assert d["in_flight_tokens"] == 16_384
    assert d["blocks_per_request"] == 32_768 // 16 + 1033


def test_sparse_mla_fp8_is_served_as_fp8_ds_mla():
    # DeepSeek-V3.2 with --kv-dtype fp8: FLASHMLA_SPARSE stores the fp8_ds_mla blob, 512 fp8 +
    # 4 fp32 scales + 64 bf16 rope = 656 B, plus the indexer's 128 fp8 + 1 fp32 scale = 132 B,
    # per layer and token: 61 x 64 x 788 = 3,076,352 B per block; vLLM 0.33.0's own code, 8 GiB,
    # 4k: 2,792 blocks, 43.62x (tests/test_vllm_differential.py)
    from kvcalc.engines.vllm import ds_mla_fp8_bytes_per_token

    _, spec = load_spec("deepseek-v3.2")
    mla = next(l for l in spec.layers if l.kind == "mla")
    assert ds_mla_fp8_bytes_per_token(mla) == 656
    assert build_layout(spec, "vllm", "fp8").bytes_per_token == 61 * 788
    d = plan("deepseek-v3.2", "--kv-budget", "8GiB", "--max-len", "4k", "--kv-dtype", "fp8")
    v = d["vllm"]
    assert (v["num_gpu_blocks"], v["block_size"], v["max_concurrency"]) == (2792, 64, 43.62)
    # bf16 keeps the 576-element latent (+ indexer): 61 x (1,152 + 132)
    assert build_layout(spec, "vllm", "bf16").bytes_per_token == 61 * 1284


def test_other_engines_refuse_an_uneven_head_split_in_their_own_name():
    """The head-sharding rule is shared (kvcalc.layout.head_split_problem); only vLLM's refusal
    quotes vLLM."""
    from kvcalc.engines import get_engine

    _, phi4 = load_spec("phi-4")            # 40 attention heads, 10 KV heads
    for name, shown in (("sglang", "SGLang"), ("trtllm", "TensorRT-LLM")):
        engine = get_engine(name)
        assert engine.tp_refusal(phi4, 8) == (
            f"--tp 8 does not divide the 10 KV heads: {shown} shards the attention heads evenly "
            "over the GPUs")
        assert engine.tp_refusal(phi4, 3) == (
            f"--tp 3 does not divide the 40 attention heads: {shown} shards the attention heads "
            "evenly over the GPUs")
        _, qwen = load_spec("qwen2.5-7b")    # 28 attention heads, 4 KV heads
        assert engine.tp_refusal(qwen, 14) == (
            f"--tp 14 is not a multiple of the 4 KV heads: {shown} shards the attention heads "
            "evenly over the GPUs")
        assert engine.tp_refusal(phi4, 2) is None and engine.tp_refusal(phi4, 1) is None
