"""The step-time coefficients fitted on the measured runs nearest a configuration (a local
calibration).

One set of coefficients per engine (:func:`.timing.calibrations`) leaves a median 26% error
in the time to first token on measured runs the fit never saw: what a step costs beyond the
terms of the formula (kernels chosen per GPU and dtype, the engine's build, its frontend)
varies from one GPU, model and quantization to the next in ways no shared coefficient follows.
So kvcalc fits the coefficients again for each configuration it simulates, weighting every
measured run by its likeness to that configuration -- locally weighted regression (Cleveland
and Devlin 1988, "Locally weighted regression", JASA 83:596) of the same formula:

    weight = exp(-( |ln C / C'| / h_C + |ln isl / isl'| / h_isl + |ln osl / osl'| / h_osl
                   + |log2 tp / tp'| / h_tp + [GPU differs] h_gpu + [model differs] h_model
                   + [weights dtype differs] h_dtype )) / max + floor

(C: the closed loop's concurrency, isl / osl: the mean prompt and output lengths; a figure the
workload does not have -- an open loop has no C -- weighs every run alike). Every run keeps at
least ``floor`` against the nearest run's 1, so that a configuration far from all of them (a
GPU or model never measured) gets the engine-wide fit back, and one near a few gets theirs.
The fit itself is :func:`fit`: non-negative coefficients minimising the weighted absolute log
errors of TTFT and TPOT, redescending beyond a factor ``e^trim``.

The runs (their design columns: each coefficient's modelled TTFT and TPOT at 1, the others 0)
and the kernel's widths are written by ``tools/fit_timing.py --write`` into
``calibration_runs.json`` (the fit rows only: remainder 0 of the split); the widths were
chosen by 5-fold cross-validation on those rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

RUNS_FILE = "calibration_runs.json"
#: IRLS: iterations, those that scale residuals by the measured figure alone, and the
#: smallest |log error| a weight is computed from; the redescending part of the loss: from
#: iteration TRIM_FROM on, a residual whose |log error| exceeds ``trim`` no longer pulls
IRLS_ITERATIONS = 60
IRLS_WARMUP = 4
IRLS_FLOOR = 0.01
TRIM_FROM = 20


@dataclass(frozen=True)
class Query:
    """What the kernel compares: the GPU (catalog name), the model (:func:`model_key`), the
    weights dtype, tensor parallelism, and the workload (None: not known, weighs nothing)."""

    gpu: str
    model: str
    weights_dtype: str
    tp: int
    concurrency: float | None = None
    isl: float | None = None
    osl: float | None = None


def model_key(spec) -> str:
    """A model's identity for the kernel: its architecture's shape (checkpoints of one model
    -- DeepSeek-V3 and R1, an FP8 or NVFP4 export -- share it)."""
    return (f"{spec.model_type}/{len(spec.layers)}x{spec.hidden_size}/"
            f"{spec.num_attention_heads}h/{spec.vocab_size}")


def kernel(q: Query, run: dict, widths: dict) -> float:
    """The unnormalised likeness ``exp(-distance)`` of measured ``run`` to ``q`` (module
    docstring)."""
    d = 0.0
    for key, field in (("C", "concurrency"), ("isl", "isl"), ("osl", "osl")):
        mine = getattr(q, field)
        if mine:
            d += abs(math.log(mine / run[field])) / widths[key]
    d += abs(math.log2(q.tp / run["tp"])) / widths["tp"]
    d += ((q.gpu != run["gpu"]) * widths["gpu"] + (q.model != run["model"]) * widths["model"]
          + (q.weights_dtype != run["weights_dtype"]) * widths["dtype"])
    return math.exp(-d)


def weights(q: Query, runs: list[dict], widths: dict, floor: float) -> list[float]:
    """Every run's weight for ``q``: its likeness over the nearest one's, plus ``floor``."""
    k = [kernel(q, r, widths) for r in runs]
    top = max(k)
    return [v / top + floor for v in k]


def nnls(A, b, iterations: int = 200):
    """min ||A x - b|| subject to x >= 0 (Lawson and Hanson's active-set method)."""
    import numpy as np

    n = A.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = A.T @ (b - A @ x)
    for _ in range(iterations):
        if passive.all() or (w[~passive] <= 1e-12).all():
            break
        j = np.argmax(np.where(passive, -np.inf, w))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
        w = A.T @ (b - A @ x)
    return x


def fit(A, m, w0, trim: float | None = None):
    """Coefficients (>= 0) minimising ``sum w0 x |log(A x / m)|`` (``A``: one row per measured
    figure, its columns the figure at each coefficient 1; ``m``: the measured figures).

    The error is taken in log space so that a figure twice too long and one half as long
    weigh the same. The model is linear in the coefficients, the logarithm is not:
    iteratively reweighted non-negative least squares on the residuals
    ``(modelled - measured) / sqrt(modelled x measured)`` -- ``2 sinh(log error / 2)``, the
    log error to first order -- each weighted by ``w0 / max(|log error|, IRLS_FLOOR)`` (the
    weighted squares then sum to the absolute log errors); the first iterations take the
    measured figure alone as the scale. With ``trim`` the loss is redescending: from iteration
    :data:`TRIM_FROM` on, residuals beyond ``trim`` in |log error| weigh nothing (1e-6 keeps
    the system well posed), so that runs no step-time model explains (a TTFT 10-20 times that
    of the same configuration in another campaign) do not pull the fit."""
    import numpy as np

    A, m, w0 = np.asarray(A, float), np.asarray(m, float), np.asarray(w0, float)
    # scale the columns to comparable magnitudes (the solution is scaled back)
    scale = np.maximum(np.abs(A / m[:, None]).max(axis=0), 1e-30)
    As = A / scale
    scale_of = m.copy()
    wt = w0.copy()
    x = np.zeros(A.shape[1])
    for i in range(IRLS_ITERATIONS):
        sw = np.sqrt(wt) / scale_of
        x = nnls(As * sw[:, None], m * sw)
        pred = np.maximum(As @ x, 1e-12)
        if i >= IRLS_WARMUP:
            scale_of = np.sqrt(pred * m)
        err = np.abs(np.log(pred / m))
        wt = w0 / np.maximum(err, IRLS_FLOOR)
        if trim is not None and i >= TRIM_FROM:
            wt = np.where(err > trim, 1e-6 * w0, wt)
    return x / scale


def system(runs: list[dict], coefficients: tuple[str, ...], tpot_weight: float,
           run_weights: list[float] | None = None):
    """``fit``'s (A, m, w0) for ``runs``: each run's TTFT row and TPOT row (weighted
    ``tpot_weight``), times its weight."""
    A, m, w0 = [], [], []
    for i, r in enumerate(runs):
        k = 1.0 if run_weights is None else run_weights[i]
        cols = r["columns"]
        A.append([cols[c][0] for c in coefficients])
        m.append(r["ttft_s"])
        w0.append(k)
        A.append([cols[c][1] for c in coefficients])
        m.append(r["tpot_s"])
        w0.append(tpot_weight * k)
    return A, m, w0


@lru_cache(maxsize=1)
def measured_runs() -> dict:
    """``calibration_runs.json``: the calibration's name, the kernel, the runs by engine."""
    return json.loads(resources.files("kvcalc.simulation").joinpath(RUNS_FILE)
                      .read_text(encoding="utf-8"))


def local_fit(runs: list[dict], q: Query, settings: dict, coefficients: tuple[str, ...]):
    """(coefficients fitted for ``q`` on ``runs`` with ``settings`` -- the kernel's widths,
    floor, trim and TPOT weight --, the effective number of runs ``(sum w)^2 / sum w^2``)."""
    w = weights(q, runs, settings["widths"], settings["floor"])
    x = fit(*system(runs, coefficients, settings["tpot_weight"], w), settings["trim"])
    return x, sum(w) ** 2 / sum(v * v for v in w)


@lru_cache(maxsize=256)
def local_calibration(engine: str, q: Query):
    """The :class:`.timing.Calibration` of ``engine`` fitted on its measured runs nearest
    ``q``; None when the engine has no measured runs."""
    from .timing import Calibration

    data = measured_runs()
    runs = data["engines"].get(engine)
    if not runs:
        return None
    names = Calibration.coefficient_names()
    x, n_eff = local_fit(runs, q, data["settings"], names)
    return Calibration(name=engine, source=(
        f"{data['name']} ({engine}, fitted on its measured runs nearest {q.gpu} tp {q.tp} "
        f"{q.weights_dtype}: {n_eff:.1f} effective of {len(runs)})"),
        **dict(zip(names, map(float, x))))
