"""vLLM's attention backend per layer, GPU generation and KV dtype, and its refusals when no
backend takes a layer (kvcalc.engines.vllm.attention_backends; 0.33 and 0.34).

Every expectation here is what vLLM's own selector answered in tests/vllm_diff/backends.py
(834 cases per release, simulated GPUs), or, where marked, a hand-checked reading of the source
at v0.34.0: vllm/platforms/cuda.py (_get_backend_priorities, get_attn_backend_cls),
vllm/v1/attention/backend.py (validate_configuration) and the backends' files under
vllm/v1/attention/backends/.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import kvcalc
from kvcalc.api import resolve
from kvcalc.cli import cli
from kvcalc.engines.vllm import (BackendRefusal, SelectorQuery, attention_backends,
                                 default_block_size, rules_for_gpu, select_backend)
from kvcalc.hardware import find_gpu


def backends(model, gpu, kv="auto", version="0.34", tp=1, **kw):
    g = find_gpu(gpu)
    return attention_backends(resolve(model).spec, kv, rules_for_gpu(version, g.compute_capability,
                                                                    g.vendor), tp, **kw)


def refusal(model, gpu, kv="auto", version="0.34", tp=1, **kw) -> BackendRefusal:
    with pytest.raises(BackendRefusal) as exc:
        backends(model, gpu, kv, version, tp, **kw)
    return exc.value


#: the AttentionSelectorConfig fields after kv_cache_dtype that kvcalc's layers leave at vLLM's
#: defaults, as 0.34 prints them
TAIL_034 = ("block_size=None, use_mla=True, has_sink=False, use_sparse={sparse}, "
            "use_mm_prefix=False, use_per_head_quant_scales=False, attn_type=decoder, "
            "has_sliding_window=False, use_non_causal=False, use_batch_invariant=False, "
            "use_kv_connector=False, use_adaptive_verification=False, use_pcp=False, "
            "use_dcp=False, use_rswa=False)")


# ------------------------------------------------------------- attention (MHA / GQA) layers

@pytest.mark.parametrize("gpu, kv, want", [
    ("a100-80gb", "auto", "FLASH_ATTN"),      # FA2 from SM 8.0
    ("a100-80gb", "fp8", "FLASHINFER"),       # FA2 takes no fp8 KV
    ("l40s", "fp8_e4m3", "FLASHINFER"),
    ("h100-sxm", "fp8", "FLASH_ATTN"),        # FA3 takes fp8 on SM 9.0
    ("h100-sxm", "fp8_e5m2", "FLASHINFER"),   # no FlashAttention version takes e5m2
    ("b200", "auto", "FLASHINFER"),           # FlashInfer first on SM 10.x
    ("rtx-5090", "auto", "FLASH_ATTN"),
    ("rtx-5090", "fp8", "FLASHINFER"),
    ("t4", "auto", "TRITON_ATTN"),            # SM 7.5: only Triton
    ("v100-32gb", "auto", "TRITON_ATTN"),     # SM 7.0: Triton takes any capability
    ("rtx-4090", "fp8", "FLASHINFER"),
])
def test_llama_backend_per_gpu_and_kv_dtype(gpu, kv, want):
    assert backends("llama-3.1-8b", gpu, kv) == [want]


def test_head_sizes_flashinfer_does_not_take_go_to_triton():
    # FlashInfer takes heads 64/128/256/512 only: Phi-3-mini (96) and Phi-2 (80) with fp8
    assert backends("phi-3-mini", "l40s", "fp8") == ["TRITON_ATTN"]
    assert backends("phi-2", "rtx-4090", "fp8_e5m2") == ["TRITON_ATTN"]
    # ... and FlashAttention 4 on SM 10.x takes head 96 (FlashInfer, first there, does not)
    assert backends("phi-3-mini", "b200", "auto") == ["FLASH_ATTN"]


@pytest.mark.parametrize("gpu, want", [
    ("a100-80gb", "TRITON_ATTN"),   # sinks need FA3/FA4; FlashInfer's TRT-LLM sinks not on SM 8.x
    ("h100-sxm", "FLASH_ATTN"),     # FA3
    ("b200", "FLASHINFER"),         # TRT-LLM kernels, prefill and decode
    ("rtx-5090", "FLASHINFER"),     # TRT-LLM decode kernels on SM 12.x
])
def test_gpt_oss_sinks(gpu, want):
    assert backends("gpt-oss-20b", gpu) == [want]


def test_sliding_and_full_layers_share_the_backend():
    assert backends("gemma-3-27b", "h100-sxm", "fp8_e5m2") == ["FLASHINFER"]


def test_rocm_and_bands_before_033_are_not_selected():
    assert backends("llama-3.1-8b", "mi300x", "fp8_e5m2") == []
    assert backends("deepseek-v3", "h100-sxm", "fp8_e5m2", version="0.32") == []


# ------------------------------------------------------------------------------- dense MLA

@pytest.mark.parametrize("gpu, kv, want, block", [
    ("h100-sxm", "auto", "FLASH_ATTN_MLA", 64),
    ("h100-sxm", "fp8", "FLASHMLA", 64),
    ("b200", "fp8", "FLASHINFER_MLA", 64),     # TOKENSPEED_MLA is not installed with vLLM
    ("a100-80gb", "auto", "TRITON_MLA", 64),
    ("rtx-5090", "fp8", "TRITON_MLA", 64),
])
def test_deepseek_v3_backend_and_block(gpu, kv, want, block):
    assert backends("deepseek-v3", gpu, kv, tp=8) == [want]
    g = find_gpu(gpu)
    rules = rules_for_gpu("0.34", g.compute_capability, g.vendor)
    assert default_block_size(resolve("deepseek-v3").spec, kv, rules, 8) == (block, want)


def test_dense_mla_with_fp8_e5m2_is_refused_in_vllms_words():
    r = refusal("deepseek-v2-lite", "h100-sxm", "fp8_e5m2")
    assert r.check == "attention_backend"
    assert str(r) == (
        "No valid attention backend found for cuda with AttentionSelectorConfig(head_size=576, "
        "dtype=torch.bfloat16, kv_cache_dtype=fp8_e5m2, " + TAIL_034.format(sparse=False)
        + ". Reasons: {FLASH_ATTN_MLA: [kv_cache_dtype not supported], FLASHMLA: "
        "[kv_cache_dtype not supported], FLASHINFER_MLA: [kv_cache_dtype not supported, compute "
        "capability not supported], TRITON_MLA: [kv_cache_dtype not supported], "
        "FLASH_ATTN_MLA_SPARSE: [kv_cache_dtype not supported, non-sparse not supported, "
        "FlashAttention MLA Sparse currently supports only FP16/BF16 KV cache], FLASHMLA_SPARSE: "
        "[kv_cache_dtype not supported, non-sparse not supported], FLASHINFER_MLA_SPARSE_SM90: "
        "[kv_cache_dtype not supported, non-sparse not supported, FLASHINFER_MLA_SPARSE_SM90 "
        "requires sparse MLA]}.")
    # 0.33 prints the attention type as the enum
    assert "attn_type=AttentionType.DECODER," in str(
        refusal("deepseek-v2-lite", "h100-sxm", "fp8_e5m2", version="0.33"))


def test_a_user_block_size_rules_out_flashmla():
    """Hand-checked (vllm/v1/attention/backend.py supports_block_size; flashmla.py kernel
    blocks [64]; triton_mla.py MultipleOf(16)): --block-size 16 with fp8 on an H100 leaves
    TRITON_MLA; 64 keeps FlashMLA."""
    assert backends("deepseek-v2-lite", "h100-sxm", "fp8", block_size=16) == ["TRITON_MLA"]
    assert backends("deepseek-v2-lite", "h100-sxm", "fp8", block_size=64) == ["FLASHMLA"]
    q = SelectorQuery(576, "bfloat16", "fp8", (9, 0), block_size=8, use_mla=True,
                      qk_nope_head_dim=128, qk_rope_head_dim=64, kv_lora_rank=512)
    with pytest.raises(BackendRefusal, match=r"block_size=8, .*TRITON_MLA: \[block_size not "
                                             r"supported\]"):
        select_backend(q)


# ------------------------------------------------------------------------------ sparse MLA

@pytest.mark.parametrize("gpu, kv, tp, want", [
    ("h100-sxm", "auto", 8, "FLASH_ATTN_MLA_SPARSE"),
    ("h100-sxm", "bfloat16", 8, "FLASH_ATTN_MLA_SPARSE"),   # V3.2 serves bfloat16 as auto
    ("h100-sxm", "fp8", 8, "FLASHMLA_SPARSE"),
    ("h100-sxm", "fp8_e4m3", 8, "FLASHINFER_MLA_SPARSE_SM90"),
    ("b200", "auto", 1, "FLASHMLA_SPARSE"),                  # 128 heads per GPU
    ("b200", "auto", 8, "FLASH_ATTN_MLA_SPARSE_FA4"),        # 16 heads: FA4 first
    ("b200", "fp8", 8, "FLASHINFER_MLA_SPARSE"),
    ("rtx-5090", "auto", 8, "FLASHINFER_MLA_SPARSE_SM120"),
])
def test_deepseek_v32_sparse_backend(gpu, kv, tp, want):
    assert backends("deepseek-v3.2", gpu, kv, tp=tp) == [want]


def test_fa4_sparse_needs_the_cute_dsl():
    # without nvidia-cutlass-dsl (as in the CPU harness) vLLM falls through to FlashInfer
    assert backends("deepseek-v3.2", "b200", tp=8, fa4_cute_dsl=False) == [
        "FLASHINFER_MLA_SPARSE"]


def test_033_sparse_block_is_common_with_the_indexer():
    """0.33 (default block 16): FLASHINFER_MLA_SPARSE takes multiples of 32, the V3.2 indexer
    64 (indexer.py) -> 64, as vLLM 0.33.0 printed in tests/vllm_diff/backends.py."""
    rules = rules_for_gpu("0.33", "10.0")
    assert default_block_size(resolve("deepseek-v3.2").spec, "fp8", rules, 8) == (
        64, "FLASHINFER_MLA_SPARSE")


def test_sparse_mla_before_hopper_is_refused():
    r = refusal("deepseek-v3.2", "a100-80gb", tp=8)
    assert str(r).startswith(
        "No valid attention backend found for cuda with AttentionSelectorConfig(head_size=576, "
        "dtype=torch.bfloat16, kv_cache_dtype=auto, " + TAIL_034.format(sparse=True)
        + ". Reasons: {FLASH_ATTN_MLA: [sparse not supported, compute capability not "
        "supported, FlashAttention MLA not supported on this device], FLASHMLA: [sparse not "
        "supported, compute capability not supported, FlashMLA Sparse is only supported on "
        "Hopper and Blackwell DC devices.], ")
    assert str(r).endswith("FLASHMLA_SPARSE: [compute capability not supported], "
                           "FLASHINFER_MLA_SPARSE_SM90: [compute capability not supported]}.")
    sm120 = refusal("deepseek-v3.2", "rtx-5090", "fp8_e5m2", tp=8)
    assert str(sm120).endswith("Reasons: {TRITON_MLA: [kv_cache_dtype not supported, sparse not "
                               "supported], FLASHINFER_MLA_SPARSE_SM120: [kv_cache_dtype not "
                               "supported, kv_cache_dtype not supported]}.")


# ------------------------------------------ the Triton kernels' KV dtypes per GPU generation

def test_triton_backends_store_fp8_only_from_sm89():
    """TritonMLAImpl / TritonAttentionImpl.__init__ (vLLM's harness constructs them): an fp8
    KV cache needs native fp8e4nv, SM 8.9+ -- DeepSeek on an A100, Phi-2 (head 80, no
    FlashInfer) on an A10, anything on a T4."""
    r = refusal("deepseek-v3", "a100-80gb", "fp8", tp=8, device_name="NVIDIA A100-SXM4-80GB")
    assert r.check == "kv_cache_dtype"
    assert str(r) == ("FP8 KV cache is not supported by the Triton MLA backend on NVIDIA "
                      "A100-SXM4-80GB (compute capability 8.0); native FP8 (fp8e4nv) requires "
                      "SM89+. Re-run with --kv-cache-dtype bfloat16.")
    assert str(refusal("phi-2", "a10", "fp8_e4m3", device_name="NVIDIA A10")) == (
        "FP8 KV cache is not supported by the Triton attention backend on NVIDIA A10 (compute "
        "capability 8.6); native FP8 (fp8e4nv) requires SM89+. Re-run with --kv-cache-dtype "
        "bfloat16.")
    assert str(refusal("llama-3.1-8b", "v100-32gb", "fp8_e5m2")).startswith(
        "FP8 KV cache is not supported by the Triton attention backend on the GPU (compute "
        "capability 7.0)")
    assert str(refusal("llama-3.1-8b", "t4", "fp8", device_name="Tesla T4")).endswith(
        "(compute capability 7.5); native FP8 (fp8e4nv) requires SM89+. Re-run with "
        "--kv-cache-dtype float16.")
    # Ada takes it; FlashInfer (head 128) takes fp8 on an A100 before Triton is asked
    assert backends("deepseek-v3", "l40s", "fp8", tp=8) == ["TRITON_MLA"]
    assert backends("llama-3.1-8b", "a100-80gb", "fp8") == ["FLASHINFER"]


def test_plan_fp8_deepseek_on_a100_is_refused_with_the_catalog_name():
    res = CliRunner().invoke(cli, ["plan", "-m", "deepseek-v2-lite", "--engine", "vllm",
                                   "--gpu", "a100", "--kv-dtype", "fp8", "-f", "json"])
    assert res.exit_code == 3
    assert json.loads(res.output)["does_not_fit"]["reason"] == (
        "FP8 KV cache is not supported by the Triton MLA backend on NVIDIA A100 SXM4 80GB "
        "(compute capability 8.0); native FP8 (fp8e4nv) requires SM89+. Re-run with "
        "--kv-cache-dtype bfloat16.")


# ------------------------------------------------------- the float KV dtype vs the model's

def test_float_kv_dtype_must_match_the_model_dtype():
    r = refusal("llama-3.1-8b", "a100-80gb", "float16")
    assert r.check == "kv_cache_dtype"
    assert str(r) == ('kv_cache_dtype="float16" is incompatible with dtype="bfloat16". Please '
                      'set `--kv-cache-dtype` to `auto` or `bfloat16`.')
    # a T4 runs bf16 checkpoints in float16; Gemma 3 (no float16) in float32
    assert str(refusal("qwen3-8b", "t4", "bf16")).endswith("to `auto` or `float16`.")
    assert str(refusal("gemma-3-1b", "t4", "fp16")) == (
        'kv_cache_dtype="float16" is incompatible with dtype="float32". Please set '
        "`--kv-cache-dtype` to `auto`.")
    assert backends("llama-3.1-8b", "a100-80gb", "bf16") == ["FLASH_ATTN"]


# ------------------------------------------------------------------------ plan and check

def test_plan_refuses_with_vllms_message_and_exit_3():
    res = CliRunner().invoke(cli, ["plan", "-m", "deepseek-v3.2", "--gpu", "a100-80gb",
                                   "--tp", "8", "-f", "json"])
    assert res.exit_code == 3
    d = json.loads(res.output)
    want = str(refusal("deepseek-v3.2", "a100-80gb", tp=8))
    assert d["does_not_fit"]["reason"] == want
    assert d["vllm"]["log"] == [want] and d["vllm"]["fits"] is False
    assert d["vllm"]["attention_backend"] is None


def test_plan_names_the_backend_vllm_picks():
    res = CliRunner().invoke(cli, ["plan", "-m", "deepseek-v3.2", "--gpu", "h200",
                                   "--tp", "8", "--kv-dtype", "fp8_e4m3", "-f", "json"])
    assert res.exit_code == 0
    d = json.loads(res.output)
    assert d["vllm"]["attention_backend"] == "FLASHINFER_MLA_SPARSE_SM90"
    assert d["vllm"]["block_size"] == 64
    # attention models keep no backend in the record (as before)
    res = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--gpu", "h100-sxm",
                                   "-f", "json"])
    assert json.loads(res.output)["vllm"]["attention_backend"] is None


def test_check_refuses_and_suggests_a_kv_dtype_that_boots():
    d = kvcalc.check("vllm serve deepseek-ai/DeepSeek-V2-Lite --kv-cache-dtype fp8_e5m2 "
                     "--max-model-len 32768", gpu="h100-sxm").to_dict()
    assert not d["boots"]
    (r,) = d["refusals"]
    assert r["check"] == "attention_backend"
    assert r["message"] == str(refusal("deepseek-v2-lite", "h100-sxm", "fp8_e5m2"))
    changes = {s["change"]: s for s in d["suggestions"]}
    assert changes["--kv-cache-dtype auto"]["verified"]
    assert changes["--kv-cache-dtype fp8"]["lines"] == [
        "GPU KV cache size: 3,081,728 tokens, Maximum concurrency for 32,768 tokens per "
        "request: 94.05x"]
    assert kvcalc.check("vllm serve deepseek-ai/DeepSeek-V2-Lite --kv-cache-dtype fp8 "
                        "--max-model-len 32768", gpu="h100-sxm").to_dict()["boots"]


def test_check_float16_kv_on_a_bf16_model():
    d = kvcalc.check("vllm serve llama-3.1-8b --kv-cache-dtype float16 --max-model-len 8192",
                     gpu="a100-80gb").to_dict()
    assert d["refusals"] == [{"engine": "vLLM", "check": "kv_cache_dtype", "message":
                              'kv_cache_dtype="float16" is incompatible with dtype="bfloat16". '
                              "Please set `--kv-cache-dtype` to `auto` or `bfloat16`."}]
    assert d["suggestions"][0]["change"] == "--kv-cache-dtype auto"
