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
from kvcalc.engines.llamacpp import (LlamaCppSettings, allocate,  # noqa: E402
                                     compute_buffer_bytes)
from kvcalc.model import load_spec  # noqa: E402
from kvcalc.verify.llamacpp import buffer_grid, case_id, grid, verify_llamacpp  # noqa: E402


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


# ---- the buffers grid: model buffers, KV (with -c 0) and compute buffers (issue 26) --------
#
# buffer_grid(): -c 0 / 512 / 4096 x (-b, -ub) (512, 128) / (512, 512) / (2048, 1024) x flash
# attention on / off x slots 1 / 3 per slot / 3 unified x an f16 and a quantized cache = 108
# contexts per model. Every KV cache must match to the byte (as in the grid above), the model
# buffers and llama_model_size() once per model, and every compute buffer must print as
# llama.cpp's "CPU compute buffer size = X MiB" (2 decimals) and as its debug line at free
# (4 decimals), and equal the exact bytes the probe reads (tests/llamacpp_probe: where a C
# compiler is at hand).


def _buffer_params():
    return [pytest.param(model, case_id(s), id=f"{model}-{case_id(s)}")
            for model in ("smollm2", "gemma3") for s in buffer_grid()]


_BUFFER_REPORTS = {}


def _buffer_report(model):
    if model not in _BUFFER_REPORTS:
        path = str(smollm2_path() if model == "smollm2" else gemma3_path())
        _BUFFER_REPORTS[model] = verify_llamacpp(path, buffer_grid())
    return _BUFFER_REPORTS[model]


@pytest.mark.parametrize("model_name", ["smollm2", "gemma3"])
def test_buffers_grid_kv_and_model_buffers_to_the_byte(model_name):
    report = _buffer_report(model_name)
    failures = [(r["settings"], r["mismatches"]) for r in report["results"] if not r["passed"]]
    assert not failures, failures[:3]
    assert report["checks"] == len(buffer_grid()) == 108
    # -c 0: llama.cpp takes the trained context; so does kvcalc
    spec = load_spec(str(smollm2_path() if model_name == "smollm2" else gemma3_path()))[1]
    zero = [r for r in report["results"] if r["settings"]["ctx_size"] == 0]
    assert zero and all(r["measured"]["total_bytes"] == r["predicted"]["total_bytes"] and
                        r["predicted"]["n_ctx"] >= spec.max_position_embeddings for r in zero)
    mb = report["model_buffers"]
    assert mb["model_size_matches"] and mb["llama_model_size"] == mb["weights_bytes"]
    assert mb["matches"], mb
    want = {"smollm2": {"CPU_Mapped": "92.10"},
            "gemma3": {"CPU_Mapped": "235.16", "CPU_REPACK": "12.66"}}[model_name]
    assert mb["logged_mib"] == want


@pytest.mark.parametrize("model_name,cid", _buffer_params())
def test_compute_buffer_prints_as_llamacpp_logs(model_name, cid):
    report = _buffer_report(model_name)
    r = next(x for x, s in zip(report["results"], buffer_grid()) if case_id(s) == cid)
    c = r["compute_buffer"]
    assert c["logged_mib"] is not None and c["logged_mib_4"] is not None
    assert c["predicted_mib"] == c["logged_mib"], (c["logged_mib_4"], c["predicted_bytes"])
    assert c["predicted_mib_4"] == c["logged_mib_4"], c
    assert c["matches"] and abs(c["difference_bytes"]) <= 53


@pytest.mark.parametrize("model_name", ["smollm2", "gemma3"])
def test_compute_buffer_exact_bytes_read_from_llamacpp(model_name, tmp_path):
    """The compute buffer's bytes, not MiB: tests/llamacpp_probe/reserve_probe.c wraps
    ggml-alloc's reserve (LD_PRELOAD) and reads ggml_gallocr_get_buffer_size; every context of
    the buffers grid equals compute_buffer_bytes."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import llama_cpp

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not sys.platform.startswith("linux"):
        pytest.skip("the probe needs a C compiler and LD_PRELOAD (Linux)")
    here = Path(__file__).parent / "llamacpp_probe"
    lib = Path(llama_cpp.__file__).parent / "lib"
    probe = tmp_path / "reserve_probe.so"
    subprocess.run([cc, "-O1", "-shared", "-fPIC", str(here / "reserve_probe.c"), "-o",
                    str(probe), f"-L{lib}", "-lggml-base", "-ldl", f"-Wl,-rpath,{lib}"],
                   check=True)
    path = str(smollm2_path() if model_name == "smollm2" else gemma3_path())
    out = tmp_path / "sizes.json"
    env = dict(os.environ, LD_PRELOAD=str(probe))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent),
                                                      env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, str(here / "reserve_sizes.py"), path, str(out)], env=env,
                   check=True, timeout=900)
    sizes = json.loads(out.read_text())
    spec = load_spec(path)[1]
    assert len(sizes) == len(buffer_grid()) == 108
    wrong = {}
    for s in buffer_grid():
        want = sizes[case_id(s)]
        got = compute_buffer_bytes(spec, None, allocate(spec, s))
        if got != want:
            wrong[case_id(s)] = (want, got)
    assert not wrong, wrong
