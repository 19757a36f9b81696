"""vLLM's own test vectors (tests/v1/core/test_kv_cache_utils.py, ../shared/reference/engines.md
A.6) and worked examples, reproduced by kvcalc.engines.vllm."""

from __future__ import annotations

import pytest

from kvcalc.arch import build_spec
from kvcalc.dtypes import DTYPES
from kvcalc.engines import build_layout
from kvcalc.engines.cache import KEEP_ALL, KEEP_NONE, KEEP_WINDOW, LayerCache, Layout
from kvcalc.model import load_spec
from kvcalc.units import GiB
from kvcalc.engines.vllm import (VllmRules, estimate_max_model_len, kv_cache_groups,
                                 layer_specs, pp_partition, vllm_capacity)

#: the bands the vectors and logs come from: 0.9-0.19 (tests written against that era's
#: kv_cache_utils.py) and 0.20-0.32
MID = VllmRules("0.19")
V032 = VllmRules("0.32")
M = 16_384  # helper default page: block 16 x 2 kv heads x (64 + 64) x 4 B (fp32)
DUMMY = build_spec({"model_type": "llama", "num_hidden_layers": 1, "num_attention_heads": 2,
                    "hidden_size": 128, "torch_dtype": "float32"})


def layout_of(kinds, block=16, per_token=M // 16, window=1):
    """A vLLM layout from a list of 'full' / 'sliding' / ('full', per_token) entries."""
    caches = []
    for i, k in enumerate(kinds):
        bpt = per_token
        if isinstance(k, tuple):
            k, bpt = k
        keep = KEEP_WINDOW if k == "sliding" else KEEP_ALL
        caches.append(LayerCache(i, k, bpt, keep, window if k == "sliding" else None, block))
    return Layout(DUMMY, "vllm", DTYPES["fp32"], tuple(caches), block)


def blocks(kinds, avail, max_len=16, **kw):
    return vllm_capacity(layout_of(kinds, **kw), [avail], max_len, 2048, rules=MID).num_blocks


@pytest.mark.parametrize("kinds, avail, expected", [
    (["full", "full"], M * 2 * 32, 32),
    (["sliding", "sliding"], M * 2 * 32, 32),
    (["full", "sliding"], M * 2 * 32, 64),                    # 2 groups of 1 layer
    (["full"] * 2 + ["sliding"] * 4, M * 2 * 32, 32),          # group size 2, 3 groups
    (["full"] * 3 + ["sliding"] * 7, M * 3 * 32, 32),          # 7 SW -> 3 groups, 2 padding
    (["full"] * 6 + ["sliding"] * 5, M * 6 * 32, 32),          # ratio < 1.5: group size 6
    ([("full", M // 16 * 2), ("full", M // 16)], M * 3 * 32, 32),  # uniform type: 2M + M
    ([("full", M // 16), ("sliding", M // 32)], M * 32, 32),   # SW block scaled to 32
    ([("full", M // 16), ("sliding", M // 16 * 3 // 2)], M * 2 * 32, 42),  # padded to 24,576 B
])
def test_get_kv_cache_configs_num_blocks(kinds, avail, expected):
    assert blocks(kinds, avail) == expected


def test_grouping_details():
    g = kv_cache_groups(layer_specs(layout_of(["full"] * 3 + ["sliding"] * 7), 16))
    assert [len(x.layers) for x in g.groups] == [3, 3, 2, 2]
    assert [x.layers for x in g.groups][1:] == [(3, 6, 9), (4, 7), (5, 8)]
    assert g.padding_layers == 2
    g = kv_cache_groups(layer_specs(layout_of([("full", M // 16), ("sliding", M // 32)]), 16))
    assert {x.spec.kind: x.spec.block_size for x in g.groups} == {"full": 16, "sliding": 32}


def test_override_and_attention_free():
    cap = vllm_capacity(layout_of(["full", "full"]), [M * 2 * 32], 16, 2048,
                        num_blocks_override=16)
    assert cap.num_blocks == 16
    free = Layout(DUMMY, "vllm", DTYPES["fp32"], (LayerCache(0, "none", 0, KEEP_NONE),), 16)
    assert vllm_capacity(free, [GiB], 16, 2048).num_blocks == 1


def test_multiple_workers_take_the_minimum():
    lay = layout_of(["full", "full"])
    # PP: worker 0 holds layer 0, worker 1 holds layer 1; budgets for 10 and 20 blocks
    cap = vllm_capacity(lay, [M * 10, M * 20], 16, 2048)
    assert cap.num_blocks == 10


def qwen15_7b_layout(kinds):
    # Qwen1.5-7B: FullAttention(bs 16, 32 kv heads x 128, fp16): 512 KiB/token over 32 layers
    return layout_of(kinds, per_token=32 * 2 * 128 * 2, window=1024)


def test_estimate_max_model_len():
    lay = qwen15_7b_layout(["full"] * 32)
    g = kv_cache_groups(layer_specs(lay, 16385))
    assert estimate_max_model_len(g, 8 * GiB, 16385, 32768) == 16384
    assert estimate_max_model_len(g, 8 * GiB, 16383, 32768) == 16383


@pytest.mark.parametrize("kinds, num_blocks, expected", [
    (["full"] * 32, 1536, 1.5),
    (["sliding"] * 32, 129 * 3, 3),                       # cdiv(1023 + 1024, 16) + 1 = 129
    (["full"] * 32 + ["sliding"] * 32, (1024 + 129) * 3, 3),
])
def test_max_concurrency(kinds, num_blocks, expected):
    lay = qwen15_7b_layout(kinds)
    cap = vllm_capacity(lay, [GiB], 16384, 1024, num_blocks_override=num_blocks)
    assert cap.max_concurrency == expected


def test_hybrid_capacity_tokens():
    lay = qwen15_7b_layout(["full"] * 32 + ["sliding"] * 32)
    cap = vllm_capacity(lay, [GiB], 16384, 1024, num_blocks_override=(1024 + 129) * 3)
    assert cap.kv_cache_tokens == 3 * 16384 == 49_152


def test_null_block_and_auto_fit():
    lay = layout_of(["full"])  # page M, 512 tokens need 32 blocks
    assert not vllm_capacity(lay, [M * 32], 512, 2048).fits
    assert vllm_capacity(lay, [M * 33], 512, 2048).fits
    g = kv_cache_groups(layer_specs(lay, 1024))
    assert estimate_max_model_len(g, M * 64, 1024, 2048, null_block=True) == 1008


@pytest.mark.parametrize("n, pp, parts", [
    (27, 2, [14, 13]), (61, 4, [15, 15, 16, 15]), (94, 4, [23, 24, 24, 23]), (32, 1, [32]),
])
def test_pp_partition(n, pp, parts):
    assert [e - s for s, e in pp_partition(n, pp)] == parts


def test_llama31_8b_worked_example():
    # engines.md A.3: 51.63 GiB available, bf16, block 16: 2 MiB per block id
    _, spec = load_spec("llama-3.1-8b")
    lay = build_layout(spec, "vllm", "bf16", version="0.33")
    cap = vllm_capacity(lay, [int(51.63 * GiB)], 131_072, 8192)
    assert cap.num_blocks == 26_434
    assert cap.kv_cache_tokens == 422_944
    assert round(cap.max_concurrency, 2) == 3.23


def test_gemma3_27b_groups():
    _, spec = load_spec("gemma-3-27b")
    g = kv_cache_groups(layer_specs(build_layout(spec, "vllm", "bf16", version="0.33"), 131_072))
    kinds = [x.spec.kind for x in g.groups]
    assert kinds.count("full") == 1 and kinds.count("sliding") == 6
    assert g.group_size == 10 and g.padding_layers == 8
    assert any("8 padding layers" in n and "15.38%" in n for n in g.notes)
    assert g.bytes_per_block() == 10 * 131_072


def test_gpt_oss_two_groups():
    _, spec = load_spec("gpt-oss-120b")
    g = kv_cache_groups(layer_specs(build_layout(spec, "vllm", "bf16", version="0.33"), 131_072))
    assert [len(x.layers) for x in g.groups] == [18, 18]
    assert g.bytes_per_block() == 18 * 32_768  # page 2 x 16 x 8 x 64 x 2 = 32,768 B


def test_mamba_hybrid_enlarges_attention_block():
    _, spec = load_spec("qwen3-next")
    lay = build_layout(spec, "vllm", "bf16", version="0.32")
    specs = layer_specs(lay, 262_144, rules=V032)
    attn = next(s for s in specs.values() if s.kind == "full")
    state = next(s for s in specs.values() if s.kind == "mamba")
    # GDN state 1,097,728 B; attention 2,048 B/token/layer -> 536 tokens -> aligned to 544
    assert attn.block_size == 544 and attn.page_bytes == state.page_bytes == 544 * 2048


# ------------------------------------------------------------------ more of A.6, by vector number

from kvcalc.errors import UsageError  # noqa: E402
from kvcalc.engines.vllm import Group, Grouping, KVSpec, in_flight_tokens  # noqa: E402

FULL16 = KVSpec("full", M, 16)
SW1 = KVSpec("sliding", M, 16, 1)


def test_v2_unequal_group_sizes_use_the_sum_of_blocks_needed():
    # 32 full layers in one group + 2 SW layers in another, as the test builds them by hand
    full = KVSpec("full", 16 * 32 * 128 * 2 * 2, 16)
    sw = KVSpec("sliding", full.page_bytes, 16, 1024)
    g = Grouping((Group(full, tuple(range(32))), Group(sw, (32, 33))), "hybrid", 32, 0, (),
                 {i: full.page_bytes for i in range(34)})
    needed = g.blocks_needed(16384, 1024)
    assert needed == 1024 + 129 == 1153
    assert 1153 * 3 / needed == 3


def test_v3_disable_hybrid_kv_cache_manager_makes_one_full_group():
    lay = layout_of(["full", "sliding"])
    cap = vllm_capacity(lay, [M * 2 * 32], 16, 2048, rules=MID, disable_hybrid=True)
    assert cap.num_blocks == 32 and cap.groups == 1
    assert vllm_capacity(lay, [M * 2 * 32], 16, 2048, rules=MID).num_blocks == 64


def test_v9_disable_hybrid_without_full_layers_is_refused():
    caches = (LayerCache(0, "sliding", M // 16, KEEP_WINDOW, 1, 16),
              LayerCache(1, "chunked", M // 16, "chunk", 512, 16))
    lay = Layout(DUMMY, "vllm", DTYPES["fp32"], caches, 16)
    with pytest.raises(UsageError, match="full-attention"):
        layer_specs(lay, 16, disable_hybrid=True)


def test_v5_pp_sharding_with_the_null_block():
    # max_model_len 512 = 32 blocks; each worker holds one layer and page x 33 bytes
    cap = vllm_capacity(layout_of(["full", "full"]), [M * 33, M * 33], 512, 2048)
    assert cap.num_blocks == 33 and cap.fits


def test_v6_mamba_hybrid_auto_fit_and_override():
    # Mamba (2 speculative blocks) + full attention, pages M; avail M x (64 + 1 + 2 + 1)
    specs = {0: KVSpec("mamba", M, 16, spec_blocks=2), 1: FULL16}
    g = kv_cache_groups(specs)
    assert g.mode == "hybrid" and g.bytes_per_block() == M
    assert estimate_max_model_len(g, M * (64 + 1 + 2 + 1), 4096, 2048, null_block=True) == 1024
    # num_gpu_blocks_override=32 with max_model_len 16384: refuses, max length <= 512
    cap = vllm_capacity(layout_of(["full"]), [GiB], 16384, 2048, num_blocks_override=32)
    assert not cap.fits and cap.estimated_max_model_len <= 512
    assert "max seq len (16384)" in cap.log_lines()[0]


def test_v8_page_unification():
    # mamba 16,384 + attention 16,384 + draft attention 32,768: mamba padded, attention bs 32
    g = kv_cache_groups({0: KVSpec("mamba", M, 16), 1: FULL16, 2: KVSpec("sliding", 2 * M, 16, 64)})
    assert set(g.pages.values()) == {2 * M}
    assert {x.spec.kind: x.spec.block_size for x in g.groups}["full"] == 32
    # odd mamba page 24,576 and attention block 24 (24,576 B) both padded to 32,768
    for odd in (KVSpec("mamba", 24_576, 16), KVSpec("full", 24_576, 24)):
        g = kv_cache_groups({0: odd, 1: KVSpec("sliding", 32_768, 16, 64)})
        assert set(g.pages.values()) == {32_768}
        assert any("padded" in n for n in g.notes) or odd.kind == "mamba"


@pytest.mark.parametrize("specs, uniform", [
    ((FULL16, FULL16), True), ((FULL16, SW1), False), ((SW1, SW1), True),
    ((SW1, KVSpec("sliding", M, 16, 2)), False),
])
def test_v15_is_kv_cache_spec_uniform(specs, uniform):
    g = kv_cache_groups(dict(enumerate(specs)))
    assert (g.mode == "uniform") is uniform


def test_sliding_blocks_count_the_tokens_in_flight():
    # v0.20+: 2 batches in flight with async scheduling at PP 1; PP batches with PP
    assert in_flight_tokens(8192, "mid") == 8192
    assert in_flight_tokens(8192, "new") == 16384
    assert in_flight_tokens(8192, "new", async_scheduling=False) == 8192
    assert in_flight_tokens(8192, "new", pp=4) == 4 * 8192
    assert SW1.blocks_needed(131072, 16384) == 1024 + 1  # cdiv(0 + 16384, 16) + 1


def test_gemma3_27b_concurrency_formula():
    # A.4: concurrency at L = num_blocks / (cdiv(L,16) + 6 x (cdiv(min(1023 + T, L), 16) + 1))
    _, spec = load_spec("gemma-3-27b")
    lay = build_layout(spec, "vllm", "bf16", version="0.19")
    cap = vllm_capacity(lay, [40 * GiB], 131_072, 8192, rules=MID)
    per_block = 10 * 131_072
    assert cap.num_blocks == 40 * GiB // per_block
    need = 131_072 // 16 + 6 * (-(-(1023 + 8192) // 16) + 1)
    assert cap.blocks_per_request == need
    assert cap.max_concurrency == cap.num_blocks / need
    assert cap.kv_cache_tokens == cap.num_blocks // 7 * 16   # mid era: num_blocks // groups x B
    new = vllm_capacity(lay, [40 * GiB], 131_072, 8192, rules=V032)
    assert new.kv_cache_tokens == int(new.max_concurrency * 131_072)


def test_gpt_oss_120b_log_figure():
    # a v0.10-era log: "Available KV cache memory: 5.38 GiB" -> "GPU KV cache size: 78,384 tokens"
    _, spec = load_spec("gpt-oss-120b")
    lay = build_layout(spec, "vllm", "bf16", version="0.19")
    cap = vllm_capacity(lay, [int(5.38 * GiB)], 131_072, 8192, rules=MID)
    assert abs(cap.kv_cache_tokens - 78_384) <= 0.001 * 78_384   # 5.38 is rounded in the log


def test_v4_pp_worker_with_only_one_groups_layers():
    # worker 0 holds the full layer, worker 1 the sliding one: both see both groups
    cap = vllm_capacity(layout_of(["full", "sliding"]), [M * 10, M * 10], 16, 2048)
    assert cap.num_blocks == 10 and cap.groups == 2


@pytest.mark.parametrize("n_state, n_attn, sizes", [
    (20, 7, [7, 7, 6]),       # Kimi-Linear-like: 20 mamba + 7 MLA
    (34, 11, [9, 9, 8, 8]),   # GLM-5-like mamba groups (11 MLA layers)
])
def test_v12_mamba_group_sizes(n_state, n_attn, sizes):
    specs = {i: KVSpec("mamba", M, 16) for i in range(n_state)}
    specs.update({n_state + i: FULL16 for i in range(n_attn)})
    g = kv_cache_groups(specs)
    assert sorted((len(x.layers) for x in g.groups if x.spec.kind == "mamba"),
                  reverse=True) == sizes
    assert g.group_size == n_attn


def test_nemotron_3_nano_attention_block_matches_a_real_log():
    # engines.md A.1: a Mamba-hybrid vLLM log reads "Setting attention block size to 2096
    # tokens": Nemotron-3-Nano (Mamba-2 state 2,134,016 B at TP 1, 1,024 B per token per
    # attention layer) gives 16 x ceil(2,134,016 / (16 x 1,024)) = 2,096
    _, spec = load_spec("nemotron-3-nano-30b")
    cap = vllm_capacity(build_layout(spec, "vllm", "bf16", version="0.33"), [40 * GiB], 131_072, 8192)
    assert cap.block_size == 2096
    assert cap.notes[0].startswith("Setting attention block size to 2096 tokens")


@pytest.mark.parametrize("blocks, max_len, concurrency, fits", [
    (1952, 20_000, 1.56, True),    # kv_cache_size=3.81GiB -> "# GPU blocks: 1952 ... 1.56x"
    (1478, 29_000, 0.82, False),   # kv_cache_size=2.89GiB -> 1478 blocks, 0.82x, refused
])
def test_llama31_8b_rtx3090_log(blocks, max_len, concurrency, fits):
    # a real RTX 3090 log (vllm-project/vllm#10517): the logged GiB are rounded, so feed the
    # budget the block count implies (2 MiB per block id) plus a part of one block
    _, spec = load_spec("llama-3.1-8b")
    lay = build_layout(spec, "vllm", "bf16", version="0.19")
    avail = blocks * 2 * 1024 * 1024 + 12345
    assert abs(avail / GiB - float(f"{avail / GiB:.2f}")) < 0.005
    cap = vllm_capacity(lay, [avail], max_len, 2048, rules=MID)
    assert cap.num_blocks == blocks and cap.kv_cache_tokens == blocks * 16
    assert round(cap.max_concurrency, 2) == concurrency and cap.fits is fits
    assert vllm_capacity(lay, [int(3.81 * GiB)], 20_000, 2048).num_blocks in range(1950, 1953)
