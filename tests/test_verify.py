"""kvcalc verify on the CPU with tiny random-weight models: the measured cache bytes equal the
hf layout's prediction exactly, for every layer kind transformers builds."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from kvcalc.cli import cli  # noqa: E402

TINY = Path(__file__).parent / "fixtures" / "tiny-configs"
KINDS = sorted(p.stem for p in TINY.glob("*.json"))


def run(*args):
    args = list(args)
    if "cpu" in args:  # one torch thread: steady and fast on a shared 2-core CI machine
        args += ["--threads", "1"]
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_models_match_prediction_exactly(kind):
    result = run("verify", "-m", str(TINY / f"{kind}.json"), "--device", "cpu",
                 "--prompt-len", "10", "--new-tokens", "1,12", "--repeats", "1",
                 "--no-without-cache", "-f", "json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["passed"] and d["device"] == "cpu"
    assert d["measured_cache_bytes"] == d["predicted_cache_bytes"] > 0
    assert d["error_pct"] == 0
    for r in d["runs"]:
        assert r["cache_bytes"] == d["predicted_by_new_tokens"][str(r["new_tokens"])]


def test_json_contract_and_with_without_cache_timings():
    result = run("verify", "-m", str(TINY / "llama-gqa.json"), "--device", "cpu",
                 "--prompt-len", "8", "--new-tokens", "1,4,8", "--repeats", "2", "-f", "json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    for key in ("device", "model", "dtype", "runs", "predicted_cache_bytes",
                "measured_cache_bytes", "error_pct", "passed"):
        assert key in d
    assert len(d["runs"]) == 6
    for r in d["runs"]:
        assert set(r) >= {"use_cache", "new_tokens", "seconds_mean", "seconds_std",
                          "peak_bytes", "cache_bytes"}
        assert r["seconds_mean"] > 0
        assert (r["cache_bytes"] is None) == (not r["use_cache"])
    # 2 layers x 2 kv heads x (32 + 32) x 4 B = 1,024 B/token; 8 + 8 - 1 = 15 tokens
    assert d["measured_cache_bytes"] == 1024 * 15


def test_table_output_and_layers_truncation():
    result = run("verify", "-m", str(TINY / "gemma2-hybrid.json"), "--device", "cpu",
                 "--layers", "2", "--prompt-len", "10", "--new-tokens", "3,12", "--repeats", "1")
    assert result.exit_code == 0, result.output
    assert "verdict: PASSED" in result.stdout and "first 2 layers" in result.stdout
    assert "speed-up" in result.stdout


def test_meta_device_single_model():
    result = run("verify", "--device", "meta", "-m", "deepseek-v3", "--seq", "1k,4k", "-f", "json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    # DeepSeek-V3, 61 layers, bf16: the latent 61 x (512 + 64) x 2 = 70,272 B/token from
    # transformers 5.15; decompressed K and V, 61 x 128 x (128 + 64 + 128) x 2 = 4,997,120 before
    import transformers

    from kvcalc.versions import release

    per_token = 70_272 if release(transformers.__version__) >= (5, 15) else 4_997_120
    assert [r["transformers_bytes"] for r in d["rows"]] == [per_token * 1024, per_token * 4096]
    assert all(r["match"] for r in d["rows"])


def test_cuda_without_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run("verify", "-m", str(TINY / "gpt2.json"), "--device", "cuda")
    assert result.exit_code == 2
    assert "torch sees no CUDA device" in result.output and "Traceback" not in result.output


def test_missing_torch_gives_install_command(monkeypatch):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "transformers":
            raise ImportError("no transformers")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    result = run("verify", "-m", "llama-7b", "--device", "cpu")
    assert result.exit_code == 1
    assert "pip install 'kvcalc[verify]'" in result.output


def test_out_of_memory_names_the_run(monkeypatch):
    import torch

    from kvcalc.verify import measure

    real = measure.generate_once

    def fake(model, ids, new_tokens, use_cache):
        if new_tokens == 8:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(model, ids, new_tokens, use_cache)

    monkeypatch.setattr(measure, "generate_once", fake)
    result = run("verify", "-m", str(TINY / "llama-gqa.json"), "--device", "cpu",
                 "--new-tokens", "2,8", "--repeats", "1", "--prompt-len", "4")
    assert result.exit_code == 1
    assert "out of device memory generating 8 new tokens" in result.output
    assert "runs that fitted: 2, 2 (no cache)" in result.output


def test_interrupt_reports_what_finished(monkeypatch):
    from kvcalc.verify import measure

    real = measure.generate_once

    def fake(model, ids, new_tokens, use_cache):
        if new_tokens == 8:
            raise KeyboardInterrupt
        return real(model, ids, new_tokens, use_cache)

    monkeypatch.setattr(measure, "generate_once", fake)
    result = run("verify", "-m", str(TINY / "llama-gqa.json"), "--device", "cpu",
                 "--new-tokens", "2,8", "--repeats", "1", "--prompt-len", "4", "-f", "json")
    assert result.exit_code == 130
    d = json.loads(result.stdout)
    assert d["interrupted"] and [r["new_tokens"] for r in d["runs"]] == [2, 2]


def test_bad_arguments():
    assert "give --model" in run("verify", "--device", "cpu").output
    out = run("verify", "-m", "llama-7b", "--device", "cpu", "--layers", "99")
    assert out.exit_code == 1 and "exceeds the model's 32 layers" in out.output
    out = run("verify", "-m", "llama-7b", "--weights", "/no/such/dir", "--device", "cpu")
    assert out.exit_code != 0 and "no such file or directory" in out.output
