"""kvcalc plan: budgets, parameter counts, workloads, solvers, and the CLI contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcalc.cli import cli
from kvcalc.errors import ConfigError, UsageError
from kvcalc.hardware import find_gpu, load_catalog
from kvcalc.engines import build_layout
from kvcalc.model import load_spec
from kvcalc.params import weight_bytes
from kvcalc.planning import PlanInputs, make_plan, smallest_deployment, solve_max_len
from kvcalc.units import GiB
from kvcalc.workload import compare_allocators, fixed, from_trace, peak_slots, sampled

TRACES = Path(__file__).parent / "fixtures" / "traces"


def spec(name):
    return load_spec(name)[1]


def run(*args):
    return CliRunner().invoke(cli, list(args))


# ---------------------------------------------------------------- plans

def plan_for(name, **kw):
    s = spec(name)
    kw.setdefault("gpu", find_gpu("h100"))
    inp = PlanInputs(**kw)
    return make_plan(s, inp, fixed(inp.max_len, 0))


def test_llama2_7b_on_h100_at_4096():
    p = plan_for("llama-2-7b", max_len=4096, weights_dtype="fp16")
    b = p.budget
    assert b.total_bytes == 85_045_477_376
    assert b.weights_bytes == 2 * 6_738_415_616
    # vLLM 0.34's extensible KV cache: utilization 1.0, then the margin kept free after warm-up,
    # max(1 GiB, 0.75 x the transient (activation) peak)
    assert (b.utilization, b.source) == (1.0, "extensible")
    assert b.margin_bytes == max(GiB, int(0.75 * b.activation_bytes))
    assert b.kv_bytes == 85_045_477_376 - b.weights_bytes - b.overhead_bytes - b.margin_bytes
    # block = 64 tokens x 524,288 B = 32 MiB; 4,096 tokens = 64 blocks
    assert p.vllm.num_blocks == b.kv_bytes // (64 * 524_288)
    assert p.vllm.max_concurrency == p.vllm.num_blocks / 64
    assert p.contiguous.max_sequences == b.kv_bytes // (4096 * 524_288)
    # vLLM 0.33: ceil(total x 0.92) - weights - overheads (vllm/config/cache.py), blocks of 16
    old = plan_for("llama-2-7b", max_len=4096, weights_dtype="fp16", version="0.33").budget
    assert (old.utilization, old.source, old.margin_bytes) == (0.92, "computed", 0)
    assert old.kv_bytes == -(-85_045_477_376 * 92 // 100) - old.weights_bytes - old.overhead_bytes
    assert plan_for("llama-2-7b", max_len=4096, version="0.33").vllm.block_size == 16


def test_kv_budget_override_reproduces_vllm_log():
    p = plan_for("llama-3.1-8b", max_len=131_072, kv_budget=int(51.63 * GiB), version="0.33")
    assert (p.vllm.num_blocks, p.vllm.kv_cache_tokens) == (26_434, 422_944)
    assert round(p.vllm.max_concurrency, 2) == 3.23


def test_llama3_70b_tensor_parallel():
    tp2 = plan_for("llama-3.1-70b", tp=2, max_len=8192)
    tp8 = plan_for("llama-3.1-70b", tp=8, max_len=8192)
    tp16 = plan_for("llama-3.1-70b", tp=16, max_len=8192)
    per_head = 80 * 2 * 128 * 2
    assert tp2.layout.bytes_per_token == 4 * per_head
    assert tp8.layout.bytes_per_token == tp16.layout.bytes_per_token == per_head
    assert any("replicated" in w for w in tp16.warnings)
    assert not any("replicated" in w for w in tp8.warnings)
    assert tp2.budget.weights_bytes == -(-weight_bytes(tp2.params, "bf16") // 2)


def test_deepseek_v3_latent_is_not_split_at_tp8():
    p = plan_for("deepseek-v3", gpu=find_gpu("h200"), tp=8, max_len=32768, weights_dtype="fp8",
                 block_size=64)
    assert p.layout.bytes_per_token == 61 * 576 * 2
    assert p.fits and p.vllm.num_blocks == p.budget.kv_bytes // (64 * 70_272)


def test_does_not_fit_is_explained_with_exit_code_3():
    # field.md 5.3 (llm-d's measured H100 runs): Llama-3.3-70B fp8 at TP 1 leaves -1.44 GiB for
    # the KV cache, at TP 2 32.0 GiB
    result = run("plan", "-m", "llama-3.3-70b", "--weights-dtype", "fp8", "--max-len", "32k",
                 "--vllm-version", "0.33")
    assert result.exit_code == 3
    assert "DOES NOT FIT" in result.stdout and "No available memory" in result.stdout
    assert "on 2 h100-sxm GPUs (--tp 2 --pp 1)" in result.stdout
    # (those runs set gpu_memory_utilization 0.9)
    tp1 = plan_for("llama-3.3-70b", weights_dtype="fp8", max_len=8192, version="0.33",
                   gpu_util=0.9)
    tp2 = plan_for("llama-3.3-70b", weights_dtype="fp8", tp=2, max_len=8192, version="0.33",
                   gpu_util=0.9)
    assert -2.5 * GiB < tp1.budget.kv_bytes < -0.5 * GiB
    assert 31 * GiB < tp2.budget.kv_bytes < 33 * GiB


def test_pipeline_parallel_takes_the_tightest_stage():
    p = plan_for("llama-3.1-70b", tp=2, pp=2, max_len=8192)
    assert len(p.budgets) == 2 and p.num_gpus == 4
    # tp 2: 4 kv heads x (128 + 128) x 2 B = 2,048 B per token per layer; 40 layers per stage
    assert p.vllm.num_blocks == min(b.kv_bytes // (40 * 64 * 2048) for b in p.budgets)
    assert p.bytes_per_token == 40 * 2048
    assert p.kv_capacity_tokens == p.budget.kv_bytes // (40 * 2048)


def test_realistic_workload_contiguous_keeps_20_to_40_percent():
    s = spec("llama-3.1-8b")
    inp = PlanInputs(gpu=find_gpu("h100"), max_len=4096)
    workload, clipped = from_trace(TRACES / "chat.jsonl", 4096)
    p = make_plan(s, inp, workload)
    assert 0.2 <= p.contiguous.utilization <= 0.4
    assert p.paged.utilization > 0.95
    assert p.paged.max_sequences > 2.5 * p.contiguous.max_sequences


def test_workload_sources(tmp_path):
    w, clipped = from_trace(TRACES / "small.csv", 1024)
    assert w.lengths == (128, 1024, 512) and clipped == 0
    w, clipped = from_trace(TRACES / "small.csv", 600)
    assert clipped == 1 and max(w.lengths) == 600
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"prompt_len": 5, "output_len": 1}\n{"prompt_len": "x"}\n')
    with pytest.raises(ConfigError, match=f"{bad}:2"):
        from_trace(bad, 100)
    s = sampled("normal", 500, 100, 4096, samples=300, seed=1)
    assert len(s.lengths) == 300 and 450 < s.mean_length < 550
    assert sampled("normal", 500, 100, 4096, samples=300, seed=1) == s
    with pytest.raises(UsageError):
        sampled("pareto", 5, 1, 10)


def test_windows_and_states_are_honoured_by_allocators():
    s = spec("gemma-3-27b")
    paged = build_layout(s, "vllm", "bf16", version="0.33")
    token = build_layout(s, "vllm", "bf16", block_size=1, version="0.33")
    c, g = compare_allocators(paged, token, fixed(32768, 0), 32768, 100 * GiB)
    # 10 full layers x 32,768 + 52 sliding layers x (cdiv(1023, 16) + 1) blocks of 16 tokens
    # (the most a 1,024-token window holds in vLLM), 8,192 B per token per layer
    assert c.bytes_per_sequence == (10 * 32768 + 52 * 65 * 16) * 8192
    # at exactly 32k the sliding layers hold 64 blocks, but on the way (e.g. at 32,760
    # tokens) they held 65: a sequence needs its peak, so paged counts 65 too
    sliding = paged.layers[0]
    assert sliding.slots_held(32768) == 64 * 16 and sliding.slots_held(32760) == 65 * 16
    assert g.bytes_per_sequence == c.bytes_per_sequence
    # below the window edge paged holds only what the sequence reached
    c, g = compare_allocators(paged, token, fixed(500, 0), 32768, 100 * GiB)
    assert g.bytes_per_sequence == 62 * 512 * 8192   # 32 blocks of 16 in every layer
    assert g.token_bytes_per_sequence == 62 * 500 * 8192


def test_solvers():
    s = spec("llama-3.1-8b")
    inp = PlanInputs(gpu=find_gpu("h100"), max_len=32768)
    best = solve_max_len(s, inp, 8, 131072)
    at = make_plan(s, PlanInputs(**{**inp.__dict__, "max_len": best}), fixed(best, 0))
    above = make_plan(s, PlanInputs(**{**inp.__dict__, "max_len": best + 16}), fixed(best, 0))
    assert at.vllm.max_concurrency >= 8 > above.vllm.max_concurrency
    size = smallest_deployment(spec("llama-3.1-70b"), PlanInputs(gpu=find_gpu("h100"),
                                                                  max_len=32768), 64)
    assert size.fits and size.per_replica_concurrency * size.replicas >= 64
    smaller = smallest_deployment(spec("llama-3.1-70b"), PlanInputs(gpu=find_gpu("h100"),
                                                                     max_len=32768), 1)
    assert smaller.num_gpus <= size.num_gpus


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["llama-3.1-8b", "gemma-3-27b", "qwen3-next-80b-a3b", "deepseek-v2-lite",
                        "gpt-oss-120b", "mistral-7b-v0.1"]),
       st.integers(20, 400), st.integers(1, 60), st.sampled_from([2048, 8192, 32768]))
def test_more_memory_never_fewer_sequences(name, gib, extra, max_len):
    s = spec(name)
    lo = make_plan(s, PlanInputs(gpu=find_gpu("h100"), max_len=max_len, kv_budget=gib * GiB),
                   fixed(max_len, 0))
    hi = make_plan(s, PlanInputs(gpu=find_gpu("h100"), max_len=max_len,
                                 kv_budget=(gib + extra) * GiB), fixed(max_len, 0))
    assert hi.vllm.num_blocks >= lo.vllm.num_blocks
    assert hi.contiguous.max_sequences >= lo.contiguous.max_sequences
    assert lo.paged.max_sequences >= lo.contiguous.max_sequences


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["llama-3.1-8b", "gemma-3-27b", "qwen3-next-80b-a3b"]),
       st.integers(1024, 65536), st.integers(1, 4096))
def test_concurrency_monotonic_in_max_len(name, short, extra):
    s = spec(name)
    a = make_plan(s, PlanInputs(gpu=find_gpu("h100"), max_len=short, kv_budget=40 * GiB),
                  fixed(short, 0))
    b = make_plan(s, PlanInputs(gpu=find_gpu("h100"), max_len=short + extra, kv_budget=40 * GiB),
                  fixed(short + extra, 0))
    assert b.vllm.max_concurrency <= a.vllm.max_concurrency
    assert b.contiguous.max_sequences <= a.contiguous.max_sequences


# ---------------------------------------------------------------- CLI

def test_plan_json_contract():
    result = run("plan", "-m", "llama-7b", "--gpu", "h100", "--max-len", "4096", "-f", "json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["gpu"] == "h100-sxm" and d["num_gpus"] == 1 and (d["tp"], d["pp"]) == (1, 1)
    for key in ("total_bytes", "utilization", "weights_bytes", "overhead_bytes", "kv_bytes"):
        assert key in d["budget"]
    assert isinstance(d["max_concurrency"]["contiguous"], int)
    assert isinstance(d["max_concurrency"]["paged"], float)
    assert set(d["vllm"]) >= {"num_gpu_blocks", "kv_cache_tokens", "max_concurrency"}
    assert d["bytes_per_token"] == 524_288 and d["block_size"] == 64
    assert d["kv_capacity_tokens"] == d["budget"]["kv_bytes"] // 524_288
    assert d["num_blocks"] == d["vllm"]["num_gpu_blocks"]


def test_plan_table_workload_and_solvers():
    result = run("plan", "-m", "llama-3.1-8b", "--max-len", "4k", "--dist", "lognormal",
                 "--mean", "900", "--std", "700", "--target-concurrency", "500",
                 "--solve-max-len", "64")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "GPU KV cache size" in out and "paged gain" in out
    assert "smallest deployment for 500" in out and "largest max length at which 64" in out


def test_plan_compare_gpus_and_gpus_command():
    result = run("plan", "-m", "llama-3.1-8b", "--max-len", "8k", "--compare-gpus",
                 "--target-concurrency", "32", "-f", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == len(load_catalog())
    assert rows[0]["gpus_needed"] <= rows[-1]["gpus_needed"] or rows[-1]["gpus_needed"] is None
    assert run("gpus").exit_code == 0
    assert len(json.loads(run("gpus", "-f", "json").stdout)) == len(load_catalog())


@pytest.mark.parametrize("args, message", [
    (["--gpu", "h1000"], "unknown GPU 'h1000'"),
    (["--tp", "3"], "does not divide"),
    (["--gpu-util", "1.5"], "invalid --gpu-util"),
    (["--kv-budget", "lots"], "invalid --kv-budget"),
    (["--dist", "normal"], "--dist needs --mean and --std"),
    (["--prompt-len", "8k", "--output-len", "1k", "--max-len", "4k"], "exceeds --max-len"),
    (["--trace", "/no/such/trace.jsonl"], "cannot read trace"),
    (["--pp", "0"], "invalid --pp 0"),
    (["--max-batched-tokens", "0"], "invalid --max-batched-tokens 0"),
    (["--max-num-seqs", "0"], "invalid --max-num-seqs 0"),
    (["--num-gpu-blocks-override", "-1"], "must be from 0 to"),
    (["--target-concurrency", "0"], "invalid --target-concurrency 0"),
    (["--solve-max-len", "0"], "invalid --solve-max-len 0"),
    (["--block-size", "0"], "invalid --block-size 0"),
])
def test_plan_bad_input(args, message):
    result = run("plan", "-m", "llama-7b", *args)
    assert result.exit_code not in (0, 3)
    assert message in result.output and "Traceback" not in result.output


def test_does_not_fit_explains_shortfall_and_what_fits():
    result = run("plan", "-m", "llama-3.1-70b", "--gpu", "h100", "--tp", "2", "--max-len", "32k",
                 "--vllm-version", "0.33", "-f", "json")
    assert result.exit_code == 3
    d = json.loads(result.stdout)["does_not_fit"]
    assert d["shortfall_bytes"] > 0 and d["shortfall_gib"] == round(d["shortfall_bytes"] / GiB, 2)
    assert 0 < d["estimated_max_model_len"] < 32768
    # vLLM 0.33's wording (_check_enough_kv_cache_memory); "models's" before
    assert d["vllm_error"].startswith("To serve at least one request with the model's max seq "
                                      "len (32768), (")
    assert f"estimated maximum model length is {d['estimated_max_model_len']}. Try" \
        in d["vllm_error"]
    old = run("plan", "-m", "llama-3.1-70b", "--gpu", "h100", "--tp", "2", "--max-len", "32k",
              "--vllm-version", "0.32", "-f", "json")
    assert "models's max seq len (32768)" in json.loads(old.stdout)["does_not_fit"]["vllm_error"]
    assert d["would_fit"]["fits"] and d["would_fit"]["num_gpus"] > 2
    # weights alone do not fit: vLLM's "No available memory" and a larger layout
    result = run("plan", "-m", "deepseek-v3", "--gpu", "h100", "--tp", "8", "--max-len", "32k")
    assert result.exit_code == 3
    assert "No available memory for the cache blocks" in result.stdout
    assert "What fits: one request of 32,768 tokens on 16 h100-sxm GPUs" in result.stdout


@pytest.mark.parametrize("version, kv, blocks", [
    # vLLM 0.33 platforms/cuda.py: FLASH_ATTN_MLA first on SM 9.0 (bf16 only), FlashMLA for
    # fp8; FlashInfer MLA (32) first on SM 10.x; TRITON_MLA on Ampere and consumer Blackwell
    ("0.33", "auto", {"h200": 16, "b200": 32, "a100": 16, "rtx-5090": 16}),
    ("0.33", "fp8", {"h200": 64, "b200": 32, "a100": 16}),
    # before: FlashMLA on Hopper, CUTLASS MLA on SM 10.x, TRITON_MLA elsewhere
    ("0.32", "auto", {"h200": 64, "b200": 128, "a100": 16, "rtx-5090": 16}),
    # 0.34: the default block is 64, which every backend that takes multiples of 16 or lists 64
    # prefers; CUTLASS MLA keeps 128
    ("0.34", "auto", {"h200": 64, "b200": 64, "a100": 64, "rtx-5090": 64}),
    ("0.34", "fp8", {"h200": 64, "b200": 64, "a100": 64}),
])
def test_mla_block_size_follows_the_backend(version, kv, blocks):
    s = spec("deepseek-v3")
    for gpu, block in blocks.items():
        p = make_plan(s, PlanInputs(gpu=find_gpu(gpu), tp=8, max_len=4096, weights_dtype="fp8",
                                    kv_dtype=kv, version=version), fixed(4096, 0))
        assert p.layout.block_size == block, gpu
    assert plan_for("llama-3.1-8b", max_len=4096).layout.block_size == 64
    assert plan_for("llama-3.1-8b", max_len=4096, version="0.33").layout.block_size == 16


def test_plan_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from kvcalc.cli import cli; "
            "r = CliRunner().invoke(cli, ['plan', '-m', 'llama-7b', '--max-len', '4k']); "
            "assert r.exit_code == 0, r.output; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_csv_trace_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("prompt_len,output_len\n10,5\n7,-1\n")
    with pytest.raises(ConfigError, match=f"{bad}:3"):
        from_trace(bad, 100)
    missing = tmp_path / "m.csv"
    missing.write_text("prompt,output\n1,2\n")
    with pytest.raises(ConfigError, match="prompt_len and output_len columns"):
        from_trace(missing, 100)
    result = run("plan", "-m", "llama-7b", "--trace", str(bad))
    assert result.exit_code == 1 and f"{bad}:3" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("fmt, marker", [("yaml", "num_gpu_blocks:"), ("csv", "vllm_num_gpu_blocks"),
                                         ("markdown", "| budget (per GPU)")])
def test_plan_formats(fmt, marker):
    result = run("plan", "-m", "gemma-3-27b", "--gpu", "h200", "--max-len", "32k", "-f", fmt)
    assert result.exit_code == 0, result.output
    assert marker in result.stdout


def test_vllm_era_mid_and_flags():
    base = ("plan", "-m", "gemma-3-27b", "--gpu", "h200", "--max-len", "32k", "-f", "json")
    new = json.loads(run(*base).stdout)["vllm"]
    mid = json.loads(run(*base, "--vllm-version", "0.19").stdout)["vllm"]
    assert json.loads(run(*base, "--vllm-era", "mid").stdout)["vllm"] == mid   # old flag name
    assert new["in_flight_tokens"] == 2 * mid["in_flight_tokens"] == 16384
    assert mid["kv_cache_tokens"] == mid["num_gpu_blocks"] // 7 * 16
    assert new["kv_cache_tokens"] == int(new["num_gpu_blocks"] / new["blocks_per_request"] * 32768)
    off = json.loads(run(*base, "--disable-hybrid-kv-cache-manager").stdout)["vllm"]
    assert off["kv_cache_groups"] == 1 and off["max_concurrency"] < new["max_concurrency"]
    forced = json.loads(run(*base, "--num-gpu-blocks-override", "1000").stdout)["vllm"]
    assert forced["num_gpu_blocks"] == 1000


def test_pipeline_stages_hold_their_own_layers_of_each_sequence():
    s = spec("gemma-3-27b")  # stage 0: layers 0-30, stage 1: 31-61 (different full/sliding mix)
    p = make_plan(s, PlanInputs(gpu=find_gpu("h200"), pp=2, max_len=32768), fixed(4096, 0))
    lay = build_layout(s, "vllm", "auto")
    per_stage = []
    for (a, b), budget in zip(((0, 31), (31, 62)), p.budgets):
        held = sum(peak_slots(c, 4096) * c.bytes_per_token for c in lay.layers[a:b])
        per_stage.append(budget.kv_bytes / held)
    assert abs(p.paged.max_sequences - min(per_stage)) < 1e-6


def test_every_budget_term_can_be_overridden():
    d = json.loads(run("plan", "-m", "llama-3.1-8b", "--max-len", "8k", "--weights-memory",
                       "14.99GiB", "--activation-memory", "1.2GiB", "--non-torch-memory",
                       "0.1GiB", "--cuda-graph-memory", "0", "-f", "json").stdout)["budget"]
    assert d["weights_bytes"] == int(14.99 * GiB)
    assert (d["activation_bytes"], d["non_torch_bytes"], d["cuda_graph_bytes"]) == (
        int(1.2 * GiB), int(0.1 * GiB), 0)
    assert d["kv_bytes"] == (d["requested_bytes"] - d["weights_bytes"] - d["overhead_bytes"]
                             - d["margin_bytes"])
    assert d["margin_bytes"] == GiB - (d["total_bytes"] - d["requested_bytes"])
    over = json.loads(run("plan", "-m", "llama-3.1-8b", "--max-len", "8k", "--overhead", "3GiB",
                          "-f", "json").stdout)["budget"]
    assert over["overhead_bytes"] == 3 * GiB
    assert over["kv_bytes"] == (over["requested_bytes"] - over["weights_bytes"] - 3 * GiB
                                - over["margin_bytes"])


def test_engine_figure_versus_what_requests_hold_is_explained():
    # field.md 5.2 item 4: vLLM sizes sliding groups for window + tokens in flight
    p = plan_for("gpt-oss-120b", max_len=131_072, weights_dtype="mxfp4")
    assert p.fits and p.paged.max_sequences > p.vllm.max_concurrency * 1.05
    assert any(n.startswith("vLLM's maximum concurrency") for n in p.notes)
    g = plan_for("gemma-3-27b", max_len=131_072)
    assert not g.fits and any(n.startswith("vLLM refuses to start although") for n in g.notes)
    # smaller batches in flight shrink vLLM's sliding-window term until it starts
    small = plan_for("gemma-3-27b", max_len=131_072, max_batched_tokens=2048,
                     async_scheduling=False)
    assert small.vllm.blocks_per_request < g.vllm.blocks_per_request
    assert not any(n.startswith("vLLM") for n in plan_for("llama-3.1-8b", max_len=8192).notes)


def test_sizing_respects_max_num_seqs():
    # a 1B model on an L40S holds ~576 requests of 2k tokens, but vLLM schedules 256 at once
    # (max_num_seqs default below 70 GiB), so 2,000 concurrent requests need 8 replicas
    s = spec("llama-3.2-1b")
    inp = PlanInputs(gpu=find_gpu("l40s"), max_len=2048)
    size = smallest_deployment(s, inp, 2000)
    assert size.limited_by == "max_num_seqs" and size.per_replica_concurrency == 256
    assert size.kv_concurrency > 500 and size.num_gpus == 8
    more = smallest_deployment(s, PlanInputs(**{**inp.__dict__, "max_num_seqs": 1024}), 2000)
    assert more.limited_by == "kv cache" and more.num_gpus == 4
    p = make_plan(s, inp, fixed(2048, 0))
    assert any("max_num_seqs = 256" in n for n in p.notes)


@pytest.mark.parametrize("args, blocks, tokens, concurrency, bpt", [
    ("llama-2-7b --gpu h100 --max-len 4096", 2024, 129_536, 31.62, 524_288),
    ("llama-3-70b --tp 2 --max-len 8k", 582, 37_248, 4.55, 163_840),
    ("llama-3-70b --tp 2 --max-len 8k --vllm-version 0.33", 842, 13_472, 1.64, 163_840),
    ("llama-3-70b --tp 8 --max-len 8k", 22_869, 1_463_616, 178.66, 40_960),
    ("llama-3-70b --tp 16 --max-len 8k", 26_292, 1_682_688, 205.41, 40_960),
    ("deepseek-v3 --gpu h200 --tp 8 --max-len 32k", 13_040, 834_560, 25.47, 70_272),
    ("deepseek-v3 --gpu h200 --tp 8 --max-len 32k --vllm-version 0.33", 43_634, 698_144, 21.31,
     70_272),
    ("mistral-7b-v0.1 --gpu l4 --max-len 32k", 778, 197_624, 6.03, 131_072),
    ("gpt-oss-120b --max-len 128k", 4669, 265_268, 2.02, 73_728),
    ("qwen3-next-80b-a3b --gpu h200 --tp 2 --max-len 256k", 8892, 5_012_869, 19.12, 12_288),
    ("qwen3-next-80b-a3b --gpu h200 --tp 2 --max-len 256k --vllm-version 0.33", 7553,
     4_258_007, 16.24, 12_288),
])
def test_planning_doc_table(args, blocks, tokens, concurrency, bpt):
    # docs/planning.md "Hand-derived checks": the figures printed there
    r = run("plan", "-m", *args.split(), "-f", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    v = d["vllm"]
    assert (v["num_gpu_blocks"], v["kv_cache_tokens"], v["max_concurrency"],
            d["bytes_per_token"]) == (blocks, tokens, concurrency, bpt)
