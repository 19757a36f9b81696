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
