"""The public Python API (docs/api.md): results equal the CLI's JSON, typed errors, examples run."""

from __future__ import annotations

import doctest
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import kvcalc
from kvcalc.cli import cli

ROOT = Path(__file__).resolve().parents[1]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def python_blocks(path: Path) -> str:
    """The ```python blocks of a markdown file, joined into one doctest text."""
    text = path.read_text(encoding="utf-8")
    return "\n".join(m.group(1) + "\n" for m in re.finditer(r"```python\n(.*?)```", text, re.S))


@pytest.mark.parametrize("doc", ["docs/api.md", "README.md"])
def test_doc_examples_run(doc):
    text = python_blocks(ROOT / doc)
    assert ">>>" in text, f"{doc} has no Python examples"
    test = doctest.DocTestParser().get_doctest(text, {}, doc, doc, 0)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test)
    assert runner.failures == 0, f"{runner.failures} example(s) of {doc} failed (run pytest -s)"


@pytest.mark.parametrize("module", ["kvcalc", "kvcalc.api"])
def test_module_doctests(module):
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=FLAGS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("args, kwargs", [
    (["-m", "llama-7b", "--seq", "4096"], dict(seq=4096)),
    (["-m", "deepseek-v3", "--seq", "32k", "--engine", "vllm", "--kv-dtype", "fp8"],
     dict(seq=32768, engine="vllm", kv_dtype="fp8")),
    (["-m", "gemma-3-27b", "--seq", "128k", "--batch", "8", "--hf-version", "4.55"],
     dict(seq=131072, batch=8, hf_version="4.55")),
    (["-m", "qwen3-next-80b-a3b", "--seq", "1000", "--engine", "vllm", "--vllm-version", "0.19"],
     dict(seq=1000, engine="vllm", vllm_version="0.19")),
])
def test_to_dict_is_the_cli_json(args, kwargs):
    result = CliRunner().invoke(cli, ["estimate", *args, "-f", "json"])
    assert result.exit_code == 0, result.output
    api = kvcalc.estimate(args[1], **kwargs)
    assert api.to_dict() == json.loads(result.stdout)
    assert api.bytes_total == api.batch * api.bytes_per_sequence


def test_results_are_frozen_and_copies():
    r = kvcalc.estimate("llama-7b", seq=16)
    with pytest.raises(AttributeError):
        r.seq = 1
    with pytest.raises(TypeError):
        r.human["per_token"] = "x"          # nested objects are read-only
    d = r.to_dict()
    d["layers"].clear()
    assert r.to_dict()["layers"]           # to_dict hands out a copy
    with pytest.raises(AttributeError, match="no field 'nope'"):
        r.nope


def test_config_dict_and_paths_resolve_like_the_cli(tmp_path):
    cfg = json.loads((ROOT / "tests/fixtures/tiny-configs/llama-gqa.json").read_text())
    by_dict = kvcalc.estimate(cfg, seq=7)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    by_path = kvcalc.estimate(path, seq=7)
    # 2 layers x 2 kv heads x (32 + 32) x 4 B (fp32) = 1,024 B per token
    assert by_dict.bytes_per_token == by_path.bytes_per_token == 1024
    assert by_dict.source["kind"] == "config" and by_path.source["kind"] == "file"


@pytest.mark.parametrize("call, error, exit_code", [
    (lambda: kvcalc.estimate("no-such-model-xyz", seq=1), "ModelNotFoundError", 1),
    (lambda: kvcalc.estimate("llama-7b", seq=1, engine="vlm"), "UsageError", 2),
    (lambda: kvcalc.estimate("llama-7b", seq=1.5), "UsageError", 2),
    (lambda: kvcalc.estimate("llama-7b", seq=1, kv_dtype="fp3"), "UsageError", 2),
    (lambda: kvcalc.resolve({"model_type": "llama"}), "ConfigError", 1),
    (lambda: kvcalc.resolve(42), "UsageError", 2),
])
def test_errors_are_the_typed_exceptions_the_cli_uses(call, error, exit_code):
    with pytest.raises(kvcalc.KvcalcError) as info:
        call()
    assert isinstance(info.value, getattr(kvcalc, error))
    assert info.value.exit_code == exit_code


def test_import_is_lazy_and_torch_free():
    code = ("import sys, kvcalc; assert 'kvcalc.api' not in sys.modules; "
            "kvcalc.estimate('llama-7b', seq=8); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_done_when_command():
    out = subprocess.run([sys.executable, "-c", "import kvcalc; print(kvcalc.estimate("
                          "'llama-7b', seq=4096).bytes_per_sequence)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2147483648"


def test_a_setting_the_engine_does_not_take_is_a_warning():
    r = kvcalc.estimate("llama-7b", seq=16, block_size=32)          # hf: token-granular
    assert any("block_size = 32 does not apply to transformers" in w for w in r.warnings)
    assert r.bytes_per_sequence == 16 * 524_288                     # and ignored
    v = kvcalc.estimate("llama-7b", seq=16, engine="vllm", block_size=32)
    assert not any("does not apply" in w for w in v.warnings) and v.block_size == 32
    out = CliRunner().invoke(cli, ["estimate", "-m", "llama-7b", "--block-size", "32"])
    assert "warning: block_size = 32 does not apply to transformers" in out.stderr


# ------------------------------------------------------------------------------------ plan

@pytest.mark.parametrize("args, kwargs", [
    (["-m", "llama-3.1-8b", "--max-len", "8k"], dict(max_len="8k")),
    (["-m", "llama-3.1-70b", "--gpu", "h100", "--tp", "4", "--max-len", "32k", "--dist",
      "lognormal", "--mean", "3000", "--std", "2000"],
     dict(gpu="h100", tp=4, max_len=32768, dist="lognormal", mean=3000, std=2000)),
    (["-m", "deepseek-v3", "--gpu", "h200", "--tp", "8", "--weights-dtype", "fp8",
      "--kv-dtype", "fp8", "--max-len", "32k"],
     dict(gpu="h200", tp=8, weights_dtype="fp8", kv_dtype="fp8", max_len="32k")),
    (["-m", "llama-3.1-8b", "--kv-budget", "51.63GiB", "--max-len", "128k",
      "--target-concurrency", "8", "--solve-max-len", "4"],
     dict(kv_budget="51.63GiB", max_len="128k", target_concurrency=8, solve_max_len=4)),
    (["-m", "llama-3.1-8b", "--engine", "sglang", "--mem-fraction-static", "0.8",
      "--max-len", "8k"], dict(engine="sglang", mem_fraction_static=0.8, max_len=8192)),
    (["-m", "llama-3.1-8b", "--engine", "trtllm", "--free-gpu-memory-fraction", "0.5",
      "--max-len", "8k"], dict(engine="trtllm", free_gpu_memory_fraction=0.5, max_len=8192)),
    (["-m", "llama-3.1-8b", "--engine", "llamacpp", "--ctx-size", "32k", "--parallel", "4"],
     dict(engine="llamacpp", ctx_size="32k", parallel=4)),
    (["-m", "qwen2.5-7b", "--max-len", "4k", "--prompt-len", "1000", "--output-len", "500",
      "--vllm-version", "0.19"],
     dict(max_len=4096, prompt_len=1000, output_len=500, vllm_version="0.19")),
])
def test_plan_to_dict_is_the_cli_json(args, kwargs):
    result = CliRunner().invoke(cli, ["plan", *args, "-f", "json"])
    assert result.exit_code == 0, result.output
    api = kvcalc.plan(args[1], **kwargs)
    assert api.to_dict() == json.loads(result.stdout)
    assert api.fits and api.num_gpus == api.tp * api.pp * api.replicas


def test_plan_figures_and_a_plan_that_does_not_fit():
    # Llama-3.1-8B on an H100 at 8k: 131,072 B/token (32 layers x 8 kv heads x 128 x 2 x 2 B),
    # vLLM 0.34: 7,344 blocks of 64 tokens = 470,016 tokens, 57.38 requests of 8,192
    p = kvcalc.plan("llama-3.1-8b", gpu="h100", max_len="8k")
    assert (p.bytes_per_token, p.vllm["num_gpu_blocks"], p.vllm["kv_cache_tokens"]) == \
        (131_072, 7_344, 470_016)
    assert p.max_concurrency == {"contiguous": 57, "paged": 57.38}
    # vLLM 0.33 (gpu_memory_utilization 0.92, blocks of 16)
    old = kvcalc.plan("llama-3.1-8b", gpu="h100", max_len="8k", vllm_version="0.33")
    assert (old.vllm["num_gpu_blocks"], old.vllm["kv_cache_tokens"]) == (27_421, 438_736)
    # Llama-3.1-70B in bf16 on one H100: weights alone exceed it -> a result, not an exception
    big = kvcalc.plan("llama-3.1-70b", gpu="h100", max_len="32k")
    cli_run = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-70b", "--max-len", "32k",
                                       "-f", "json"])
    assert cli_run.exit_code == 3 and big.to_dict() == json.loads(cli_run.stdout)
    assert not big.fits and big.does_not_fit["would_fit"]["fits"]
    assert big.does_not_fit["would_fit"]["num_gpus"] >= 2


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(mem_fraction_static=0.8), kvcalc.UsageError, "--mem-fraction-static is a setting of SGLang"),
    (dict(ctx_size=4096), kvcalc.UsageError, "--ctx-size is a setting of --engine llamacpp"),
    (dict(no_such_option=1), kvcalc.UsageError, "unknown plan option 'no_such_option'"),
    (dict(kv_budget="lots"), kvcalc.UsageError, "--kv-budget"),
    (dict(target_concurrency=0), kvcalc.UsageError, "--target-concurrency"),
    (dict(gpu="h9000"), kvcalc.KvcalcError, "h9000"),
    (dict(engine="sglang", target_concurrency=4), kvcalc.UsageError, "solve with vLLM's rules"),
])
def test_plan_errors_are_typed(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        kvcalc.plan("llama-3.1-8b", max_len=8192, **kwargs)


def test_plan_warnings_are_in_the_result():
    p = kvcalc.plan("llama-3.1-8b", engine="sglang", max_len=8192, max_num_seqs=64)
    assert any("--max-num-seqs: vLLM setting(s), not used by --engine sglang" in w
               for w in p.warnings)
    result = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--engine", "sglang",
                                      "--max-len", "8k", "--max-num-seqs", "64"])
    assert "warning: --max-num-seqs: vLLM setting(s)" in result.stderr


def test_compare_gpus_rows_are_the_cli_json():
    result = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--max-len", "8k",
                                      "--compare-gpus", "-f", "json"])
    assert result.exit_code == 0, result.output
    rows = kvcalc.compare_gpus("llama-3.1-8b", max_len=8192)
    assert [r.to_dict() for r in rows] == json.loads(result.stdout)
    h100 = next(r for r in rows if r.gpu == "h100-sxm")
    assert h100.num_gpu_blocks == 7_344


# -------------------------------------------------------------------------------- simulate

def test_simulate_to_dict_is_the_cli_json_and_timeline_is_the_csv(tmp_path):
    args = ["-m", "llama-2-13b", "--gpu", "a100-40gb", "--max-len", "2048", "--rate", "2",
            "--requests", "300", "--dist", "lognormal", "--input-len", "161",
            "--output-len", "338"]
    csv_path = tmp_path / "t.csv"
    result = CliRunner().invoke(cli, ["simulate", *args, "--timeline", str(csv_path),
                                      "--timeline-interval", "10", "-f", "json"])
    assert result.exit_code == 0, result.output
    r = kvcalc.simulate("llama-2-13b", gpu="a100-40gb", max_len=2048, rate=2, requests=300,
                        dist="lognormal", input_len=161, output_len=338, timeline_interval=10)
    assert r.to_dict() == json.loads(result.stdout)
    assert (r.requests, r.completed, r.rejected) == (300, 300, 0)
    shares = {name: a["memory"]["token_states"] for name, a in r.allocators.items()}
    # the PagedAttention paper's ordering: Orca Max < Pow2 < Oracle < paged
    assert shares["orca-max"] < shares["orca-pow2"] < shares["orca-oracle"] < shares["paged"]
    for a in r.allocators.values():
        assert abs(sum(a["memory"].values()) - 1) < 1e-3
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 1 + len(r.timeline())
    first = r.timeline()[0]
    assert lines[1].split(",")[:3] == [first["allocator"], f"{first['time_s']:.6f}",
                                       str(first["running"])]


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "give a workload"),
    (dict(trace="azure-conv-2023", rate=1), "not both"),
    (dict(input_len=100, output_len=10, engine="ollama"),
     "simulate replays vllm, llamacpp, sglang or trtllm, not --engine ollama"),
    (dict(input_len=100, output_len=10, ctx_size=4096), "--ctx-size is a setting of --engine llamacpp"),
    (dict(input_len=100, output_len=10, timeline_interval=0), "--timeline-interval"),
    (dict(input_len=100, output_len=10, nonsense=1), "unknown simulate option 'nonsense'"),
])
def test_simulate_errors_are_typed(kwargs, message):
    with pytest.raises(kvcalc.UsageError, match=re.escape(message)):
        kvcalc.simulate("llama-3.1-8b", **kwargs)
