"""Layer-kind rules of the architecture adapter, on small synthetic configs."""

from __future__ import annotations

import pytest

from kvcalc.arch import build_spec
from kvcalc.errors import ConfigError, MissingFieldError

BASE = {"num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 2,
        "hidden_size": 512, "torch_dtype": "bfloat16"}


def kinds(cfg):
    return [layer.kind for layer in build_spec(cfg).layers]


def test_qwen2_sliding_only_when_enabled_and_from_max_window_layers():
    cfg = dict(BASE, model_type="qwen2", sliding_window=4096, use_sliding_window=False)
    spec = build_spec(cfg)
    assert [l.kind for l in spec.layers] == ["full"] * 6
    assert any("use_sliding_window is false" in n for n in spec.notes)
    cfg.update(use_sliding_window=True, max_window_layers=4)
    assert kinds(cfg) == ["full"] * 4 + ["sliding"] * 2


def test_gemma2_alternates_starting_with_sliding():
    cfg = dict(BASE, model_type="gemma2", sliding_window=4096, head_dim=256)
    assert kinds(cfg) == ["sliding", "full"] * 3


def test_sliding_window_pattern_gemma3():
    cfg = dict(BASE, model_type="gemma3_text", sliding_window=1024, num_hidden_layers=12,
               sliding_window_pattern=6)
    assert kinds(cfg) == (["sliding"] * 5 + ["full"]) * 2


def test_text_config_unwrapped_with_defaults_reported():
    raw = {"model_type": "gemma3", "torch_dtype": "bfloat16",
           "text_config": {"hidden_size": 2560, "num_hidden_layers": 34, "sliding_window": 1024}}
    spec = build_spec(raw, "g")
    assert spec.model_type == "gemma3_text"
    assert spec.dtype == "bf16"
    full = [l for l in spec.layers if l.kind == "full"]
    assert len(full) == 5 and full[0].kv_heads == 4 and full[0].head_dim_k == 256
    assert any("'head_dim'" in n and "256" in n for n in spec.notes)
    assert any("text_config" in n for n in spec.notes)


def test_llama4_no_rope_layers_list_and_interval():
    cfg = dict(BASE, model_type="llama4_text", attention_chunk_size=8192, head_dim=64,
               num_hidden_layers=8)
    assert kinds(cfg) == ["chunked"] * 3 + ["full"] + ["chunked"] * 3 + ["full"]
    cfg["no_rope_layers"] = [1, 0, 1, 0, 1, 0, 1, 0]
    assert kinds(cfg) == ["chunked", "full"] * 4


def test_layer_types_list_wins():
    cfg = dict(BASE, model_type="gpt_oss", sliding_window=128,
               layer_types=["full_attention", "sliding_attention"] * 3)
    assert kinds(cfg) == ["full", "sliding"] * 3
    bad = dict(cfg, layer_types=["full_attention"] * 5)
    with pytest.raises(ConfigError, match="lists 5 layers"):
        build_spec(bad)
    odd = dict(cfg, layer_types=["full_attention"] * 5 + ["weird_attention"])
    with pytest.raises(ConfigError, match="weird_attention"):
        build_spec(odd)


def test_sliding_layer_types_need_a_window():
    cfg = dict(BASE, model_type="gemma3_text", layer_types=["sliding_attention"] * 6,
               sliding_window=None)
    with pytest.raises(MissingFieldError, match="sliding_window"):
        build_spec(cfg)


def test_gemma3n_kv_sharing():
    cfg = dict(BASE, model_type="gemma3n_text", num_hidden_layers=10, sliding_window=512,
               head_dim=256, num_kv_shared_layers=4)
    spec = build_spec(cfg)
    assert [l.kind for l in spec.layers] == (["sliding"] * 4 + ["full"] + ["sliding"]
                                            + ["shared"] * 4)
    shared = spec.layers[6:]
    assert [l.source for l in shared] == [5, 5, 5, 4]  # last earlier layer of the same kind


def test_nas_block_configs():
    cfg = {"model_type": "nemotron-nas", "num_hidden_layers": 3, "num_attention_heads": 64,
           "hidden_size": 8192, "torch_dtype": "bfloat16",
           "block_configs": [{"attention": {"n_heads_in_group": 8}},
                             {"attention": {"no_op": True}},
                             {"attention": {"n_heads_in_group": 16}}]}
    spec = build_spec(cfg)
    assert [l.kind for l in spec.layers] == ["full", "none", "full"]
    assert [spec.layers[0].kv_heads, spec.layers[2].kv_heads] == [8, 4]
    cfg["block_configs"][2] = {"attention": {}}
    with pytest.raises(MissingFieldError, match=r"block_configs\[2\].attention.n_heads_in_group"):
        build_spec(cfg)


def test_falcon_variants():
    base = {"model_type": "falcon", "num_hidden_layers": 2, "num_attention_heads": 8,
            "hidden_size": 512}
    assert build_spec(dict(base, multi_query=True)).layers[0].kv_heads == 1
    assert build_spec(dict(base, multi_query=False)).layers[0].kv_heads == 8
    new = build_spec(dict(base, new_decoder_architecture=True, num_kv_heads=2)).layers[0]
    assert (new.kv_heads, new.hf_kv_heads) == (2, 8)
    legacy = build_spec({"model_type": "RefinedWeb", "n_layer": 2, "n_head": 8, "hidden_size": 512,
                         "n_head_kv": 2, "new_decoder_architecture": True}).layers[0]
    assert legacy.kv_heads == 2


def test_gpt2_names_and_mqa_bigcode():
    gpt2 = build_spec({"model_type": "gpt2", "n_layer": 3, "n_head": 4, "n_embd": 256})
    assert gpt2.num_layers == 3 and gpt2.layers[0].kv_heads == 4 and gpt2.layers[0].head_dim_k == 64
    bigcode = build_spec({"model_type": "gpt_bigcode", "n_layer": 2, "n_head": 4, "n_embd": 256,
                          "multi_query": True})
    assert bigcode.layers[0].kv_heads == 1


def test_attention_head_dim_and_kv_aliases():
    cfg = {"model_type": "zamba", "num_hidden_layers": 2, "num_attention_heads": 8,
           "hidden_size": 512, "attention_head_dim": 96, "num_kv_heads": 4}
    layer = build_spec(cfg).layers[0]
    assert (layer.kv_heads, layer.head_dim_k) == (4, 96)


def test_unknown_linear_attention_is_a_clear_error():
    cfg = dict(BASE, model_type="minimax", layer_types=["linear_attention", "full_attention"] * 3)
    with pytest.raises(ConfigError, match="state layout"):
        build_spec(cfg)


def test_nested_configs_and_non_object():
    assert build_spec({"model_type": "llava", "text_config": dict(BASE, model_type="llama")}).num_layers == 6
    with pytest.raises(ConfigError):
        build_spec([1, 2, 3])
    with pytest.raises(ConfigError, match="not a multiple"):
        build_spec(dict(BASE, model_type="llama", hidden_size=500, num_attention_heads=7,
                        num_key_value_heads=7))
