"""Engine versions: bands, newest checked, installed, and the drift notice (`kvcalc versions`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvcalc.cli import cli
from kvcalc.engines import Engine, get_engine
from kvcalc.versions import (ABSENT, CHECKED, NEWER, OUTSIDE, engine_versions, newer_than,
                             release, verify_requirement)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, expected", [
    ("5.24.0", (5, 24, 0)), ("0.33.0rc1", (0, 33, 0)), ("2.13.0+cpu", (2, 13, 0)),
    ("5.24", (5, 24)), ("5.24.0.dev0", (5, 24, 0)), ("dev", ()),
])
def test_release_parts(text, expected):
    assert release(text) == expected


def test_newer_than_compares_releases_not_strings():
    assert newer_than("5.25.0", "5.24") and newer_than("5.24.1", "5.24.0")
    assert newer_than("5.100.0", "5.24.0")          # a string comparison would say no
    assert not newer_than("5.24.0", "5.24") and not newer_than("5.9.0", "5.24.0")


def test_installed_newest_checked_release_is_checked():
    hf = get_engine("hf")
    v = engine_versions(hf, hf.newest_checked)
    assert v.status == CHECKED and v.band == hf.bands[-1].name and v.notice is None


def test_a_release_newer_than_checked_gets_a_notice_naming_the_band():
    hf = get_engine("hf")
    nxt = release(hf.newest_checked)
    future = f"{nxt[0]}.{nxt[1] + 1}.0"
    v = engine_versions(hf, future)
    assert v.status == NEWER and v.band == hf.bands[-1].name
    assert future in v.notice and hf.newest_checked in v.notice
    assert "kvcalc verify --device meta --all" in v.notice


def test_an_older_release_is_modelled_by_its_band():
    hf = get_engine("hf")
    assert engine_versions(hf, "5.14.1").band == "4.56-5.14"
    assert engine_versions(hf, "4.45.2").band == "<4.56"
    assert engine_versions(hf, "4.45.2").status == CHECKED


def test_absent_and_outside():
    class Nowhere(Engine):
        name = "nowhere"
        display_name = "Nowhere"
        package = "kvcalc-no-such-distribution"
        bands = get_engine("vllm").bands
        newest_checked = "0.33.0"

    assert engine_versions(Nowhere()).status == ABSENT
    outside = engine_versions(Nowhere(), "0.1.0")  # vLLM's oldest band starts at 0.9
    assert outside.status == OUTSIDE and "outside the bands" in outside.notice


def test_versions_command_json_lists_every_engine_with_its_bands():
    result = CliRunner().invoke(cli, ["versions", "-f", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    by_name = {r["engine"]: r for r in doc["engines"]}
    for name in ("hf", "vllm"):
        engine = get_engine(name)
        r = by_name[name]
        assert r["newest_checked"] == engine.newest_checked
        assert [b["name"] for b in r["bands"]] == [b.name for b in engine.bands]
        assert all(b["changes"] and b["sources"] for b in r["bands"])
        assert r["installed"] == engine.installed_version()


def test_versions_command_warns_when_the_installed_release_is_newer(monkeypatch):
    hf = get_engine("hf")
    monkeypatch.setattr(type(hf), "installed_version", lambda self: "99.0.0")
    result = CliRunner().invoke(cli, ["versions"])
    assert result.exit_code == 0, result.output
    assert "newer" in result.stdout
    assert re.search(r"warning: transformers 99\.0\.0 is installed, newer than", result.stderr)


def test_verify_requirement_is_the_pyproject_floor():
    tomllib = pytest.importorskip("tomllib")
    req = verify_requirement()
    if req is None:
        pytest.skip("kvcalc is not installed (no metadata)")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    line = next(r for r in project["optional-dependencies"]["verify"]
                if r.startswith("transformers"))
    assert req == line.removeprefix("transformers").replace(" ", "")


@pytest.mark.parametrize("model, version, per_token", [
    # DeepSeek-V3.2 (MLA + lightning indexer, 61 layers, bf16): decompressed K and V until
    # 5.17, 61 x (128 x (128 + 64 + 128) + 128 indexer) x 2 = 5,012,736; the latent from 5.18,
    # 61 x (512 + 64 + 128) x 2 = 85,888 (both measured on the meta device, 5.17.0 / 5.18.0)
    ("deepseek-v3.2", "5.16", 5_012_736), ("deepseek-v3.2", "5.18", 85_888),
    ("deepseek-v3.2", "5.14", 5_012_736),
    # DeepSeek-V3 (no indexer) caches the latent from 5.15: 61 x 576 x 2 = 70,272
    ("deepseek-v3", "5.15", 70_272), ("deepseek-v3", "5.14", 4_997_120),
])
def test_sparse_attention_mla_band(model, version, per_token):
    result = CliRunner().invoke(cli, ["estimate", "-m", model, "--seq", "1", "--hf-version",
                                      version, "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bytes_per_token"] == per_token


def test_estimate_names_band_and_installed_release_and_warns_on_drift(monkeypatch):
    hf = get_engine("hf")
    out = CliRunner().invoke(cli, ["estimate", "-m", "llama-7b", "--seq", "4k"])
    assert f"(band {hf.bands[-1].name}; checked against {hf.newest_checked}" in out.stdout
    assert "warning" not in out.stderr or "newer than" not in out.stderr
    monkeypatch.setattr(type(hf), "installed_version", lambda self: "99.0.0")
    out = CliRunner().invoke(cli, ["estimate", "-m", "llama-7b", "--seq", "4k"])
    assert out.exit_code == 0 and "installed here: 99.0.0" in out.stdout
    assert "warning: transformers 99.0.0 is installed, newer than" in out.stderr
    # an older band asked for explicitly is not "drift"
    out = CliRunner().invoke(cli, ["estimate", "-m", "llama-7b", "--seq", "4k",
                                   "--hf-version", "5.14"])
    assert "newer than" not in out.stderr


def test_verify_refuses_transformers_below_the_floor():
    pytest.importorskip("torch")
    from kvcalc.verify.backend import BackendMissingError, check_transformers_floor

    if verify_requirement() is None:
        pytest.skip("kvcalc is not installed (no metadata)")
    with pytest.raises(BackendMissingError, match=r"needs transformers >=[\d.]+; 5\.10\.4 is "):
        check_transformers_floor("5.10.4")
    check_transformers_floor("99.0.0")  # newer passes (drift is a notice, not a refusal)


NEWER_LINE = ("vLLM 0.35 is newer than the newest version kvcalc checked (0.34.0): figures use "
              "the 0.34 rules, unverified")


def test_a_newer_requested_version_is_never_modelled_silently():
    """--vllm-version 0.35 (and 0.99): the 0.34 rules, with one line in estimate, plan, simulate
    and every API result's warnings."""
    import kvcalc

    est = CliRunner().invoke(cli, ["estimate", "-m", "llama-7b", "--seq", "4k", "--engine",
                                   "vllm", "--vllm-version", "0.35"])
    assert est.exit_code == 0 and f"warning: {NEWER_LINE}" in est.stderr
    plan = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--max-len", "8k",
                                    "--vllm-version", "0.35"])
    assert plan.exit_code == 0 and f"warning: {NEWER_LINE}" in plan.stderr
    assert "vLLM 0.35 (version band 0.34)" in plan.stdout
    sim = CliRunner().invoke(cli, ["simulate", "-m", "llama-3.1-8b", "--input-len", "100",
                                   "--output-len", "10", "--requests", "5",
                                   "--vllm-version", "0.35"])
    assert sim.exit_code == 0, sim.output
    assert f"warning: {NEWER_LINE}" in sim.stderr
    assert NEWER_LINE in kvcalc.estimate("llama-7b", seq=4096, engine="vllm",
                                         vllm_version="0.35").warnings
    assert NEWER_LINE in kvcalc.plan("llama-3.1-8b", max_len=8192,
                                     vllm_version="0.35").warnings
    assert NEWER_LINE in kvcalc.simulate("llama-3.1-8b", input_len=100, output_len=10,
                                         requests=5, vllm_version="0.35").warnings
    assert any("vLLM 0.99 is newer than" in w for w in
               kvcalc.plan("llama-3.1-8b", max_len=8192, vllm_version="0.99").warnings)
    # the versions checked are silent
    assert not any("newer than" in w for w in
                   kvcalc.plan("llama-3.1-8b", max_len=8192, vllm_version="0.34").warnings)


def test_an_installed_newer_engine_is_named_in_every_command(monkeypatch):
    import kvcalc

    vllm = get_engine("vllm")
    monkeypatch.setattr(type(vllm), "installed_version", lambda self: "0.35.1")
    line = ("vLLM 0.35.1 is installed, newer than the newest version kvcalc checked (0.34.0): "
            "figures use the 0.34 rules, unverified")
    assert line in kvcalc.estimate("llama-7b", seq=4096, engine="vllm").warnings
    assert line in kvcalc.plan("llama-3.1-8b", max_len=8192).warnings
    assert line in kvcalc.simulate("llama-3.1-8b", input_len=100, output_len=10,
                                   requests=5).warnings
    plan = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--max-len", "8k"])
    assert f"warning: {line}" in plan.stderr
    # an older band asked for explicitly is not drift
    assert not any("newer than" in w for w in
                   kvcalc.plan("llama-3.1-8b", max_len=8192, vllm_version="0.33").warnings)


@pytest.mark.parametrize("package", ["click", "PyYAML", "pyyaml", "kvcalc", "typing_extensions",
                                     "no-such-distribution-kvcalc"])
def test_distribution_version_is_what_importlib_metadata_reads(package):
    from importlib import metadata

    from kvcalc.engines import distribution_version

    try:
        expected = metadata.version(package)
    except metadata.PackageNotFoundError:
        expected = None
    assert distribution_version(package) == expected
