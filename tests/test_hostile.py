"""Hostile and broken input (issue 12): configs that lie, presets that break, output that
must never reach a terminal raw. Each case ends in one clean line with the documented exit
status, or in a correct figure."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvcalc import sources
from kvcalc.arch import MAX_LAYERS, build_spec
from kvcalc.cli import cli
from kvcalc.errors import ConfigError
from kvcalc.render import printable, to_json

HF = Path(__file__).parent / "fixtures" / "hf-configs"
LLAMA = json.loads((HF / "meta-llama__Llama-3.1-8B.json").read_text())
ESC = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def one_line_error(result, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "internal error" not in lines[0] and "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def user_presets(tmp_path, monkeypatch):
    folder = tmp_path / "presets"
    folder.mkdir()
    monkeypatch.setenv("KVCALC_PRESETS", str(folder))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    sources._scan_dir.cache_clear()
    yield folder
    sources._scan_dir.cache_clear()


def write_config(tmp_path: Path, **changes) -> str:
    cfg = {**LLAMA, **changes}
    cfg = {k: v for k, v in cfg.items() if v is not ...}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


# ------------------------------------------------------------------ the sanitiser

def test_printable_escapes_terminal_controls_keeps_text():
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("\x9b\u202e\x07\r") == "\\x9b\\u202e\\x07\\x0d"
    assert printable("tab\tnew\nline é 中") == "tab\tnew\nline é 中"


def test_json_stays_exact_and_escaped():
    text = to_json({"s": ESC})
    assert not any(ch in text for ch in "\x1b\x9b\u202e\x07")
    assert json.loads(text) == {"s": ESC}


@pytest.mark.parametrize("fmt", ["table", "json", "yaml", "csv", "markdown"])
def test_escape_sequences_from_a_config_never_reach_the_terminal(tmp_path, fmt):
    path = write_config(tmp_path, model_type="llama" + ESC)
    result = run("estimate", "-m", path, "--seq", "1k", "--format", fmt)
    assert result.exit_code == 0, result.output
    for ch in "\x1b\x9b\u202e\x07":
        assert ch not in result.stdout and ch not in result.stderr


def test_escape_sequences_in_an_error_line_are_escaped(tmp_path):
    result = run("estimate", "-m", str(tmp_path / ("nope" + ESC + ".json")))
    line = one_line_error(result)
    assert "\x1b" not in line and "\\x1b" in line


# ------------------------------------------------------------------ configs that lie

@pytest.mark.parametrize("changes, field", [
    ({"num_key_value_heads": 0}, "num_key_value_heads"),
    ({"num_key_value_heads": -8}, "num_key_value_heads"),
    ({"num_key_value_heads": 3}, "KV heads"),          # does not divide 32
    ({"num_key_value_heads": 64}, "KV heads"),         # more than the heads
    ({"head_dim": 0}, "head_dim"),
    ({"num_hidden_layers": 100_000_000}, "num_hidden_layers"),
    ({"num_hidden_layers": True}, "num_hidden_layers"),
    ({"num_hidden_layers": "32"}, "num_hidden_layers"),
    ({"num_hidden_layers": 10**400}, "num_hidden_layers"),
    ({"hidden_size": float("nan")}, "hidden_size"),
    ({"hidden_size": float("inf")}, "hidden_size"),
    ({"hidden_size": 4096.5}, "hidden_size"),
    ({"hidden_size": ...}, "hidden_size"),
    ({"intermediate_size": -14336}, "intermediate_size"),
    ({"vocab_size": -1}, "vocab_size"),
    ({"model_type": ["llama"]}, "model_type"),
    ({"torch_dtype": 16}, "torch_dtype"),
    ({"tie_word_embeddings": "no"}, "tie_word_embeddings"),
    ({"layer_types": "full_attention"}, "layer_types"),
    ({"num_local_experts": 8, "num_experts_per_tok": 9}, "num_experts_per_tok"),
])
def test_impossible_config_values_are_refused_naming_field_and_rule(tmp_path, changes, field):
    path = write_config(tmp_path, **changes)
    line = one_line_error(run("estimate", "-m", path, "--seq", "1k"))
    assert field in line


def test_state_and_hybrid_relations():
    jamba = {"model_type": "jamba", "num_hidden_layers": 4, "hidden_size": 64,
             "num_attention_heads": 4, "num_key_value_heads": 2, "attn_layer_period": 8,
             "attn_layer_offset": 4, "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2}
    with pytest.raises(ConfigError, match="attn_layer_offset 4"):
        build_spec(jamba)
    with pytest.raises(ConfigError, match="mamba_d_state"):
        build_spec({**jamba, "num_hidden_layers": 8, "mamba_d_state": -16})
    with pytest.raises(ConfigError, match="attn_layer_period"):
        build_spec({**jamba, "attn_layer_period": 0})
    with pytest.raises(ConfigError, match="block_configs\\[0\\]"):
        build_spec({"model_type": "nemotron-nas", "hidden_size": 64, "num_attention_heads": 4,
                    "block_configs": [[1, 2]]})


def test_limits_are_generous_for_real_models():
    spec = build_spec({**LLAMA, "num_hidden_layers": MAX_LAYERS})
    assert spec.num_layers == MAX_LAYERS


@pytest.mark.parametrize("text, why", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"num_hidden_layers": ' + "9" * 5000 + "}", "digits"),
    ('{"model_type": "llama", oops', "malformed JSON"),
])
def test_unreadable_json_is_one_line(tmp_path, text, why):
    path = tmp_path / "c.json"
    path.write_text(text)
    assert why in one_line_error(run("estimate", "-m", str(path), "--seq", "1k"))


def test_non_utf8_and_devices_are_one_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b'{"model_type": "\xff\xfe"}')
    assert "not UTF-8" in one_line_error(run("estimate", "-m", str(path)))
    if os.path.exists("/dev/zero"):
        assert "regular files only" in one_line_error(run("estimate", "-m", "/dev/zero"))


def test_utf8_bom_is_accepted_in_a_local_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(LLAMA).encode())
    result = run("estimate", "-m", str(path), "--seq", "1k", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bytes_per_token"] == 131072


# ------------------------------------------------------------------ user presets

def preset_text(name: str, **extra) -> str:
    import yaml

    return yaml.safe_dump({"name": name, "config": LLAMA, **extra})


@pytest.mark.parametrize("filename, text, why", [
    ("broken.yaml", "name: broken\nconfig: [1, 2\n", "malformed YAML"),
    ("tagged.yaml", "name: tagged\nconfig: !!python/object/apply:os.system ['true']\n",
     "malformed YAML"),
    ("bomb.yaml", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a]\n"
                  "c: &c [*b, *b, *b, *b, *b, *b, *b]\nconfig: [*c, *c, *c, *c, *c, *c]\n",
     "alias"),
    ("dated.yaml", None, "'display_name' must be text"),
    ("aliases.yaml", None, "'aliases' must be a list"),
])
def test_one_bad_user_preset_is_skipped_with_a_warning(user_presets, filename, text, why):
    if filename == "dated.yaml":
        text = preset_text("dated") + "display_name: 2024-01-01\n"
    if filename == "aliases.yaml":
        text = preset_text("aliased", aliases="abc")
    (user_presets / filename).write_text(text)
    (user_presets / "folder.yaml").mkdir()  # a folder named like a preset
    (user_presets / "good.yaml").write_text(preset_text("my-good"))
    for args in (["estimate", "-m", "llama-7b"], ["estimate", "-m", "my-good"], ["models"]):
        sources._scan_dir.cache_clear()  # one process per command in real use
        result = run(*args)
        assert result.exit_code == 0, result.output
        warning = [l for l in result.stderr.splitlines() if l.startswith("warning: skipped")]
        assert len(warning) == 1 and filename in warning[0] and why in warning[0]
    sources._scan_dir.cache_clear()
    assert run("estimate", "-m", "a").exit_code == 1  # no one-letter alias from a string


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_unreadable_preset_folder_is_skipped(user_presets):
    user_presets.chmod(0)
    sources._scan_dir.cache_clear()
    try:
        result = run("estimate", "-m", "llama-7b")
    finally:
        user_presets.chmod(stat.S_IRWXU)
    assert result.exit_code == 0 and "cannot list the folder" in result.stderr


def test_preset_names_are_never_paths(user_presets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(run("estimate", "-m", "../presets/llama-2-7b"))
    assert "no such file" in line


# ------------------------------------------------------------------ output and environment

def test_closed_pipe_exits_quietly_with_141(monkeypatch):
    import click

    def closed(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(click, "echo", closed)
    result = run("estimate", "-m", "llama-7b")
    assert result.exit_code == 141


def test_full_disk_is_one_line(monkeypatch, tmp_path):
    import errno

    from kvcalc.errors import as_user_error

    error = as_user_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path)))
    assert "no space left" in str(error) and str(tmp_path) in str(error)
    assert as_user_error(ZeroDivisionError()) is None  # a bug stays an internal error


# ------------------------------------------------------------------ numbers and traces

def test_token_counts_are_exact_integers():
    from kvcalc.units import MAX_TOKENS, parse_bytes, parse_tokens

    assert parse_tokens("1099511627775") == 1099511627775  # no float rounding
    assert parse_tokens("1.5k") == 1536 and parse_tokens("1e3") == 1000
    assert parse_bytes("3.81GiB") == 4090956349
    for bad in ("1e30", "nan", "inf", "-1", "1.5", "0x10", str(MAX_TOKENS + 1)):
        with pytest.raises(Exception) as info:
            parse_tokens(bad)
        assert type(info.value).__name__ == "UsageError"


@pytest.mark.parametrize("seq", ["1e30", "nan", "-5", "9007199254740993"])
def test_bad_token_options_are_usage_errors(seq):
    result = run("estimate", "-m", "llama-7b", "--seq", seq)
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.parametrize("line", [
    '{"prompt_len": 1.9, "output_len": 10}', '{"prompt_len": true, "output_len": 10}',
    '{"prompt_len": "12", "output_len": 10}', '{"prompt_len": NaN, "output_len": 10}',
])
def test_trace_lengths_must_be_whole_numbers(tmp_path, line):
    from kvcalc.workload import from_trace

    path = tmp_path / "t.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match="whole numbers"):
        from_trace(path, 4096)


def test_csv_trace_from_a_spreadsheet_with_a_bom(tmp_path):
    from kvcalc.workload import from_trace

    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt_len,output_len\r\n100,20\r\n7,1\r\n")
    workload, clipped = from_trace(path, 4096)
    assert workload.lengths == (120, 8) and clipped == 0
    path.write_text("prompt_len,output_len\n1.9,3\n")
    with pytest.raises(ConfigError, match=":2: prompt_len"):
        from_trace(path, 4096)


def test_samples_are_bounded():
    from kvcalc.errors import UsageError
    from kvcalc.workload import MAX_SEQUENCES, sampled

    with pytest.raises(UsageError, match="--samples"):
        sampled("normal", 100, 10, 4096, samples=MAX_SEQUENCES + 1)
    with pytest.raises(UsageError, match="--mean nan"):
        sampled("normal", float("nan"), 10, 4096)


# ------------------------------------------------------------------ planner and plot limits

def test_huge_block_size_on_a_sliding_model_is_refused_not_a_hang():
    import time

    start = time.monotonic()
    result = run("plan", "-m", "mistral-7b-v0.1", "--gpu", "h100-sxm", "--max-len", "1g",
                 "--block-size", "1073741824")
    assert "--block-size" in one_line_error(result, 2)
    assert time.monotonic() - start < 5


def test_plan_json_of_an_attention_free_model_is_valid_json():
    cfg = {"model_type": "nemotron-nas", "hidden_size": 64, "num_attention_heads": 4,
           "num_hidden_layers": 2, "vocab_size": 100, "intermediate_size": 128,
           "torch_dtype": "bfloat16", "block_configs": [
               {"attention": {"no_op": True}, "ffn": {"ffn_mult": 1.0}}] * 2}
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(cfg))
        result = run("plan", "-m", str(path), "--gpu", "h100-sxm", "--max-len", "4k",
                     "--format", "json")
    assert result.exit_code == 0, result.output
    assert "Infinity" not in result.stdout and "NaN" not in result.stdout
    json.loads(result.stdout)


def test_a_60000_px_plot_is_refused(tmp_path):
    pytest.importorskip("matplotlib")
    result = run("plot", "memory", "-m", "llama-7b", "--size", "100x100", "--dpi", "600",
                 "--out", str(tmp_path / "x.png"))
    assert "60,000x60,000 px" in one_line_error(result, 2)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("version", ["-1.-1", "5", "1e3", "a.b"])
def test_hf_version_is_validated(version):
    result = run("estimate", "-m", "llama-7b", "--hf-version", version)
    assert "version" in one_line_error(result, 2)
