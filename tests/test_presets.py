"""Every preset name and alias names exactly one model, and a Llama 3 alias is Llama 3."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import kvcalc
from kvcalc.sources import all_presets


def test_names_and_aliases_are_unique():
    names = Counter(n for p in all_presets() for n in (p.name, *p.aliases))
    assert [n for n, c in names.items() if c > 1] == []


def test_llama_3_is_not_llama_3_1():
    # same KV layout (8 KV heads x 128 x 2 B x 2 per layer), different context
    three, three_one = kvcalc.resolve("llama-3-70b"), kvcalc.resolve("llama-3.1-70b")
    assert three.spec.max_position_embeddings == 8192
    assert three_one.spec.max_position_embeddings == 131072
    assert (kvcalc.estimate("llama3-70b", seq=1).bytes_per_token
            == kvcalc.estimate("llama-3.1-70b", seq=1).bytes_per_token == 80 * 8 * 2 * 128 * 2)
    assert kvcalc.resolve("llama3-8b").name == "llama-3-8b"


def test_compiled_presets_are_current_and_equal_the_yaml():
    """presets/<kind>/_compiled.json (tools/gen_presets.py) holds exactly what the YAML files
    parse to: kvcalc reads it instead of the YAML on every command."""
    import subprocess
    import sys

    from kvcalc.sources import builtin_preset_dir, load_yaml_file, preset_documents

    root = Path(__file__).resolve().parents[1]
    check = subprocess.run([sys.executable, str(root / "tools" / "gen_presets.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    for kind in ("models", "gpus"):
        documents = preset_documents(builtin_preset_dir(kind))
        assert len(documents) > 10
        assert documents == [(path, load_yaml_file(path)) for path, _ in documents]


def test_a_stale_compiled_file_falls_back_to_the_yaml(tmp_path):
    """A preset edited after compiling (its size changed) is read from its YAML, not the JSON."""
    import shutil

    from kvcalc.sources import COMPILED_PRESETS, builtin_preset_dir, compile_presets, preset_documents

    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("llama-7b.yaml", "qwen3-8b.yaml"):
        src = builtin_preset_dir() / name
        if not src.exists():
            src = next(builtin_preset_dir().glob("*.yaml"))
        shutil.copy(src, folder / src.name)
    (folder / COMPILED_PRESETS).write_text(json.dumps(compile_presets(folder)))
    path = sorted(folder.glob("*.yaml"))[0]
    assert preset_documents(folder)[0][1]["config"] == preset_documents(folder, "user")[0][1]["config"]
    path.write_text(path.read_text() + "\nnotes: edited after compiling\n")
    assert preset_documents(folder)[0][1]["notes"] == "edited after compiling"
