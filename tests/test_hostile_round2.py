"""Hostile input, round two (issue 27): one test per class of the held-out battery.

1. one validation for the CLI and the API; 2. bounded readers that refuse non-regular files;
3. GGUF headers held to the config rules; 4. figures within their invariants; 5. every printed
string escaped; 6. outputs only when complete, full disks and closed pipes; 7. environment.
(Fuzzing of GGUF headers, traces and API keyword sets: tests/test_fuzz.py.)"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import kvcalc
from kvcalc.cli import cli
from kvcalc.errors import ConfigError, KvcalcError, LimitError, UsageError

ROOT = Path(__file__).resolve().parents[1]
LLAMA = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
         "vocab_size": 128256, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}


def run(*args, env=None, **kw):
    return CliRunner().invoke(cli, list(args), env=env, **kw)


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output
    assert "internal error" not in result.output, result.output
    return lines[-1]


# ----------------------------------------------------------- 1. one validation, CLI and API

@pytest.mark.parametrize("call, message", [
    (lambda: kvcalc.plan("llama-7b", engine="trtllm", free_gpu_memory_fraction=2),
     "--free-gpu-memory-fraction"),
    (lambda: kvcalc.plan("llama-7b", weights_memory=-2**40), "--weights-memory"),
    (lambda: kvcalc.plan("llama-7b", tp=True), "--tp"),
    (lambda: kvcalc.plan("llama-7b", tp="2"), "--tp"),
    (lambda: kvcalc.plan("llama-7b", max_len=4096.5), "--max-len"),
    (lambda: kvcalc.plan("llama-7b", max_len=0), "--max-len"),
    (lambda: kvcalc.plan("llama-7b", gpu=None), None),
    (lambda: kvcalc.plan("llama-7b", gpu_util=float("nan")), "--gpu-util"),
    (lambda: kvcalc.plan("llama-7b", bogus=1), "unknown plan option 'bogus'"),
    (lambda: kvcalc.simulate("llama-7b", input_len=10, output_len=5, prefix_caching="no"),
     "--prefix-caching"),
    (lambda: kvcalc.simulate("llama-7b", input_len=10, output_len=5, requests=2.0),
     "--requests"),
    (lambda: kvcalc.estimate("llama-7b", seq=4096, engine="llamacpp", bogus=1), "bogus"),
    (lambda: kvcalc.estimate("llama-7b", seq=4096, batch=True), "--batch"),
    (lambda: kvcalc.estimate("llama-7b", seq=4096, engine="llamacpp", max_tokens=5),
     "max_tokens"),
])
def test_api_inputs_are_held_to_the_cli_bounds(call, message):
    with pytest.raises(UsageError) as info:
        call()
    if message:
        assert message in str(info.value)


def test_cli_and_api_refuse_with_the_same_declaration():
    from kvcalc.inputs import PARAMS

    result = run("plan", "-m", "llama-7b", "--tp", "70000")
    assert result.exit_code == 2
    assert one_line_error(result) == f"error: {_api_error(lambda: kvcalc.plan('llama-7b', tp=70000))}"
    assert PARAMS["tp"].hi == 1 << 16


def _api_error(call) -> str:
    try:
        call()
    except UsageError as exc:
        return str(exc)
    raise AssertionError("no error")


# ------------------------------------------------------ 2. bounded readers, regular files only

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("args", [
    ("estimate", "--seq", "4", "-m", "{fifo}.gguf"),
    ("estimate", "--seq", "4", "-m", "{fifo}.json"),
    ("simulate", "-m", "llama-7b", "--trace", "{fifo}.jsonl"),
    ("simulate", "-m", "llama-7b", "--trace", "{fifo}.jsonl.gz"),
    ("plan", "-m", "llama-7b", "--trace", "{fifo}.csv"),
    ("plot", "timeline", "--from", "{fifo}.csv", "--out", "{dir}/t.png"),
    ("plot", "timing", "--from", "{fifo}.json", "--out", "{dir}/t.png"),
])
def test_a_fifo_is_refused_at_once(tmp_path, args):
    fifo = str(tmp_path / "f")
    for suffix in (".gguf", ".json", ".jsonl", ".jsonl.gz", ".csv"):
        os.mkfifo(fifo + suffix)
    started = time.monotonic()
    result = run(*(a.format(fifo=fifo, dir=tmp_path) for a in args))
    assert time.monotonic() - started < 10
    assert result.exit_code != 0
    assert "regular files only" in one_line_error(result)


def test_devices_and_bombs_are_refused_while_reading(tmp_path, monkeypatch):
    from kvcalc import workload

    if os.path.exists("/dev/zero"):
        result = run("simulate", "-m", "llama-7b", "--trace", "/dev/zero")
        assert "regular files only" in one_line_error(result)
    monkeypatch.setattr(workload, "MAX_TRACE_BYTES", 1 << 20)
    bomb = tmp_path / "bomb.jsonl.gz"
    bomb.write_bytes(gzip.compress(b" " * (8 << 20)))          # 8 MiB of spaces, ~8 kB
    with pytest.raises(LimitError, match="decompressed"):
        workload.from_trace(bomb, 4096)
    monkeypatch.setattr(workload, "MAX_TRACE_BYTES", 64 << 20)
    long_line = tmp_path / "long.jsonl"
    long_line.write_bytes(b"{" + b" " * (2 << 20))
    with pytest.raises(LimitError, match="longer than"):
        workload.from_trace(long_line, 4096)


def test_the_row_limit_is_checked_while_streaming(tmp_path, monkeypatch):
    from kvcalc import workload
    from kvcalc.simulation import requests

    monkeypatch.setattr(workload, "MAX_SEQUENCES", 10)
    path = tmp_path / "t.csv"
    path.write_text("prompt_len,output_len\n" + "5,5\n" * 11)
    with pytest.raises(ConfigError, match="more than 10"):
        workload.from_trace(path, 4096)
    with pytest.raises(ConfigError, match="more than 10"):
        requests.load_trace(str(path))


def test_gzip_traces_stream_and_read_like_plain_ones(tmp_path):
    from kvcalc.simulation.requests import load_trace

    rows = "".join(json.dumps({"prompt_len": 10 + i, "output_len": 5, "arrival_s": i}) + "\n"
                   for i in range(50))
    (tmp_path / "t.jsonl").write_text(rows)
    (tmp_path / "t.jsonl.gz").write_bytes(gzip.compress(rows.encode()))
    assert load_trace(str(tmp_path / "t.jsonl")).arrivals == \
        load_trace(str(tmp_path / "t.jsonl.gz")).arrivals


# ---------------------------------------------------------------- 3. GGUF held to the rules

def gguf_bytes(kv: list[tuple[str, int, bytes]], n_tensors: int = 0) -> bytes:
    """A GGUF v3 header from raw (key, type, encoded value) entries."""
    out = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kv))
    for key, vtype, value in kv:
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + value
    return out


def s(text: str) -> bytes:
    return struct.pack("<Q", len(text.encode())) + text.encode()


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def arr(itype: int, items: list, fmt: str = "<I") -> bytes:
    return struct.pack("<IQ", itype, len(items)) + b"".join(struct.pack(fmt, x) for x in items)


BASE = [("general.architecture", 8, s("llama")), ("llama.block_count", 4, u32(4)),
        ("llama.embedding_length", 4, u32(576)), ("llama.attention.head_count", 4, u32(9)),
        ("llama.attention.head_count_kv", 4, u32(3))]


def with_keys(*extra, drop=()):
    return [kv for kv in BASE if kv[0] not in drop] + list(extra)


@pytest.mark.parametrize("entries, message", [
    (with_keys(("llama.attention.head_count_kv", 4, u32(27)), drop=("llama.attention.head_count_kv",)),
     "KV heads"),
    (with_keys(("llama.attention.value_length", 4, u32(1 << 30))), "value_length"),
    (with_keys(("llama.attention.kv_lora_rank", 10, struct.pack("<Q", 1 << 40)),
               ("llama.rope.dimension_count", 4, u32(64))), "kv_lora_rank"),
    (with_keys(("llama.attention.shared_kv_layers", 4, u32(9))), "shared_kv_layers"),
    (with_keys(("llama.block_count", 4, u32(4))), "appears twice"),
    (with_keys(("llama.attention.head_count_kv", 9, arr(4, [])),
               drop=("llama.attention.head_count_kv",)), "empty array"),
    (with_keys(("llama.attention.head_count_kv", 9, arr(6, [float("nan")] * 4, "<f")),
               drop=("llama.attention.head_count_kv",)), "head_count_kv"),
    (with_keys(("llama.attention.head_count", 9, arr(4, [9, 9, 9])),
               drop=("llama.attention.head_count",)), "3 values for 4 layers"),
    (with_keys(("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 1 << 30))), "past the end"),
])
def test_gguf_headers_are_held_to_the_config_rules(tmp_path, entries, message):
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_bytes(entries))
    result = run("estimate", "-m", str(path), "--seq", "1k")
    assert result.exit_code == 1
    assert message in one_line_error(result)


def test_gguf_metadata_has_a_total_budget(tmp_path, monkeypatch):
    from kvcalc import gguf

    monkeypatch.setattr(gguf, "MAX_METADATA_KEPT_BYTES", 1 << 20)
    big = [(f"general.note{i}", 8, s("x" * 300_000)) for i in range(4)]
    path = tmp_path / "big.gguf"
    path.write_bytes(gguf_bytes(with_keys(*big)))
    with pytest.raises(LimitError, match="budget"):
        gguf.read_header(path)
    monkeypatch.setattr(gguf, "MAX_METADATA_STRINGS", 1000)
    tokens = struct.pack("<IQ", 8, 5000) + s("") * 5000
    path.write_bytes(gguf_bytes(with_keys(("tokenizer.ggml.tokens", 9, tokens))))
    with pytest.raises(LimitError, match="budget"):
        gguf.read_header(path)


def test_a_valid_gguf_header_still_reads(tmp_path):
    path = tmp_path / "ok.gguf"
    path.write_bytes(gguf_bytes(with_keys(("llama.context_length", 4, u32(8192)))))
    result = run("estimate", "-m", str(path), "--seq", "1k", "--format", "json")
    assert result.exit_code == 0, result.output
    # 4 layers x 3 KV heads x 64 x (K + V) x 2 bytes (f16) per token
    assert json.loads(result.stdout)["bytes_per_token"] == 4 * 3 * 64 * 2 * 2


# ------------------------------------------------------------------------ 4. invariants

@pytest.mark.parametrize("args, message", [
    (["plan", "-m", "llama-7b", "--num-gpu-blocks-override", str(10**12)],
     "--num-gpu-blocks-override"),
    (["plan", "-m", "llama-7b", "--num-gpu-blocks-override", str(2**62), "-f", "json"],
     "--num-gpu-blocks-override"),
    (["simulate", "-m", "llama-7b", "--input-len", "10", "--output-len", "5",
      "--num-gpu-blocks-override", str(10**12)], "--num-gpu-blocks-override"),
    (["simulate", "-m", "llama-7b", "--input-len", "10", "--output-len", "5",
      "--rate", "5e-324"], "--rate"),
    (["simulate", "-m", "llama-7b", "--input-len", "10", "--output-len", "5",
      "--step-overhead", "1e308"], "--step-overhead"),
    (["simulate", "-m", "llama-7b", "--input-len", "10", "--output-len", "5",
      "--dist", "normal", "--input-std", "1e300"], "--input-std"),
    (["simulate", "-m", "llama-7b", "--trace", "azure-code-2023", "--rate-scale", "1e-300"],
     "--rate-scale"),
    (["plan", "-m", "llama-7b", "--dist", "lognormal", "--mean", "1e-300", "--std", "1e300"],
     "--mean"),
    (["plan", "-m", "llama-7b", "--dist", "uniform", "--mean", "100", "--std", "1e308"],
     "--std"),
])
def test_float_parameters_and_overrides_are_bounded(args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in one_line_error(result)


def test_trace_times_are_bounded(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt_len": 10, "output_len": 5, "arrival_s": 1e308}\n')
    result = run("simulate", "-m", "llama-7b", "--trace", str(path))
    assert result.exit_code == 1
    assert "arrival time" in one_line_error(result)


def test_a_report_with_nan_seconds_is_refused(tmp_path):
    report = {"model": "m", "device": "cpu", "dtype": "fp32", "runs": [
        {"use_cache": True, "new_tokens": 2, "seconds_mean": float("nan"), "seconds_std": 0}]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))                 # json writes NaN
    result = run("plot", "timing", "--from", str(path), "--out", str(tmp_path / "t.png"))
    assert result.exit_code == 1
    assert "NaN" in one_line_error(result)
    path.write_text(json.dumps(report).replace("NaN", "1e999"))
    result = run("plot", "timing", "--from", str(path), "--out", str(tmp_path / "t.png"))
    assert "finite" in one_line_error(result)


def test_large_blocks_simulate_in_linear_time():
    started = time.monotonic()
    r = kvcalc.simulate("llama-3.1-8b", allocator="paged", block_size=65536, input_len=1000,
                        output_len=100, requests=5)
    assert time.monotonic() - started < 10
    assert r.allocators["paged"]["completed"] == 5


def test_tail_sums_in_closed_form_equal_the_tables():
    from kvcalc.simulation.paged import tail_sums

    for B in (1, 2, 7, 16, 33):
        for u in range(B):
            t0 = t1 = 0
            for b in range(B + 1):
                assert tail_sums(u, b, B) == (t0, t1)
                if b < B:
                    t0 += (u - b) % B
                    t1 += b * ((u - b) % B)


# ------------------------------------------------------------------- 5. printed strings

def test_completion_entries_are_escaped_on_one_line(tmp_path, monkeypatch):
    import yaml

    from kvcalc import sources

    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "evil.yaml").write_text(yaml.safe_dump(
        {"name": "zz-evil\x1b]0;x\x07\nzz-injected", "display_name": "a\x1b[2Jb",
         "config": LLAMA}))
    monkeypatch.setenv("KVCALC_PRESETS", str(folder))
    sources._scan_dir.cache_clear()
    result = CliRunner().invoke(cli, [], prog_name="kvcalc", env={
        "_KVCALC_COMPLETE": "bash_complete", "COMP_WORDS": "kvcalc estimate -m zz",
        "COMP_CWORD": "3", "KVCALC_PRESETS": str(folder)})
    sources._scan_dir.cache_clear()
    assert "\x1b" not in result.output and "\x07" not in result.output
    entries = [line for line in result.output.splitlines() if line.startswith("plain,")]
    assert entries == ["plain,zz-evil\\x1b]0;x\\x07\\x0azz-injected"]


@pytest.mark.parametrize("args, env", [
    (["estimate", "-m", "llama-7b", "--seq", "t\x1b]0;x\x07"], None),
    (["estimate", "-m", "llama-7b", "--seq", "4", "--bogus\x1b[2J"], None),
    (["--bogus\x1b[2J"], None),
    (["estimate", "-m", "llama-7b", "--seq", "4", "--engine", "ollama"],
     {"OLLAMA_CONTEXT_LENGTH": "\x1b[2J"}),
])
def test_clicks_own_errors_are_escaped(args, env):
    result = run(*args, env=env)
    assert result.exit_code == 2
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\\x1b" in result.output


# ------------------------------------------------------------- 6. outputs, disks, pipes

def test_a_refused_simulation_leaves_no_timeline_file(tmp_path):
    out = tmp_path / "t.csv"
    result = run("simulate", "-m", "llama-7b", "--input-len", "10", "--output-len", "5",
                 "--requests", "0", "--timeline", str(out))
    assert result.exit_code == 2
    assert not out.exists()
    result = run("simulate", "-m", "llama-7b", "--input-len", "10", "--output-len", "5",
                 "--requests", "3", "--timeline", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("allocator,time_s")
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]     # no temporary left


def test_atomic_write_leaves_the_target_untouched_on_failure(tmp_path):
    from kvcalc.files import atomic_write

    target = tmp_path / "chart.png"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target, "wb") as fh:
            fh.write(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("args", [["--help"], ["--version"], ["models"],
                                  ["estimate", "-m", "llama-7b", "--seq", "4"]])
def test_a_full_disk_is_one_line_and_exit_1(args):
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "kvcalc", *args], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no space left"), done.stderr


def test_a_closed_pipe_exits_141_silently():
    proc = subprocess.Popen([sys.executable, "-m", "kvcalc", "models", "--format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141)
    assert "Exception ignored" not in err and "Traceback" not in err


# --------------------------------------------------------------------------- 7. environment

def test_ollama_variables_only_matter_to_ollama():
    env = {"OLLAMA_NUM_PARALLEL": "abc", "OLLAMA_KV_CACHE_TYPE": "zz",
           "OLLAMA_FLASH_ATTENTION": "maybe", "OLLAMA_CONTEXT_LENGTH": "x"}
    result = run("estimate", "-m", "llama-7b", "--seq", "4", env=env)
    assert result.exit_code == 0, result.output
    result = run("estimate", "-m", "llama-7b", "--seq", "4", "--engine", "ollama",
                 env={"OLLAMA_NUM_PARALLEL": "abc"})
    assert result.exit_code == 2
    assert "OLLAMA_NUM_PARALLEL" in one_line_error(result)


@pytest.mark.parametrize("value", ["inf", "nan", "1e308", "0", "-1", "x"])
def test_hub_timeout_is_a_bounded_number(monkeypatch, value):
    from kvcalc import hub

    monkeypatch.setenv("KVCALC_HUB_TIMEOUT", value)
    with pytest.raises(UsageError, match="KVCALC_HUB_TIMEOUT"):
        hub.timeout_s()


def test_every_api_error_is_a_kvcalc_error():
    for call in (lambda: kvcalc.plan("llama-7b", gpu=3), lambda: kvcalc.plan(None),
                 lambda: kvcalc.simulate("llama-7b", allocator=[1]),
                 lambda: kvcalc.estimate("llama-7b", seq="x")):
        with pytest.raises(KvcalcError):
            call()


def test_closed_loop_keywords_are_declared():
    """simulate's concurrency / warmup / calibration pass the same declaration as the rest."""
    import re

    import kvcalc

    for kw, message in ((dict(concurrency=True), "--concurrency True: must be an integer"),
                        (dict(concurrency=0), "--concurrency 0: must be from 1"),
                        (dict(concurrency=2.5), "--concurrency 2.5: must be an integer"),
                        (dict(warmup=-1), "--warmup -1: must be from 0"),
                        (dict(warmup=None), "--warmup None: give a value")):
        with pytest.raises(kvcalc.UsageError, match=re.escape(message)):
            kvcalc.simulate("llama-3.1-8b", input_len=100, output_len=10, requests=5, **kw)
