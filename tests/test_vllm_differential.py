"""Differential test: `kvcalc plan --engine vllm` against vLLM's own capacity code.

vLLM runs in a separate environment per release (.vllm-venv-<version>, built by
tests/vllm_diff/make_venv.sh) on a simulated H100 (docs/vllm-check.md says what is faked: the
GPU queries only). The vLLM side runs once per release for the whole grid - every built-in
preset that vLLM serves x KV budget x max length x TP x KV dtype - and each preset's cases are
compared with kvcalc's JSON output. A failure lists every disagreeing case with vLLM's and
kvcalc's figures.

Which releases: ``KVCALC_VLLM_DIFF`` (comma-separated; default ``0.34.0``, kvcalc's default
band). CI also runs ``0.33.0`` (asked of kvcalc with ``--vllm-version 0.33``) and ``latest``, the
drift sentinel: the newest vLLM release on the registry against kvcalc's *default* band, so a
release that moves any figure fails CI with one line naming the release and the first case.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "vllm_diff"))
import compare  # noqa: E402

PRESETS = sorted(compare.preset_configs())
RELEASES = [v.strip() for v in os.environ.get("KVCALC_VLLM_DIFF",
                                              compare.DEFAULT_VLLM).split(",") if v.strip()]

#: Presets not checked, with the reason in the vLLM-side output: configs whose class is
#: remote code in the model repository (InternLM2, DeciLM), which vLLM cannot read offline
#: either. Any other skip (vllm_side.SKIPPED, an unserved architecture) is a failure.
EXPECTED_SKIPS = {"internlm2.5-7b", "nemotron-super-49b"}


def _installed(release: str) -> str | None:
    """The vLLM version in the release's environment, None when it is not built."""
    stamp = os.path.join(compare.ROOT, f".vllm-venv-{release}", ".kvcalc-vllm-venv")
    if not os.path.exists(compare.vllm_python(release)) or not os.path.exists(stamp):
        return None
    with open(stamp) as f:
        return f.read().split()[0].split("==")[-1]


@pytest.fixture(scope="session", params=RELEASES)
def vllm_result(request):
    release = request.param
    if _installed(release) is None:
        pytest.skip(f"vLLM {release} environment absent ({compare.vllm_python(release)}): "
                    f"build it with VLLM_VERSION={release} tests/vllm_diff/make_venv.sh")
    return compare.run_both(compare.preset_configs(), version=release)


def test_harness_ran_every_preset(vllm_result):
    assert not vllm_result["harness_errors"], compare.summary(vllm_result, 0)
    checked = {c["model"] for c in vllm_result["cases"]}
    skipped = set(vllm_result["skipped"])
    assert checked | skipped == set(PRESETS)
    assert skipped == EXPECTED_SKIPS, "\n".join(
        f"{m}: {why}" for m, why in sorted(vllm_result["skipped"].items()))


def test_newest_release_moves_no_figure(vllm_result):
    """The drift sentinel's one line: the release and the first case whose figures moved."""
    if vllm_result["band"] is not None:
        pytest.skip("a pinned release (checked per preset below)")
    bad = [c for c in vllm_result["cases"] if c["diffs"]]
    assert not bad, (f"vLLM {vllm_result['vllm_version']} (newest release) moves kvcalc's "
                     f"default-band figures in {len(bad)} of {len(vllm_result['cases'])} "
                     f"cases; first: {compare.describe(bad[0])}")


@pytest.mark.parametrize("model", PRESETS)
def test_kvcalc_matches_vllm(vllm_result, model):
    version = vllm_result["vllm_version"]
    if model in vllm_result["skipped"]:
        pytest.skip(f"not checked against vLLM {version}: {vllm_result['skipped'][model]}")
    cases = [c for c in vllm_result["cases"] if c["model"] == model]
    assert cases, f"no case for {model}"
    bad = [c for c in cases if c["diffs"]]
    if bad:
        fields = Counter(f for c in bad for f in c["diffs"])
        lines = [f"{model} ({cases[0]['family']}): {len(bad)} of {len(cases)} cases differ "
                 f"from vLLM {version} (vLLM backends: {cases[0]['vllm_backends']}); fields: "
                 + ", ".join(f"{f} x{n}" for f, n in sorted(fields.items()))]
        lines += ["  " + compare.describe(c) for c in bad]
        pytest.fail("\n".join(lines), pytrace=False)


def test_release_is_the_one_asked_for(vllm_result):
    want = vllm_result["vllm_version"]
    assert want and (vllm_result["band"] is None
                     or json.dumps(want).strip('"').startswith(vllm_result["band"]))


# ------------------------------------------------------- the defaults that make the budget

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "vllm_diff"))
import defaults  # noqa: E402


@pytest.fixture(scope="session", params=RELEASES)
def vllm_defaults(request):
    release = request.param
    if _installed(release) is None:
        pytest.skip(f"vLLM {release} environment absent")
    return defaults.run(release)


def test_defaults_and_budget_match_vllm(vllm_defaults):
    """gpu_memory_utilization, block size, max_num_seqs, max_num_batched_tokens, async
    scheduling, prefix caching, the hybrid manager, the CUDA-graph estimate, the tokens in flight
    and the KV budget of `vllm serve MODEL` on H100, H200, A100-80GB, B200, L4 and RTX 4090:
    vLLM's own EngineArgs / request_memory / measure_kv_cache_bytes against kvcalc's plan."""
    cases = vllm_defaults["cases"]
    assert len(cases) == len(defaults.PRESETS) * len(defaults.GPUS)
    bad = [c for c in cases if c["diffs"]]
    assert not bad, (f"vLLM {vllm_defaults['vllm_version']}: {len(bad)} of {len(cases)} "
                     "(preset, GPU) defaults differ:\n"
                     + "\n".join("  " + defaults.describe(c) for c in bad))


# ------------------------------------------------ the attention backend and its refusals

import backends  # noqa: E402


@pytest.fixture(scope="session", params=RELEASES)
def vllm_backends(request):
    release = request.param
    if _installed(release) is None:
        pytest.skip(f"vLLM {release} environment absent")
    return backends.run(release)


def test_attention_backends_match_vllm(vllm_backends):
    """The attention backend vLLM's selector picks for each preset (head sizes 64-256, sliding
    windows, gpt-oss's sinks, dense and sparse MLA) on V100, T4, A100, A10, L40S, RTX 4090, H100,
    B200, B300, RTX 5090 and GB10 for every --kv-cache-dtype (auto, bfloat16, float16, fp8,
    fp8_e4m3, fp8_e5m2), at TP 1 and 8 for DeepSeek V3 / V3.2 -- or vLLM's refusal, word for
    word: kvcalc's attention_backends and its plan (exit 3, the same message, the block
    size) must agree on every case."""
    cases = vllm_backends["cases"]
    assert len(cases) == len(backends.cases())
    refused = [c for c in cases if "refused" in c["vllm"]]
    assert refused and len(refused) < len(cases)
    bad = [c for c in cases if c["diffs"]]
    assert not bad, (f"vLLM {vllm_backends['vllm_version']}: {len(bad)} of {len(cases)} "
                     "(preset, GPU, KV dtype, TP) cases differ:\n"
                     + "\n".join("  " + backends.describe(c) for c in bad))
