"""Contiguous versus paged allocation under workloads: properties and realistic results."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvcalc.engines import build_layout
from kvcalc.engines.cache import KEEP_CHUNK, KEEP_WINDOW, LayerCache
from kvcalc.model import load_spec
from kvcalc.units import GiB
from kvcalc.workload import Workload, compare_allocators, peak_slots, sampled

SPECS = {n: load_spec(n)[1] for n in ("llama-3.1-8b", "gemma-3-27b", "qwen3-next-80b-a3b",
                                      "deepseek-v2-lite", "mistral-7b-v0.1", "llama-4-scout")}


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([KEEP_WINDOW, KEEP_CHUNK]), st.integers(1, 300), st.integers(1, 64),
       st.integers(1, 1200))
def test_peak_slots_is_the_maximum_over_the_sequence(keep, window, block, max_len):
    layer = LayerCache(0, "sliding", 2, keep, window, block)
    assert peak_slots(layer, max_len) == max(layer.slots_held(n) for n in range(1, max_len + 1))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(SPECS)), st.lists(st.integers(1, 40_000), min_size=1, max_size=20),
       st.integers(1, 40_000), st.integers(1, 200))
def test_paged_never_below_contiguous(name, lengths, max_len, gib):
    spec = SPECS[name]
    paged = build_layout(spec, "vllm", "bf16")
    token = build_layout(spec, "vllm", "bf16", block_size=1)
    work = Workload("t", tuple(min(n, max_len) for n in lengths))
    c, g = compare_allocators(paged, token, work, max_len, gib * GiB)
    assert g.max_sequences >= c.max_sequences
    assert c.utilization <= g.utilization + 1e-9
    assert 0 <= c.utilization <= 1 and 0 <= g.utilization <= 1.0 + 1e-9


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(SPECS)), st.integers(1, 300), st.integers(1, 100))
def test_more_memory_never_fewer_sequences(name, gib, extra):
    spec = SPECS[name]
    paged = build_layout(spec, "vllm", "bf16")
    token = build_layout(spec, "vllm", "bf16", block_size=1)
    work = sampled("lognormal", 800, 600, 8192, samples=200, seed=3)
    lo = compare_allocators(paged, token, work, 8192, gib * GiB)
    hi = compare_allocators(paged, token, work, 8192, (gib + extra) * GiB)
    assert hi[0].max_sequences >= lo[0].max_sequences
    assert hi[1].max_sequences >= lo[1].max_sequences


def test_realistic_distributions_leave_contiguous_at_20_to_40_percent():
    # ShareGPT-like conversations (vLLM paper: mean 161 prompt + 338 output tokens, long tail)
    # served with a 2,048-token reservation: derived, not typed in
    # (blocks of 16 tokens, as the paper's vLLM; vLLM 0.34's 64-token blocks keep 94%)
    spec = SPECS["llama-3.1-8b"]
    paged = build_layout(spec, "vllm", "bf16", block_size=16)
    token = build_layout(spec, "vllm", "bf16", block_size=1)
    work = sampled("lognormal", 500, 400, 2048, samples=4000, seed=0)
    c, g = compare_allocators(paged, token, work, 2048, 40 * GiB)
    assert 0.20 <= c.utilization <= 0.40
    assert g.utilization > 0.95
    assert 0.6 < c.waste_bytes / c.budget_bytes < 0.8           # reservation waste
    assert g.waste_bytes / g.budget_bytes < 0.03                # internal fragmentation < 1 block
    assert 2.5 < g.max_sequences / c.max_sequences < 5


def test_uniform_and_normal_are_clipped_to_the_max_length():
    w = sampled("uniform", 1000, 500, 1200, samples=500, seed=2)
    assert min(w.lengths) >= 1 and max(w.lengths) == 1200
    w = sampled("normal", 10, 50, 4096, samples=500, seed=2)
    assert min(w.lengths) == 1


def test_chunk_boundary_does_not_count_as_reservation_waste():
    # Llama 4 Scout: a request of exactly 16 chunks ends with an empty chunk, but it held a full
    # chunk on the way; contiguous and paged agree when every request reaches max_len
    spec = SPECS["llama-4-scout"]
    paged = build_layout(spec, "vllm", "bf16")
    token = build_layout(spec, "vllm", "bf16", block_size=1)
    work = Workload("t", (131_072,))
    c, g = compare_allocators(paged, token, work, 131_072, 100 * GiB)
    assert c.bytes_per_sequence == g.bytes_per_sequence
    assert c.max_sequences == int(g.max_sequences)
