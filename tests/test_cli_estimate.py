"""`kvcalc estimate` and `kvcalc models` through click's CliRunner, bad input included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvcalc.cli import cli

HF = Path(__file__).parent / "fixtures" / "hf-configs"


def run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result


def run_json(*args: str):
    result = run(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_main_command_llama_7b():
    result = run("estimate", "--model", "llama-7b", "--seq", "4096")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "llama-2-7b" in out and "524,288" in out and "2,147,483,648" in out
    assert "2.00 GiB" in out
    assert "Formula: full: 32 layers x 32 kv heads x 2 x 128 x 2 B (fp16)" in out


def test_json_contract():
    data = run_json("estimate", "-m", "llama-7b", "--seq", "4k", "--batch", "8")
    for key, kind in [("model", str), ("engine", str), ("kv_dtype", str), ("seq", int),
                      ("batch", int), ("bytes_per_token", int), ("bytes_per_sequence", int),
                      ("bytes_total", int), ("layers", list)]:
        assert isinstance(data[key], kind), key
    assert data["model"] == "llama-2-7b"
    assert (data["seq"], data["batch"]) == (4096, 8)
    assert data["bytes_total"] == 8 * data["bytes_per_sequence"] == 8 * 524_288 * 4096
    assert data["layers"] == [{"kind": "full", "count": 32, "bytes_per_token": 16_384,
                               "bytes_per_token_total": 524_288, "window": None,
                               "fixed_bytes": 0, "tokens_held": 4096,
                               "bytes_per_sequence": 524_288 * 4096}]


def test_sweep_gives_a_list_and_table():
    data = run_json("estimate", "-m", "gemma-3-27b", "--seq", "1k,32k", "--batch", "1,4",
                    "--engine", "vllm")
    assert [(d["seq"], d["batch"]) for d in data] == [(1024, 1), (1024, 4), (32768, 1), (32768, 4)]
    result = run("estimate", "-m", "gemma-3-27b", "--seq", "1k,32k")
    assert result.exit_code == 0 and "32,768" in result.stdout


def test_csv_and_markdown_and_yaml():
    csv_out = run("estimate", "-m", "llama-7b", "--seq", "1k,2k", "-f", "csv").stdout
    lines = csv_out.strip().splitlines()
    assert lines[0].startswith("model,engine,kv_dtype,block_size,seq,batch,bytes_per_token")
    assert lines[1].split(",")[4:7] == ["1024", "1", "524288"]
    md = run("estimate", "-m", "llama-7b", "-f", "markdown").stdout
    assert "| per token" in md
    import yaml

    assert yaml.safe_load(run("estimate", "-m", "llama-7b", "-f", "yaml").stdout)["seq"] == 4096


def test_config_path_and_directory(tmp_path):
    path = HF / "meta-llama__Llama-3.1-8B.json"
    assert run_json("estimate", "-m", str(path))["bytes_per_token"] == 131_072
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text(path.read_text())
    data = run_json("estimate", "-m", str(d), "--kv-dtype", "fp8", "--engine", "vllm")
    assert data["bytes_per_token"] == 65_536 and data["source"]["kind"] == "file"


def test_aliases_are_case_insensitive():
    assert run_json("estimate", "-m", "LLaMA-7B")["model"] == "llama-2-7b"


def test_seq_sizes_accept_suffixes():
    assert [d["seq"] for d in run_json("estimate", "-m", "llama-7b", "--seq", "4k,128K,1M")] == [
        4096, 131_072, 1_048_576]


def test_warns_beyond_context_length():
    result = run("estimate", "-m", "llama-7b", "--seq", "8k")
    assert result.exit_code == 0
    assert "exceeds the model's context length" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["-m", "lama-7b"], "did you mean llama-7b"),
    (["-m", "no-such-model-xyz"], "unknown model 'no-such-model-xyz'"),
    (["-m", "llama-7b", "--seq", "abc"], "invalid sequence length 'abc'"),
    (["-m", "llama-7b", "--seq", "0"], "must be at least 1"),
    (["-m", "llama-7b", "--seq", "1.5"], "not a whole number"),
    (["-m", "llama-7b", "--batch", "-3"], "invalid batch size"),
    (["-m", "llama-7b", "--kv-dtype", "fp7"], "'fp7' is not one of"),
    (["-m", "llama-7b", "--engine", "trt"], "'trt' is not one of"),
    (["-m", "llama-7b", "--engine", "vllm", "--block-size", "0"], "invalid --block-size 0"),
    (["-m", "llama-7b", "--hf-version", "banana"], "invalid transformers version"),
    (["-m", "/no/such/config.json"], "no such file or directory"),
])
def test_bad_input_is_one_line_without_traceback(args, message):
    result = run("estimate", *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_malformed_json_names_file_and_line(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{\n  "model_type": "llama",\n  "num_hidden_layers": 32,,\n}\n')
    result = run("estimate", "-m", str(bad))
    assert result.exit_code == 1
    assert f"malformed JSON in {bad}:3" in result.stderr
    assert "Traceback" not in result.output


def test_malformed_yaml_preset_names_file_and_line(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\nconfig:\n  model_type: llama\n   bad: [1, 2\n")
    result = run("estimate", "-m", str(bad))
    assert result.exit_code == 1
    assert f"malformed YAML in {bad}:" in result.stderr


def test_missing_field_is_named(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096,
                               "num_attention_heads": 32}))
    result = run("estimate", "-m", str(cfg))
    assert result.exit_code == 1
    assert "required field 'num_hidden_layers' is missing" in result.stderr


def test_unknown_model_type_warns_each_assumption(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model_type": "brandnew", "num_hidden_layers": 2,
                               "num_attention_heads": 8, "hidden_size": 512,
                               "torch_dtype": "float16"}))
    result = run("estimate", "-m", str(cfg), "-f", "json")
    assert result.exit_code == 0
    assert "unknown model_type 'brandnew'" in result.stderr
    assert "kv heads = num_attention_heads = 8" in result.stderr
    assert "head_dim = hidden_size / num_attention_heads = 64" in result.stderr
    assert json.loads(result.stdout)["bytes_per_token"] == 2 * 8 * 2 * 64 * 2


def test_debug_shows_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["--debug", "estimate", "-m", "nope-model"])
    assert result.exit_code != 0
    assert result.exception is not None


def test_models_list_and_show():
    result = run("models")
    assert result.exit_code == 0 and "llama-2-7b" in result.stdout and "deepseek-v3" in result.stdout
    rows = json.loads(run("models", "-f", "json").stdout)
    assert len(rows) >= 35
    assert not [r["name"] for r in rows if "error" in r]
    by_name = {r["name"]: r for r in rows}
    assert by_name["llama-2-7b"]["bytes_per_token_hf"] == 524_288
    shown = run("models", "show", "llama-7b")
    assert shown.exit_code == 0 and "meta-llama/Llama-2-7b-hf" in shown.stdout
    missing = run("models", "show", "lama-2-7b")
    assert missing.exit_code == 1 and "did you mean" in missing.stderr


def test_estimate_never_imports_torch_or_transformers():
    code = ("import sys; from kvcalc.cli import main; sys.argv=['kvcalc','estimate','-m','llama-7b'];\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "bad=[m for m in ('torch','transformers','huggingface_hub','pydantic') if m in sys.modules]\n"
            "print('IMPORTED', bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "IMPORTED []" in out.stdout
