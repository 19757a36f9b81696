"""kvcalc simulate: hand-checked scenarios, properties and the PagedAttention paper's ordering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcalc.cli import cli
from kvcalc.hardware import resolve_gpu
from kvcalc.model import load_spec
from kvcalc.planning import PlanInputs, make_plan
from kvcalc.simulation import Options, result_record, simulate
from kvcalc.simulation.contiguous import reservation
from kvcalc.simulation.metrics import series_jtime, series_time, steps_until
from kvcalc.simulation.requests import Arrival, Trace, load_trace, synthetic
from kvcalc.workload import fixed

FIX = Path(__file__).parent / "fixtures" / "simulate"
OPT13B = str(FIX / "facebook__opt-13b.partial.json")
#: Llama-3.1-8B: 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 B = 131,072 B per token
BLOCK_BYTES = 16 * 131_072


@pytest.fixture(scope="module")
def llama():
    return load_spec("llama-3.1-8b")[1]


def tiny(blocks: int, **kw) -> PlanInputs:
    """An H100 plan whose KV budget is exactly ``blocks`` blocks of Llama-3.1-8B (the null
    block among them), under vLLM 0.33's blocks of 16 tokens (the hand-checked traces)."""
    kw.setdefault("version", "0.33")
    return PlanInputs(gpu=resolve_gpu("h100"), max_len=kw.pop("max_len", 64),
                      kv_budget=blocks * BLOCK_BYTES, **kw)


def run(spec, inp, arrivals, **kw):
    kw.setdefault("check", True)
    return simulate(spec, inp, arrivals, Options(**kw))


# --------------------------------------------------------------------------------------------
# Hand-checked


def test_capacity_is_plans(llama):
    inp = PlanInputs(gpu=resolve_gpu("h100"), max_len=8192)
    plan = make_plan(llama, inp, fixed(1, 0))
    res = run(llama, inp, load_trace(str(FIX / "toy3.csv")), allocators=("paged",))
    assert res.usable_blocks == plan.vllm.num_blocks - 1          # the null block
    rec = result_record(res)
    assert rec["kv_budget_bytes"] == plan.budget.kv_bytes
    assert rec["block_size"] == plan.vllm.block_size == 64      # vLLM 0.34's default block
    assert rec["num_gpu_blocks"] == plan.vllm.num_blocks


def test_toy_trace_preempts_at_step_18(llama):
    """4 usable blocks (5 with the null block; max_model_len 64 fits), two requests of 16 + 20 tokens at t=0, a third
    (40 + 1) at t=30, 1 s per step. Step 1 prefills both (1 block each); decode step s leaves
    15 + s tokens, so step 17 ends with 32 each in 2 blocks (pool full); step 18 needs a 3rd
    block for A: B (newest) is preempted. A finishes at step 20, B is recomputed (33 tokens,
    32 of them computed before) at step 21 and finishes at step 23; C runs alone at t=30."""
    trace = load_trace(str(FIX / "toy3.csv"))
    res = run(llama, tiny(5), trace, allocators=("paged",), step_time_s=1.0,
              prefix_caching=False, timeline_interval_s=1.0)
    t = res.runs["paged"].totals
    assert (t.completed, t.rejected, t.preemptions, t.recomputed_tokens) == (3, 0, 1, 32)
    assert t.steps == 24 and t.seconds == pytest.approx(31.0)
    rows = {round(r[0]): r for r in t.timeline}
    # (time, running, waiting, preemptions, token states, reservation, internal, external, free)
    assert rows[17][1:] == (2, 0, 0, 64, 0, 0, 16, 0)              # 4 blocks, 64 tokens
    assert rows[18][1:] == (1, 1, 1, 33, 2, 13, 16, 16)            # A: 3 blocks, final 35
    assert rows[21][1:] == (1, 0, 1, 33, 2, 13, 16, 16)            # B back: 33 tokens
    # token-state share over time: hand integral of the states above, 1 s per step
    mem = res.runs["paged"].memory
    assert sum(mem.values()) == pytest.approx(1.0)
    assert mem["external_fragmentation"] == pytest.approx(16 / 80)   # the null block


def test_toy_trace_with_prefix_caching_recomputes_nothing(llama):
    """With prefix caching B's two full blocks stay cached when it is preempted, at the tail of
    the free queue (its last block first); A's third block evicts B's second one, so on resume
    B hits its first block (16 tokens) and recomputes 16 of the 32 it had computed."""
    trace = load_trace(str(FIX / "toy3.csv"))
    t = run(llama, tiny(5), trace, allocators=("paged",), step_time_s=1.0).runs["paged"].totals
    assert t.preemptions == 1
    assert t.prefix_hit_tokens == t.resume_hit_tokens == 32 - 16 and t.recomputed_tokens == 16


def test_contiguous_oracle_never_preempts(llama):
    trace = load_trace(str(FIX / "toy3.csv"))
    res = run(llama, tiny(5), trace, allocators=("orca-oracle", "orca-pow2", "orca-max"),
              step_time_s=1.0)
    assert res.runs["orca-oracle"].totals.preemptions == 0
    assert res.runs["orca-oracle"].pool_slots == 80
    # oracle: 36 + 36 slots fit in 80; pow2: 64 + 64 do not -> B waits for A
    assert res.runs["orca-oracle"].totals.seconds == pytest.approx(31.0)
    assert res.runs["orca-pow2"].totals.waiting.summary()["max"] == 1
    # max: every request reserves max_len = 64 slots: one at a time
    assert res.runs["orca-max"].totals.running.summary()["max"] == 1
    assert res.runs["orca-max"].totals.completed == 3


def test_reservations():
    assert reservation("orca-max", 161, 338, 2048) == 2048
    assert reservation("orca-pow2", 161, 338, 2048) == 512
    assert reservation("orca-pow2", 1500, 600, 2048) == 2048
    assert reservation("orca-oracle", 161, 338, 2048) == 499


def test_prefix_hits_on_a_hash_chain(llama):
    """Unlimited cache, requests 100 s apart. r2 reuses r1's 2 x 512 tokens (64 blocks: 1,024);
    r3 shares hash id 1 only (512); r4 repeats r1 but its last token is always computed, so
    63 blocks hit (1,008). 2,544 tokens in all."""
    trace = load_trace(str(FIX / "chain.jsonl"))
    inp = PlanInputs(version="0.33", gpu=resolve_gpu("h100"), max_len=4096)
    t = run(llama, inp, trace, allocators=("paged",)).runs["paged"].totals
    assert t.prefix_hit_tokens == 1024 + 512 + 1008
    t_off = run(llama, inp, trace, allocators=("paged",),
                prefix_caching=False).runs["paged"].totals
    assert t_off.prefix_hit_tokens == 0


def hit_bound(trace: Trace, block: int) -> int:
    """Leading full blocks of each prompt that an earlier prompt computed, capped at
    (prompt - 1) // block, from the hash ids alone."""
    seen: set = set()
    total = 0
    H = trace.hash_block
    for a in trace.arrivals:
        keys = []
        for m in range(a.prompt // block):
            end = (m + 1) * block
            h = (end - 1) // H
            if h >= len(a.hash_ids):
                break
            keys.append((a.hash_ids[h], end - h * H))
        hits = 0
        for k in keys[:(a.prompt - 1) // block]:
            if k not in seen:
                break
            hits += 1
        total += hits * block
        seen.update(keys)
    return total


def test_prefix_hits_equal_the_bound_on_mooncake(llama):
    """The first 40 Mooncake conversation requests, 10,000 s apart on an unlimited cache: the
    hits are exactly what the hash ids allow."""
    head = load_trace(str(FIX / "mooncake-conversation-head40.jsonl"))
    spaced = Trace("spaced", tuple(Arrival(i * 10_000.0, a.prompt, a.output, a.hash_ids)
                                   for i, a in enumerate(head.arrivals)))
    inp = PlanInputs(version="0.33", gpu=resolve_gpu("h100"), max_len=131072,
                     kv_budget=1 << 40)
    t = run(llama, inp, spaced, allocators=("paged",), check=False).runs["paged"].totals
    assert t.prefix_hit_tokens == hit_bound(spaced, 16) > 10_000
    assert t.completed == 40


def test_cpu_tier_catches_evicted_prefixes(llama):
    """69 usable blocks. r1 (1,024 tokens: 65 blocks) frees 64 cached blocks, r2 reuses them and
    frees 68 (hash ids 1, 2, 3). r3 (600 + 200 tokens, 50 blocks) hits the 32 blocks of id 1 and
    takes 18 more from the head of the free queue: 1 clean block, then 17 cached ones, the
    least recently freed first -- id 3's 4 blocks, then id 2's blocks 63..51 (a request's
    blocks are freed tail first). r4 repeats r1: 51 blocks hit on the GPU (816 tokens); with a
    CPU tier blocks 51..62 are found there (192 tokens; block 63 holds r4's last token)."""
    trace = load_trace(str(FIX / "chain.jsonl"))
    inp = tiny(70, max_len=1104)
    no_tier = run(llama, inp, trace, allocators=("paged",)).runs["paged"].totals
    tier = run(llama, inp, trace, allocators=("paged",),
               cpu_offload_bytes=200 * BLOCK_BYTES).runs["paged"].totals
    assert (no_tier.prefix_hit_tokens, no_tier.offload_hit_tokens) == (1024 + 512 + 816, 0)
    assert (tier.prefix_hit_tokens, tier.offload_hit_tokens) == (1024 + 512 + 816, 192)


# --------------------------------------------------------------------------------------------
# Properties


def test_no_preemption_when_the_budget_is_ample(llama):
    trace = load_trace("azure-conv-2023")
    head = Trace("head", trace.arrivals[:400])
    t = run(llama, PlanInputs(version="0.33", gpu=resolve_gpu("h100"), max_len=32768), head,
            allocators=("paged",)).runs["paged"].totals
    assert t.preemptions == 0 and t.completed == 400


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.integers(1, 200), st.floats(0, 20)),
                min_size=1, max_size=25),
       st.integers(4, 60), st.booleans(), st.integers(0, 40), st.sampled_from((1, 2)))
def test_conservation(llama, reqs, blocks, prefix, cpu, pp):
    """Blocks in use never exceed the pool, no category goes negative, the categories sum to
    the budget (checked after every step), every request finishes or is rejected; no peak
    above the plan's capacity (pp 1 and 2)."""
    arrivals = tuple(sorted((Arrival(t, p, o, (0, 1, 2) if prefix else None)
                             for p, o, t in reqs), key=lambda a: a.arrival_s))
    trace = Trace("hypothesis", arrivals)
    res = run(llama, tiny(blocks, max_len=16 * (blocks - 1), max_batched_tokens=64,
                          max_num_seqs=8, pp=pp), trace,
              prefix_caching=prefix, cpu_offload_bytes=cpu * BLOCK_BYTES)
    assert res.usable_blocks == res.plan.vllm.num_blocks - 1
    for r in res.runs.values():
        t = r.totals
        assert t.completed + t.rejected == t.requests == len(reqs)
        assert t.peak_used_slots <= r.pool_slots <= r.budget_slots
        assert sum(r.memory.values()) == pytest.approx(1.0)
        assert min(r.memory.values()) >= -1e-9


def test_determinism_under_a_seed(llama):
    inp = PlanInputs(version="0.33", gpu=resolve_gpu("h100"), max_len=4096,
                     kv_budget=400 * BLOCK_BYTES)

    def once(seed):
        return result_record(run(llama, inp, lambda: synthetic(
            300, 20.0, 500, 200, "lognormal", max_len=4096, seed=seed), check=False))

    assert once(3) == once(3)
    assert once(3) != once(4)


def test_paper_ordering_sharegpt_like():
    """PagedAttention paper Fig. 2 (OPT-13B, A100-40GB, ShareGPT means 161 in / 338 out):
    token states Orca Max 20.4% < Pow2 26.8% < Oracle 38.2% < vLLM 96.3%."""
    spec = load_spec(OPT13B)[1]
    inp = PlanInputs(version="0.33", gpu=resolve_gpu("a100-40gb"), max_len=2048)
    res = run(spec, inp, lambda: synthetic(2500, None, 161, 338, "lognormal", max_len=2048,
                                           seed=0), check=False)
    share = {n: r.memory["token_states"] for n, r in res.runs.items()}
    assert share["orca-max"] < share["orca-pow2"] < share["orca-oracle"] < share["paged"]
    assert share["paged"] > 0.94          # 95.0% with calibration kvcalc-timing-4
    assert 0.15 < share["orca-max"] < 0.30


# --------------------------------------------------------------------------------------------
# Closed forms


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 64), st.integers(1, 3000), st.integers(1, 400), st.floats(1e-4, 1),
       st.floats(0, 1e-3), st.integers(0, 500))
def test_decode_run_integral_by_brute_force(B, c, k, c0, c1, extra):
    """A decode run's time-weighted unused tail (reservation + internal fragmentation) and
    token states equal the step-by-step sums."""
    from kvcalc.simulation.paged import PagedCache
    from kvcalc.simulation.scheduler import Req

    r = Req(0, Arrival(0.0, c, k + extra + 1), k + extra + 1)
    cache = PagedCache(10_000, B, 10_000 * B, prefix_caching=False)
    cache.admit(r, None, c)          # a decoding request holds its c tokens in ceil(c/B) blocks
    r.computed = c
    d_total, dj = series_time(k, c0, c1), series_jtime(k, c0, c1)
    tok, res, ifrag, _, _ = cache.decode_integrals([r], k, c0, c1, d_total, dj, None)
    want_tail = want_tok = 0.0
    for j in range(k):
        t = c + 1 + j
        want_tail += (c0 + c1 * j) * (B * -(-t // B) - t)
        want_tok += (c0 + c1 * j) * t
    assert res + ifrag == pytest.approx(want_tail, rel=1e-9, abs=1e-9)
    assert tok == pytest.approx(want_tok, rel=1e-9)


@given(st.floats(0, 100), st.floats(1e-4, 1), st.floats(0, 1e-3))
def test_steps_until(dt, c0, c1):
    k = steps_until(dt, c0, c1)
    assert series_time(k, c0, c1) >= dt
    assert k == 1 or series_time(k - 1, c0, c1) < dt


# --------------------------------------------------------------------------------------------
# Traces and the CLI


def test_builtin_traces_read():
    azure = load_trace("azure-conv-2023")
    assert len(azure) == 19_366 and azure.arrivals[0].arrival_s == 0.0
    assert (azure.arrivals[0].prompt, azure.arrivals[0].output) == (374, 44)
    moon = load_trace("mooncake-conv")
    assert len(moon) == 12_031 and moon.arrivals[0].hash_ids[:3] == (0, 1, 2)
    assert load_trace("azure-code-2023").scaled(2).arrivals[-1].arrival_s == pytest.approx(
        load_trace("azure-code-2023").arrivals[-1].arrival_s / 2)


@pytest.mark.parametrize("args, message", [
    (["--trace", "azure-conv"], "did you mean"),
    (["--trace", "azure-conv-2023", "--rate", "2"], "not both"),
    ([], "give a workload"),
    (["--input-len", "100", "--output-len", "10", "--requests", "0"], "invalid --requests 0"),
    (["--input-len", "100", "--output-len", "10", "--rate", "-1"], "invalid --rate"),
    (["--trace", "azure-conv-2023", "--rate-scale", "0"], "invalid --rate-scale"),
    (["--input-len", "100", "--output-len", "10", "--step-time", "0"], "invalid --step-time"),
    (["-m", "gemma-2-9b", "--input-len", "100", "--output-len", "10", "--cpu-offload", "1GiB"],
     "several KV cache groups"),
    (["--input-len", "100", "--output-len", "10", "--dist", "normal", "--input-std", "-3"],
     "invalid --input-std"),
    (["--input-len", "100", "--output-len", "10", "--timeline", "/nonexistent/t.csv"],
     "cannot write --timeline"),
])
def test_cli_errors_are_one_line(args, message):
    if "-m" not in args:
        args = ["-m", "llama-3.1-8b"] + args
    result = CliRunner().invoke(cli, ["simulate", *args])
    assert result.exit_code != 0
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_cli_bad_trace_file(tmp_path):
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"prompt_len": 10, "output_len": 1.5}\n')
    result = CliRunner().invoke(cli, ["simulate", "-m", "llama-3.1-8b", "--trace", str(bad)])
    assert result.exit_code != 0 and "t.jsonl:1" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_json_and_timeline(tmp_path):
    timeline = tmp_path / "t.csv"
    result = CliRunner().invoke(cli, [
        "simulate", "-m", "llama-3.1-8b", "--vllm-version", "0.33", "--kv-budget",
        str(5 * BLOCK_BYTES), "--max-len",
        "64", "--trace", str(FIX / "toy3.csv"), "--step-time", "1", "--no-prefix-caching",
        "--timeline", str(timeline), "-f", "json"])
    assert result.exit_code == 0, result.output
    rec = json.loads(result.output)
    assert (rec["requests"], rec["completed"], rec["rejected"]) == (3, 3, 0)
    assert set(rec["allocators"]) == {"paged", "orca-max", "orca-pow2", "orca-oracle"}
    paged = rec["allocators"]["paged"]
    assert paged["preemptions"] == 1 and paged["recomputed_tokens"] == 32
    for a in rec["allocators"].values():
        assert set(a["memory"]) == {"token_states", "reservation", "internal_fragmentation",
                                    "external_fragmentation", "free"}
        for key in ("preemptions", "recomputed_tokens", "prompt_tokens", "prefix_hit_tokens",
                    "running", "queue_delay_s", "ttft_s", "seconds_modelled"):
            assert key in a
    lines = timeline.read_text().splitlines()
    assert lines[0].startswith("allocator,time_s,running,waiting,preemptions,token_states")
    assert any(l.startswith("paged,18.000000,1,1,1,") for l in lines)


def test_cli_table_names_every_allocator():
    result = CliRunner().invoke(cli, ["simulate", "-m", "llama-3.1-8b", "--input-len", "200",
                                      "--output-len", "50", "--requests", "100", "--rate", "5"])
    assert result.exit_code == 0, result.output
    for word in ("paged", "orca-max", "orca-pow2", "orca-oracle", "token states",
                 "external fragmentation", "TTFT mean / p50 / p90 / p99",
                 "TPOT mean / p50 / p90 / p99", "calibrated step time"):
        assert word in result.output


def test_plot_timeline(tmp_path):
    pytest.importorskip("matplotlib")
    timeline = tmp_path / "t.csv"
    runner = CliRunner()
    result = runner.invoke(cli, [
        "simulate", "-m", "llama-3.1-8b", "--vllm-version", "0.33", "--kv-budget",
        str(5 * BLOCK_BYTES), "--max-len",
        "64", "--trace", str(FIX / "toy3.csv"), "--step-time", "1", "--timeline", str(timeline)])
    assert result.exit_code == 0, result.output
    for extra in ([], ["--allocator", "paged"]):
        out = tmp_path / f"t{len(extra)}.png"
        result = runner.invoke(cli, ["plot", "timeline", "--from", str(timeline), "--out",
                                     str(out), *extra])
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 1000
    data = runner.invoke(cli, ["plot", "timeline", "--from", str(timeline), "-f", "csv",
                               "--allocator", "paged"])
    assert data.output.splitlines()[0].startswith("allocator,time_s,running")
    bad = runner.invoke(cli, ["plot", "timeline", "--from", str(FIX / "toy3.csv"), "-f", "csv"])
    assert bad.exit_code != 0 and "not a kvcalc simulate --timeline CSV" in bad.output


@pytest.mark.parametrize("cpu_blocks", [0, 3, 100, 5000])
def test_mooncake_head_under_pressure(llama, cpu_blocks):
    """40 real Mooncake requests (long shared prefixes) at once on 1,500 blocks, with CPU tiers
    from tiny (hits pushed out while they load) to ample: conservation after every step."""
    head = load_trace(str(FIX / "mooncake-conversation-head40.jsonl"))
    res = run(llama, tiny(1500, max_len=16 * 1499), head, allocators=("paged",),
              cpu_offload_bytes=cpu_blocks * BLOCK_BYTES)
    t = res.runs["paged"].totals
    assert t.completed + t.rejected == 40 and t.preemptions > 0
    assert t.prefix_hit_tokens > 0
    assert (t.offload_hit_tokens > 0) == (cpu_blocks > 0)


def test_step_time_roofline(llama):
    """The uncalibrated roofline (``calibration="roofline"``; the default is the vLLM
    calibration since issue 23): one decode step of one request holding 1,000 tokens on an
    H100: 2 ms + (weights + 1,001 tokens x 131,072 B) / 3.35 TB/s + 2 x params / 989 TFLOP/s;
    at tp 2 the weights, the KV bytes per token and the FLOPs are halved per GPU."""
    from kvcalc.params import count_parameters, weight_bytes

    trace = Trace("one", (Arrival(0.0, 1000, 2),))
    params = count_parameters(llama)
    for tp in (1, 2):
        inp = PlanInputs(version="0.33", gpu=resolve_gpu("h100"), max_len=4096, tp=tp)
        res = run(llama, inp, trace, allocators=("paged",), calibration="roofline")
        w = weight_bytes(params, "bf16") / tp
        step = res.timing.duration(1, 1001)
        assert step == pytest.approx(0.002 + (w + 1001 * 131_072 // tp) / 3.35e12
                                     + 2 * params.active / tp / 989e12)
        prefill = res.timing.duration(1000, 1000)
        # two steps: the prefill (first token), one decode
        assert res.runs["paged"].totals.seconds == pytest.approx(prefill + step)


# --------------------------------------------------------------------------------------------
# llama.cpp slots


def test_llamacpp_slots_by_hand(llama):
    """llama-server -np 2 -c 512: 2 slots of 256 cells (131,072 B each), a KV budget of 768
    cells, 1 s per step. A (100 + 50) and B (200 + 100, clipped to 56 output tokens at the slot
    context) take both slots at t=0; C (prompt 300 >= 256) is rejected; D (50 + 20) waits for
    A's slot (t=50) and finishes at t=70, B at t=56. Cell-seconds by hand: token states
    A sum(99+s, s<=50) 6,225 + B sum(199+s, s<=56) 12,740 + D sum(50..69) 1,190 = 20,155;
    reservation (keep - tokens) 1,225 + 1,540 + 190 = 2,955; internal fragmentation (256 -
    final) 107 x 50 + 1 x 56 + 187 x 20 = 9,146; external (budget not allocated) 256 x 70 =
    17,920; free (one idle slot, t=56..70) 256 x 14 = 3,584; 768 x 70 = 53,760 in all."""
    trace = Trace("slots", (Arrival(0.0, 100, 50, None), Arrival(0.0, 200, 100, None),
                            Arrival(0.0, 300, 10, None), Arrival(0.0, 50, 20, None)))
    inp = PlanInputs(gpu=resolve_gpu("h100"), max_len=256, engine="llamacpp",
                     kv_budget=768 * 131_072, engine_options=(("parallel", 2),
                                                              ("ctx_size", 512)))
    res = run(llama, inp, trace, step_time_s=1.0)
    assert list(res.runs) == ["llamacpp-slots"]
    r = res.runs["llamacpp-slots"]
    t = r.totals
    assert (t.requests, t.completed, t.rejected, t.clipped) == (4, 3, 1, 1)
    assert (t.steps, t.output_tokens, t.preemptions) == (70, 50 + 56 + 20, 0)
    assert t.seconds == pytest.approx(70.0)
    assert r.pool_slots == 512 and r.budget_slots == 768
    want = {"token_states": 20_155, "reservation": 2_955, "internal_fragmentation": 9_146,
            "external_fragmentation": 17_920, "free": 3_584}
    assert t.memory == pytest.approx(want)
    assert r.memory["token_states"] == pytest.approx(20_155 / 53_760)
    assert t.queue_delay.percentile(99) == pytest.approx(50.0, rel=0.005)   # D waited 50 s
    rec = result_record(res)
    assert (rec["slots"], rec["n_ctx_seq"], rec["kv_allocated_bytes"]) == (2, 256, 512 * 131_072)


def test_llamacpp_slots_capacity_is_llamacpps(llama):
    """The slots and cells are what kvcalc's llama.cpp engine allocates: -np 3 -c 10000 pads
    to 3 slots of pad(10240 // 3, 256) = 3,584 cells."""
    from kvcalc.engines.llamacpp import LlamaCppSettings, allocate

    alloc = allocate(llama, LlamaCppSettings(ctx_size=10_000, parallel=3))
    inp = PlanInputs(gpu=resolve_gpu("h100"), max_len=4096, engine="llamacpp",
                     engine_options=(("parallel", 3), ("ctx_size", 10_000)))
    res = run(llama, inp, Trace("one", (Arrival(0.0, 1000, 5, None),)), check=False)
    assert res.runs["llamacpp-slots"].pool_slots == 3 * 3584 == alloc.sizes.n_ctx
    assert res.config.max_len == alloc.sizes.n_ctx_seq == 3584


@pytest.mark.parametrize("args, message", [
    (["--engine", "llamacpp", "--ctx-size", "8192"], "give --parallel N"),
    (["--engine", "llamacpp", "--parallel", "2", "--ctx-size", "8192", "--allocator", "paged"],
     "does not apply to --engine llamacpp"),
    (["--allocator", "llamacpp-slots"], "does not apply to --engine vllm"),
    (["--parallel", "2"], "--parallel is a setting of --engine llamacpp"),
    (["--engine", "llamacpp", "--parallel", "2", "--ctx-size", "8192", "--cpu-offload", "1GiB"],
     "llama.cpp has no CPU tier"),
])
def test_cli_llamacpp_errors_are_one_line(args, message):
    result = CliRunner().invoke(cli, ["simulate", "-m", "llama-3.1-8b", "--input-len", "100",
                                      "--output-len", "10", *args])
    assert result.exit_code != 0
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_cli_llamacpp_table():
    result = CliRunner().invoke(cli, ["simulate", "-m", "llama-3.1-8b", "--engine", "llamacpp",
                                      "--parallel", "4", "--ctx-size", "16k", "--input-len",
                                      "500", "--output-len", "100", "--requests", "50",
                                      "--rate", "2"])
    assert result.exit_code == 0, result.output
    assert "llamacpp-slots" in result.output and "4 slots of 4,096 tokens" in result.output


def test_bulk_integrals_equal_the_per_request_integrals():
    """The lazy batch's integrals (phase counts of the last-block tails, internal
    fragmentation held, last blocks reached during the run) equal decode_integrals' sum
    over the requests, for runs shorter and longer than a block."""
    import random

    from kvcalc.simulation.paged import PagedCache
    from kvcalc.simulation.scheduler import Req, _most_steps

    rng = random.Random(11)
    B = 16
    for trial in range(20):
        cache = PagedCache(20_000, B, 20_000 * 16.5, prefix_caching=False)
        running = []
        for i in range(rng.randint(1, 40)):
            c = rng.randint(1, 600)
            a = Arrival(0.0, c, rng.randint(2, 300))
            r = Req(i, a, a.output)
            cache.admit(r, None, c)
            r.computed = r.hwm = c
            r.num_tokens, r.generated = c + 1, 1
            running.append(r)
        k = rng.randint(1, 80)
        c0, c1 = 0.01, rng.choice((0.0, 1e-5))
        d_total, dj = series_time(k, c0, c1), series_jtime(k, c0, c1)
        want = cache.decode_integrals(running, k, c0, c1, d_total, dj, None)
        tails = [0] * B
        for r in running:
            tails[(-r.computed - 1) % B] += 1
        events = [(r.last_block_from - r.computed, r.waste) for r in running
                  if r.waste and 0 <= r.last_block_from - r.computed < k]
        lazy = (tails, cache.ifrag_slots, cache.held_total, cache.n - cache.free_count)
        got = cache.bulk_integrals(len(running), sum(r.computed for r in running), k, c0, c1,
                                   d_total, dj, None, lazy, events)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-6)
        # the blocks a run of s ticks needs, by phase: as max_steps counts them request by
        # request
        rot = [0] * B
        for r in running:
            rot[(-r.computed) % B] += 1       # needs a block at tick i when c + i = 0 mod B
        for free in (0, 5, len(running), 3 * len(running)):
            cache.free_count, saved = free, cache.free_count
            assert _most_steps(rot, len(running), k, free) == cache.max_steps(running, k)
            cache.free_count = saved


@pytest.mark.parametrize("workload", ["mooncake", "synthetic"])
def test_lazy_ticks_equal_detailed_steps(llama, monkeypatch, workload):
    """A step in which the whole batch decodes, taken as one tick of the lazy batch, gives
    exactly what the request-by-request step gives (every figure, the timeline, the memory
    integrals to the last bit), under preemption, prefix caching and a CPU tier."""
    from kvcalc.simulation import scheduler

    if workload == "mooncake":
        arrivals = load_trace(str(FIX / "mooncake-conversation-head40.jsonl"))
        inp = tiny(1500, max_len=16 * 1499)
        opts = dict(cpu_offload_bytes=100 * BLOCK_BYTES)
    else:
        def arrivals():
            return synthetic(400, 40.0, 300, 150, "lognormal", max_len=4096, seed=7)
        inp = PlanInputs(version="0.33", gpu=resolve_gpu("h100"), max_len=4096,
                         kv_budget=300 * BLOCK_BYTES)
        opts = dict(allocators=("paged", "orca-pow2", "orca-oracle"))

    def once():
        res = run(llama, inp, arrivals, timeline_interval_s=0.5, **opts)
        return ([(r.totals.memory, r.totals.timeline, r.totals.steps, r.totals.seconds)
                 for r in res.runs.values()], result_record(res))

    lazy = once()
    monkeypatch.setattr(scheduler._Loop, "fast_ticks", False)
    detailed = once()
    assert lazy == detailed
    assert lazy[1]["allocators"]["paged"]["preemptions"] > 0


def test_synthetic_lognormal_draws_inline_are_random_s():
    """The synthetic generator's inline lognormal draws are workload.sampled's (the same
    random.Random calls), clipped the same way, chunk after chunk."""
    import math
    import random

    from kvcalc.simulation.requests import SYNTHETIC_CHUNK, _lognormal_lengths
    from kvcalc.workload import sampled

    rng = random.Random(3)
    for seed in range(30):
        mean = rng.choice((1, 3.7, 200, 1000, 5000))
        std = rng.choice((0, 0.5, 10, 1000, 20000))
        max_len = rng.choice((1, 2, 50, 4096, 1 << 40))
        assert (_lognormal_lengths(mean, std, max_len, 400, seed)
                == sampled("lognormal", mean, std, max_len, 400, seed).lengths)
    n = SYNTHETIC_CHUNK + 7
    got = list(synthetic(n, 10.0, 1000, 200, "lognormal", max_len=4096, seed=4))
    want, t = [], 0.0
    arrival_rng = random.Random(4)
    for chunk in range(2):
        m = min(SYNTHETIC_CHUNK, n - chunk * SYNTHETIC_CHUNK)
        s1 = 4 * 1_000_003 + 2 * chunk
        ins = sampled("lognormal", 1000, 1000, 4096, m, s1).lengths
        outs = sampled("lognormal", 200, 200, 4096, m, s1 + 1).lengths
        for p, o in zip(ins, outs):
            t += arrival_rng.expovariate(10.0)
            want.append(Arrival(t, p, o))
    assert got == want and all(math.isfinite(a.arrival_s) for a in got)


# --------------------------------------------------------------------------------------------
# Pipeline parallelism


def test_pp2_toy_trace_by_hand(llama):
    """--pp 2 with a KV budget of 5 blocks per GPU: each stage holds 16 of the 32 layers, so a
    block costs half as much there and each stage fits 10 -- the plan's num_blocks (vLLM's
    minimum over the stages), 9 usable. A and B (16 + 20 tokens) peak at 3 blocks each (35
    tokens held at their last step): 6 of 9, no preemption (at pp 1, 4 usable blocks: step 18
    preempts B). Both finish at step 20 (t = 20), C (40 + 1) runs alone at t = 30, step 21. The
    budget in slots is 5 x 16 x 2 = 160, of which 16 are the null block's."""
    inp = tiny(5, pp=2)
    plan = make_plan(llama, inp, fixed(1, 0))
    assert plan.vllm.num_blocks == 10
    res = run(llama, inp, load_trace(str(FIX / "toy3.csv")), allocators=("paged",),
              step_time_s=1.0, prefix_caching=False)
    assert res.usable_blocks == plan.vllm.num_blocks - 1 == 9
    r = res.runs["paged"]
    t = r.totals
    assert (t.completed, t.rejected, t.preemptions) == (3, 0, 0)
    assert t.steps == 21 and t.seconds == pytest.approx(31.0)
    assert r.budget_slots == 160 and r.pool_slots == 144
    assert t.peak_used_slots == 6 * 16 <= r.pool_slots
    assert sum(r.memory.values()) == pytest.approx(1.0)
    assert r.memory["external_fragmentation"] == pytest.approx(16 / 160)   # the null block
    rec = result_record(res)
    assert (rec["pp"], rec["num_gpu_blocks"], rec["usable_blocks"]) == (2, 10, 9)


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(("llama-3.1-8b", "llama-3.1-70b", "qwen2.5-32b")),
       st.sampled_from(("h100", "h200", "a100-80gb")), st.sampled_from((1, 2, 4)),
       st.sampled_from((4096, 8192, 32768)))
def test_pp2_holds_at_least_pp1s_blocks(model, gpu, tp, max_len):
    """Weights dominate these models: at pp 2 each GPU of the same kind and tp holds half the
    layers' weights and half the layers' KV per block, so each stage fits at least as many
    blocks as the one stage of pp 1 (activations are not split, the embeddings and LM head sit
    whole on the first and last stages). The simulation's capacity is the plan's at pp 2."""
    spec = load_spec(model)[1]
    one, two = (make_plan(spec, PlanInputs(gpu=resolve_gpu(gpu), tp=tp, pp=pp,
                                           max_len=max_len), fixed(1, 0)) for pp in (1, 2))
    assert two.vllm.num_blocks >= one.vllm.num_blocks
    if two.fits:
        res = run(spec, two.inputs, lambda: synthetic(20, None, 300, 30), allocators=("paged",))
        assert res.usable_blocks == two.vllm.num_blocks - 1
        t = res.runs["paged"].totals
        assert t.completed == 20 and t.peak_used_slots <= res.usable_blocks * two.vllm.block_size


def test_pp_step_time_is_the_slowest_stage_per_round(llama):
    """A round of a 2-stage pipeline: 2 stage times on half the scheduled tokens each (one
    micro-batch per request up to 2); the bulk decode series agrees with the step-by-step
    durations; a lone request's token takes 2 stage latencies of its whole chunk."""
    from kvcalc.simulation.timing import PipelineStepTime, StepTime

    inp = PlanInputs(gpu=resolve_gpu("h100"), max_len=8192, pp=2)
    timing = run(llama, inp, lambda: synthetic(2, None, 100, 2), allocators=("paged",)).timing
    assert isinstance(timing, PipelineStepTime) and timing.stages == 2
    stage = StepTime.duration(timing, 1000, 1000, 499_500)
    send = timing.send_base_s + timing.send_s * 1000
    assert timing.duration(1000, 1000, 499_500, 1) == pytest.approx(2 * (stage + send)
                                                                     + timing.per_seq_s)
    half = StepTime.duration(timing, 500, 5000, 0) + timing.send_base_s + timing.send_s * 500
    assert timing.duration(1000, 10_000, 0, 1000) == pytest.approx(2 * half
                                                                   + 1000 * timing.per_seq_s)
    c0, c1 = timing.decode_series(64, 64_000)
    for j in (0, 1, 7):
        assert c0 + c1 * j == pytest.approx(timing.duration(64, 64_000 + 64 * (j + 1), 0, 64))
    # the pipeline takes about the time of pp 1 per round on a lone request, less when full
    one = run(llama, PlanInputs(gpu=resolve_gpu("h100"), max_len=8192),
              lambda: synthetic(2, None, 100, 2), allocators=("paged",)).timing
    assert timing.duration(1, 1000, 0, 1) > one.duration(1, 1000, 0, 1)
    assert timing.duration(256, 256_000, 0, 256) < 2 * one.duration(256, 256_000, 0, 256)


def test_cli_pp2(tmp_path):
    result = CliRunner().invoke(cli, [
        "simulate", "-m", "llama-3.1-8b", "--vllm-version", "0.33", "--kv-budget",
        str(5 * BLOCK_BYTES), "--max-len", "64", "--pp", "2", "--trace",
        str(FIX / "toy3.csv"), "--step-time", "1", "--no-prefix-caching", "-f", "json"])
    assert result.exit_code == 0, result.output
    rec = json.loads(result.output)
    assert (rec["pp"], rec["num_gpu_blocks"], rec["usable_blocks"]) == (2, 10, 9)
    paged = rec["allocators"]["paged"]
    assert paged["completed"] == 3 and paged["preemptions"] == 0
    assert paged["throughput_modelled"]["output_tokens_per_s_per_gpu"] == pytest.approx(
        paged["throughput_modelled"]["output_tokens_per_s"] / 2, abs=0.01)
    table = CliRunner().invoke(cli, ["simulate", "-m", "llama-3.1-8b", "--pp", "2",
                                     "--input-len", "200", "--output-len", "20", "--requests",
                                     "50", "--allocator", "paged"])
    assert table.exit_code == 0, table.output
    assert "pipeline of 2 stages" in table.output and "tightest of 2 pipeline" in table.output
