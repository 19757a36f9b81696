"""Exact per-token and per-sequence bytes for real configs, derived by hand from each config.

Every expected figure is written as the arithmetic it comes from (layers x kv heads x (K + V
head dims) x bytes), from the config.json values, never copied from kvcalc's own output. The
transformers figures at L=10,000 are what transformers 5.23 itself cached on the meta device
(../shared/reference/transformers.md §4.4).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvcalc.arch import build_spec
from kvcalc.engines import build_layout
from kvcalc.sources import load_json_file

FIXTURES = Path(__file__).parent / "fixtures"
HF = FIXTURES / "hf-configs"
EXTRA = FIXTURES / "extra-configs"

BF16 = 2


def attn(layers: int, kv_heads: int, head_dim: int, b: int = BF16) -> int:
    """K + V bytes per token: layers x kv_heads x 2 x head_dim x bytes."""
    return layers * kv_heads * 2 * head_dim * b


# file -> (hf bytes/token, vllm bytes/token), bf16, derived from the config values
EXPECTED_BF16 = {
    # MHA: 44 layers, 64 heads, hidden 6144 -> head_dim 96
    "EleutherAI__gpt-neox-20b.json": (attn(44, 64, 96),) * 2,
    # GQA, head_dim = hidden / heads
    "Qwen__Qwen2.5-1.5B.json": (attn(28, 2, 1536 // 12),) * 2,
    "Qwen__Qwen2.5-3B.json": (attn(36, 2, 2048 // 16),) * 2,
    "Qwen__Qwen2.5-7B.json": (attn(28, 4, 3584 // 28),) * 2,
    "Qwen__Qwen2.5-7B-Instruct.json": (attn(28, 4, 3584 // 28),) * 2,
    "Qwen__Qwen2.5-32B.json": (attn(64, 8, 5120 // 40),) * 2,
    "Qwen__Qwen2.5-72B.json": (attn(80, 8, 8192 // 64),) * 2,
    # Qwen3: explicit head_dim 128 (Qwen3-0.6B: hidden 1024 / 16 heads would give 64)
    "Qwen__Qwen3-0.6B.json": (attn(28, 8, 128),) * 2,
    "Qwen__Qwen3-8B.json": (attn(36, 8, 128),) * 2,
    "Qwen__Qwen3-32B.json": (attn(64, 8, 128),) * 2,
    "Qwen__Qwen3-30B-A3B.json": (attn(48, 4, 128),) * 2,
    # Qwen3-Next: 1 full layer in 4 (12 of 48), 2 kv heads x 256; the 36 GDN layers hold state
    "Qwen__Qwen3-Next-80B-A3B-Thinking.json": (attn(12, 2, 256),) * 2,
    # MLA: 61 layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 B
    "deepseek-ai__DeepSeek-V3.json": (61 * (512 + 64) * BF16,) * 2,
    "deepseek-ai__DeepSeek-R1.json": (61 * (512 + 64) * BF16,) * 2,
    # Gemma 2: 42 layers (21 sliding + 21 full), 8 kv heads, head_dim 256
    "google__gemma-2-9b-it.json": (attn(42, 8, 256),) * 2,
    # Gemma (1) 2B: MQA, 1 kv head, head_dim 256, 18 layers
    "google__gemma-2b.json": (attn(18, 1, 256),) * 2,
    # Gemma 3 27B: 62 layers, 16 kv heads, head_dim 128
    "google__gemma-3-27b-it.json": (attn(62, 16, 128),) * 2,
    # Gemma 3 4B: config omits heads/kv/head_dim: Gemma3TextConfig defaults 4 kv heads x 256
    "google__gemma-3-4b-it.json": (attn(34, 4, 256),) * 2,
    "meta-llama__Llama-2-7b-hf.json": (attn(32, 32, 128),) * 2,
    "meta-llama__Llama-2-13b-hf.json": (attn(40, 40, 128),) * 2,
    "meta-llama__Llama-2-70b-hf.json": (attn(80, 8, 128),) * 2,
    "meta-llama__Llama-3.1-8B.json": (attn(32, 8, 128),) * 2,
    "meta-llama__Llama-3.1-70B.json": (attn(80, 8, 128),) * 2,
    "meta-llama__Llama-3.2-1B-Instruct.json": (attn(16, 8, 64),) * 2,
    "meta-llama__Llama-3.2-3B.json": (attn(28, 8, 128),) * 2,
    "meta-llama__Llama-3.3-70B-Instruct.json": (attn(80, 8, 128),) * 2,
    # Llama 4 Scout: 48 layers (36 chunked + 12 full NoPE), 8 kv heads x 128
    "meta-llama__Llama-4-Scout-17B-16E-Instruct.json": (attn(48, 8, 128),) * 2,
    "mistralai__Mistral-7B-v0.1.json": (attn(32, 8, 128),) * 2,
    "mistralai__Mixtral-8x7B-v0.1.json": (attn(32, 8, 128),) * 2,
    # Nemotron-3-Nano: 6 attention layers ('*') of 52, 2 kv heads x 128
    "nvidia__NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.json": (attn(6, 2, 128),) * 2,
    # GPT-2: n_layer 12, n_head 12, n_embd 768 -> head_dim 64
    "openai-community__gpt2.json": (attn(12, 12, 64),) * 2,
    # gpt-oss-120b: 36 layers (18 sliding W=128 + 18 full), 8 kv heads, head_dim 64
    "openai__gpt-oss-120b.json": (attn(36, 8, 64),) * 2,
    # Falcon-7B: multi_query -> 1 kv head, head_dim 4544 / 71 = 64
    "tiiuae__falcon-7b-instruct.json": (attn(32, 1, 4544 // 71),) * 2,
}

# real configs of the same families that the adapter was not written against
EXPECTED_UNSEEN_BF16 = {
    "EleutherAI__gpt-j-6b.json": (attn(28, 16, 4096 // 16),) * 2,
    "Qwen__Qwen3-1.7B.json": (attn(28, 8, 128),) * 2,
    "Qwen__Qwen3-235B-A22B.json": (attn(94, 4, 128),) * 2,
    "Qwen__Qwen3-Coder-480B-A35B-Instruct.json": (attn(62, 8, 128),) * 2,
    "bigcode__starcoder2-7b.json": (attn(32, 4, 4608 // 36),) * 2,
    "google__gemma-3-1b-it.json": (attn(26, 1, 256),) * 2,
    "meta-llama__Llama-3.1-405B.json": (attn(126, 8, 16384 // 128),) * 2,
    "microsoft__phi-4.json": (attn(40, 10, 5120 // 40),) * 2,
    "mistralai__Mixtral-8x22B-v0.1.json": (attn(56, 8, 6144 // 48),) * 2,
    "moonshotai__Kimi-K2-Instruct.json": (61 * (512 + 64) * BF16,) * 2,
    "openai__gpt-oss-20b.json": (attn(24, 8, 64),) * 2,
    # Falcon-40B new decoder architecture: vLLM and transformers >= 5.25 cache the 8 kv heads
    # (transformers <= 5.24 broadcast K/V to all 128 query heads: test_falcon_40b_hf_bands)
    "tiiuae__falcon-40b-instruct.json": (attn(60, 8, 64),) * 2,
    # Nemotron-Super-49B (NAS): 49 attention blocks with n_heads_in_group 8 -> 64 / 8 = 8 kv
    # heads, head_dim 8192 / 64 = 128; 31 blocks are no_op
    "nvidia__Llama-3_3-Nemotron-Super-49B-v1.json": (attn(49, 8, 128),) * 2,
    # DeepSeek-V3.2: MLA latent + DSA indexer key (128 values: bf16 in transformers, fp8 + one
    # fp32 scale per 128 values in vLLM)
    "deepseek-ai__DeepSeek-V3.2.json": (61 * ((512 + 64) * 2 + 128 * 2),
                                        61 * ((512 + 64) * 2 + 128 + 4)),
}


def spec_of(path: Path):
    return build_spec(load_json_file(path), path.stem)


def test_every_non_partial_fixture_is_covered():
    complete = {p.name for p in HF.glob("*.json") if ".partial" not in p.name}
    assert complete == set(EXPECTED_BF16)


@pytest.mark.parametrize("name", sorted(EXPECTED_BF16))
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_bytes_per_token_real_configs(name, engine):
    hf, vllm = EXPECTED_BF16[name]
    layout = build_layout(spec_of(HF / name), engine, "bf16")
    assert layout.bytes_per_token == (hf if engine == "hf" else vllm)


@pytest.mark.parametrize("name", sorted(EXPECTED_UNSEEN_BF16))
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_bytes_per_token_unseen_configs(name, engine):
    hf, vllm = EXPECTED_UNSEEN_BF16[name]
    layout = build_layout(spec_of(EXTRA / name), engine, "bf16")
    assert layout.bytes_per_token == (hf if engine == "hf" else vllm)


def test_falcon_40b_hf_bands():
    # transformers <= 5.24 broadcast Falcon-40B's 8 KV heads to its 128 query heads before
    # caching (1,966,080 B/token, measured on 5.24.0); 5.25 caches the 8 (122,880, on 5.25.0)
    spec = spec_of(EXTRA / "tiiuae__falcon-40b-instruct.json")
    by_version = {v: build_layout(spec, "hf", "bf16", version=v).bytes_per_token
                  for v in ("5.14", "5.24", "5.25", "5.30")}
    assert by_version == {"5.14": 1_966_080, "5.24": 1_966_080, "5.25": 122_880,
                          "5.30": 122_880}
    assert 1_966_080 == attn(60, 128, 64) and 122_880 == attn(60, 8, 64)


def test_llama2_7b_fp16_textbook_figure():
    # the anchor: 2 x 32 layers x 32 heads x 128 x 2 B = 524,288 B/token
    spec = spec_of(HF / "meta-llama__Llama-2-7b-hf.json")
    layout = build_layout(spec, "hf", "auto")
    assert layout.kv_dtype.name == "fp16"
    assert layout.bytes_per_token == 524_288 == 2 * 32 * 32 * 128 * 2
    assert layout.bytes_per_sequence(4096) == 524_288 * 4096 == 2 * 2**30


# transformers 5.23 on the meta device, bf16, a forward of 10,000 tokens (transformers.md §4.4)
@pytest.mark.parametrize("name, expected", [
    ("google__gemma-3-27b-it.json", 1_254_981_632),
    ("openai__gpt-oss-120b.json", 373_321_728),
    ("meta-llama__Llama-4-Scout-17B-16E-Instruct.json", 1_699_332_096),
])
def test_hf_windowed_models_match_transformers_measurements(name, expected):
    layout = build_layout(spec_of(HF / name), "hf", "bf16")
    assert layout.bytes_per_sequence(10_000) == expected


def test_hf_window_cap_is_window_minus_one():
    spec = spec_of(HF / "google__gemma-3-27b-it.json")
    layout = build_layout(spec, "hf", "bf16")
    per_layer = 16 * 2 * 128 * 2
    # 10 full layers keep all 4,096 tokens, 52 sliding layers keep W - 1 = 1,023
    assert layout.bytes_per_sequence(4096) == 10 * per_layer * 4096 + 52 * per_layer * 1023
    # inside the window every layer grows
    assert layout.bytes_per_sequence(1000) == 62 * per_layer * 1000


def test_vllm_sliding_window_keeps_bounded_blocks():
    spec = spec_of(HF / "google__gemma-3-27b-it.json")
    layout = build_layout(spec, "vllm", "bf16", block_size=16)   # (0.34's default is 64)
    page = 16 * 16 * 2 * 128 * 2  # block 16 x 16 kv heads x (128 + 128) x 2 B = 131,072
    # n = 4096: full layers hold 256 blocks; sliding layers skip max(0, n - W + 1) = 3,073
    # tokens -> 192 whole blocks freed -> 64 blocks held
    assert layout.layers[0].page_bytes == page
    assert layout.bytes_per_sequence(4096) == 10 * 256 * page + 52 * 64 * page
    # n = 4100: 257 blocks; skipped 3,077 tokens -> 192 blocks freed -> 65 held
    assert layout.bytes_per_sequence(4100) == 10 * 257 * page + 52 * 65 * page


def test_vllm_rounds_to_whole_blocks():
    spec = spec_of(HF / "meta-llama__Llama-3.1-8B.json")
    layout = build_layout(spec, "vllm", "bf16", block_size=16)
    assert layout.bytes_per_sequence(17) == 32 * 131_072  # 2 blocks x 16 tokens x 131,072 B
    assert layout.bytes_per_sequence(16) == 16 * 131_072


def test_vllm_chunked_local_attention_frees_completed_chunks():
    spec = spec_of(HF / "meta-llama__Llama-4-Scout-17B-16E-Instruct.json")
    layout = build_layout(spec, "vllm", "bf16", block_size=16)
    per_layer = 8 * 2 * 128 * 2
    # 10,000 tokens: full layers hold 625 blocks; chunked layers skip one completed chunk of
    # 8,192 tokens (512 blocks) and hold cdiv(10000, 16) - 512 = 113 blocks
    assert layout.bytes_per_sequence(10_000) == (12 * 625 + 36 * 113) * 16 * per_layer
    # blocks of 64 (vLLM 0.34's default): 157 full blocks; chunked layers hold
    # cdiv(10000, 64) - 8192 / 64 = 29 blocks
    big = build_layout(spec, "vllm", "bf16")
    assert big.block_size == 64
    assert big.bytes_per_sequence(10_000) == (12 * 157 + 36 * 29) * 64 * per_layer


# fixed per-sequence states (transformers.md §2.5: meta-device measurements in 5.23)
@pytest.mark.parametrize("name, hf_state", [
    # 36 GDN layers: conv (2*16*128 + 32*128) x 4 x 2 B + recurrent 32 x 128 x 128 x 4 B (fp32)
    ("Qwen__Qwen3-Next-80B-A3B-Thinking.json", 77_856_768),
    # 23 Mamba-2 layers: conv (64*64 + 2*8*128) x 4 x 2 B + ssm 64 x 64 x 128 x 4 B
    ("nvidia__NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.json", 49_364_992),
])
def test_hf_state_bytes_match_transformers(name, hf_state):
    layout = build_layout(spec_of(HF / name), "hf", "bf16")
    assert layout.fixed_bytes_per_sequence == hf_state


def test_jamba_state_and_layers():
    spec = spec_of(HF / "ai21labs__Jamba-v0.1.partial.json")
    assert [i for i, l in enumerate(spec.layers) if l.kind == "full"] == [4, 12, 20, 28]
    layout = build_layout(spec, "hf", "bf16")
    # 28 Mamba layers: conv 8192 x 4 x 2 B + ssm 8192 x 16 x 4 B (transformers.md §2.5)
    assert layout.fixed_bytes_per_sequence == 28 * (8192 * 4 * 2 + 8192 * 16 * 4) == 16_515_072
    vllm = build_layout(spec, "vllm", "bf16")
    # vLLM keeps conv_kernel - 1 columns and the state in the model dtype
    assert vllm.fixed_bytes_per_sequence == 28 * (8192 * 3 * 2 + 8192 * 16 * 2)


def test_nemotron_h_vllm_state_honours_ssm_cache_dtype():
    layout = build_layout(spec_of(HF / "nvidia__NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.json"),
                          "vllm", "bf16")
    # mamba_ssm_cache_dtype float32 in the config: ssm 64 x 64 x 128 x 4 B; conv 6144 x 3 x 2 B
    assert layout.fixed_bytes_per_sequence == 23 * (6144 * 3 * 2 + 64 * 64 * 128 * 4)


@pytest.mark.parametrize("name, expanded", [
    # transformers <= 5.14: layers x heads x (qk_nope 128 + qk_rope 64 + v 128) x 2 B
    ("deepseek-ai__DeepSeek-V3.json", 61 * 128 * (128 + 64 + 128) * 2),      # 4,997,120
    ("deepseek-ai__DeepSeek-V2.partial.json", 60 * 128 * 320 * 2),            # 4,915,200
    ("deepseek-ai__DeepSeek-V2-Lite.partial.json", 27 * 16 * 320 * 2),        # 276,480
])
def test_hf_legacy_mla_layout_is_decompressed(name, expanded):
    spec = spec_of(HF / name)
    assert build_layout(spec, "hf", "bf16", version="5.14").bytes_per_token == expanded
    latent = build_layout(spec, "hf", "bf16", version="5.15").bytes_per_token
    assert latent == spec.num_layers * 576 * 2
    assert latent < expanded


def test_deepseek_v3_docs_figures():
    spec = spec_of(HF / "deepseek-ai__DeepSeek-V3.json")
    latent = build_layout(spec, "vllm", "bf16").bytes_per_token
    expanded = build_layout(spec, "hf", "bf16", version="4.57").bytes_per_token
    assert round(latent / 1024, 1) == 68.6           # KiB/token
    assert round(expanded / 2**20, 2) == 4.77         # MiB/token


def test_hf_before_4_56_does_not_cap_windows():
    spec = spec_of(HF / "mistralai__Mistral-7B-v0.1.json")
    new = build_layout(spec, "hf", "bf16")
    old = build_layout(spec, "hf", "bf16", version="4.55")
    assert new.bytes_per_sequence(10_000) == 131_072 * 4095
    assert old.bytes_per_sequence(10_000) == 131_072 * 10_000


def test_tensor_parallel_kv_heads_replicate():
    spec = spec_of(HF / "meta-llama__Llama-3.1-70B.json")  # 8 kv heads
    per_head = 80 * 2 * 128 * 2
    assert build_layout(spec, "vllm", "bf16", tp=2).bytes_per_token == 4 * per_head
    assert build_layout(spec, "vllm", "bf16", tp=8).bytes_per_token == 1 * per_head
    assert build_layout(spec, "vllm", "bf16", tp=16).bytes_per_token == 1 * per_head


def test_mla_is_not_split_by_tensor_parallel():
    spec = spec_of(HF / "deepseek-ai__DeepSeek-V3.json")
    assert build_layout(spec, "vllm", "bf16", tp=8).bytes_per_token == 70_272
