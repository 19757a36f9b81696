"""kvcalc simulate on hybrid models: vLLM's KV cache groups (full, sliding window, chunked
local, Mamba / GDN) on one block pool -- hand-checked block counts per group kind, conservation,
peaks within the plan's capacity, and every built-in hybrid preset simulated."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kvcalc.cli import cli
from kvcalc.hardware import resolve_gpu
from kvcalc.model import load_spec
from kvcalc.planning import PlanInputs, make_plan
from kvcalc.simulation import Options, kv_cache_groups, simulate
from kvcalc.simulation.contiguous import HybridContiguousCache
from kvcalc.simulation.paged import GroupSpec, HybridCache
from kvcalc.simulation.requests import Arrival, synthetic
from kvcalc.simulation.scheduler import Config, run
from kvcalc.simulation.timing import step_time_model
from kvcalc.workload import fixed

#: the built-in presets vLLM serves with more than one KV cache group (or a non-full one)
HYBRID_PRESETS = ("gemma-2-9b", "gemma-2-27b", "gemma-3-1b", "gemma-3-4b", "gemma-3-12b",
                  "gemma-3-27b", "gemma-3n-e4b", "gpt-oss-20b", "gpt-oss-120b",
                  "llama-4-scout", "llama-4-maverick", "qwen3-next-80b-a3b",
                  "nemotron-3-nano-30b", "jamba-v0.1")


def toy(groups, blocks=64, lag=1, prompt=10, output=12, B=4, prefix=False):
    """One request through a hybrid pool of ``blocks`` blocks of ``B`` tokens, one step a
    second; returns (blocks in use after steps 1.., the run's totals, the cache)."""
    cache = HybridCache(tuple(groups), blocks, B, float(blocks * B), prefix, lag=lag,
                        in_flight=128)
    cfg = Config(64, 8, 1024, timeline_interval_s=1.0, check=True)
    timing = step_time_model(resolve_gpu("h100"), None, "bf16", "vllm", None, 1.0)
    tot = run([Arrival(0.0, prompt, output)], cache, cfg, timing)
    used = [round(blocks - row[-1] / B) for row in tot.timeline]
    return used, tot, cache


FULL = GroupSpec("full")


def test_sliding_window_frees_what_slides_out():
    """W = 8, B = 4, a prompt of 10 and 12 output tokens, one step in flight (async
    scheduling): step s computes up to 9 + s tokens with 7 + s processed (s >= 3). The full
    group holds ceil((9 + s) / 4) blocks; the window group frees the blocks wholly before token
    processed - W + 1 -- block 0 at step 4, block 1 at step 8 -- as it allocates its new ones."""
    used, tot, cache = toy([GroupSpec("sliding", 8), FULL])
    assert used[:11] == [6, 6, 6, 7, 7, 7, 7, 8, 8, 8, 8]
    assert used[11] == 0                                   # finished at step 12, all freed
    assert tot.peak_used_slots == 9 * 4                    # step 12: 6 full + 3 window blocks
    assert (tot.completed, tot.preemptions, tot.steps) == (1, 0, 12)


def test_sliding_window_without_async_frees_a_step_earlier():
    used, _, _ = toy([GroupSpec("sliding", 8), FULL], lag=0)
    # processed = computed: block 0 goes at step 3 (10 - 7) // 4 = 0 ... (11 - 7) // 4 = 1
    assert used[:11] == [6, 6, 5, 7, 7, 7, 6, 8, 8, 8, 7]


def test_chunked_local_frees_each_finished_chunk():
    """C = 8, B = 4: once 8 tokens are processed (step 3) blocks 0-1 (the first chunk) go; at
    16 processed (step 9) blocks 2-3."""
    used, tot, _ = toy([GroupSpec("chunked", 8), FULL])
    assert used[:11] == [6, 6, 4, 6, 6, 6, 6, 8, 6, 6, 6]
    assert tot.peak_used_slots == 8 * 4


def test_mamba_align_holds_state_previous_state_and_checkpoint():
    """Mamba-2 in align mode (prefix caching on), B = 4: the prompt of 10 takes the state
    block (2) and the prefill checkpoint at the last boundary inside the chunk (block 1); the
    checkpoint goes once 9 tokens are processed (step 3). Each later boundary allocates the new
    state block and frees the previous one the step after the boundary is processed."""
    used, tot, _ = toy([GroupSpec("mamba", align=True, checkpoint=1), FULL])
    assert used[:11] == [5, 5, 4, 6, 6, 5, 5, 7, 7, 6, 6]
    assert tot.peak_used_slots == 8 * 4


def test_mamba_none_mode_holds_one_block():
    used, _, _ = toy([GroupSpec("mamba"), FULL])
    assert used[:11] == [4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6]


def test_admission_on_the_coordinators_total():
    """Two requests of 16 + 4 on a pool of 10 blocks of 4 tokens, full + window 8 groups: the
    first step holds 4 + 4 blocks each -- 16 blocks do not fit, so only the first is admitted
    (8 blocks; 10 at its peak, vLLM's window + tokens in flight); the second waits until it
    finishes."""
    cache = HybridCache((GroupSpec("sliding", 8), FULL), 10, 4, 40.0, False, in_flight=128)
    cfg = Config(64, 8, 1024, check=True)
    timing = step_time_model(resolve_gpu("h100"), None, "bf16", "vllm", None, 1.0)
    tot = run([Arrival(0.0, 16, 4), Arrival(0.0, 16, 4)], cache, cfg, timing)
    assert (tot.completed, tot.preemptions) == (2, 0)
    assert tot.steps == 8                  # 4 steps each, one after the other
    assert tot.peak_used_slots == 10 * 4


def test_preemption_when_growth_does_not_fit():
    """A pool of 10 blocks, full attention + Mamba (none mode): two requests of 8 + 16 take
    3 blocks each at admission (2 + 1); each grows a full block every 4 tokens; at 20 tokens
    each would need 6: the newest is preempted and recomputed."""
    cache = HybridCache((GroupSpec("mamba"), FULL), 10, 4, 40.0, False, in_flight=128)
    cfg = Config(64, 8, 1024, check=True)
    timing = step_time_model(resolve_gpu("h100"), None, "bf16", "vllm", None, 1.0)
    tot = run([Arrival(0.0, 8, 16), Arrival(0.0, 8, 16)], cache, cfg, timing)
    assert tot.completed == 2 and tot.preemptions == 1
    assert tot.peak_used_slots <= 10 * 4


@pytest.mark.parametrize("spec,held", [
    (GroupSpec("sliding", 8), 2),          # the window's last ceil((W - 1) / B) blocks: 3, 4
    (GroupSpec("chunked", 8), 1),          # the current chunk's blocks (16 .. 20): 4
    (GroupSpec("mamba", align=True, checkpoint=1), 1),   # the state at 20 tokens: block 4
])
def test_a_preempted_request_hits_its_own_blocks_in_each_group_kind(spec, held):
    """B = 4: a prompt of 20 computed at once (5 full blocks per attention group; Mamba holds
    its state block 4 and the checkpoint 3), then preempted: the recompute hits 20 tokens --
    the full group's 5 leading blocks and, per kind, the blocks its rule needs; the first step
    back allocates one new block per group."""
    from kvcalc.simulation.scheduler import Req
    cache = HybridCache((spec, FULL), 64, 4, 256.0, True, in_flight=128)
    r = Req(0, Arrival(0.0, 20, 10), 10)
    assert cache.lookup(r) is None
    assert cache.admit(r, None, 20)
    assert r.held == 5 + (2 if spec.kind == "mamba" else 5)
    r.computed, r.num_tokens, r.generated = 20, 21, 1
    r.preempted = True
    cache.free(r, preempted=True)
    r.computed = 0
    assert cache.free_count == 64 and r.held == 0
    hits = cache.lookup(r)
    assert hits[0] == hits[1] == 20
    assert [len(p) for p in hits[3]] == [held, 5]
    assert cache.admit(r, hits, 21)
    assert r.held == held + 5 + 2                     # + one new block in each group
    cache.check([r])


def test_contiguous_reserves_per_group():
    """orca-max on full + window 8 + Mamba (B = 4): a request reserves R + min(R, W) + B slots:
    max_len 64 -> 64 + 8 + 4 = 76."""
    groups = (FULL, GroupSpec("sliding", 8), GroupSpec("mamba", align=True))
    cache = HybridContiguousCache("orca-max", 200, 200.0, 64, groups, 4)

    class R:
        prompt, output, final, addr, bkeys = 10, 5, 14, -1, None
    r = R()
    assert not cache.rejects(r) and r.reserve == 76
    assert cache.admit(r, None, 10)
    # token states at 10 tokens: 10 (full) + 8 (window) + 4 (state page)
    assert cache.snapshot(None, None)[0] == 22
    assert cache.keep_total == 14 + 8 + 4                # what the request will fill
    cache.free(r, False)
    assert cache.reserved == 0 and cache.fill_total == 0 and cache.keep_total == 0


# --------------------------------------------------------------------------------------------
# Real models: conservation, peaks within the plan, the groups vLLM has


def _fits(name: str, **kw) -> PlanInputs:
    return PlanInputs(gpu=resolve_gpu("h100"), max_len=kw.pop("max_len", 4096),
                      kv_budget=kw.pop("kv_budget", 2 * 1024 ** 3), **kw)


@pytest.mark.parametrize("name,kinds", [
    ("gemma-2-9b", {"sliding": 1, "full": 1}),
    ("gemma-3-27b", {"sliding": 6, "full": 1}),
    ("gpt-oss-20b", {"sliding": 1, "full": 1}),
    ("llama-4-scout", {"chunked": 3, "full": 1}),
    ("qwen3-next-80b-a3b", {"mamba": 3, "full": 1}),
    ("nemotron-3-nano-30b", {"mamba": 4, "full": 1}),
    ("jamba-v0.1", {"mamba": 7, "full": 1}),
])
def test_groups_are_the_plans(name, kinds):
    spec = load_spec(name)[1]
    plan = make_plan(spec, _fits(name), fixed(1, 0))
    groups = kv_cache_groups(plan)
    got: dict = {}
    for g in groups.specs:
        got[g.kind] = got.get(g.kind, 0) + 1
    assert got == kinds
    assert len(groups.specs) == plan.vllm.groups
    mamba = [g for g in groups.specs if g.kind == "mamba"]
    # align mode with prefix caching: 3 blocks for Mamba-2 / GDN (prefill checkpoint), 2 for
    # Jamba's Mamba-1 mixer (MambaSpec.max_memory_usage_bytes, vLLM 0.34)
    want = {"qwen3-next-80b-a3b": 3, "nemotron-3-nano-30b": 3, "jamba-v0.1": 2}.get(name)
    if want:
        assert {g.peak_blocks(4096, groups.block_size, 0) for g in mamba} == {want}
        off = make_plan(spec, _fits(name, prefix_caching=False), fixed(1, 0))
        assert {g.peak_blocks(4096, 64, 0) for g in kv_cache_groups(off).specs
                if g.kind == "mamba"} == {1}


@pytest.mark.parametrize("name", ["gemma-2-9b", "gpt-oss-20b", "llama-4-scout",
                                  "nemotron-3-nano-30b", "jamba-v0.1"])
@pytest.mark.parametrize("prefix", [True, False])
def test_conservation_and_peak_within_the_plan(name, prefix):
    """A tight pool (preemptions), every step checked (blocks conserved, reference counts,
    categories sum to the budget); every request ends; the peak never exceeds the pool vLLM
    allocates (num_gpu_blocks less the null block)."""
    spec = load_spec(name)[1]
    need = make_plan(spec, _fits(name), fixed(1, 0)).vllm.needed_bytes
    inp = _fits(name, kv_budget=3 * need, prefix_caching=prefix,   # three max_len requests
               max_num_seqs=16)
    res = simulate(spec, inp, lambda: synthetic(40, 50.0, 1500, 300, "lognormal",
                                                max_len=4096, seed=3), Options(check=True))
    plan = res.plan
    for r in res.runs.values():
        t = r.totals
        assert t.completed + t.rejected == t.requests == 40
        assert sum(r.memory.values()) == pytest.approx(1.0)
        assert all(v >= -1e-9 for v in r.memory.values())
    paged = res.runs["paged"].totals
    assert paged.peak_used_slots <= (plan.vllm.num_blocks - 1) * plan.vllm.block_size
    assert res.usable_blocks == plan.vllm.num_blocks - 1


@pytest.mark.parametrize("checkpoint,hit", [(1, 16), (0, 0)])
def test_shared_prefixes_hit_only_at_mamba_checkpoints(checkpoint, hit):
    """Three requests of 10 tokens sharing a 2-block hashed prefix (B = 4, hash blocks of 4
    tokens), one after the other. Full attention and the window group cache blocks 0-1; the
    Mamba group has a cached state at 8 tokens only with a prefill checkpoint (Mamba-2 / GDN:
    the second and third requests hit 8 tokens each); without one (Jamba's mixer) its only
    state is at 10 tokens, no block boundary, and nothing hits."""
    cache = HybridCache((GroupSpec("sliding", 8),
                         GroupSpec("mamba", align=True, checkpoint=checkpoint), FULL),
                        64, 4, 256.0, True, hash_block=4, in_flight=128)
    cfg = Config(64, 8, 1024, check=True)
    timing = step_time_model(resolve_gpu("h100"), None, "bf16", "vllm", None, 1.0)
    arr = [Arrival(float(i * 10), 10, 4, (7, 8, 9 + i)) for i in range(3)]
    tot = run(arr, cache, cfg, timing)
    assert tot.completed == 3
    assert tot.prefix_hit_tokens == hit


# --------------------------------------------------------------------------------------------
# The CLI on every built-in hybrid preset


def _cli(*args):
    return CliRunner().invoke(cli, ["simulate", *args, "--requests", "30", "--rate", "20",
                                    "--input-len", "1500", "--output-len", "200",
                                    "--max-len", "8192", "--kv-budget", "8GiB",
                                    "--max-num-seqs", "32",
                                    "--format", "json"])


@pytest.mark.parametrize("name", HYBRID_PRESETS)
@pytest.mark.parametrize("pp", ["1", "2"])
def test_every_hybrid_preset_simulates(name, pp):
    r = _cli("-m", name, "--engine", "vllm", "--pp", pp)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["pp"] == int(pp)
    assert rec["kv_cache_groups"]
    for run_ in rec["allocators"].values():
        assert run_["completed"] + run_["rejected"] == 30
        assert sum(run_["memory"].values()) == pytest.approx(1.0, abs=1e-5)
        assert run_["peak_used_fraction"] <= 1.0


def test_cpu_offload_on_a_hybrid_model_is_one_line():
    r = CliRunner().invoke(cli, ["simulate", "-m", "gemma-3-27b", "--max-len", "8192",
                                 "--requests", "5", "--input-len", "100", "--output-len", "10",
                                 "--cpu-offload", "4GiB"])
    assert r.exit_code != 0
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert "--cpu-offload" in r.output
