"""kvcalc size (issue 28): objectives, routers, bounds, the replica search, its answer checked
by re-simulation, run sharing, parallel and Ray runners, and the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import kvcalc.api as api
from kvcalc.cli import cli
from kvcalc.errors import UsageError
from kvcalc.model import load_spec
from kvcalc.simulation import Options, simulate
from kvcalc.simulation.metrics import LogHistogram
from kvcalc.simulation.requests import Arrival, Trace, load_trace, synthetic
from kvcalc.sizing import (Candidate, Context, LocalRunner, Settings, Traffic, evaluate,
                           parse_objectives, route, setup, size_fleet)
from kvcalc.sizing.bounds import TrafficStats, latency_floors
from kvcalc.sizing.merge import merge_histogram, service_estimate

#: a small open-loop traffic that needs several A100 replicas (every run well under a second)
TRAFFIC = dict(rate=30, requests=600, input_len=800, output_len=150, dist="lognormal")
SLO = ["ttft_p99=1s", "tpot_p99=40ms"]


@pytest.fixture(scope="module")
def small():
    """kvcalc.api.size on TRAFFIC: A100 and L4, tp 1 and 2 (one process)."""
    return api.size("llama-3.1-8b", slo=SLO, gpu="a100-80gb,l4", tp="1,2", max_len=8192,
                    jobs=1, max_replicas=16, **TRAFFIC).to_dict()


# --------------------------------------------------------------------------- objectives

def test_objectives_parse():
    objs = parse_objectives(["ttft_p99=2s", "tpot_p99=50ms,e2e_mean=30", "queueing_p90=500us"])
    assert [(o.metric, o.stat, o.limit_s) for o in objs] == [
        ("ttft", "p99", 2.0), ("tpot", "p99", 0.05), ("e2e", "mean", 30.0),
        ("queue", "p90", 0.0005)]
    h = LogHistogram()
    for x in (0.1, 0.2, 0.3, 0.4):
        h.add(x)
    assert objs[2].value(h) == pytest.approx(0.25)


@pytest.mark.parametrize("bad", ["ttft=2s", "ttft_p98=2s", "ttft_p99=2h", "ttft_p99=-1s",
                                 "foo_p99=1s", "ttft_p99=", "ttft_p99=inf"])
def test_objectives_refused(bad):
    with pytest.raises(UsageError, match="--slo"):
        parse_objectives([bad])


def test_objective_twice_refused():
    with pytest.raises(UsageError, match="twice"):
        parse_objectives(["ttft_p99=1s", "ttft_p99=2s"])


# --------------------------------------------------------------------------- routers

def _arrivals(n, gap=0.1, hashes=None):
    return [Arrival(i * gap, 100, 10, hashes(i) if hashes else None) for i in range(n)]


def test_round_robin():
    parts = route(_arrivals(10), 3, "round-robin")
    assert [len(p) for p in parts] == [4, 3, 3]
    assert [a.arrival_s for a in parts[1]] == pytest.approx([0.1, 0.4, 0.7])


def test_least_outstanding_balances_by_estimated_finish():
    # every request lasts 1 s; arrivals 0.1 s apart: 10 outstanding at a time over 2 replicas
    parts = route(_arrivals(40), 2, "least-outstanding", lambda p, o, n: 1.0)
    assert [len(p) for p in parts] == [20, 20]
    # a replica with long requests gets fewer of them
    long_first = [Arrival(0.0, 100, 10), Arrival(0.0, 100, 10)] + _arrivals(6, 0.01)[1:]
    parts = route(long_first, 2, "least-outstanding",
                  lambda p, o, n: 100.0 if o == 10 else 0.001)
    assert [len(p) for p in parts] == [4, 3]


def test_prefix_aware_follows_the_blocks_then_the_load():
    # two conversations (hash prefixes 1000.. and 1001..) start together, so they land on
    # different replicas; each later turn goes where its blocks are, although a round-robin or
    # a load-only router would interleave them
    turns = [Arrival(t, 100, 10, (1000 + k, 2000 + k)) for t in (0.0, 10.0, 20.0, 30.0)
             for k in ((0, 1) if t % 20 == 0 else (1, 0))]
    parts = route(turns, 2, "prefix-aware", lambda p, o, n: 1.0, 100)
    assert [{a.hash_ids[0] for a in p} for p in parts] == [{1000}, {1001}]
    lor = route(turns, 2, "least-outstanding", lambda p, o, n: 1.0)
    assert [{a.hash_ids[0] for a in p} for p in lor] == [{1000, 1001}, {1000, 1001}]
    # one shared prefix and busy replicas: the load score keeps the requests spread
    same = route(_arrivals(8, 0.01, lambda i: (7,)), 2, "prefix-aware",
                 lambda p, o, n: 100.0, 100)
    assert [len(p) for p in same] == [4, 4]


def test_prefix_aware_lru_capacity():
    # all at once, every request outstanding: A -> 0, B -> 1, C (A's prefix) -> 0, D -> 1;
    # replica 1's cache of one hash block has forgotten B's block when E (B's prefix) comes,
    # so E goes by load (a tie: replica 0); with room for two blocks it follows B to 1
    arr = [Arrival(0, 100, 1, (h,)) for h in (1, 2, 1, 5, 2)]
    for capacity, expect in ((1, 0), (2, 1)):
        parts = route(arr, 2, "prefix-aware", lambda p, o, n: 100.0, capacity)
        assert [a.hash_ids for a in parts[expect]][-1] == (2,)
        assert len(parts[0]) + len(parts[1]) == 5


def test_router_unknown():
    with pytest.raises(UsageError, match="--router"):
        route(_arrivals(2), 2, "random")


# --------------------------------------------------------------------------- merge, bounds

def test_merge_histogram_is_exact():
    a, b, both = LogHistogram(), LogHistogram(), LogHistogram()
    for i in range(1, 300):
        x = (i * 7919 % 1000) / 997 + 1e-3
        (a if i % 3 else b).add(x)
        both.add(x)
    merged = LogHistogram()
    merge_histogram(merged, a)
    merge_histogram(merged, b)
    assert merged.counts == both.counts and merged.n == both.n
    assert [merged.percentile(p) for p in (50, 90, 99)] == \
        [both.percentile(p) for p in (50, 90, 99)]


@pytest.fixture(scope="module")
def spec8b():
    return load_spec("llama-3.1-8b")[1]


def _ctx(spec, arrivals, slo=SLO, max_len=8192, **kw):
    return Context(spec, Traffic("test", tuple(arrivals), 512, **kw), parse_objectives(slo),
                   Settings(max_len=max_len))


def test_latency_floors_are_below_the_simulation(spec8b):
    """Every floor is at most what a simulation gives, whatever the load."""
    arrivals = list(synthetic(300, 40, 800, 150, "lognormal", max_len=8192))
    ctx = _ctx(spec8b, arrivals, ["ttft_p50=1s", "ttft_p99=1s", "tpot_p99=1s", "tpot_mean=1s",
                                  "e2e_p90=1s"])
    su, _, _ = setup(ctx, Candidate("a100-80gb"))
    floors = latency_floors(su.timing, TrafficStats(tuple(arrivals)), su.max_batched_tokens,
                            ctx.objectives)
    for replicas in (1, 4):
        out = evaluate(ctx, Candidate("a100-80gb"), replicas, su)
        for name, floor in floors.items():
            assert 0 < floor <= out["values_s"][name] * 1.005, (name, replicas)
    # unloaded (one request alone, arriving long after the last), the TTFT floor is tight
    alone = [Arrival(0.0, 3000, 2)]
    one = _ctx(spec8b, alone, ["ttft_p50=1s"])
    lone = latency_floors(su.timing, TrafficStats(tuple(alone)), su.max_batched_tokens,
                          one.objectives)["ttft_p50"]
    assert evaluate(one, Candidate("a100-80gb"), 1, su)["values_s"]["ttft_p50"] == \
        pytest.approx(lone, rel=0.006)


# --------------------------------------------------------------------------- the search

def test_search_statuses_and_reasons(small):
    rows = {(r["gpu"], r["tp"]): r for r in small["configurations"]}
    l4 = rows[("l4", 1)]
    assert l4["status"] == "misses at any replica count" and not l4["evaluations"]
    assert "tpot_p99 is at least" in l4["reason"]
    assert l4["bounds"]["latency_floor_s"]["tpot_p99"] > 0.040
    assert rows[("l4", 2)]["status"] == "not simulated"     # no NVLink figures for an L4
    a1, a2 = rows[("a100-80gb", 1)], rows[("a100-80gb", 2)]
    assert a1["status"] == a2["status"] == "meets"
    assert (a1["replicas"], a2["replicas"]) == (6, 2)
    assert a1["bounds"]["replicas_floor"] == 3 <= a1["replicas"]
    # every evaluation below the answer misses, the answer meets, the one below says why
    for row in (a1, a2):
        evals = {e["replicas"]: e for e in row["evaluations"]}
        assert evals[row["replicas"]]["meets"]
        assert not evals[row["replicas"] - 1]["meets"]
        assert "tpot_p99" in evals[row["replicas"] - 1]["why"]
        assert row["replicas_minus_one"].startswith("misses")
    # the cheapest: 2 x A100 tp2 (4 GPUs) before 6 x A100 tp1
    ans = small["answer"]
    assert (ans["gpu"], ans["tp"], ans["replicas"], ans["gpus"]) == ("a100-80gb", 2, 2, 4)
    assert ans["usd_per_hour"] == pytest.approx(4 * 2.16)
    tok = ans["answer"]["output_tokens_per_s"]
    assert ans["usd_per_million_output_tokens"] == pytest.approx(
        4 * 2.16 / (tok * 3600) * 1e6, rel=1e-3)
    assert ans["pareto"] and small["pareto"][0] == ans["index"]
    assert small["time_figures"] == "modelled" and small["calibration"] == "vllm"
    assert small["counts"]["configurations"] == 4


def _resimulate(spec, arrivals, c: Candidate, replicas: int, slo):
    """The fleet's figures re-derived without the search: route, simulate each replica with
    kvcalc.simulation.simulate (with the configuration's calibration, fitted once on the whole
    traffic), pool every request's latencies."""
    ctx = _ctx(spec, arrivals, slo)
    su, _, _ = setup(ctx, c)
    parts = route(arrivals, replicas, c.router,
                  service_estimate(su.timing, su.max_batched_tokens),
                  su.usable_blocks * su.block_size // 512)
    hists = {"ttft": LogHistogram(), "tpot": LogHistogram()}
    completed = 0
    for part in parts:
        res = simulate(spec, su.inputs, Trace("r", tuple(part)),
                       Options(allocators=("paged",), calibration=su.calibration))
        t = res.runs["paged"].totals
        completed += t.completed
        for k, h in hists.items():
            merge_histogram(h, getattr(t, k))
    assert completed == len(arrivals)
    return {o.name: o.value(hists[o.histogram]) for o in ctx.objectives}, ctx.objectives


def test_self_consistency_answer_meets_and_one_fewer_does_not(small, spec8b):
    """The answer's R replicas meet every objective, R - 1 do not (re-simulated), and the
    next-cheaper configuration that was searched does not meet them with its answer's GPUs."""
    arrivals = list(synthetic(600, 30, 800, 150, "lognormal", max_len=8192))
    ans = small["answer"]
    c = Candidate(ans["gpu"], tp=ans["tp"])
    got, objs = _resimulate(spec8b, arrivals, c, ans["replicas"], SLO)
    assert all(got[o.name] <= o.limit_s for o in objs)
    # the record keeps seconds to the microsecond
    assert got == pytest.approx(ans["answer"]["values_s"], abs=1e-6)
    fewer, _ = _resimulate(spec8b, arrivals, c, ans["replicas"] - 1, SLO)
    assert any(fewer[o.name] > o.limit_s for o in objs)
    # the other A100 configuration with the answer's 4 GPUs (4 x tp1) misses
    other, _ = _resimulate(spec8b, arrivals, Candidate("a100-80gb", tp=1), 4, SLO)
    assert any(other[o.name] > o.limit_s for o in objs)


def test_shared_runs_are_the_siblings_own(spec8b):
    """max_num_seqs siblings and prefix caching on/off (no hash ids, nothing preempted) reuse
    one run; the reused figures equal the sibling's own simulation."""
    arrivals = list(synthetic(300, 20, 800, 150, "lognormal", max_len=8192))
    ctx = _ctx(spec8b, arrivals)
    cands = [Candidate("a100-80gb", tp=2, max_num_seqs=s, prefix_caching=p)
             for s in (None, 512) for p in (True, False)]
    rec = size_fleet(ctx, cands, {"a100-80gb": {"usd_per_gpu_hour": 1.0, "source": "t"}},
                     LocalRunner(1), 8)
    shared = [(r, e) for r in rec["configurations"] for e in r["evaluations"]
              if e["how"].startswith("same run")]
    assert shared and rec["counts"]["points_shared"] == len(shared)
    for row, e in shared:
        own = evaluate(ctx, cands[row["index"]], e["replicas"])
        assert own["values_s"] == e["values_s"]


def test_jobs_do_not_change_the_answer():
    kw = dict(slo=SLO, gpu="a100-80gb", tp="1,2", max_len=8192, max_replicas=8, **TRAFFIC)
    one = api.size("llama-3.1-8b", jobs=1, **kw).to_dict()
    two = api.size("llama-3.1-8b", jobs=2, **kw).to_dict()
    one.pop("runner"), two.pop("runner")
    assert one == two


def test_ray_gives_the_local_answer():
    ray = pytest.importorskip("ray")
    from kvcalc.sizing.ray_runner import RayRunner

    kw = dict(slo=SLO, gpu="a100-80gb", tp="1,2", max_len=8192, max_replicas=8, **TRAFFIC)
    local = api.size("llama-3.1-8b", jobs=1, **kw).to_dict()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = api.size("llama-3.1-8b", ray=True, **kw).to_dict()
    finally:
        ray.shutdown()
    assert remote.pop("runner") == {"runner": "ray", "address": "local"}
    local.pop("runner")
    assert remote == local
    assert RayRunner.name == "ray"


def test_closed_loop_traffic():
    r = api.size("llama-3.1-8b", slo=["tpot_p90=30ms"], concurrency=32, requests=200,
                 input_len=500, output_len=100, gpu="a100-80gb", tp=1, max_len=4096,
                 jobs=1, max_replicas=8).to_dict()
    ans = r["answer"]
    assert ans is not None and ans["answer"]["values_s"]["tpot_p90"] <= 0.030
    assert "closed loop" in r["workload"]


def test_does_not_boot_and_does_not_fit(spec8b):
    big = load_spec("llama-3.1-70b")[1]
    ctx = _ctx(big, [Arrival(0.0, 100, 10)], max_len=131072)
    su, status, reason = setup(ctx, Candidate("h100", tp=1))
    assert su is None and status == "does not boot" and "cache blocks" in reason
    # a prompt longer than max_len is refused by vLLM: the configuration does not fit
    ctx = _ctx(spec8b, [Arrival(0.0, 5000, 10), Arrival(1.0, 100, 10)], max_len=4096)
    rec = size_fleet(ctx, [Candidate("h100")], {"h100-sxm": {"usd_per_gpu_hour": 1,
                                                             "source": "t"}}, LocalRunner(1))
    row = rec["configurations"][0]
    assert row["status"] == "does not fit" and "max_len (4,096)" in row["reason"]
    assert rec["answer"] is None


def test_engines_not_simulated_are_planned():
    r = api.size("llama-3.1-8b", slo=SLO, engine="vllm,sglang", gpu="a100-80gb", tp=2,
                 max_len=8192, jobs=1, max_replicas=4, **TRAFFIC).to_dict()
    sg = [c for c in r["configurations"] if c["engine"] == "sglang"][0]
    assert sg["status"] == "not simulated" and "boots" in sg["reason"]


def test_prefix_aware_routing_saves_on_mooncake(spec8b):
    """On the first 1,500 Mooncake requests, 8 H100 replicas: prefix-aware routing finds more
    of other requests' blocks than round-robin or least-outstanding (docs/sizing.md: 2,197,824
    against 1,197,952 and 1,182,464 tokens)."""
    arrivals = load_trace("mooncake-conv").arrivals[:1500]
    ctx = _ctx(spec8b, arrivals, ["ttft_p99=60s"], max_len=131072)
    su, _, _ = setup(ctx, Candidate("h100"))
    hits = {r: evaluate(ctx, Candidate("h100", router=r), 8, su)["shared_prefix_hit_tokens"]
            for r in ("round-robin", "least-outstanding", "prefix-aware")}
    assert hits["prefix-aware"] > 1.4 * max(hits["round-robin"], hits["least-outstanding"])


# --------------------------------------------------------------------------- API and CLI

def test_api_input_errors():
    with pytest.raises(UsageError, match="objective"):
        api.size("llama-3.1-8b", slo=[], **TRAFFIC)
    with pytest.raises(UsageError, match="--tp"):
        api.size("llama-3.1-8b", slo=SLO, tp="1,x", **TRAFFIC)
    with pytest.raises(UsageError, match="no default price"):
        api.size("llama-3.1-8b", slo=SLO, gpu="t4", **TRAFFIC)
    with pytest.raises(UsageError, match="--price"):
        api.size("llama-3.1-8b", slo=SLO, price="h100=cheap", **TRAFFIC)
    with pytest.raises(UsageError, match="not both"):
        api.size("llama-3.1-8b", slo=SLO, trace="azure-conv-2023", **TRAFFIC)


def test_cli_json_and_out(tmp_path):
    out = tmp_path / "size.json"
    res = CliRunner().invoke(cli, [
        "size", "-m", "llama-3.1-8b", "--slo", "ttft_p99=1s", "--slo", "tpot_p99=40ms",
        "--rate", "30", "--requests", "600", "--input-len", "800", "--output-len", "150",
        "--dist", "lognormal", "--gpu", "a100-80gb", "--tp", "2", "--max-len", "8k",
        "--price", "a100=2", "--jobs", "1", "--out", str(out), "-f", "json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.output)
    assert rec == json.loads(out.read_text())
    assert rec["answer"]["replicas"] == 2 and rec["answer"]["usd_per_hour"] == 8.0
    assert rec["prices"]["a100-80gb"]["source"] == "--price"


def test_cli_table():
    res = CliRunner().invoke(cli, [
        "size", "-m", "llama-3.1-8b", "--slo", "ttft_p99=1s,tpot_p99=40ms", "--rate", "30",
        "--requests", "600", "--input-len", "800", "--output-len", "150", "--dist",
        "lognormal", "--gpu", "a100-80gb,l4", "--tp", "1,2", "--max-len", "8k", "-j", "1"])
    assert res.exit_code == 0, res.output
    assert "Cheapest: 2 x (a100-80gb" in res.output and "(modelled)" in res.output
    assert "misses at any replica count" in res.output
    assert "calibrated step time" in res.output


@pytest.mark.parametrize("args, words", [
    (["--slo", "ttft=1s"], "invalid --slo"),
    (["--slo", "ttft_p99=1s", "--gpu", "nosuchgpu"], "nosuchgpu"),
    (["--slo", "ttft_p99=1s", "--router", "random"], "--router"),
    (["--slo", "ttft_p99=1s", "--kv-dtype", "fp7"], "--kv-dtype"),
    (["--slo", "ttft_p99=1s", "--out", "/nonexistent/dir/x.json"], "cannot write --out"),
])
def test_cli_errors_are_one_line(args, words):
    res = CliRunner().invoke(cli, ["size", "-m", "llama-3.1-8b", "--rate", "5", "--requests",
                                   "10", "--input-len", "100", "--output-len", "10", *args])
    assert res.exit_code != 0
    assert words in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_disagg_pools_and_link(spec8b):
    r = api.size("llama-3.1-8b", slo=SLO, gpu="a100-80gb", tp="1,2", max_len=8192, jobs=1,
                 max_replicas=16, disagg=True, **TRAFFIC).to_dict()
    ans = r["answer"]
    assert ans["disagg"] and ans["prefill_replicas"] >= 1 and ans["decode_replicas"] >= 1
    assert ans["gpus"] == (ans["prefill_replicas"] + ans["decode_replicas"]) * ans["tp"]
    # the prefill pool is checked on TTFT only, the decode pool on TPOT only
    assert set(ans["prefill"]["answer"]["values_s"]) == {"ttft_p99"}
    assert set(ans["decode"]["answer"]["values_s"]) == {"tpot_p99"}
    link = ans["bounds"]["link"]
    arrivals = list(synthetic(600, 30, 800, 150, "lognormal", max_len=8192))
    per_token = 131072 // ans["tp"]          # Llama-3.1-8B: 128 KiB of bf16 K and V per token
    assert link["kv_bytes_per_token_per_gpu"] == per_token
    assert link["kv_bytes_total"] == per_token * ans["tp"] * sum(a.prompt for a in arrivals)
    assert r["counts"]["configurations"] == 2 and r["counts"]["pools"] == 4
    with pytest.raises(UsageError, match="E2E"):
        api.size("llama-3.1-8b", slo=["ttft_p99=1s", "e2e_p99=9s"], disagg=True, **TRAFFIC)
    with pytest.raises(UsageError, match="TPOT"):
        api.size("llama-3.1-8b", slo=["ttft_p99=1s"], disagg=True, **TRAFFIC)
