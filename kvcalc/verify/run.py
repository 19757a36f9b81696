"""Orchestrate one ``kvcalc verify`` on CPU or CUDA: build, measure, predict, compare."""

from __future__ import annotations

from typing import Any

import sys
from pathlib import Path

import click

from ..arch import build_spec, truncate_config
from ..engines import build_layout
from ..model import load_spec
from ..render import printable
from .backend import versions
from .build import build_from_weights, build_random, weights_config
from .measure import OutOfMemory, fit_slope, measure


def run_verify(*, model: str | None, revision: str | None, device: str, dtype: str | None,
               prompt_len: int, new_tokens: list[int], repeats: int, layers: int | None,
               weights: str | None, with_and_without: bool, cache_tolerance: float,
               slope_tolerance: float) -> dict[str, Any]:
    import torch

    if dtype is None:
        dtype = "bf16" if device.startswith("cuda") else "fp32"
    name = model or Path(str(weights)).name
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
        if device == "cpu":
            check_memory(build_spec(raw, name), dtype, layers)
        built = build_random(raw, device=device, dtype=dtype, name=name)
    spec = build_spec(raw, name)
    hf_version = versions()["transformers"]
    layout = build_layout(spec, "hf", built.dtype, version=hf_version)
    predicted = {g: layout.bytes_per_sequence(prompt_len + g - 1) for g in new_tokens}

    steps = len(new_tokens) * (2 if with_and_without else 1) * repeats
    interrupted = False
    oom = None
    # a progress bar on stderr (click draws it only on a terminal; stdout stays the report)
    with click.progressbar(length=steps, label=printable(f"verify {name} on {device}"), file=sys.stderr,
                           show_pos=True, item_show_func=lambda item: item) as bar:
        def progress(label: str) -> None:
            bar.update(1, label)

        try:
            runs = measure(built.model, device=device, vocab=built.vocab_size,
                           prompt_len=prompt_len, new_tokens=new_tokens, repeats=repeats,
                           with_and_without=with_and_without, progress=progress)
        except KeyboardInterrupt as exc:
            runs = getattr(exc, "partial", [])
            interrupted = True
        except OutOfMemory as exc:
            runs = exc.partial
            oom = str(exc)
    if interrupted and not runs:
        raise KeyboardInterrupt  # the CLI: "interrupted", exit 130
    if oom and not runs:
        raise OutOfMemory(oom)

    cached = [r for r in runs if r.use_cache and r.cache_bytes is not None]
    largest = max(cached, key=lambda r: r.new_tokens) if cached else None
    pred_largest = predicted[largest.new_tokens] if largest else None
    meas_largest = largest.cache_bytes if largest else None
    error_pct = (100.0 * (meas_largest - pred_largest) / pred_largest
                 if largest and pred_largest else 0.0)
    cache_ok = all(abs(r.cache_bytes - predicted[r.new_tokens])
                   <= cache_tolerance / 100 * predicted[r.new_tokens] for r in cached)
    slope = cuda_slope(cached, predicted, prompt_len, slope_tolerance)
    passed = bool(cached) and cache_ok and (slope is None or slope["passed"]) and not oom
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
        "error": oom,
    }


#: share of the available memory the weights of a CPU verify may take (the rest: activations,
#: the cache, the interpreter)
CPU_WEIGHTS_SHARE = 0.8


def check_memory(spec, dtype: str, layers: int | None) -> None:
    """Refuse a CPU build whose weights alone would not fit: predicted weight bytes (the
    parameter count of :mod:`kvcalc.params` x the dtype) against the memory available now."""
    from ..params import count_parameters, weight_bytes
    from ..units import format_bytes

    need = weight_bytes(count_parameters(spec), dtype)
    available = available_memory()
    if available is None or need <= CPU_WEIGHTS_SHARE * available:
        return
    raise OutOfMemory(
        f"building {spec.name} on the CPU needs about {format_bytes(need)} of {dtype} weights "
        f"({need:,} B), more than {CPU_WEIGHTS_SHARE:.0%} of the {format_bytes(available)} "
        f"available: use --layers N (now {layers or 'all'}), --device meta, or a machine with "
        "more memory")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``; else free
    pages), None when the system does not say."""
    import os

    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cuda_slope(cached: list, predicted: dict[int, int], prompt_len: int,
               tolerance: float) -> dict[str, Any] | None:
    """The KV bytes per token measured on CUDA: the least-squares slope, over the cached
    lengths, of what the allocator frees when each run's cache is dropped, against the
    slope of the prediction. The slope of the with-cache peaks is reported beside it as
    context (it includes activations and is often flat: the prefill sets the peak).

    When the prediction does not grow (every layer windowed or stateful at these lengths)
    the verdict compares the growth over the measured span with the tolerance instead.
    """
    points = [r for r in cached if r.cache_allocated_bytes is not None]
    if len({r.new_tokens for r in points}) < 2:
        return None
    xs = [prompt_len + r.new_tokens - 1 for r in points]
    measured = fit_slope(xs, [r.cache_allocated_bytes for r in points])
    expected = fit_slope(xs, [predicted[r.new_tokens] for r in points])
    peak = fit_slope(xs, [r.peak_bytes for r in points if r.peak_bytes is not None]) \
        if all(r.peak_bytes is not None for r in points) else None
    if expected:
        error = 100 * (measured - expected) / expected
        ok = abs(error) <= tolerance
    else:
        span = max(xs) - min(xs)
        largest = max(predicted[r.new_tokens] for r in points) or 1
        error = 100 * measured * span / largest
        ok = abs(error) <= tolerance
    return {"measured": measured, "predicted": expected, "error_pct": error,
            "tolerance_pct": tolerance, "passed": ok, "peak_slope": peak,
            "peak_slope_error_pct": (100 * (peak - expected) / expected
                                     if peak is not None and expected else None),
            "method": "drop of torch.cuda.memory_allocated when the returned cache is released, "
                      "least-squares over the cached lengths"}
