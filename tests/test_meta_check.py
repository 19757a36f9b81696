"""Every built-in preset against transformers itself, on the meta device (transformers >= 5).

A mismatch fails the build; presets transformers cannot build natively are listed with the
reason and must be exactly the known remote-code ones."""

from __future__ import annotations

import json

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
