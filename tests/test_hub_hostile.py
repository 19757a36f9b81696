"""A hub that lies (issue 12): the hostile repositories of tests/hubstub.py. Nothing outside
the hub cache is ever written, every wait is bounded as a whole, no credential is printed or
saved, no escape sequence reaches the terminal, no hub-named code is passed on."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hubstub import hub, hub_server  # noqa: F401

from kvcalc.arch import build_spec, without_code_fields
from kvcalc.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def one_line(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "internal error" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("repo, why", [
    ("evil/etag-dotdot", "ETag '../../"),
    ("evil/etag-absolute", "ETag '/tmp/"),
    ("evil/commit-dotdot", "commit '../../"),
])
def test_etag_and_commit_that_are_paths_are_refused_before_writing(hub, tmp_path, repo, why):
    before = files_under(tmp_path)
    line = one_line(run("estimate", "-m", repo, "--seq", "1k"), 1)
    assert why in line and "nothing written" in line
    assert files_under(tmp_path) == before  # not even the cache folder
    for target in ("/tmp/kvcalc-evil-etag", "/tmp/kvcalc-evil-etag-abs",
                   "/tmp/kvcalc-evil-etag.lock"):
        assert not os.path.exists(target)


@pytest.mark.parametrize("args", [
    ["estimate", "-m", "meta-llama/Llama-3.1-8B@../../../../outside"],
    ["estimate", "-m", "meta-llama/Llama-3.1-8B", "--revision", "/etc/passwd"],
    ["models", "add", "meta-llama/Llama-3.1-8B", "--revision", "../.."],
    ["models", "add", "meta-llama/Llama-3.1-8B@main/../../x"],
])
def test_revisions_that_are_paths_are_refused(hub, tmp_path, args):
    before = files_under(tmp_path)
    line = one_line(run(*args), 2)
    assert "not a branch, tag or commit name" in line
    assert hub.log == [] and files_under(tmp_path) == before


def test_real_revision_shapes_still_work(hub):
    result = run("estimate", "-m", "Qwen/Qwen3-0.6B@v1", "--seq", "1k", "--format", "json")
    assert result.exit_code == 0, result.output


def test_header_drip_is_bounded_as_a_whole_and_leaves_nothing_partial(hub, monkeypatch,
                                                                       tmp_path):
    monkeypatch.setenv("KVCALC_HUB_TIMEOUT", "0.5")
    start = time.monotonic()
    line = one_line(run("estimate", "-m", "evil/drip", "--seq", "1k"), 1)
    assert time.monotonic() - start < 2.0
    assert "did not answer within 0.5 s" in line
    assert not [f for f in files_under(tmp_path) if f.endswith((".incomplete", ".tmp"))]


def test_a_config_larger_than_the_limit_is_refused(hub, tmp_path):
    line = one_line(run("models", "add", "evil/huge"), 1)
    assert "more than 4,194,304 bytes" in line
    assert not list((tmp_path / "config").rglob("*.yaml"))


def test_escape_sequences_from_the_hub_are_printed_escaped(hub):
    for args in (["estimate", "-m", "evil/escapes", "--seq", "1k"],
                 ["estimate", "-m", "evil/escapes", "--seq", "1k", "-f", "json"],
                 ["models", "add", "evil/escapes", "--as", "escapes"],
                 ["models", "show", "escapes"], ["models"]):
        result = run(*args)
        assert result.exit_code == 0, result.output
        for ch in "\x1b\x07\x9b\u202e":
            assert ch not in result.output, args
    assert "\\x1b" in run("estimate", "-m", "evil/escapes", "--seq", "1k").stdout


def test_credentials_in_the_endpoint_are_never_printed_or_saved(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", hub.url.replace("http://", "http://alice:s3cret@"))
    result = run("models", "add", "meta-llama/Llama-3.1-8B", "--as", "mine")
    assert result.exit_code == 0, result.output
    saved = next((tmp_path / "config").rglob("mine.yaml")).read_text()
    assert "s3cret" not in saved and "alice" not in saved and hub.url in saved
    assert hub.log[-1].authorization.startswith("Basic ")  # used for the request
    for args in (["estimate", "-m", "stub/error500"], ["estimate", "-m", "nobody/nothing"],
                 ["estimate", "-m", "stub/silent-get"]):
        monkeypatch.setenv("KVCALC_HUB_TIMEOUT", "0.3")
        result = run(*args)
        assert result.exit_code != 0 and "s3cret" not in result.output
        assert "alice" not in result.output


def test_hub_named_kernels_and_code_are_never_passed_on(hub):
    result = run("estimate", "-m", "evil/kernel", "--seq", "1k", "-f", "json")
    assert result.exit_code == 0, result.output
    raw = json.loads((Path(__file__).parent / "fixtures" / "hf-configs" /
                      "meta-llama__Llama-3.2-1B-Instruct.json").read_text())
    raw.update(attn_implementation="kernels-community/flash-attn",
               vision_config={"auto_map": {"x": "y"}, "_attn_implementation": "a/b"})
    clean, dropped = without_code_fields(raw)
    assert dropped == ["attn_implementation", "vision_config.auto_map",
                       "vision_config._attn_implementation"]
    assert "attn_implementation" not in clean and clean["vision_config"] == {}
    notes = " ".join(build_spec(raw).notes)
    assert "attn_implementation" in notes and "never loaded" in notes


def test_verify_build_drops_hub_kernels():
    pytest.importorskip("transformers")
    from kvcalc.verify.build import decoder_config_dict, hf_config

    raw = json.loads((Path(__file__).parent / "fixtures" / "hf-configs" /
                      "meta-llama__Llama-3.2-1B-Instruct.json").read_text())
    raw.update(attn_implementation="kernels-community/flash-attn",
               experts_implementation="kernels-community/moe", auto_map={"a": "b.C"})
    text = decoder_config_dict(raw)
    assert not {"attn_implementation", "experts_implementation", "auto_map"} & set(text)
    assert hf_config(raw)._attn_implementation in (None, "eager", "sdpa")


def test_bom_from_the_hub_is_accepted(hub):
    result = run("estimate", "-m", "evil/bom", "--seq", "1k", "-f", "json")
    assert result.exit_code == 0, result.output


def test_hf_home_that_is_a_file_is_one_line(hub, monkeypatch, tmp_path):
    home = tmp_path / "a-file"
    home.write_text("not a folder")
    monkeypatch.setenv("HF_HOME", str(home))
    line = one_line(run("estimate", "-m", "meta-llama/Llama-3.1-8B"), 1)
    assert "hub cache" in line or str(home) in line
