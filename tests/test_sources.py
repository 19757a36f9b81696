"""Resolution order (preset, path, hub id), revisions, user presets and their atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from kvcalc import sources
from kvcalc.errors import ConfigError, ModelNotFoundError, UsageError
from kvcalc.sources import (all_presets, find_preset, resolve, save_user_preset,
                            user_preset_dirs, user_preset_write_dir)

HF = Path(__file__).parent / "fixtures" / "hf-configs"
GPT2 = HF / "openai-community__gpt2.json"


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Empty user preset folders: KVCALC_PRESETS = a:b, XDG_CONFIG_HOME = c."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "xdg"
    monkeypatch.setenv("KVCALC_PRESETS", os.pathsep.join([str(a), str(b)]))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(c))
    sources._scan_dir.cache_clear()
    yield a, b, c / "kvcalc" / "presets"
    sources._scan_dir.cache_clear()


def preset(name: str, layers: int, **extra) -> dict:
    config = {"model_type": "llama", "hidden_size": 256, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": layers, "torch_dtype": "bfloat16"}
    return {"name": name, "display_name": name, "hub_id": None, "aliases": [], "family": "llama",
            "source": "test", "notes": "", "config": config, **extra}


def test_user_preset_folders_in_order(folders):
    a, b, xdg = folders
    assert user_preset_dirs() == [a, b, xdg]
    assert user_preset_write_dir() == a


def test_xdg_default_when_no_kvcalc_presets(monkeypatch, tmp_path):
    monkeypatch.delenv("KVCALC_PRESETS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert user_preset_write_dir() == tmp_path / "kvcalc" / "presets"


def test_resolution_order_preset_then_path_then_hub(folders, monkeypatch, tmp_path):
    assert resolve("llama-7b").kind == "preset"
    assert resolve(str(GPT2)).kind == "file"
    # a directory named like a hub id wins over the hub (local path before hub id)
    local = tmp_path / "org" / "model"
    local.mkdir(parents=True)
    (local / "config.json").write_text(GPT2.read_text())
    monkeypatch.chdir(tmp_path)
    resolved = resolve("org/model")
    assert resolved.kind == "file" and resolved.location == "org/model/config.json"


def test_hub_ids_only_import_the_hub_module(monkeypatch):
    called = []
    from kvcalc import hub

    monkeypatch.setattr(hub, "resolve_hub", lambda m, r=None: called.append((m, r)) or "hub")
    assert resolve("someorg/some-model@v2") == "hub"
    assert resolve("someorg/some-model", "v3") == "hub"
    assert called == [("someorg/some-model@v2", None), ("someorg/some-model", "v3")]


def test_unknown_name_suggests():
    with pytest.raises(ModelNotFoundError, match="did you mean"):
        resolve("llama-7c")


def test_revision_on_a_preset_names_the_hub_id():
    with pytest.raises(UsageError, match=r"use --model meta-llama/Llama-2-7b-hf@v2 to read"):
        resolve("llama-7b", "v2")
    with pytest.raises(UsageError, match=r"preset 'llama-2-7b' is pinned"):
        resolve("llama-7b@v2")


def test_revision_on_a_file_is_refused():
    with pytest.raises(UsageError, match="--revision applies to hub ids"):
        resolve(str(GPT2), "main")


def test_user_preset_overrides_builtin(folders):
    a, b, xdg = folders
    builtin = resolve("llama-2-7b")
    assert builtin.origin == "built-in" and builtin.provenance.startswith("built-in preset")
    save_user_preset("llama-2-7b", preset("llama-2-7b", 3))
    mine = resolve("llama-2-7b")
    assert mine.origin == "user" and mine.config["num_hidden_layers"] == 3
    assert mine.location == str(a / "llama-2-7b.yaml")
    assert mine.provenance == f"user preset {a / 'llama-2-7b.yaml'}"
    listed = [p for p in all_presets() if p.name == "llama-2-7b"]
    assert len(listed) == 1 and listed[0].origin == "user"
    # the hidden built-in preset's aliases lead to the user preset that replaces it
    assert find_preset("llama-7b").path == a / "llama-2-7b.yaml"


def test_first_user_folder_wins(folders):
    a, b, xdg = folders
    save_user_preset("tiny", preset("tiny", 1), directory=b)
    save_user_preset("tiny", preset("tiny", 2), directory=xdg)
    assert resolve("tiny").config["num_hidden_layers"] == 1
    save_user_preset("tiny", preset("tiny", 5), directory=a)
    assert resolve("tiny").config["num_hidden_layers"] == 5


def test_saved_preset_records_commit(folders):
    sha = "0123456789abcdef0123456789abcdef01234567"
    save_user_preset("pinned", preset("pinned", 2, hub_id="org/pinned",
                                      source=f"hub org/pinned@{sha} fetched 2026-01-01"))
    resolved = resolve("pinned")
    assert resolved.revision == sha
    assert resolved.provenance.endswith(f"hub id org/pinned@{sha[:12]}")


def test_save_is_atomic_and_refuses_to_overwrite(folders):
    a, _, _ = folders
    path = save_user_preset("tiny", preset("tiny", 1))
    assert path == a / "tiny.yaml"
    assert yaml.safe_load(path.read_text())["config"]["num_hidden_layers"] == 1
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o044  # readable like any other file (umask), not mkstemp's 0600
    with pytest.raises(UsageError, match="already exists: pass --force"):
        save_user_preset("tiny", preset("tiny", 2))
    assert yaml.safe_load(path.read_text())["config"]["num_hidden_layers"] == 1
    save_user_preset("tiny", preset("tiny", 2), force=True)
    assert yaml.safe_load(path.read_text())["config"]["num_hidden_layers"] == 2
    assert sorted(p.name for p in a.iterdir()) == ["tiny.yaml"]  # no temporary files left


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_interrupted_write_leaves_nothing(folders, monkeypatch, exc):
    a, _, _ = folders
    save_user_preset("keep", preset("keep", 1))
    before = (a / "keep.yaml").read_bytes()

    def boom(fd):
        raise exc

    monkeypatch.setattr(sources.os, "fsync", boom)
    expected = KeyboardInterrupt if exc is KeyboardInterrupt else ConfigError
    with pytest.raises(expected):
        save_user_preset("new", preset("new", 1))
    with pytest.raises(expected):
        save_user_preset("keep", preset("keep", 9), force=True)
    assert sorted(p.name for p in a.iterdir()) == ["keep.yaml"]
    assert (a / "keep.yaml").read_bytes() == before


@pytest.mark.parametrize("name", ["Has/Slash", "", "-dash", "x.yaml", "a b"])
def test_bad_preset_names(folders, name):
    with pytest.raises(UsageError, match="is not usable"):
        save_user_preset(name, preset("x", 1))


def test_malformed_user_preset_names_file_and_line(folders):
    a, _, _ = folders
    a.mkdir(parents=True)
    (a / "broken.yaml").write_text("name: broken\nconfig: [1, 2\n")
    # a bad user preset is skipped with a warning naming the file and line (issue 12)
    with pytest.warns(sources.PresetWarning, match=r"broken.yaml:\d+"):
        with pytest.raises(ModelNotFoundError):
            resolve("broken")
    assert resolve("llama-7b").name == "llama-2-7b"
