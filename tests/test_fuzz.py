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
