"""kvcalc simulate --engine sglang: SGLang's scheduler on its radix-tree token pool.

Hand-checked toys on a pool capped with --max-total-tokens, the new-token ratio's decay and its
value after a retraction, conservation after every step, and the Azure hour within the plan."""

from __future__ import annotations

import random

import pytest

from kvcalc.hardware import resolve_gpu
from kvcalc.model import load_spec
from kvcalc.planning import PlanInputs
from kvcalc.simulation import CATEGORIES, simulate
from kvcalc.simulation import sglang as sgl
from kvcalc.simulation.requests import Arrival, Trace, load_trace


@pytest.fixture(scope="module")
def llama():
    return load_spec("llama-3.1-8b")[1]


def tiny(tokens: int, **kw) -> PlanInputs:
    opts = (("max_total_tokens", tokens),) + kw.pop("opts", ())
    return PlanInputs(gpu=resolve_gpu("h100"), max_len=kw.pop("max_len", 256), engine="sglang",
                      block_size=kw.pop("page", None), engine_options=opts, **kw)


def toy(*reqs) -> Trace:
    return Trace("toy", tuple(Arrival(t, p, o) for t, p, o in reqs))


def one(res):
    assert list(res.runs) == ["sglang-radix"]
    return res.runs["sglang-radix"].totals


def test_defaults_are_sglangs():
    sg = sgl.SglangConfig(1000, 1, 32, 8192)
    assert (sg.init_ratio, sg.min_ratio) == (0.7, pytest.approx(0.098))
    assert sg.ratio_decay == pytest.approx((0.7 - 0.098) / 600)


def test_pool_is_the_plans(llama):
    res = simulate(llama, tiny(64), toy((0, 16, 20)), step_time_s=1.0)
    s = res.engine_settings
    assert (s.max_total_num_tokens, s.page_size, s.max_running_requests) == (64, 1, 32)
    assert s.chunked_prefill_size == 8192 and res.runs["sglang-radix"].pool_slots == 64


def test_admission_reserves_the_new_requests_output(llama):
    # 64 tokens. A is admitted (16 + 20 + 1 page = 37 < 64) and reserves 16 + 1 + 20 = 37;
    # B would need 37 < 64 - 37: no -- the batch is full until A finishes (step 20: its
    # prefill and 19 decodes), then B runs alone: 40 steps, B's first token at step 21
    res = simulate(llama, tiny(64), toy((0, 16, 20), (0, 16, 20)), step_time_s=1.0,
                   timeline_interval_s=1.0, check=True)
    t = one(res)
    assert (t.completed, t.preemptions, t.steps) == (2, 0, 40)
    rows = t.timeline
    assert rows[0][1:3] == (1, 1) and rows[0][4] == 16      # A's prompt
    assert rows[18][4] == 16 + 18                           # step 19: 18 decodes
    assert rows[19][1:3] == (0, 1) and rows[19][4] == 0     # A done: nothing cached
    assert rows[20][1:3] == (1, 0) and rows[20][4] == 16    # B's prefill
    assert t.ttft.percentile(99) == pytest.approx(21, rel=0.01)
    assert t.queue_delay.percentile(99) == pytest.approx(20, rel=0.01)


def test_running_requests_reserve_ratio_times_their_output(llama):
    # 100 tokens. After A's prefill (10 tokens in the tree), B arrives: the running A
    # reserves (50 - 1) x 0.7 = 34.3, so B (10 + 50 + 1 = 61) needs 61 < 90 - 34.3: no;
    # a smaller B (5 + 15 + 1 = 21) gets in at step 2, which only prefills (decodes wait)
    big = one(simulate(llama, tiny(100), toy((0, 10, 50), (0.5, 10, 50)), step_time_s=1.0,
                       timeline_interval_s=1.0))
    assert big.running.summary()["max"] == 1
    small = one(simulate(llama, tiny(100), toy((0, 10, 50), (0.5, 5, 15)), step_time_s=1.0,
                         timeline_interval_s=1.0, check=True))
    assert small.running.summary()["max"] == 2
    assert small.timeline[1][4] == 10 + 5                   # step 2: B's prompt, A waits
    assert small.steps == 1 + 1 + 49                        # A decodes 49 times, B inside


def test_ignore_eos_reserves_the_whole_output(llama):
    # B (10 + 35 + 1 = 46) fits 90 - 0.7 x 49 = 55.7, but not 90 - 49 = 41 when the
    # running A reserves its whole remaining output (ignore_eos)
    arrivals = toy((0, 10, 50), (0.5, 10, 35))
    t = one(simulate(llama, tiny(100), arrivals, step_time_s=1.0))
    assert t.running.summary()["max"] == 2
    t = one(simulate(llama, tiny(100), arrivals, step_time_s=1.0, ignore_eos=True))
    assert t.running.summary()["max"] == 1


def test_chunked_prefill(llama):
    # chunked_prefill_size 32: a prompt of 100 takes 4 prefill steps (32, 32, 32, 4)
    t = one(simulate(llama, tiny(400, opts=(("chunked_prefill_size", 32),)), toy((0, 100, 3)),
                     step_time_s=1.0, check=True))
    assert (t.steps, t.completed) == (4 + 2, 1)


def test_page_size_rounds_and_splits_the_tails(llama):
    # page 16: a prompt of 20 holds 2 pages; its last page's slots: 12 still to fill
    # (reservation up to 20 + 3 - 1 = 22 tokens: 2) and 10 never filled
    res = simulate(llama, tiny(64, page=16), toy((0, 20, 3)), step_time_s=1.0,
                   timeline_interval_s=1.0, check=True)
    row = one(res).timeline[0]
    assert row[4:7] == (20, 2, 10)


def test_retraction_and_the_ratio_after_it(llama):
    class Spy(sgl.SglangLoop):
        seen = []

        def on_retract(self, retracted):
            Spy.seen.append((self.ratio, [(r.generated, r.output) for r in self.running],
                             [(r.generated, r.prompt) for r in retracted]))

    rng = random.Random(7)
    arrivals = [Arrival(i * 0.01, rng.randint(10, 60), rng.randint(200, 400))
                for i in range(40)]
    from kvcalc.simulation import Config
    from kvcalc.simulation.scheduler import Totals
    from kvcalc.simulation.timing import StepTime, calibration

    tot = Totals()
    sg = sgl.SglangConfig(1000, 1, 64, 8192)
    loop = Spy(arrivals, Config(8192, 64, 4096, check=True),
               StepTime(calibration("sglang"), fixed_s=0.01), tot, sg, 1000.0, 512)
    loop.run()
    assert tot.preemptions > 0 and tot.completed == 40
    assert tot.recomputed_tokens > 0
    # (the retracted prompts stay in the tree, but release_req evicts 20 tokens per request
    # still running right away: on a pool this full they are gone before they come back)
    for ratio, running, retracted in Spy.seen:
        # SGLANG_RETRACT_DECODE_STEPS = 20 tokens per request still running
        decoded = sum(g for g, _ in running)
        expect = min(1.0, (decoded + 20 * len(running)) / (sum(o for _, o in running) + 1))
        assert ratio == pytest.approx(expect)
        # the retracted had the fewest output tokens (longest prompt among equals)
        assert max(g for g, _ in retracted) <= min(g for g, _ in running)
    # without retraction the ratio decays to SGLang's floor: 0.7 x 0.14
    assert loop.ratio >= 0.098 - 1e-12


def _random_trace(n, seed, hashed):
    rng = random.Random(seed)
    out, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(20)
        p, o = rng.randint(1, 700), rng.randint(1, 300)
        h = tuple(rng.choice((1, 2, 3)) * 1000 + j for j in range(-(-p // 64))) if hashed else None
        out.append(Arrival(t, p, o, h))
    return Trace("random", tuple(out), 64)


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("hashed", [False, True])
@pytest.mark.parametrize("chunk", [None, 256])
def test_conservation(llama, page, hashed, chunk):
    opts = (("chunked_prefill_size", chunk),) if chunk else ()
    res = simulate(llama, tiny(1200, page=page, max_len=1024, opts=opts),
                   _random_trace(200, 5, hashed), step_time_s=0.01, check=True)
    r = res.runs["sglang-radix"]
    t = r.totals
    assert t.completed + t.rejected == t.requests == 200
    assert t.peak_used_slots <= r.pool_slots
    assert sum(r.memory.values()) == pytest.approx(1.0)
    assert t.preemptions > 0                      # the pool is tight: retractions happen
    if hashed:
        assert t.prefix_hit_tokens > 0


def test_azure_hour_within_the_plan(llama):
    trace = load_trace("azure-conv-2023")
    head = Trace("head", trace.arrivals[:1500])
    res = simulate(llama, PlanInputs(gpu=resolve_gpu("h100"), max_len=8192, engine="sglang"),
                   head)
    r = res.runs["sglang-radix"]
    cap = res.plan.engine_figures
    assert r.pool_slots == cap.max_total_num_tokens
    assert r.totals.peak_used_slots <= r.pool_slots
    assert r.totals.completed + r.totals.rejected == 1500
    assert set(r.memory) == set(CATEGORIES) and sum(r.memory.values()) == pytest.approx(1.0)
    assert res.timing.calibration.name == "sglang"
