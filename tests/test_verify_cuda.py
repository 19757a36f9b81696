"""The CUDA measuring path, driven on the CPU through a stand-in for ``torch.cuda``.

The stand-in's allocator holds a fixed baseline plus the storages of every cache ``generate``
returned that is still alive (times ``overhead``), so the verdict logic, the slope fit, the peak bookkeeping and the
order of synchronize / reset / empty_cache calls are exercised without a GPU. The real GPU
figures are not measured here (docs/verification.md, "CUDA")."""

from __future__ import annotations

import json
import weakref
from collections import OrderedDict
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from kvcalc.cli import cli  # noqa: E402

TINY = Path(__file__).parent / "fixtures" / "tiny-configs"
BASE = 50_000_000
ACTIVATIONS = 3_000_000


class FakeCuda:
    def __init__(self, overhead: float = 1.0):
        self.overhead = overhead
        self.calls: list[str] = []
        self.live = weakref.WeakSet()  # every cache generate returned, while it is alive

    def _caches(self) -> int:
        from kvcalc.verify.cache import cache_bytes

        return int(sum(cache_bytes(c).held_bytes or 0 for c in self.live) * self.overhead)

    def synchronize(self, device=None):
        self.calls.append("synchronize")

    def empty_cache(self):
        self.calls.append("empty_cache")

    def reset_peak_memory_stats(self, device=None):
        self.calls.append("reset_peak_memory_stats")

    def memory_allocated(self, device=None):
        return BASE + self._caches()

    def max_memory_allocated(self, device=None):
        return BASE + ACTIVATIONS + self._caches()


class PastKeyValuesOutput(OrderedDict):
    """``generate``'s output shaped as transformers <= 5.23 shaped it: the cache under
    ``past_key_values``, kept both as a dict item and as an attribute (as ``ModelOutput`` does);
    from 5.24 the field is ``cache``."""

    def __init__(self, sequences, past_key_values):
        super().__init__(sequences=sequences, past_key_values=past_key_values)
        self.sequences = sequences
        self.past_key_values = past_key_values


def as_installed(out):
    return out


def as_past_key_values(out):
    from kvcalc.verify.compat import output_cache

    return PastKeyValuesOutput(out["sequences"], output_cache(out))


def _run(monkeypatch, fake, *extra, shape=as_installed):
    from kvcalc.verify import measure
    from kvcalc.verify.compat import output_cache

    real = measure.generate_once

    def generate_once(*args, **kwargs):
        out = shape(real(*args, **kwargs))
        if output_cache(out) is not None:
            fake.live.add(output_cache(out))
        return out

    monkeypatch.setattr(measure, "generate_once", generate_once)
    monkeypatch.setattr(measure, "make_meter", lambda device: measure.CudaMeter(device, api=fake))
    return CliRunner().invoke(cli, ["verify", "-m", str(TINY / "llama-gqa.json"), "--device",
                                    "cpu", "--prompt-len", "4", "--new-tokens", "1,5,9",
                                    "--repeats", "1", "--no-without-cache", "--threads", "1",
                                    *extra])


@pytest.mark.parametrize("shape", [as_installed, as_past_key_values])
def test_cuda_slope_matches_prediction(monkeypatch, shape):
    """The allocator drop when the cache is released is the cache, whatever the output calls
    it (``cache`` from transformers 5.24, ``past_key_values`` before)."""
    fake = FakeCuda()
    result = _run(monkeypatch, fake, "-f", "json", shape=shape)
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    s = d["slope"]
    # 2 layers x 2 kv heads x (32 + 32) dims x 4 B = 1,024 B per cached token
    assert s["predicted"] == pytest.approx(1024) and s["measured"] == pytest.approx(1024)
    assert s["passed"] and d["passed"]
    for r in d["runs"]:
        assert r["cache_allocated_bytes"] == r["cache_bytes"] == 1024 * (4 + r["new_tokens"] - 1)
        assert r["peak_bytes"] == ACTIVATIONS + r["cache_bytes"]
    # peak statistics reset and the allocator emptied before every run, counters synchronised
    assert fake.calls.count("reset_peak_memory_stats") == 3
    assert fake.calls.count("empty_cache") == 3
    assert "synchronize" in fake.calls


def test_cuda_slope_outside_tolerance_fails(monkeypatch):
    result = _run(monkeypatch, FakeCuda(overhead=1.2))
    assert result.exit_code == 4, result.output
    assert "+20.00%" in result.stdout and "verdict: FAILED" in result.stdout
    ok = _run(monkeypatch, FakeCuda(overhead=1.2), "--slope-tolerance", "25")
    assert ok.exit_code == 0, ok.output


def test_auto_falls_back_to_cpu_with_a_notice():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = CliRunner().invoke(cli, ["verify", "-m", str(TINY / "gpt2.json"), "--device", "auto",
                                      "--prompt-len", "4", "--new-tokens", "2", "--repeats", "1",
                                      "--no-without-cache", "--threads", "1", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert "no CUDA device: verifying on the CPU" in result.stderr
    assert json.loads(result.stdout)["device"] == "cpu"
