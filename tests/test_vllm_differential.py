"""Differential test: `kvcalc plan --engine vllm` against vLLM 0.33.0's own capacity code.

vLLM runs in a separate environment (.vllm-venv, built by tests/vllm_diff/make_venv.sh) on a
simulated H100 (docs/vllm-check.md says what is faked: the GPU queries only). The vLLM side
runs once per session for the whole grid - every built-in preset that vLLM serves x KV budget
x max length x TP x KV dtype - and each preset's cases are compared with kvcalc's JSON output.
A failure lists every disagreeing case with vLLM's and kvcalc's figures.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "vllm_diff"))
import compare  # noqa: E402

PRESETS = sorted(compare.preset_configs())

#: Presets not checked, with the reason in the vLLM-side output: configs whose class is
#: remote code in the model repository (InternLM2, DeciLM), which vLLM cannot read offline
#: either. Any other skip (vllm_side.SKIPPED, an unserved architecture) is a failure.
EXPECTED_SKIPS = {"internlm2.5-7b", "nemotron-super-49b"}

pytestmark = pytest.mark.skipif(
    not os.path.exists(compare.vllm_python()),
    reason=f"vLLM 0.33.0 environment absent ({compare.vllm_python()}): "
           "build it with tests/vllm_diff/make_venv.sh",
)


@pytest.fixture(scope="session")
def vllm_result():
    return compare.run_both(compare.preset_configs())


def test_harness_ran_every_preset(vllm_result):
    assert not vllm_result["harness_errors"], compare.summary(vllm_result, 0)
    checked = {c["model"] for c in vllm_result["cases"]}
    skipped = set(vllm_result["skipped"])
    assert checked | skipped == set(PRESETS)
    assert skipped == EXPECTED_SKIPS, "\n".join(
        f"{m}: {why}" for m, why in sorted(vllm_result["skipped"].items()))


@pytest.mark.parametrize("model", PRESETS)
def test_kvcalc_matches_vllm(vllm_result, model):
    if model in vllm_result["skipped"]:
        pytest.skip(f"not checked against vLLM 0.33.0: {vllm_result['skipped'][model]}")
    cases = [c for c in vllm_result["cases"] if c["model"] == model]
    assert cases, f"no case for {model}"
    bad = [c for c in cases if c["diffs"]]
    if bad:
        fields = Counter(f for c in bad for f in c["diffs"])
        lines = [f"{model} ({cases[0]['family']}): {len(bad)} of {len(cases)} cases differ "
                 f"from vLLM 0.33.0 (vLLM backends: {cases[0]['vllm_backends']}); fields: "
                 + ", ".join(f"{f} x{n}" for f, n in sorted(fields.items()))]
        lines += ["  " + compare.describe(c) for c in bad]
        pytest.fail("\n".join(lines), pytrace=False)
