"""Property tests: invariants every layout must keep, over synthetic and real configs."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kvcalc.arch import build_spec
from kvcalc.engines import build_layout
from kvcalc.memory import estimate
from kvcalc.sources import load_json_file

HF = Path(__file__).parent / "fixtures" / "hf-configs"
REAL = [build_spec(load_json_file(p), p.stem) for p in sorted(HF.glob("*.json"))]

engines = st.sampled_from(["hf", "vllm"])
seqs = st.integers(min_value=1, max_value=300_000)
real_specs = st.sampled_from(REAL)


@st.composite
def llama_configs(draw):
    heads = draw(st.sampled_from([4, 8, 16, 32, 64]))
    kv = draw(st.sampled_from([h for h in (1, 2, 4, 8, 16, 32, 64) if h <= heads and heads % h == 0]))
    cfg = {
        "model_type": "llama",
        "num_hidden_layers": draw(st.integers(1, 96)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "hidden_size": heads * draw(st.sampled_from([64, 80, 128, 256])),
        "torch_dtype": "bfloat16",
    }
    if draw(st.booleans()):
        cfg["model_type"] = "mistral"
        cfg["sliding_window"] = draw(st.integers(2, 8192))
    return cfg


@settings(max_examples=60, deadline=None)
@given(real_specs, engines, seqs, st.integers(1, 512))
def test_total_is_linear_in_batch(spec, engine, seq, batch):
    layout = build_layout(spec, engine, "bf16")
    assert estimate(layout, seq, batch).bytes_total == batch * estimate(layout, seq, 1).bytes_total


@settings(max_examples=60, deadline=None)
@given(real_specs, engines, seqs, seqs)
def test_monotonic_in_sequence_length(spec, engine, a, b):
    layout = build_layout(spec, engine, "bf16")
    lo, hi = sorted((a, b))
    windowed = any(c.window for c in layout.layers)
    if engine == "vllm" and windowed:
        # a vLLM sliding layer frees a whole block when the window leaves it, so its bytes
        # move by up to one block per layer as a sequence grows; they never exceed that
        slack = sum(c.page_bytes for c in layout.layers if c.window)
        assert layout.bytes_per_sequence(lo) <= layout.bytes_per_sequence(hi) + slack
    else:
        assert layout.bytes_per_sequence(lo) <= layout.bytes_per_sequence(hi)


@settings(max_examples=60, deadline=None)
@given(llama_configs(), engines, seqs)
def test_windows_cap_growth(cfg, engine, seq):
    layout = build_layout(build_spec(cfg), engine, "bf16")
    block = layout.block_size or 1          # vLLM 0.34: 64 tokens per block
    window = cfg.get("sliding_window")
    per_seq = layout.bytes_per_sequence(seq)
    assert per_seq <= layout.bytes_per_token * (seq + block)
    if window:
        # never more than the window plus one partial block (vLLM) / W - 1 tokens (hf)
        cap = window - 1 if engine == "hf" else (window - 1 + 2 * block)
        assert per_seq <= layout.bytes_per_token * cap
        far = layout.bytes_per_sequence(seq + 10 * window)
        assert far <= layout.bytes_per_token * cap


@settings(max_examples=60, deadline=None)
@given(real_specs, engines)
def test_fp8_is_half_of_bf16_and_int4_below_fp8(spec, engine):
    bf16 = build_layout(spec, engine, "bf16").bytes_per_token
    fp8 = build_layout(spec, engine, "fp8").bytes_per_token
    int8 = build_layout(spec, engine, "int8").bytes_per_token
    int4 = build_layout(spec, engine, "int4").bytes_per_token
    fp32 = build_layout(spec, engine, "fp32").bytes_per_token
    if not any(l.kind == "mla" and l.indexer_head_dim for l in spec.layers):
        assert 2 * fp8 == bf16
        assert fp32 == 2 * bf16
    assert int4 < fp8 <= int8 <= bf16 or bf16 == 0


@settings(max_examples=60, deadline=None)
@given(llama_configs(), engines, seqs)
def test_gqa_never_exceeds_mha(cfg, engine, seq):
    mha = dict(cfg, num_key_value_heads=cfg["num_attention_heads"])
    gqa_bytes = build_layout(build_spec(cfg), engine, "bf16").bytes_per_sequence(seq)
    mha_bytes = build_layout(build_spec(mha), engine, "bf16").bytes_per_sequence(seq)
    assert gqa_bytes <= mha_bytes
    assert gqa_bytes * cfg["num_attention_heads"] == mha_bytes * cfg["num_key_value_heads"]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 64), st.sampled_from([256, 512, 1024]), st.sampled_from([32, 64]),
       st.sampled_from([64, 128]), st.sampled_from([8, 16, 64, 128]), engines)
def test_mla_latent_below_decompressed(layers, rank, rope, nope, heads, engine):
    cfg = {"model_type": "deepseek_v3", "num_hidden_layers": layers, "num_attention_heads": heads,
           "hidden_size": 1024, "kv_lora_rank": rank, "qk_rope_head_dim": rope,
           "qk_nope_head_dim": nope, "v_head_dim": nope, "torch_dtype": "bfloat16"}
    spec = build_spec(cfg)
    latent = build_layout(spec, engine, "bf16").bytes_per_token
    expanded = build_layout(spec, "hf", "bf16", version="5.14").bytes_per_token
    assert latent == layers * (rank + rope) * 2
    assert expanded == layers * heads * (2 * nope + rope) * 2
    assert latent < expanded


@settings(max_examples=60, deadline=None)
@given(real_specs, seqs, st.sampled_from([1, 8, 16, 32, 64, 128]))
def test_paged_rounding_is_under_one_block_per_layer(spec, seq, block):
    vllm = build_layout(spec, "vllm", "bf16", block_size=block)
    for cache in vllm.layers:
        if cache.keep == "all":
            held = cache.slots_held(seq)
            assert seq <= held < seq + block
