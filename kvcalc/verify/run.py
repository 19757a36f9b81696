"""Orchestrate one ``kvcalc verify`` on CPU or CUDA: build, measure, predict, compare."""

from __future__ import annotations

from typing import Any

import sys

import click

from ..arch import build_spec, truncate_config
from ..errors import UsageError
from ..layout import build_layout
from ..model import load_spec
from .backend import versions
from .build import build_from_weights, build_random, weights_config
from .measure import fit_slope, measure


def run_verify(*, model: str | None, revision: str | None, device: str, dtype: str | None,
               prompt_len: int, new_tokens: list[int], repeats: int, layers: int | None,
               weights: str | None, with_and_without: bool, cache_tolerance: float,
               slope_tolerance: float) -> dict[str, Any]:
    import torch

    if dtype is None:
        dtype = "bf16" if device.startswith("cuda") else "fp32"
    name = model or str(weights)
    if weights:
        built = build_from_weights(weights, device=device, dtype=dtype, layers=layers, name=name)
        raw = weights_config(weights) or built.raw_config
        if layers and weights_config(weights):
            raw = truncate_config(raw, layers)
    else:
        resolved, _ = load_spec(model, revision)
        name = resolved.name
        raw = dict(resolved.config)
        if layers:
            raw = truncate_config(raw, layers)
        built = build_random(raw, device=device, dtype=dtype, name=name)
    spec = build_spec(raw, name)
    hf_version = versions()["transformers"]
    layout = build_layout(spec, "hf", built.dtype, hf_version=hf_version)
    predicted = {g: layout.bytes_per_sequence(prompt_len + g - 1) for g in new_tokens}

    err = sys.stderr
    total = len(new_tokens) * (2 if with_and_without else 1)
    done = [0]

    def progress(label: str) -> None:
        done[0] += 1
        click.echo(f"[{done[0]}/{total}] {label}", err=True, file=err)

    interrupted = False
    try:
        runs = measure(built.model, device=device, vocab=built.vocab_size, prompt_len=prompt_len,
                       new_tokens=new_tokens, repeats=repeats,
                       with_and_without=with_and_without, progress=progress)
    except KeyboardInterrupt as exc:
        runs = getattr(exc, "partial", [])
        interrupted = True
        if not runs:
            raise UsageError("interrupted before any run finished") from None

    cached = [r for r in runs if r.use_cache and r.cache_bytes is not None]
    largest = max(cached, key=lambda r: r.new_tokens) if cached else None
    pred_largest = predicted[largest.new_tokens] if largest else None
    meas_largest = largest.cache_bytes if largest else None
    error_pct = (100.0 * (meas_largest - pred_largest) / pred_largest
                 if largest and pred_largest else 0.0)
    cache_ok = all(abs(r.cache_bytes - predicted[r.new_tokens])
                   <= cache_tolerance / 100 * predicted[r.new_tokens] for r in cached)
    slope = None
    if device.startswith("cuda") and len(cached) >= 2:
        xs = [prompt_len + r.new_tokens - 1 for r in cached]
        measured_slope = fit_slope(xs, [r.peak_bytes for r in cached])
        predicted_slope = fit_slope(xs, [predicted[r.new_tokens] for r in cached])
        if measured_slope is not None and predicted_slope:
            slope_err = 100 * (measured_slope - predicted_slope) / predicted_slope
            slope = {"measured": measured_slope, "predicted": predicted_slope,
                     "error_pct": slope_err, "tolerance_pct": slope_tolerance,
                     "passed": abs(slope_err) <= slope_tolerance}
    passed = bool(cached) and cache_ok and (slope is None or slope["passed"])
    device_name = (torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU")
    return {
        "device": device,
        "device_name": device_name,
        "model": name,
        "dtype": built.dtype,
        "weights": built.weights,
        "parameters": built.num_parameters,
        "layers": layers,
        "prompt_len": prompt_len,
        "repeats": repeats,
        "versions": versions(),
        "runs": [r.record() for r in runs],
        "predicted_by_new_tokens": {str(g): b for g, b in predicted.items()},
        "predicted_cache_bytes": pred_largest,
        "measured_cache_bytes": meas_largest,
        "error_pct": error_pct,
        "slope": slope,
        "peak_note": ("CUDA max_memory_allocated during generate minus the allocation after the "
                      "weights (includes activations)" if device.startswith("cuda") else
                      "growth of the process's peak RSS (best effort; the high-water mark never "
                      "falls, so later runs can read 0)"),
        "passed": passed,
        "interrupted": interrupted,
    }
