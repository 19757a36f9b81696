"""kvcalc simulate --engine sglang: SGLang's scheduler on its radix-tree token pool.

Hand-checked toys on a pool capped with --max-total-tokens, the new-token ratio's decay and its
value after a retraction, conservation after every step, and the Azure hour within the plan."""

from __future__ import annotations

import random
from dataclasses import replace

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


# ---- hybrid pools: SWA (gpt-oss, Llama 4) and Mamba / GDN ------------------------------------

HYBRID_PRESETS = ("gpt-oss-20b", "gpt-oss-120b", "llama-4-scout", "llama-4-maverick",
                  "jamba-v0.1", "nemotron-3-nano-30b", "qwen3-next-80b-a3b")


@pytest.fixture
def loops(monkeypatch):
    """The SglangLoop of each run (its pools' peaks)."""
    seen = []

    class Spy(sgl.SglangLoop):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen.append(self)

    monkeypatch.setattr(sgl, "SglangLoop", Spy)
    return seen


def test_mamba_slots_agree_with_the_plan():
    from kvcalc.engines import sglang as engine
    assert sgl.MAMBA_SLOTS_PER_REQUEST == engine.MAMBA_SLOTS_PER_REQUEST


def test_swa_window_slides_out_of_the_swa_pool(loops):
    # gpt-oss-20b, pool capped at 1,000 tokens: SWA pool 800, window 128, page 1; full and
    # SWA tokens cost the same bytes (half a budget slot each). One request, prompt 200,
    # output 50: the prefill holds 200 full and 200 SWA tokens (in flight), then the SWA pool
    # keeps the last 128 + 1 (window + one page: _evict_swa frees before computed - 129);
    # each decode adds one full token and slides the window by one
    gpt = load_spec("gpt-oss-20b")[1]
    res = simulate(gpt, tiny(1000, max_len=1024), toy((0, 200, 50)), step_time_s=1.0,
                   timeline_interval_s=1.0, check=True)
    s = res.engine_settings
    assert (s.swa_max_total_num_tokens, s.sliding_window, s.prefix_caching) == (800, 128, False)
    t, loop = one(res), loops[-1]
    assert (t.steps, t.completed, t.preemptions) == (50, 1, 0)
    assert t.timeline[0][4] == (200 + 129) / 2 and t.timeline[0][8] == (800 + 671) / 2
    assert t.timeline[1][4] == (201 + 129) / 2
    assert loop.peak_swa == 200 and loop.peak_full == 200 + 48
    assert loop.swa_free == loop.swa_total == 800 and loop.pool.free == 1000


def test_swa_pool_limits_admission(loops):
    # three prompts of 300 (output 10): the full pool admits all three (each 300 + 10 + 1 =
    # 311 < 1000 - what the others reserve), but SGLang's SWA estimate (estimate_swa_kv_tokens)
    # is 300 - 128 + 128 + 1 = 301 each: 301 < 800, 301 < 499, not 301 < 198. The third waits
    # until the first two finish (step 10), then runs alone: 20 steps
    gpt = load_spec("gpt-oss-20b")[1]
    res = simulate(gpt, tiny(1000, max_len=1024), toy((0, 300, 10), (0, 300, 10), (0, 300, 10)),
                   step_time_s=1.0, timeline_interval_s=1.0, check=True)
    t, loop = one(res), loops[-1]
    assert (t.steps, t.completed, t.preemptions) == (20, 3, 0)
    assert t.timeline[0][1:3] == (2, 1) and t.timeline[0][4] == (600 + 2 * 129) / 2
    assert t.timeline[10][1:3] == (1, 0) and t.timeline[10][4] == (300 + 129) / 2
    assert loop.peak_swa == 600 and loop.peak_full == 2 * 308
    assert sgl.swa_tokens(300, 10, 128, 1) == 301
    assert sgl.swa_tokens(1000, 10, 128, 1, chunk=256) == 128 + 128 + 1


def test_mamba_slots_limit_admission(monkeypatch, loops):
    # nemotron-3-nano-30b with a Mamba pool of 10 slots (5 per request) and room for 13
    # requests: two run, the third waits for a free slot (prompt 16, output 5: 5 steps each)
    nem = load_spec("nemotron-3-nano-30b")[1]
    orig = sgl.settings
    monkeypatch.setattr(sgl, "settings",
                        lambda plan, o: replace(orig(plan, o), max_mamba_cache_size=10))
    res = simulate(nem, tiny(1000, max_len=1024), toy((0, 16, 5), (0, 16, 5), (0, 16, 5)),
                   step_time_s=1.0, timeline_interval_s=1.0, check=True)
    t, loop = one(res), loops[-1]
    assert res.engine_settings.max_running_requests >= 3
    assert (t.steps, t.completed, t.preemptions) == (10, 3, 0)
    assert [row[1:3] for row in t.timeline] == [(2, 1)] * 4 + [(0, 1)] + [(1, 0)] * 4 + [(0, 0)]
    assert loop.peak_mamba == 10 and loop.mamba_free == 10 and loop.peak_full == 2 * (16 + 3)
    r = res.runs["sglang-radix"]
    assert sum(r.memory.values()) == pytest.approx(1.0)


def test_mamba_slots_follow_the_running_requests(loops):
    # the plan's pool (max_mamba_cache_size from memory): 5 slots per running request
    nem = load_spec("nemotron-3-nano-30b")[1]
    res = simulate(nem, tiny(1000, max_len=1024, opts=(("max_running_requests", 2),)),
                   toy((0, 16, 5), (0, 16, 5), (0, 16, 5)), step_time_s=1.0, check=True)
    t, loop = one(res), loops[-1]
    assert (t.steps, t.completed) == (10, 3)
    assert loop.peak_mamba == 10 <= res.plan.engine_figures.max_mamba_cache_size


@pytest.mark.parametrize("model", ["gpt-oss-20b", "jamba-v0.1"])
@pytest.mark.parametrize("chunk", [None, 256])
def test_hybrid_conservation(loops, model, chunk):
    spec = load_spec(model)[1]
    opts = (("chunked_prefill_size", chunk),) if chunk else ()
    res = simulate(spec, tiny(1200, max_len=1024, opts=opts, tp=2 if model == "jamba-v0.1" else 1),
                   _random_trace(200, 5, False), step_time_s=0.01, check=True)
    r = res.runs["sglang-radix"]
    t, loop, cap = r.totals, loops[-1], res.plan.engine_figures
    assert t.completed + t.rejected == t.requests == 200
    assert sum(r.memory.values()) == pytest.approx(1.0)
    assert loop.peak_full <= cap.max_total_num_tokens // cap.page_size
    assert loop.peak_swa <= (cap.swa_max_total_num_tokens or 0) // cap.page_size
    assert loop.peak_mamba <= (cap.max_mamba_cache_size or 0)
    assert t.preemptions > 0


@pytest.mark.parametrize("model,kw", [
    ("gpt-oss-20b", {}), ("gpt-oss-120b", {"tp": 4}), ("llama-4-scout", {"tp": 4}),
    ("llama-4-maverick", {"tp": 8, "gpu": "h200"}), ("jamba-v0.1", {"tp": 2}),
    ("nemotron-3-nano-30b", {}), ("qwen3-next-80b-a3b", {"tp": 4})])
def test_hybrid_presets_simulate_within_their_plan(loops, model, kw):
    spec = load_spec(model)[1]
    gpu = resolve_gpu(kw.pop("gpu", "h100"))
    trace = load_trace("azure-conv-2023")
    head = Trace("head", trace.arrivals[:300])
    res = simulate(spec, PlanInputs(gpu=gpu, max_len=8192, engine="sglang", **kw), head,
                   check=True)
    r = res.runs["sglang-radix"]
    t, loop, cap = r.totals, loops[-1], res.plan.engine_figures
    assert t.completed + t.rejected == 300
    assert loop.peak_full <= cap.max_total_num_tokens // cap.page_size
    assert loop.peak_swa <= (cap.swa_max_total_num_tokens or 0) // cap.page_size
    assert loop.peak_mamba <= (cap.max_mamba_cache_size or 0)
    assert loop.peak_swa or loop.peak_mamba
    assert set(r.memory) == set(CATEGORIES) and sum(r.memory.values()) == pytest.approx(1.0)


def test_swa_pool_short_in_decode_retracts(monkeypatch, loops):
    # an SWA pool of 300 tokens beside a full pool of 1,000: requests (prompt 10, output 200)
    # arriving every half step are admitted on the SWA pool's free tokens (129 each), but the
    # running ones' windows grow to 129 each: decode runs out of SWA pages and retracts while
    # the full pool stays under half used
    gpt = load_spec("gpt-oss-20b")[1]
    orig = sgl.settings
    monkeypatch.setattr(sgl, "settings",
                        lambda plan, o: replace(orig(plan, o), swa_max_total_num_tokens=300))
    res = simulate(gpt, tiny(1000, max_len=1024), toy(*[(i * 0.5, 10, 200) for i in range(8)]),
                   step_time_s=1.0, check=True)
    t, loop = one(res), loops[-1]
    assert (t.completed, t.rejected) == (8, 0)
    assert t.preemptions > 0 and t.recomputed_tokens > 0
    assert loop.peak_swa == 300 and loop.peak_full < 500
