"""kvcalc simulate --engine trtllm: TensorRT-LLM's capacity scheduler on its block pool.

Hand-checked toys on a pool capped with --max-tokens (blocks of 32 tokens), conservation after
every step on random traces, and the Azure hour within the plan's capacity."""

from __future__ import annotations

import random

import pytest

from kvcalc.hardware import resolve_gpu
from kvcalc.model import load_spec
from kvcalc.planning import PlanInputs
from kvcalc.simulation import CATEGORIES, simulate
from kvcalc.simulation.requests import Arrival, Trace, load_trace


@pytest.fixture(scope="module")
def llama():
    return load_spec("llama-3.1-8b")[1]


def tiny(max_tokens: int, **kw) -> PlanInputs:
    return PlanInputs(gpu=resolve_gpu("h100"), max_len=kw.pop("max_len", 256), engine="trtllm",
                      engine_options=(("max_tokens", max_tokens),), **kw)


def toy(*reqs) -> Trace:
    return Trace("toy", tuple(Arrival(t, p, o) for t, p, o in reqs))


def one(res):
    assert list(res.runs) == ["trtllm-paged"]
    return res.runs["trtllm-paged"].totals


def test_pool_is_the_plans(llama):
    res = simulate(llama, tiny(128), toy((0, 40, 30)), step_time_s=1.0)
    assert res.usable_blocks == 4 and res.engine_settings.tokens_per_block == 32
    assert res.runs["trtllm-paged"].pool_slots == 128


def test_guaranteed_no_evict_reserves_to_completion(llama):
    # 4 blocks of 32. A needs ceil((40 + 30) / 32) = 3 blocks to completion, B
    # ceil((20 + 20) / 32) = 2: B waits until A has finished (step 30), then runs
    # its context (step 31) and 19 decodes: 50 steps, nothing paused
    res = simulate(llama, tiny(128), toy((0, 40, 30), (0, 20, 20)), step_time_s=1.0,
                   timeline_interval_s=1.0, check=True)
    t = one(res)
    assert (t.completed, t.preemptions, t.steps) == (2, 0, 50)
    rows = t.timeline
    # (time, running, waiting, preemptions, token states, reservation, ifrag, ext, free)
    assert rows[0][1:4] == (1, 1, 0)
    assert rows[0][4] == 40                        # A's prompt
    # A holds 2 blocks (64 slots) with 40 tokens; 24 slots of them and the third block
    # (32 slots) are promised to its 29 remaining tokens; 96 - 29 = 67 slots never filled
    assert rows[0][5] == 29 and rows[0][6] == 96 - 40 - 29
    assert rows[0][8] == 128 - 96                 # one block free
    assert rows[28][4] == 40 + 28                  # step 29: A's 28th decode
    assert rows[30][1:3] == (1, 0) and rows[30][4] == 20   # step 31: B's context
    assert sum(rows[10][4:]) == pytest.approx(128)


def test_max_utilization_pauses_and_recomputes(llama):
    # 3 blocks: A (2 blocks) and B (1 block) start together; at step 14 B needs a second
    # block, none is free, and B pauses itself (the last started request); it comes back
    # only after A finished at step 30 (A took B's freed block at step 26), recomputes
    # its 20 + 13 tokens at step 31, decodes 6 more: 37 steps
    res = simulate(llama, tiny(96), toy((0, 40, 30), (0, 20, 20)), step_time_s=1.0,
                   capacity_scheduler_policy="MAX_UTILIZATION", timeline_interval_s=1.0,
                   check=True)
    t = one(res)
    assert (t.completed, t.preemptions, t.steps) == (2, 1, 37)
    assert t.recomputed_tokens == 32               # B's first block: it had computed 33
    rows = t.timeline
    assert rows[0][4] == 60                        # both contexts at step 1
    assert rows[12][1:4] == (2, 0, 0) and rows[13][1:4] == (1, 1, 1)
    assert rows[30][4] == 33                       # B's context again (20 + 13 tokens)


def test_max_num_tokens_and_chunked_prefill(llama):
    # a prompt over max_num_tokens is rejected without chunked prefill, chunked with it
    arrivals = toy((0, 100, 2))
    t = one(simulate(llama, tiny(512), arrivals, step_time_s=1.0, max_num_tokens=64))
    assert (t.rejected, t.completed) == (1, 0)
    t = one(simulate(llama, tiny(512), arrivals, step_time_s=1.0, max_num_tokens=64,
                     enable_chunked_prefill=True, check=True))
    # chunks of whole blocks: 64, then 36; then one decode
    assert (t.completed, t.steps, t.prompt_tokens) == (1, 3, 100)


def test_max_batch_size(llama):
    t = one(simulate(llama, tiny(4096), toy(*[(0, 10, 5)] * 6), step_time_s=1.0,
                     max_batch_size=2, check=True))
    assert t.running.summary()["max"] == 2 and t.completed == 6


def test_block_reuse_hits_shared_prefixes(llama):
    # hash ids name 64-token blocks: B shares A's first two blocks of 32 tokens
    arrivals = Trace("shared", (Arrival(0, 100, 2, (1, 2)), Arrival(5, 100, 2, (1, 3))), 64)
    t = one(simulate(llama, tiny(4096), arrivals, step_time_s=1.0, check=True))
    assert t.prefix_hit_tokens == 64
    t = one(simulate(llama, tiny(4096), arrivals, step_time_s=1.0, prefix_caching=False))
    assert t.prefix_hit_tokens == 0


def _random_trace(n, seed, hashed):
    rng = random.Random(seed)
    out, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(20)
        p, o = rng.randint(1, 700), rng.randint(1, 300)
        h = tuple(rng.choice((1, 2, 3)) * 1000 + j for j in range(-(-p // 64))) if hashed else None
        out.append(Arrival(t, p, o, h))
    return Trace("random", tuple(out), 64)


@pytest.mark.parametrize("policy", ["GUARANTEED_NO_EVICT", "MAX_UTILIZATION"])
@pytest.mark.parametrize("hashed", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
def test_conservation(llama, policy, hashed, chunked):
    res = simulate(llama, tiny(1200, block_size=16, max_len=1024), _random_trace(200, 3, hashed),
                   step_time_s=0.01, capacity_scheduler_policy=policy, check=True,
                   enable_chunked_prefill=chunked, max_num_tokens=256 if chunked else None)
    r = res.runs["trtllm-paged"]
    t = r.totals
    assert t.completed + t.rejected == t.requests == 200
    assert t.peak_used_slots <= r.pool_slots
    assert sum(r.memory.values()) == pytest.approx(1.0)
    if policy == "GUARANTEED_NO_EVICT":
        assert t.preemptions == 0
    else:
        assert t.preemptions > 0


def test_azure_hour_within_the_plan(llama):
    trace = load_trace("azure-conv-2023")
    head = Trace("head", trace.arrivals[:1500])
    res = simulate(llama, PlanInputs(gpu=resolve_gpu("h100"), max_len=8192, engine="trtllm"),
                   head)
    r = res.runs["trtllm-paged"]
    cap = res.plan.engine_figures
    assert r.pool_slots == cap.blocks * cap.tokens_per_block
    assert r.totals.peak_used_slots <= r.pool_slots
    assert r.totals.completed + r.totals.rejected == 1500
    assert set(r.memory) == set(CATEGORIES) and sum(r.memory.values()) == pytest.approx(1.0)
    assert res.timing.calibration.name == "trtllm"
