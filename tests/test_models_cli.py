"""`kvcalc models` (origins) and `kvcalc models add` against the stand-in hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hubstub import hub, hub_server  # noqa: F401

from kvcalc import sources
from kvcalc.cli import cli

HF = Path(__file__).parent / "fixtures" / "hf-configs"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def presets(hub, tmp_path):
    """The stand-in hub plus an empty XDG preset folder (returned)."""
    sources._scan_dir.cache_clear()
    yield tmp_path / "config" / "kvcalc" / "presets"
    sources._scan_dir.cache_clear()


def test_add_saves_the_hub_config_verbatim(presets, hub):
    result = run("models", "add", "Qwen/Qwen3-8B")
    assert result.exit_code == 0, result.output
    path = presets / "qwen3-8b.yaml"
    commit = hub.repos["Qwen/Qwen3-8B"].refs["main"]
    assert f"saved Qwen/Qwen3-8B@{commit[:12]} as preset 'qwen3-8b' in {path}" in result.stdout
    data = yaml.safe_load(path.read_text())
    assert list(data) == ["name", "display_name", "hub_id", "aliases", "family", "source",
                          "notes", "config"]
    assert data["name"] == "qwen3-8b" and data["hub_id"] == "Qwen/Qwen3-8B"
    assert data["family"] == "qwen3"
    assert data["source"].startswith(f"hub Qwen/Qwen3-8B@{commit} fetched 20")
    assert data["config"] == json.loads((HF / "Qwen__Qwen3-8B.json").read_text())


def test_saved_preset_resolves_offline_with_the_same_figures(presets, hub, monkeypatch):
    assert run("models", "add", "meta-llama/Llama-3.1-8B", "--as", "my-llama").exit_code == 0
    hub.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mine = run("estimate", "-m", "my-llama", "--seq", "4096", "-f", "json")
    local = run("estimate", "-m", str(HF / "meta-llama__Llama-3.1-8B.json"), "--seq", "4096",
                "-f", "json")
    a, b = json.loads(mine.stdout), json.loads(local.stdout)
    assert (a["bytes_per_token"], a["bytes_per_sequence"]) == \
        (b["bytes_per_token"], b["bytes_per_sequence"])
    assert a["source"]["kind"] == "preset" and a["source"]["location"] == \
        str(presets / "my-llama.yaml")
    assert a["source"]["revision"] == hub.repos["meta-llama/Llama-3.1-8B"].refs["main"]
    assert hub.log == []


def test_add_overrides_a_builtin_and_the_list_says_so(presets):
    result = run("models", "add", "meta-llama/Llama-3.1-8B")
    assert result.exit_code == 0, result.output
    assert "(overrides the built-in preset of that name)" in result.stdout
    listing = run("models")
    assert listing.exit_code == 0
    row = next(line for line in listing.stdout.splitlines() if line.startswith("llama-3.1-8b "))
    assert f"user {presets} (overrides built-in)" in row
    builtin_row = next(line for line in listing.stdout.splitlines()
                       if line.startswith("llama-2-7b "))
    assert builtin_row.rstrip().endswith("built-in")
    assert "User presets (first wins, then built-in):" in listing.stdout
    rows = json.loads(run("models", "-f", "json").stdout)
    mine = next(r for r in rows if r["name"] == "llama-3.1-8b")
    assert mine["origin"] == "user" and mine["overrides_builtin"] is True
    assert mine["path"] == str(presets / "llama-3.1-8b.yaml")
    assert sum(r["name"] == "llama-3.1-8b" for r in rows) == 1
    show = run("models", "show", "llama-3.1-8b")
    assert f"user ({presets / 'llama-3.1-8b.yaml'})" in show.stdout


def test_add_refuses_to_overwrite_without_force(presets):
    assert run("models", "add", "Qwen/Qwen3-0.6B", "--as", "q").exit_code == 0
    again = run("models", "add", "Qwen/Qwen3-0.6B@v1", "--as", "q")
    assert again.exit_code == 2
    assert "already exists: pass --force" in again.stderr
    assert yaml.safe_load((presets / "q.yaml").read_text())["config"]["num_hidden_layers"] == 28
    forced = run("models", "add", "Qwen/Qwen3-0.6B", "--revision", "v1", "--as", "q", "--force")
    assert forced.exit_code == 0, forced.output
    assert yaml.safe_load((presets / "q.yaml").read_text())["config"]["num_hidden_layers"] == 2


def test_add_goes_to_the_first_kvcalc_presets_folder(presets, monkeypatch, tmp_path):
    first = tmp_path / "team-presets"
    monkeypatch.setenv("KVCALC_PRESETS", str(first))
    assert run("models", "add", "openai-community/gpt2").exit_code == 0
    assert (first / "gpt2.yaml").is_file() and not presets.exists()


@pytest.mark.parametrize("args, message", [
    (["stub/gated"], "stub/gated is a gated repository"),
    (["nobody/nothing"], "hub repository nobody/nothing not found"),
    (["stub/list-json"], "is a JSON list, not an object"),
    (["llama-7b"], "'llama-7b' is not a hub id: models add takes org/name[@revision]"),
    (["Qwen/Qwen3-0.6B", "--as", "Bad/Name"], "preset name 'Bad/Name' is not usable"),
])
def test_add_failures_write_nothing(presets, args, message):
    result = run("models", "add", *args)
    assert result.exit_code != 0
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not presets.exists() or list(presets.iterdir()) == []


def test_add_offline_from_the_cache(presets, monkeypatch):
    assert run("estimate", "-m", "openai-community/gpt2", "--seq", "1").exit_code == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run("models", "add", "openai-community/gpt2")
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((presets / "gpt2.yaml").read_text())
    assert "read from the hub cache" in saved["source"]
