"""Parameter counts from configs against published totals, and weight bytes by dtype."""

from __future__ import annotations

import pytest

from kvcalc.errors import UsageError
from kvcalc.model import load_spec
from kvcalc.params import (count_parameters, default_weights_dtype, weight_bytes,
                           weights_dtype_bytes)


def count(name):
    return count_parameters(load_spec(name)[1])


#: exact totals published by the model cards / safetensors indexes (no MTP layers)
EXACT = [
    ("llama-2-7b", 6_738_415_616), ("llama-3.1-8b", 8_030_261_248),
    ("llama-3.1-70b", 70_553_706_496), ("llama-3.1-405b", 405_853_388_800),
    ("llama-3.2-1b", 1_235_814_400), ("llama-3.2-3b", 3_212_749_824),
    ("mistral-7b-v0.1", 7_241_732_096), ("mixtral-8x7b", 46_702_792_704),
    ("qwen2.5-7b", 7_615_616_512), ("qwen2.5-72b", 72_706_203_648),
    ("qwen3-0.6b", 596_049_920), ("qwen3-8b", 8_190_735_360), ("qwen3-32b", 32_762_123_264),
    ("qwen3-30b-a3b", 30_532_122_624), ("qwen3-235b-a22b", 235_093_634_560),
    ("deepseek-v2-lite", 15_706_484_224), ("deepseek-v3", 671_026_419_200),
    ("kimi-k2", 1_026_408_232_448), ("gpt-oss-120b", 116_829_156_672),
    ("gpt2", 124_439_808), ("gemma-2b", 2_506_172_416), ("gemma-2-9b", 9_241_705_984),
    ("phi-3-mini", 3_821_079_552), ("falcon-7b", 6_921_720_704),
]


@pytest.mark.parametrize("name, total", EXACT)
def test_parameter_counts_match_published_totals(name, total):
    assert count(name).total == total


@pytest.mark.parametrize("name, low, high", [
    ("gpt-oss-20b", 20.8e9, 21.0e9),          # "21B"
    ("jamba-v0.1", 51.4e9, 52.0e9),           # "52B" (Mamba-1 mixers + 16 experts)
    ("nemotron-3-nano-30b", 31.4e9, 31.8e9),  # "31.6B" (Mamba-2 + MoE)
    ("qwen3-next-80b-a3b", 79e9, 81.5e9),     # "80B" (Gated DeltaNet + 512 experts)
    ("deepseek-v2", 235e9, 237e9),            # "236B"
    ("phi-4", 14.6e9, 14.8e9),                # "14.7B"
])
def test_parameter_counts_of_hybrids_and_moe_are_in_range(name, low, high):
    assert low <= count(name).total <= high


def test_active_parameters_of_moe_models():
    assert 3.2e9 < count("qwen3-30b-a3b").active < 3.4e9      # "A3B" (3.3B)
    assert 36e9 < count("deepseek-v3").active < 38e9           # "37B activated"
    dense = count("llama-3.1-8b")
    assert dense.active == dense.total


def test_tied_embeddings_count_once():
    tied, untied = count("llama-3.2-1b"), count("llama-3.1-8b")
    assert tied.embedding == 128_256 * 2048
    assert untied.embedding == 2 * 128_256 * 4096


def test_weight_bytes_by_dtype():
    c = count("llama-2-7b")
    assert weight_bytes(c, "bf16") == weight_bytes(c, "fp16") == 2 * 6_738_415_616
    assert weight_bytes(c, "fp32") == 4 * 6_738_415_616
    # quantized: embeddings and LM head stay 16-bit, the rest carries its scales
    assert weight_bytes(c, "int4") == c.embedding * 2 + -(-c.non_embedding * 68 // 128)
    assert weight_bytes(c, "fp8") == c.embedding * 2 + -(-c.non_embedding * 16388 // 16384)
    assert weight_bytes(c, "fp8") < weight_bytes(c, "int8") < weight_bytes(c, "bf16")
    assert weight_bytes(c, "int4") < weight_bytes(c, "fp8")


def test_checkpoint_dtype_from_quantization_config():
    assert default_weights_dtype(load_spec("deepseek-v3")[1]) == "fp8"
    assert default_weights_dtype(load_spec("gpt-oss-120b")[1]) == "mxfp4"
    assert default_weights_dtype(load_spec("llama-2-7b")[1]) == "fp16"
    # gpt-oss-120b ships ~65 GB: MXFP4 experts, bf16 attention, router and embeddings
    assert 64e9 < weight_bytes(count("gpt-oss-120b"), "mxfp4") < 66e9


def test_unknown_weights_dtype():
    with pytest.raises(UsageError, match="unknown weights dtype"):
        weights_dtype_bytes("int3")


@pytest.mark.parametrize("name", ["llama-2-7b", "deepseek-v3", "gpt2", "nemotron-3-nano-30b",
                                  "gemma-3-27b", "qwen3-next-80b-a3b"])
def test_pipeline_stages_hold_their_own_layers(name):
    from kvcalc.params import stage_parameters
    from kvcalc.engines.vllm import pp_partition

    c = count(name)
    assert sum(p for p, _ in c.layers) + c.embedding + c.final_norm == c.total
    stages = pp_partition(len(c.layers), 4)
    parts = [stage_parameters(c, a, b, i == 0, i == 3, 4) for i, (a, b) in enumerate(stages)]
    copy = c.head_matrix if c.embedding == c.input_embedding else 0  # tied head on the last stage
    assert sum(p.total for p in parts) == c.total + copy
    assert parts[0].embedding == c.input_embedding
    assert sum(p.mlp for p in parts) == c.mlp


def test_deepseek_v3_dense_first_layers_make_stage_0_lighter():
    from kvcalc.params import stage_parameters

    c = count("deepseek-v3")  # 3 dense layers, then MoE
    first = stage_parameters(c, 0, 15, True, False, 4).total
    second = stage_parameters(c, 15, 30, False, False, 4).total
    assert first < second
