"""kvcalc's llama.cpp layout against llama.cpp itself (``kvcalc verify --engine llamacpp``).

Needs llama-cpp-python (it compiles llama.cpp, ~11 min on 2 cores) and the two GGUF models that
PyPI packages ship: .ci/run builds them into ``.llamacpp-venv/`` and runs this file there.
Elsewhere every test skips, saying which package is missing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: .ci/run builds it "
                                        "into .llamacpp-venv (pip install llama-cpp-python)")

from test_gguf import gemma3_path, smollm2_path  # noqa: E402

from kvcalc.cli import cli  # noqa: E402
from kvcalc.engines.llamacpp import LlamaCppSettings, allocate  # noqa: E402
from kvcalc.model import load_spec  # noqa: E402
from kvcalc.verify.llamacpp import grid, verify_llamacpp  # noqa: E402


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def model(request):
    return str(smollm2_path() if request.param == "smollm2" else gemma3_path())


def test_grid_matches_llamacpp_to_the_byte(model):
    spec = load_spec(model)[1]
    settings = grid(spec)
    report = verify_llamacpp(model, settings)
    failures = [(r["settings"], r["mismatches"]) for r in report["results"] if not r["passed"]]
    assert not failures, failures[:3]
    assert report["passed"] and report["checks"] == len(settings) >= 30
    compared = [r for r in report["results"] if r["predicted"]]
    for r in compared:
        assert r["measured"]["total_bytes"] == r["predicted"]["total_bytes"]
        for got, want in zip(r["measured"]["caches"], r["predicted"]["caches"]):
            assert got["total_bytes"] == want["total_bytes"]
            assert (got["k_bytes"], got["v_bytes"]) == (want["k_bytes"], want["v_bytes"])
            assert got["k_v_split"] >= 1     # the logged K and V MiB admit the split
    refused = [r for r in report["results"] if r["refused_by_llamacpp"]]
    assert len(refused) == 1 and "quantized V cache" in refused[0]["refused_by_kvcalc"]
    assert "flash_attn" in refused[0]["refused_by_llamacpp"].lower() or \
        "flash attention" in refused[0]["refused_by_llamacpp"].lower()


def test_cli_verify_llamacpp_json(model):
    result = CliRunner().invoke(cli, ["verify", "--engine", "llamacpp", "--weights", model,
                                      "--ctx-size", "2000", "--parallel", "2",
                                      "--cache-type-k", "q8_0", "--cache-type-v", "q8_0",
                                      "--ubatch-size", "128", "-f", "json"])
    assert result.exit_code == 0, result.output[-2000:]
    d = json.loads(result.stdout)
    assert d["passed"] and d["checks"] == 1
    r = d["results"][0]
    assert r["measured"]["total_bytes"] == r["predicted"]["total_bytes"] > 0


def test_cli_verify_refusal_passes_when_both_refuse(model):
    result = CliRunner().invoke(cli, ["verify", "--engine", "llamacpp", "--weights", model,
                                      "--ctx-size", "512", "--cache-type-v", "q4_0",
                                      "--flash-attn", "off", "-f", "json"])
    assert result.exit_code == 0, result.output[-2000:]
    r = json.loads(result.stdout)["results"][0]
    assert r["refused_by_kvcalc"] and r["refused_by_llamacpp"]


def test_llama_server_defaults_allocate_what_llamacpp_allocates(model):
    """llama-server's -np auto (4 slots, unified): the same context through the C API."""
    spec = load_spec(model)[1]
    s = LlamaCppSettings(ctx_size=3000)
    assert (s.n_seq_max, s.unified) == (4, True)
    report = verify_llamacpp(model, [s])
    assert report["passed"], report["results"][0]["mismatches"]
    assert report["results"][0]["measured"]["total_bytes"] == allocate(spec, s).total_bytes
