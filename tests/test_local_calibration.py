"""The local fit of the step-time coefficients (kvcalc/simulation/local.py): the measured runs
nearest a configuration weigh most; far from all of them it is the engine-wide fit."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from click.testing import CliRunner

from kvcalc.cli import cli
from kvcalc.model import load_spec
from kvcalc.simulation import local
from kvcalc.simulation.timing import Calibration, calibrations

NAMES = Calibration.coefficient_names()
WIDTHS = {"C": 1.0, "isl": 1.0, "osl": 1.0, "tp": 1.0, "gpu": 2.0, "model": 2.0, "dtype": 1.0}
RUN = {"gpu": "h100-sxm", "model": "llama/32x4096/32h/128256", "weights_dtype": "fp8", "tp": 2,
       "concurrency": 16, "isl": 1024, "osl": 512}


def test_model_key_is_the_architecture_not_the_name():
    key = local.model_key(load_spec("deepseek-r1")[1])
    assert key == local.model_key(load_spec("deepseek-v3")[1]) == "deepseek_v3/61x7168/128h/129280"
    assert local.model_key(load_spec("llama-3.1-8b")[1]) == RUN["model"]
    assert local.model_key(load_spec("llama-3.1-70b")[1]) != RUN["model"]


def test_kernel_by_hand():
    same = local.Query(gpu="h100-sxm", model=RUN["model"], weights_dtype="fp8", tp=2,
                       concurrency=16, isl=1024, osl=512)
    assert local.kernel(same, RUN, WIDTHS) == 1.0
    # 4x the concurrency (ln 4), twice the tp (log2 2 = 1), another GPU (2): e^-(1.386 + 1 + 2)
    other = local.Query(gpu="b200", model=RUN["model"], weights_dtype="fp8", tp=4,
                        concurrency=64, isl=1024, osl=512)
    assert local.kernel(other, RUN, WIDTHS) == pytest.approx(math.exp(-(math.log(4) + 1 + 2)))
    # what the workload does not say weighs nothing: an open loop has no concurrency
    open_loop = local.Query(gpu="h100-sxm", model=RUN["model"], weights_dtype="bf16", tp=2)
    assert local.kernel(open_loop, RUN, WIDTHS) == pytest.approx(math.exp(-1.0))


def test_weights_are_relative_to_the_nearest_run_plus_the_floor():
    runs = [RUN, {**RUN, "gpu": "b200"}, {**RUN, "weights_dtype": "bf16", "tp": 8}]
    q = local.Query(gpu="h100-sxm", model=RUN["model"], weights_dtype="fp8", tp=2,
                    concurrency=16, isl=1024, osl=512)
    w = local.weights(q, runs, WIDTHS, 0.002)
    assert w == pytest.approx([1.002, math.exp(-2) + 0.002, math.exp(-3) + 0.002])


def test_far_from_every_run_the_local_fit_is_the_engine_wide_fit():
    """A GPU, model and dtype no run measured, no workload, and (a kernel blind to tp) every run
    at the same distance: every run weighs alike, and the fit is calibration.json's
    engine-wide coefficients. With the real kernel, tp still tells the runs apart."""
    data = local.measured_runs()
    q = local.Query(gpu="a100-sxm", model="mistral/32x4096/32h/32768", weights_dtype="int4",
                    tp=1)
    blind = {**data["settings"], "widths": {**data["settings"]["widths"], "tp": 1e12}}
    for engine in ("vllm", "trtllm"):
        runs = data["engines"][engine]
        assert local.weights(q, runs, blind["widths"], blind["floor"]) == pytest.approx(
            [1.002] * len(runs), rel=1e-9)
        x, n_eff = local.local_fit(runs, q, blind, NAMES)
        assert n_eff == pytest.approx(len(runs))
        wide = calibrations()[engine]
        for name, value in zip(NAMES, x):
            assert value == pytest.approx(getattr(wide, name), rel=1e-6, abs=1e-12), name
        cal = local.local_calibration(engine, q)
        assert cal.name == engine and "nearest a100-sxm tp 1 int4" in cal.source
        assert cal != local.local_calibration(engine, local.Query(**{**q.__dict__, "tp": 8}))
    assert local.local_calibration("llamacpp", q) is None


def test_local_fit_beats_the_engine_wide_fit_on_its_own_runs():
    """On measured runs of vLLM (each left out of its own fit), the local fit's TTFT and
    TPOT errors are below the engine-wide coefficients' (medians over 16 runs)."""
    data = local.measured_runs()
    runs = data["engines"]["vllm"]
    wide = calibrations()["vllm"]
    local_err, wide_err = [], []
    for r in runs[::len(runs) // 16][:16]:
        q = local.Query(**{k: r[k] for k in ("gpu", "model", "weights_dtype", "tp",
                                             "concurrency", "isl", "osl")})
        x, n_eff = local.local_fit([o for o in runs if o["id"] != r["id"]], q,
                                   data["settings"], NAMES)
        assert 1 <= n_eff < len(runs)
        for coefs, out in ((dict(zip(NAMES, x)), local_err),
                           ({k: getattr(wide, k) for k in NAMES}, wide_err)):
            ttft = sum(coefs[k] * r["columns"][k][0] for k in NAMES)
            tpot = sum(coefs[k] * r["columns"][k][1] for k in NAMES)
            out.append(abs(math.log(ttft / r["ttft_s"])) + abs(math.log(tpot / r["tpot_s"])))
    assert statistics.median(local_err) < statistics.median(wide_err)


def test_the_runs_file_holds_fit_rows_only():
    from kvcalc.simulation import silicon

    data = local.measured_runs()
    ids = [r["id"] for runs in data["engines"].values() for r in runs]
    assert len(ids) == len(set(ids)) > 500
    assert all(silicon.split_of(i) == silicon.FIT for i in ids)
    assert set(data["settings"]) == {"widths", "floor", "trim", "tpot_weight"}


def test_simulate_names_the_local_fit():
    args = ["simulate", "--model", "llama-3.1-70b", "--gpu", "h100", "--tp", "4",
            "--concurrency", "8", "--input-len", "1024", "--output-len", "256",
            "--requests", "40", "--allocator", "paged"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "fitted on its measured runs nearest h100-sxm tp 4 bf16" in r.output
    r = CliRunner().invoke(cli, [*args, "--format", "json"])
    rec = json.loads(r.output)
    assert rec["calibration"] == "vllm"
    assert "effective of" in rec["calibration_source"]
    # a fixed step time has no calibration
    r = CliRunner().invoke(cli, [*args, "--format", "json", "--step-time", "0.02"])
    rec = json.loads(r.output)
    assert rec["calibration"] is None and rec["calibration_source"] is None
