"""Property-based fuzzing of hostile input (issue 12): configs, presets, traces and numeric
options. The property everywhere: a clean error (one line, the documented exit status) or a
correct figure: never an unexpected exception, never a negative or non-finite number.

Each test runs a bounded number of examples (a few seconds); CI runs them with the suite."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvcalc import sources
from kvcalc.arch import BOOL_FIELDS, FIELD_RULES, TEXT_FIELDS, build_spec
from kvcalc.cli import cli
from kvcalc.engines import build_layout
from kvcalc.errors import KvcalcError
from kvcalc.params import count_parameters, default_weights_dtype, weight_bytes
from kvcalc.units import parse_bytes, parse_tokens
from kvcalc.workload import from_trace

HF = Path(__file__).parent / "fixtures" / "hf-configs"
TINY = Path(__file__).parent / "fixtures" / "tiny-configs"
#: one real config per layer kind: full, sliding, MLA, state (Mamba-1, GDN), hybrid, shared
BASES = [json.loads(p.read_text()) for p in (
    HF / "meta-llama__Llama-3.1-8B.json", HF / "openai__gpt-oss-120b.json",
    HF / "deepseek-ai__DeepSeek-V3.json", HF / "Qwen__Qwen3-Next-80B-A3B-Thinking.json",
    HF / "google__gemma-3-27b-it.json", TINY / "jamba-state.json",
)]
FIELDS = sorted(FIELD_RULES) + list(TEXT_FIELDS) + list(BOOL_FIELDS) + [
    "layer_types", "block_configs", "no_rope_layers", "text_config", "attn_config"]
FAST = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

hostile_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-2**70, 2**70), st.integers(-3, 20),
    st.sampled_from([0, 1, 2, 3, 4, 7, 64, 10**9, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.sampled_from(["32", "auto", "\x1b[2J", "bfloat16", "full_attention"]),
)
hostile_values = st.recursive(hostile_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=8)


def assert_clean_numbers(value, where="") -> None:
    """No negative and no non-finite number anywhere in a figure or a JSON document."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        assert math.isfinite(value) and value >= 0, (where, value)
    elif isinstance(value, dict):
        for k, v in value.items():
            assert_clean_numbers(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            assert_clean_numbers(v, f"{where}[{i}]")


@st.composite
def mutated_configs(draw):
    cfg = json.loads(json.dumps(draw(st.sampled_from(BASES))))
    for _ in range(draw(st.integers(1, 3))):
        cfg[draw(st.sampled_from(FIELDS))] = draw(hostile_values)
    return cfg


@FAST
@given(cfg=mutated_configs(), seq=st.integers(1, 1 << 20), engine=st.sampled_from(["hf", "vllm"]))
def test_configs_give_a_clean_error_or_clean_figures(cfg, seq, engine):
    try:
        spec = build_spec(cfg, "fuzz")
        layout = build_layout(spec, engine)
        figures = [layout.bytes_per_token, layout.bytes_per_sequence(seq)]
        count = count_parameters(spec)
        figures += [count.total, count.active, weight_bytes(count, default_weights_dtype(spec))]
    except KvcalcError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert_clean_numbers(figures)
    assert all(isinstance(f, int) for f in figures)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=mutated_configs(), fmt=st.sampled_from(["json", "table"]))
def test_the_cli_never_says_internal_error(tmp_path, cfg, fmt):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    result = CliRunner().invoke(cli, ["estimate", "-m", str(path), "--seq", "4k,32k",
                                      "--format", fmt])
    assert "internal error" not in result.output and "Traceback" not in result.output
    if result.exit_code == 0 and fmt == "json":
        assert_clean_numbers(json.loads(result.stdout))
    else:
        assert result.exit_code in (0, 1, 2), result.output
    assert "\x1b" not in result.output


preset_docs = st.one_of(
    hostile_values,
    st.fixed_dictionaries({"name": hostile_values, "config": hostile_values},
                          optional={"aliases": hostile_values, "display_name": hostile_values,
                                    "hub_id": hostile_values}),
)


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=preset_docs, raw=st.binary(max_size=64))
def test_a_bad_user_preset_never_breaks_kvcalc(tmp_path, monkeypatch, doc, raw):
    import yaml

    folder = tmp_path / "presets"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("KVCALC_PRESETS", str(folder))
    (folder / "fuzz.yaml").write_text(yaml.safe_dump(doc))
    (folder / "bytes.yaml").write_bytes(raw)
    sources._scan_dir.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sources.PresetWarning)
            assert sources.resolve("llama-7b").name == "llama-2-7b"
            names = {p.name for p in sources.all_presets()}
            assert "llama-2-7b" in names
            try:
                sources.resolve("fuzz")
            except KvcalcError:
                pass
    finally:
        sources._scan_dir.cache_clear()


trace_cells = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True), st.booleans(),
                        st.none(), st.text(max_size=5), st.integers(2**40, 2**80))


@FAST
@given(rows=st.lists(st.tuples(trace_cells, trace_cells), min_size=0, max_size=6),
       csv=st.booleans(), bom=st.booleans(), max_len=st.integers(1, 1 << 20))
def test_traces_give_a_clean_error_or_exact_lengths(tmp_path, rows, csv, bom, max_len):
    if csv:
        text = "prompt_len,output_len\n" + "".join(f"{p},{o}\n" for p, o in rows)
    else:
        text = "".join(json.dumps({"prompt_len": p, "output_len": o}) + "\n" for p, o in rows)
    path = tmp_path / ("t.csv" if csv else "t.jsonl")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    try:
        workload, clipped = from_trace(path, max_len)
    except KvcalcError as exc:
        assert str(exc).startswith(f"{path}") or str(path) in str(exc)
        return
    assert all(isinstance(n, int) and 1 <= n <= max_len for n in workload.lengths)
    assert 0 <= clipped <= len(workload.lengths)
    exact = [(p, o) for p, o in rows]
    for (p, o), n in zip(exact, workload.lengths):
        assert not isinstance(p, bool) and not isinstance(o, bool)
        assert n == min(max_len, int(p) + int(o))


number_text = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"\A-?[0-9_]{1,25}(\.[0-9]{0,6})?([eE][+-]?[0-9]{1,4})?\s?[kKmMgGtTiIbB]{0,3}\Z"),
    st.sampled_from(["nan", "inf", "-inf", "1e30", "9007199254740993", "0", "1.5k", "4k"]),
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(text=number_text)
def test_numeric_options_are_exact_integers_or_usage_errors(text):
    for parse in (parse_tokens, parse_bytes):
        try:
            value = parse(text)
        except KvcalcError as exc:
            assert exc.exit_code == 2
            continue
        assert isinstance(value, int) and value >= 0


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seq=number_text, batch=number_text)
def test_estimate_options_exit_0_or_2(seq, batch):
    result = CliRunner().invoke(cli, ["estimate", "-m", "llama-7b", "--seq", seq,
                                      "--batch", batch, "--format", "json"])
    assert result.exit_code in (0, 2), result.output
    assert "internal error" not in result.output
    if result.exit_code == 0:
        assert_clean_numbers(json.loads(result.stdout))


# ------------------------------------------------------------ issue 27: GGUF, traces, the API

def _gguf(entries: list[tuple[str, int, bytes]], n_tensors: int = 0) -> bytes:
    import struct

    out = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(entries))
    for key, vtype, value in entries:
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + value
    return out


def _gguf_value(draw):
    """A GGUF value of any type (scalars, strings, arrays, a few hostile lengths)."""
    import struct

    vtype = draw(st.sampled_from([4, 5, 6, 8, 9, 10, 12, 7, 13]))
    if vtype in (4, 5):
        return vtype, struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
    if vtype == 10:
        return vtype, struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    if vtype in (6, 12):
        return vtype, struct.pack("<f" if vtype == 6 else "<d", draw(st.floats(width=32)))
    if vtype == 7:
        return vtype, bytes([draw(st.integers(0, 255))])
    if vtype == 8:
        text = draw(st.binary(max_size=8))
        n = draw(st.sampled_from([len(text), len(text), 2**63, len(text) + 100]))
        return vtype, struct.pack("<Q", n) + text
    if vtype == 9:
        itype = draw(st.sampled_from([4, 6, 8, 9, 99]))
        items = draw(st.lists(st.integers(0, 2**32 - 1), max_size=6))
        n = draw(st.sampled_from([len(items), len(items), 2**40]))
        body = b"".join(struct.pack("<Q", 1) + b"x" if itype == 8 else struct.pack("<I", i)
                        for i in items)
        return vtype, struct.pack("<IQ", itype, n) + body
    return vtype, b""                                     # 13: not a GGUF type


GGUF_KEYS = ["block_count", "embedding_length", "attention.head_count",
             "attention.head_count_kv", "attention.key_length", "attention.value_length",
             "attention.kv_lora_rank", "rope.dimension_count", "attention.sliding_window",
             "attention.sliding_window_pattern", "attention.shared_kv_layers",
             "context_length", "feed_forward_length"]


@st.composite
def gguf_headers(draw):
    import struct

    arch = draw(st.sampled_from(["llama", "gemma3", "deepseek2", "cohere2"]))
    entries = [("general.architecture", 8, struct.pack("<Q", len(arch)) + arch.encode()),
               (f"{arch}.block_count", 4, struct.pack("<I", draw(st.integers(0, 12)))),
               (f"{arch}.embedding_length", 4, struct.pack("<I", 512)),
               (f"{arch}.attention.head_count", 4, struct.pack("<I", 8))]
    for _ in range(draw(st.integers(0, 5))):
        key = draw(st.sampled_from(GGUF_KEYS + ["tokenizer.ggml.tokens"]))
        vtype, value = _gguf_value(draw)
        entries.append((key if key.startswith("tokenizer") else f"{arch}.{key}", vtype, value))
    data = _gguf(entries, draw(st.sampled_from([0, 0, 3, 2**50])))
    cut = draw(st.sampled_from([len(data), len(data), draw(st.integers(0, len(data)))]))
    return data[:cut]


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=gguf_headers())
def test_gguf_headers_give_a_clean_error_or_clean_figures(tmp_path, data):
    from kvcalc.gguf import read_gguf_config

    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    try:
        cfg = read_gguf_config(path)
        spec = build_spec(cfg, "m")
        layout = build_layout(spec, "hf")
    except KvcalcError:
        return
    assert_clean_numbers(layout.bytes_per_token)


trace_text_lines = st.lists(st.one_of(
    st.just('{"prompt_len": 10, "output_len": 5}'),
    st.builds(lambda p, o, t: json.dumps({"prompt_len": p, "output_len": o, "arrival_s": t}),
              st.integers(-2, 2**41), st.integers(-2, 2**41),
              st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-1, 10**20),
                        st.text(max_size=3))),
    st.builds(lambda h: json.dumps({"prompt_len": 4, "output_len": 4, "hash_ids": h}),
              st.lists(st.integers(-1, 2**63), max_size=3)),
    st.text(max_size=12), st.just("[" * 50), st.just("1" * 5000)), max_size=8)


@FAST
@given(lines=trace_text_lines, gz=st.booleans(), cut=st.integers(0, 40))
def test_simulate_traces_give_a_clean_error_or_clean_arrivals(tmp_path, lines, gz, cut):
    import gzip

    from kvcalc.simulation.requests import load_trace

    raw = "\n".join(lines).encode()
    path = tmp_path / ("t.jsonl.gz" if gz else "t.jsonl")
    path.write_bytes(gzip.compress(raw)[:-cut or None] if gz else raw)
    try:
        trace = load_trace(str(path))
    except KvcalcError:
        return
    for a in trace.arrivals:
        assert math.isfinite(a.arrival_s) and a.arrival_s >= 0
        assert a.prompt >= 0 and a.output >= 0 and a.prompt + a.output >= 1


#: keyword values of every kind the API may be handed
api_values = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**64),
                       st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from(["", "2", "4k", "1e3", "3GiB", "h100", "vllm", "auto",
                                        "-1", "nan", "\x1b[2J"]),
                       st.lists(st.integers(0, 3), max_size=2))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(command=st.sampled_from(["estimate", "plan", "simulate"]),
       kwargs=st.dictionaries(st.sampled_from(
           ["seq", "batch", "tp", "pp", "max_len", "gpu", "gpu_util", "block_size",
            "weights_memory", "kv_budget", "num_gpu_blocks_override", "mean", "std", "dist",
            "rate", "requests", "input_len", "output_len", "step_overhead", "prefix_caching",
            "free_gpu_memory_fraction", "mem_fraction_static", "samples", "seed",
            "timeline_interval", "allocator", "bogus", "ctx_size", "num_ctx"]),
           api_values, max_size=4))
def test_api_keyword_sets_are_checked_before_anything_runs(command, kwargs):
    """The declaration (kvcalc/inputs.py) alone decides: any keyword set either passes it or
    is one UsageError; nothing else escapes (TypeError, AttributeError, ZeroDivisionError)."""
    import kvcalc
    from kvcalc.inputs import check_inputs

    try:
        checked = check_inputs(kwargs, command=command)
    except KvcalcError:
        return
    for name, value in checked.items():
        if isinstance(value, float):
            assert math.isfinite(value), name
    plan_keys = {"tp", "pp", "max_len", "gpu", "gpu_util", "block_size", "weights_memory",
                 "kv_budget", "num_gpu_blocks_override", "mean", "std", "dist",
                 "free_gpu_memory_fraction", "mem_fraction_static", "samples", "seed",
                 "ctx_size", "num_ctx"}
    if command == "estimate" and {"seq"} <= set(checked) <= {"seq", "batch"}:
        call = lambda: kvcalc.estimate("llama-7b", **checked)  # noqa: E731
    elif command == "plan" and set(checked) <= plan_keys:
        call = lambda: kvcalc.plan("llama-7b", **{"samples": 50, **checked})  # noqa: E731
    else:
        return
    try:
        result = call()
    except KvcalcError:
        return
    assert_clean_numbers(result.to_dict())
