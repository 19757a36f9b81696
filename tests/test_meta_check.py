"""Every built-in preset against transformers itself, on the meta device (transformers >= 5).

A mismatch fails the build; presets transformers cannot build natively are listed with the
reason and must be exactly the known remote-code ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")

from kvcalc.cli import cli  # noqa: E402

#: presets whose model_type needs the repository's remote code (never run by kvcalc)
REMOTE_CODE_ONLY = {"internlm2.5-7b", "nemotron-super-49b"}


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5,
                    reason="the meta-device forward needs transformers 5")
def test_every_preset_matches_transformers_to_the_byte():
    result = CliRunner().invoke(cli, ["verify", "--device", "meta", "--all", "-f", "json"])
    assert result.exit_code == 0, result.output[-2000:]
    d = json.loads(result.stdout)
    mismatches = [r for r in d["rows"] if r["match"] is False]
    assert not mismatches
    assert set(d["not_built"]) == REMOTE_CODE_ONLY
    built = {r["model"] for r in d["rows"] if r["match"]}
    assert len(built) >= 55
    # windowed models are checked inside and beyond their largest window
    gemma = sorted(r["seq"] for r in d["rows"] if r["model"] == "gemma-3-27b")
    assert gemma[0] < 1024 < gemma[-1]


HF_CONFIGS = Path(__file__).parent / "fixtures" / "hf-configs"
EXTRA_CONFIGS = Path(__file__).parent / "fixtures" / "extra-configs"


def test_every_stored_hub_config_is_a_preset_so_the_check_above_covers_it():
    """The preset-wide check is the done-when of issue 6 for ../shared/hf-configs only if every
    stored config is a preset verbatim (fixtures mirror the shared folder)."""
    from kvcalc.sources import all_presets

    presets = {json.dumps(p.data["config"], sort_keys=True)
               for p in all_presets() if p.origin == "built-in"}
    files = sorted(HF_CONFIGS.glob("*.json")) + sorted(EXTRA_CONFIGS.glob("*.json"))
    assert len(files) >= 60
    missing = [f.name for f in files
               if json.dumps(json.loads(f.read_text()), sort_keys=True) not in presets]
    assert not missing


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5,
                    reason="the meta-device forward needs transformers 5")
def test_meta_check_of_a_config_path():
    path = HF_CONFIGS / "Qwen__Qwen3-Next-80B-A3B-Thinking.json"
    result = CliRunner().invoke(cli, ["verify", "--device", "meta", "-m", str(path), "--seq", "7",
                                      "-f", "json"])
    assert result.exit_code == 0, result.output[-2000:]
    row = json.loads(result.stdout)["rows"][0]
    # 12 full-attention layers x 2 kv heads x (256 + 256) x 2 B x 7 tokens + 36 Gated DeltaNet
    # states (conv 8192 x 4 bf16 + recurrent 32 x 128 x 128 fp32) = 77,856,768 B
    assert row["transformers_bytes"] == row["predicted_bytes"] == 12 * 2 * 512 * 2 * 7 + 77_856_768


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5,
                    reason="the meta-device forward needs transformers 5")
def test_layers_truncation_matches_on_meta():
    """--layers N truncates every per-layer list (Gemma 3n's activation_sparsity_pattern and
    layer_types, its shared-KV count) so transformers builds it and both sides agree."""
    result = CliRunner().invoke(cli, ["verify", "--device", "meta", "-m", "gemma-3n-e4b",
                                      "--layers", "10", "--seq", "600", "--jobs", "1",
                                      "-f", "json"])
    assert result.exit_code == 0, result.output[-2000:]
    row = json.loads(result.stdout)["rows"][0]
    assert row["match"] and row["transformers_bytes"] == row["predicted_bytes"] > 0


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5,
                    reason="the meta-device forward needs transformers 5")
@pytest.mark.parametrize("name, seq", [("deepseek-v3.2", 300), ("jamba-v0.1", 24),
                                       ("gemma-3n-e4b", 600), ("gpt-oss-20b", 200),
                                       ("nemotron-3-nano-30b", 24),
                                       # moe_layers lists layer indices (all 48): per-layer
                                       # membership, not the i-th entry, tells twins apart
                                       ("llama-4-scout", 8292)])
def test_layer_replay_gives_the_bytes_of_running_every_layer(name, seq):
    """Each distinct decoder layer runs once and its twins replay its cache calls: the cache
    must hold exactly what running every layer gives (MLA + indexer, Mamba, KV sharing,
    sliding/full alternation, Mamba2 + MoE)."""
    from kvcalc.arch import build_spec
    from kvcalc.model import load_spec
    from kvcalc.verify.build import build_random
    from kvcalc.verify.meta import LayerReplay, meta_forward_bytes

    raw = dict(load_spec(name, None)[0].config)
    spec = build_spec(raw, name)
    model = build_random(raw, device="meta", dtype=spec.dtype, name=name).model
    every = meta_forward_bytes(model, seq, every_layer=True)
    import torch

    with torch.inference_mode(), LayerReplay(model) as replay:
        out = model(input_ids=torch.zeros((1, seq), dtype=torch.long, device="meta"),
                    use_cache=True, logits_to_keep=1)
    from kvcalc.verify.cache import cache_bytes
    from kvcalc.verify.compat import output_cache

    assert cache_bytes(output_cache(out)).total == every > 0
    assert replay.replayed > 0 and replay.ran < len(replay.layers)
