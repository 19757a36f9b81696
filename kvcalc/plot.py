"""``kvcalc plot``: the data behind each chart, and the drawing (matplotlib, imported lazily).

Every figure a chart shows comes from the functions ``estimate`` and ``plan`` print with; this
module only chooses the points and arranges the results into rows (the ``--format csv`` data)
and then draws those rows:

- ``memory``: :func:`kvcalc.memory.estimate` per context length (bytes for ``batch`` sequences,
  ``bytes_total`` as ``estimate`` prints it) and, with ``--gpu``, the per-GPU KV budget of
  :func:`kvcalc.planning.compute_budgets` (``plan``'s "= KV budget per GPU");
- ``concurrency``: :func:`kvcalc.planning.make_plan` per ``--max-len``: its contiguous and paged
  maximum concurrent sequences for the workload (``plan``'s workload table) and vLLM's
  "Maximum concurrency for L tokens per request";
- ``waste``: :func:`kvcalc.planning.make_plan`'s :class:`~kvcalc.workload.AllocatorResult` for
  contiguous and paged: token states, reservation waste (contiguous), internal fragmentation
  (paged), free;
- ``timing``: the ``runs`` of a ``kvcalc verify`` JSON report, as measured.

matplotlib is an optional extra (``pip install 'kvcalc[plot]'``): only :func:`draw` imports it,
with the Agg backend, so ``--format csv`` works without it and ``estimate``/``plan`` never
load it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .arch import ModelSpec
from .errors import ConfigError, KvcalcError, UsageError
from .files import atomic_write
from .hardware import GpuSpec
from .engines import build_layout, get_engine
from .layout import KEEP_CHUNK, KEEP_WINDOW, Layout
from .memory import estimate
from .reports import engine_detail
from .units import GiB, format_tokens

KINDS = ("memory", "concurrency", "waste", "timing", "timeline")
IMAGE_SUFFIXES = (".png", ".svg")
DATA_FORMATS = ("csv", "json")
INSTALL_HINT = "pip install 'kvcalc[plot]'"

#: figure size in inches and resolution: 10 x 6 in at 100 dpi = 1000 x 600 px, readable at 100%
DEFAULT_SIZE_IN = (10.0, 6.0)
DEFAULT_DPI = 100
#: base font size in points (ticks and legend never go below LEGEND_FONT_SIZE)
FONT_SIZE = 11
LEGEND_FONT_SIZE = 10
TITLE_FONT_SIZE = 12

DEFAULT_MIN_LEN = 1024
#: context lengths per doubling: dense for memory (plateau corners are added exactly), a few
#: for concurrency (each point is a whole plan)
MEMORY_POINTS_PER_OCTAVE = 16
CONCURRENCY_POINTS_PER_OCTAVE = 4
#: context length assumed for a model whose config names none (a warning says so)
FALLBACK_MAX_LEN = 131_072
#: most chunk boundaries of a chunked-attention layer added as exact points
MAX_CHUNK_EDGES = 64
#: memory charts switch to a log y axis when the largest value exceeds the smallest this much
LOG_Y_SPAN = 16
Y_SCALES = ("auto", "linear", "log")

MEMORY_COLUMNS = ("series", "model", "engine", "kv_dtype", "block_size", "tp", "gpu", "batch",
                  "seq", "bytes", "gib")
CONCURRENCY_COLUMNS = ("model", "gpu", "tp", "kv_dtype", "block_size", "workload", "max_len",
                       "kv_budget_bytes", "contiguous", "paged", "vllm_max_concurrency", "fits",
                       "estimated_max_model_len")
WASTE_COLUMNS = ("model", "gpu", "tp", "kv_dtype", "block_size", "workload", "max_len",
                 "allocator", "max_sequences", "budget_bytes", "token_bytes",
                 "reservation_waste_bytes", "internal_fragmentation_bytes", "free_bytes",
                 "memory_utilization")
TIMING_COLUMNS = ("report", "model", "device", "device_name", "dtype", "use_cache",
                  "new_tokens", "seconds_mean", "seconds_std", "peak_bytes", "cache_bytes")


@dataclass
class Chart:
    """One chart: what it shows (title lines, axes) and the rows behind it (the CSV)."""

    kind: str
    title: str
    subtitle: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    xlabel: str = ""
    ylabel: str = ""
    warnings: list[str] = field(default_factory=list)
    #: y axis: "auto" (log when the values span more than LOG_Y_SPAN x), "linear" or "log"
    y_scale: str = "auto"

    def table(self) -> list[dict[str, Any]]:
        """The rows with exactly the documented columns (missing cells empty)."""
        return [{c: r.get(c) for c in self.columns} for r in self.rows]


# --------------------------------------------------------------------------------------------
# Inputs shared by the planner-backed charts


@dataclass(frozen=True)
class PlanOptions:
    """The ``plan`` flags a chart passes through (same meaning and defaults as ``kvcalc plan``)."""

    tp: int = 1
    gpu_util: float | None = None
    weights_dtype: str = "auto"
    block_size: int | None = None
    kv_budget: int | None = None

    def inputs(self, spec: ModelSpec, gpu: GpuSpec, kv_dtype: str, max_len: int):
        from .params import default_weights_dtype, weights_dtype_bytes
        from .planning import PlanInputs

        wdtype = default_weights_dtype(spec) if self.weights_dtype == "auto" else self.weights_dtype
        weights_dtype_bytes(wdtype)  # validates
        return PlanInputs(gpu=gpu, tp=self.tp,
                          gpu_util=self.gpu_util,
                          weights_dtype=wdtype, kv_dtype=kv_dtype, block_size=self.block_size,
                          max_len=max_len, kv_budget=self.kv_budget)


@dataclass(frozen=True)
class WorkloadOptions:
    """``plan``'s workload flags: fixed lengths, a distribution, a trace, or (none given) every
    request at ``--max-len``."""

    prompt_len: int | None = None
    output_len: int | None = None
    dist: str | None = None
    mean: float | None = None
    std: float | None = None
    samples: int | None = None
    seed: int = 0
    trace: str | None = None

    def validate(self) -> None:
        fixed_given = self.prompt_len is not None or self.output_len is not None
        if sum((fixed_given, self.dist is not None, self.trace is not None)) > 1:
            raise UsageError("give one workload: --prompt-len/--output-len, --dist, or --trace")
        if self.dist and (self.mean is None or self.std is None):
            raise UsageError("--dist needs --mean and --std (tokens)")
        if self.trace and not Path(self.trace).is_file():
            raise UsageError(f"--trace {self.trace}: no such file")

    @property
    def min_len(self) -> int:
        """The shortest ``--max-len`` the workload allows (a fixed request must fit in it)."""
        return (self.prompt_len or 0) + (self.output_len or 0)

    def describe(self) -> str:
        if self.trace:
            return f"trace {Path(self.trace).name}"
        if self.dist:
            return f"{self.dist}: mean {self.mean:,.0f}, std {self.std:,.0f} tokens"
        if self.prompt_len is not None or self.output_len is not None:
            return (f"fixed: prompt {self.prompt_len or 0:,} + output {self.output_len or 0:,} "
                    f"tokens")
        return "every request at --max-len"

    def build(self, max_len: int):
        """The workload ``kvcalc plan`` builds for these flags at ``max_len``, and how many trace
        sequences were clipped to it."""
        from .workload import DEFAULT_SAMPLES, Workload, fixed, from_trace, sampled

        if self.trace:
            return from_trace(self.trace, max_len)
        if self.dist:
            return sampled(self.dist, self.mean, self.std, max_len,
                           self.samples or DEFAULT_SAMPLES, self.seed), 0
        if self.prompt_len is not None or self.output_len is not None:
            if self.min_len > max_len:
                raise UsageError(f"--prompt-len + --output-len = {self.min_len:,} exceeds "
                                 f"--max-len {max_len:,}")
            return fixed(self.prompt_len or 0, self.output_len or 0), 0
        return Workload(f"every request at --max-len ({max_len:,} tokens)", (max_len,)), 0


@dataclass(frozen=True)
class ModelInput:
    """A resolved ``--model``: its display name and spec."""

    name: str
    spec: ModelSpec

    @property
    def max_context(self) -> int | None:
        return self.spec.max_position_embeddings or None


# --------------------------------------------------------------------------------------------
# Context-length points


def log_points(lo: int, hi: int, per_octave: int) -> list[int]:
    """Integers from ``lo`` to ``hi`` (both included), ``per_octave`` per doubling."""
    if hi < lo:
        return []
    out = {lo, hi}
    steps = int(math.floor(per_octave * math.log2(hi / lo)))
    for i in range(1, steps + 1):
        out.add(min(hi, int(round(lo * 2 ** (i / per_octave)))))
    return sorted(out)


def plateau_edges(layout: Layout, lo: int, hi: int) -> list[int]:
    """Context lengths where a windowed or chunked layer's curve bends (``W - 1``, ``W`` and the
    next block edge), so that plateaus start exactly where ``estimate`` says."""
    edges: set[int] = set()
    for layer in layout.layers:
        if layer.keep not in (KEEP_WINDOW, KEEP_CHUNK) or not layer.window:
            continue
        w, bs = layer.window, layer.block_size or 1
        edges.update((w - 1, w, w + bs))
        if layer.keep == KEEP_CHUNK:
            for k in range(1, min(hi // w, MAX_CHUNK_EDGES) + 1):
                edges.update((k * w - 1, k * w))
    return sorted(e for e in edges if lo <= e <= hi)


def context_range(models: list[ModelInput], min_len: int | None,
                  max_len: int | None) -> tuple[int, dict[str, int], list[str]]:
    """The x range: ``min_len`` (1k) to each model's context length, or ``max_len`` for all."""
    if min_len is not None and max_len is not None and min_len > max_len:
        raise UsageError(f"--min-len {min_len:,} exceeds --max-len {max_len:,}")
    warnings = []
    ends: dict[str, int] = {}
    for m in models:
        if max_len is not None:
            ends[m.name] = max_len
            if m.max_context and max_len > m.max_context:
                warnings.append(f"--max-len {max_len:,} exceeds {m.name}'s context length "
                                f"({m.max_context:,})")
        elif m.max_context:
            ends[m.name] = m.max_context
        else:
            ends[m.name] = FALLBACK_MAX_LEN
            warnings.append(f"{m.name} names no context length: plotting to "
                            f"{FALLBACK_MAX_LEN:,} tokens (--max-len sets it)")
    lo = DEFAULT_MIN_LEN if min_len is None else min_len
    lo = min(lo, min(ends.values()))
    return lo, ends, warnings


# --------------------------------------------------------------------------------------------
# memory


def memory_chart(models: list[ModelInput], *, engines: list[str], kv_dtypes: list[str],
                 batch: int = 1, gpus: list[GpuSpec] = (), min_len: int | None = None,
                 max_len: int | None = None, block_size: int | None = None,
                 versions: dict[str, str | None] | None = None,
                 plan: PlanOptions = PlanOptions(),
                 y_scale: str = "auto") -> Chart:
    """KV bytes of ``batch`` sequences vs context length (``estimate``'s ``bytes_total``) for
    every model x engine x KV dtype, and each GPU's KV budget per model (``plan``'s)."""
    lo, ends, warnings = context_range(models, min_len, max_len)
    rows: list[dict[str, Any]] = []
    layouts_seen: list[str] = []
    dtypes_seen: list[str] = []
    for m in models:
        for engine in engines:
            for dtype in kv_dtypes:
                runtime = get_engine(engine)
                layout = build_layout(m.spec, engine, dtype, block_size=block_size,
                                      tp=plan.tp if runtime.tensor_parallel else 1,
                                      version=(versions or {}).get(f"{runtime.name}_version"))
                _add(layouts_seen, engine_detail(layout))
                _add(dtypes_seen, layout.kv_dtype.name)
                hi = ends[m.name]
                points = sorted(set(log_points(lo, hi, MEMORY_POINTS_PER_OCTAVE))
                                | set(plateau_edges(layout, lo, hi)))
                for n in points:
                    est = estimate(layout, n, batch)
                    rows.append({"series": "kv_cache", "model": m.name, "engine": engine,
                                 "kv_dtype": layout.kv_dtype.name,
                                 "block_size": layout.block_size, "tp": layout.tp, "gpu": None,
                                 "batch": batch, "seq": n, "bytes": est.bytes_total,
                                 "gib": est.bytes_total / GiB})
        for gpu in gpus:
            budget = gpu_kv_budget(m.spec, gpu, plan, kv_dtypes[0], ends[m.name])
            planner = get_engine(plan.inputs(m.spec, gpu, kv_dtypes[0], ends[m.name]).engine)
            if budget <= 0:
                warnings.append(f"{m.name} on {gpu.name}: no KV budget ({budget / GiB:,.2f} GiB: "
                                f"weights and overhead exceed what {planner.display_name} may "
                                "use); no line drawn")
            rows.append({"series": "kv_budget", "model": m.name, "engine": planner.name,
                         "kv_dtype": None, "block_size": None, "tp": plan.tp, "gpu": gpu.name,
                         "batch": None, "seq": None, "bytes": budget,
                         "gib": budget / GiB, "gpu_label": gpu.display_name})
    what = "KV cache per sequence" if batch == 1 else f"KV cache of {batch:,} sequences"
    return Chart(
        "memory",
        f"{what} vs context length: {_names(models)}",
        _subtitle(layouts_seen, dtypes_seen, gpus, plan.tp),
        MEMORY_COLUMNS, rows,
        xlabel="context length (tokens in the cache per sequence; k = 1024)",
        ylabel=f"{what} (GiB = 2^30 B)",
        warnings=warnings, y_scale=y_scale,
    )


def gpu_kv_budget(spec: ModelSpec, gpu: GpuSpec, plan: PlanOptions, kv_dtype: str,
                  max_len: int) -> int:
    """``plan``'s "= KV budget per GPU" for ``spec`` on ``gpu`` (first pipeline stage; the
    planner's :func:`~kvcalc.planning.compute_budgets`, nothing recomputed here)."""
    from .params import count_parameters
    from .planning import compute_budgets, validate

    inp = plan.inputs(spec, gpu, kv_dtype, max_len)
    validate(spec, inp)
    return compute_budgets(spec, count_parameters(spec), inp)[0].kv_bytes


# --------------------------------------------------------------------------------------------
# concurrency and waste (the planner's figures)


def _plan_point(m: ModelInput, gpu: GpuSpec, dtype: str, max_len: int, plan: PlanOptions,
                workload: WorkloadOptions):
    from .planning import make_plan

    wl, clipped = workload.build(max_len)
    return make_plan(m.spec, plan.inputs(m.spec, gpu, dtype, max_len), wl), clipped


def concurrency_chart(models: list[ModelInput], *, gpus: list[GpuSpec], kv_dtypes: list[str],
                      workload: WorkloadOptions = WorkloadOptions(),
                      min_len: int | None = None, max_len: int | None = None,
                      plan: PlanOptions = PlanOptions()) -> Chart:
    """Maximum concurrent sequences per replica vs ``--max-len``: ``plan``'s contiguous and paged
    figures for the workload, and vLLM's maximum concurrency, for every model x GPU x dtype."""
    workload.validate()
    lo, ends, warnings = context_range(models, min_len, max_len)
    lo = max(lo, workload.min_len)
    rows: list[dict[str, Any]] = []
    clipped_any = 0
    layouts_seen: list[str] = []
    dtypes_seen: list[str] = []
    for m in models:
        if workload.min_len > ends[m.name]:
            raise UsageError(f"--prompt-len + --output-len = {workload.min_len:,} exceeds "
                             f"{m.name}'s --max-len {ends[m.name]:,}")
        points = log_points(lo, ends[m.name], CONCURRENCY_POINTS_PER_OCTAVE)
        for gpu in gpus:
            for dtype in kv_dtypes:
                for n in points:
                    p, clipped = _plan_point(m, gpu, dtype, n, plan, workload)
                    clipped_any = max(clipped_any, clipped)
                    _add(layouts_seen, engine_detail(p.layout))
                    _add(dtypes_seen, p.layout.kv_dtype.name)
                    rows.append({
                        "model": m.name, "gpu": gpu.name, "tp": p.inputs.tp,
                        "kv_dtype": p.layout.kv_dtype.name, "block_size": p.layout.block_size,
                        "workload": p.workload.description, "max_len": n,
                        "kv_budget_bytes": p.budget.kv_bytes,
                        "contiguous": int(p.contiguous.max_sequences),
                        "paged": p.paged.max_sequences,
                        # the planning engine's own figure (the column keeps its name)
                        "vllm_max_concurrency": p.engine_figures.max_concurrency,
                        "fits": p.fits,
                        "estimated_max_model_len": (
                            None if p.engine_figures.fits
                            else getattr(p.engine_figures, "estimated_max_model_len", None)),
                        "gpu_label": gpu.display_name,
                    })
    for key in _unique((r["model"], r["gpu"], r["kv_dtype"]) for r in rows):
        pts = [r for r in rows if (r["model"], r["gpu"], r["kv_dtype"]) == key]
        if not any(r["fits"] for r in pts):
            budget = pts[0]["kv_budget_bytes"]
            why = (f"no KV budget ({budget / GiB:,.2f} GiB)" if budget <= 0 else
                   f"one request of {pts[0]['max_len']:,} tokens does not fit")
            warnings.append(f"{key[0]} on {key[1]} (KV {key[2]}): {why}; nothing to draw")
    if clipped_any:
        warnings.append(f"up to {clipped_any:,} sequences of the trace exceed a --max-len "
                        f"point and were clipped to it")
    return Chart(
        "concurrency",
        f"Max concurrent sequences vs context length: {_names(models)}",
        _subtitle(layouts_seen, dtypes_seen, gpus, plan.tp) + f"\nworkload: {workload.describe()}",
        CONCURRENCY_COLUMNS, rows,
        xlabel="--max-len: context length each request may reach (tokens; k = 1024)",
        ylabel="max concurrent sequences per replica (log)",
        warnings=warnings,
    )


def waste_chart(models: list[ModelInput], *, gpus: list[GpuSpec], kv_dtypes: list[str],
                max_lens: list[int] | None = None,
                workload: WorkloadOptions = WorkloadOptions(),
                plan: PlanOptions = PlanOptions()) -> Chart:
    """Where the KV budget goes, contiguous vs paged: ``plan``'s allocator results for every
    model x GPU x dtype x ``--max-len`` (default: the model's context length, as ``plan``)."""
    workload.validate()
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    layouts_seen: list[str] = []
    dtypes_seen: list[str] = []
    for m in models:
        lens = max_lens or [m.max_context or FALLBACK_MAX_LEN]
        for gpu in gpus:
            for dtype in kv_dtypes:
                for n in lens:
                    p, clipped = _plan_point(m, gpu, dtype, n, plan, workload)
                    if clipped:
                        warnings.append(f"{clipped:,} sequences of the trace exceed --max-len "
                                        f"{n:,}: clipped")
                    for w in p.warnings:
                        _add(warnings, w)
                    _add(layouts_seen, engine_detail(p.layout))
                    _add(dtypes_seen, p.layout.kv_dtype.name)
                    if p.budget.kv_bytes <= 0:
                        _add(warnings, f"{m.name} on {gpu.name} (KV {p.layout.kv_dtype.name}): "
                                       f"no KV budget ({p.budget.kv_bytes / GiB:,.2f} GiB); "
                                       f"empty bars")
                    for a in (p.contiguous, p.paged):
                        waste = int(a.waste_bytes)
                        rows.append({
                            "model": m.name, "gpu": gpu.name, "tp": p.inputs.tp,
                            "kv_dtype": p.layout.kv_dtype.name,
                            "block_size": p.layout.block_size,
                            "workload": p.workload.description, "max_len": n,
                            "allocator": a.name, "max_sequences": a.max_sequences,
                            "budget_bytes": a.budget_bytes,
                            "token_bytes": int(a.token_bytes),
                            "reservation_waste_bytes": waste if a.name == "contiguous" else 0,
                            "internal_fragmentation_bytes": waste if a.name == "paged" else 0,
                            "free_bytes": int(a.free_bytes),
                            "memory_utilization": a.utilization,
                        })
    return Chart(
        "waste",
        f"Where the KV memory goes, contiguous vs paged: {_names(models)}",
        _subtitle(layouts_seen, dtypes_seen, gpus, plan.tp) + f"\nworkload: {workload.describe()}",
        WASTE_COLUMNS, rows,
        xlabel="allocator and its max concurrent sequences per replica",
        ylabel="KV budget per GPU (GiB = 2^30 B)",
        warnings=warnings,
    )


# --------------------------------------------------------------------------------------------
# timing (a verify report)


def load_report(path: str | Path) -> dict[str, Any]:
    """A ``kvcalc verify --format json`` report, checked against its contract (docs/cli.md)."""
    from .files import read_bounded
    from .sources import decode_text

    path = Path(path)
    if not os.path.lexists(path):
        raise UsageError(f"--from {path}: no such file")
    text = decode_text(read_bounded(path, "report", MAX_REPORT_BYTES), f"report {path}")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except (RecursionError, ValueError) as exc:   # NaN/Infinity, nesting, 4,300+ digits
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{path}: cannot be read ({why})") from None
    where = f"{path}: not a kvcalc verify report"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} (expected a JSON object)")
    for key in ("model", "device", "dtype", "runs"):
        if key not in data:
            raise ConfigError(f"{where} (missing '{key}')")
    runs = data["runs"]
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{where} ('runs' must be a non-empty list)")
    for i, run in enumerate(runs):
        if not isinstance(run, dict):
            raise ConfigError(f"{where} (runs[{i}] is not an object)")
        for key in ("use_cache", "new_tokens", "seconds_mean", "seconds_std"):
            if key not in run:
                raise ConfigError(f"{where} (runs[{i}] lacks '{key}')")
        if not isinstance(run["use_cache"], bool):
            raise ConfigError(f"{where} (runs[{i}].use_cache must be true or false)")
        if not isinstance(run["new_tokens"], int) or isinstance(run["new_tokens"], bool) \
                or run["new_tokens"] < 1:
            raise ConfigError(f"{where} (runs[{i}].new_tokens must be a positive integer)")
        for key in ("seconds_mean", "seconds_std"):
            v = run[key]
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)
                                  or not 0 <= v < math.inf):
                raise ConfigError(f"{where} (runs[{i}].{key} must be a non-negative number, "
                                  "finite)")
    return data


#: the largest verify report ``plot timing --from`` reads (a real one is a few kB)
MAX_REPORT_BYTES = 16 * 1024 * 1024


def _no_constant(name: str):
    """JSON's non-standard NaN / Infinity are not numbers a report may hold."""
    raise ValueError(f"{name} is not a number kvcalc accepts")


def timing_chart(paths: list[str | Path]) -> Chart:
    """Generation time vs new tokens, with and without the cache, from verify reports."""
    rows: list[dict[str, Any]] = []
    models: list[str] = []
    devices: list[str] = []
    dtypes: list[str] = []
    engines: list[str] = []
    prompts: list[str] = []
    for path in paths:
        report = load_report(path)
        _add(models, str(report["model"]))
        _add(devices, str(report.get("device_name") or report["device"]))
        _add(dtypes, str(report["dtype"]))
        tf = (report.get("versions") or {}).get("transformers")
        _add(engines, f"transformers {tf} generate()" if tf else "transformers generate()")
        if report.get("prompt_len"):
            _add(prompts, f"{report['prompt_len']:,}")
        for run in report["runs"]:
            if run["seconds_mean"] is None:
                continue
            rows.append({"report": Path(path).name, "model": report["model"],
                         "device": report["device"],
                         "device_name": report.get("device_name") or report["device"],
                         "dtype": report["dtype"], "use_cache": run["use_cache"],
                         "new_tokens": run["new_tokens"], "seconds_mean": run["seconds_mean"],
                         "seconds_std": run["seconds_std"] or 0.0,
                         "peak_bytes": run.get("peak_bytes"),
                         "cache_bytes": run.get("cache_bytes")})
    rows.sort(key=lambda r: (r["report"], not r["use_cache"], r["new_tokens"]))
    return Chart(
        "timing",
        f"Generation time with and without the KV cache: {', '.join(models)}",
        f"{', '.join(engines)}, DynamicCache vs use_cache=False"
        + (f" · prompt {', '.join(prompts)} tokens" if prompts else "")
        + f" · {', '.join(dtypes)} · {', '.join(devices)} · kvcalc {__version__}",
        TIMING_COLUMNS, rows,
        xlabel="new tokens generated (log)",
        ylabel="seconds per generate() call, mean ± std (log)",
    )


# --------------------------------------------------------------------------------------------
# Output


def check_out(out: str | None, fmt: str | None) -> str:
    """The output format from ``--format`` and ``--out``'s extension: png, svg, csv or json.

    Images need ``--out FILE.png|FILE.svg``; data (csv, json) goes to stdout without ``--out``.
    """
    suffix = Path(out).suffix.lower() if out else ""
    if fmt in DATA_FORMATS:
        if out and suffix in IMAGE_SUFFIXES:
            raise UsageError(f"--format {fmt} writes the data, not an image: use --out "
                             f"FILE.{fmt}, or no --out for stdout")
        return fmt
    if not out:
        raise UsageError("give --out FILE.png or FILE.svg (or --format csv for the data)")
    if suffix in IMAGE_SUFFIXES:
        if fmt is not None and fmt != suffix[1:]:
            raise UsageError(f"--format {fmt} does not match --out {Path(out).name}")
        return suffix[1:]
    if suffix in (".csv", ".json") and fmt is None:
        return suffix[1:]
    raise UsageError(f"unsupported --out extension '{suffix or Path(out).name}': use .png or "
                     f".svg (or .csv/.json, or --format csv, for the data)")


def to_text(chart: Chart, fmt: str) -> str:
    from .render import to_csv, to_json

    if fmt == "json":
        return to_json({"kind": chart.kind, "title": chart.title, "subtitle": chart.subtitle,
                        "kvcalc_version": __version__, "rows": chart.table()})
    return to_csv(chart.table(), chart.columns)


def require_matplotlib():
    """Import matplotlib with the Agg backend (no display), or end with the install command."""
    try:
        import matplotlib
    except ImportError:
        raise KvcalcError(f"kvcalc plot needs matplotlib: {INSTALL_HINT}") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return matplotlib, plt


def nothing_to_draw(chart: Chart) -> str | None:
    """Why ``chart`` would be an empty picture (then no image is written), or None."""
    if not chart.rows:
        return f"nothing to plot for {chart.kind}"
    if chart.kind == "concurrency" and not any(r["fits"] for r in chart.rows):
        return ("nothing to plot: not one request fits at any --max-len on the GPU(s) given "
                "(kvcalc plan shows the budget; try a larger GPU, --tp or --kv-dtype fp8)")
    if chart.kind == "waste" and not any(r["budget_bytes"] > 0 for r in chart.rows):
        return ("nothing to plot: the model leaves no KV budget on the GPU(s) given "
                "(kvcalc plan shows the budget; try a larger GPU, --tp or --weights-dtype)")
    return None


def draw(chart: Chart, out: str | Path, size: tuple[float, float] = DEFAULT_SIZE_IN,
         dpi: int = DEFAULT_DPI) -> Path:
    """Draw ``chart`` into ``out`` (.png or .svg), ``size`` inches at ``dpi``."""
    out = Path(out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"unsupported image extension '{out.suffix}': use .png or .svg")
    _, plt = require_matplotlib()
    with plt.rc_context(RC):
        fig = render(chart, size, dpi)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            metadata = {"Software": None} if out.suffix.lower() == ".png" else {"Date": None}
            try:   # the image appears only when complete (kvcalc.files.atomic_write)
                with atomic_write(out, "wb") as fh:
                    fig.savefig(fh, dpi=dpi, metadata=metadata, format=out.suffix[1:].lower())
            except OSError as exc:
                raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
        finally:
            plt.close(fig)
    return out


#: matplotlib settings of every chart
RC = {"font.size": FONT_SIZE, "axes.titlesize": TITLE_FONT_SIZE,
      "axes.labelsize": FONT_SIZE, "xtick.labelsize": LEGEND_FONT_SIZE,
      "ytick.labelsize": LEGEND_FONT_SIZE, "legend.fontsize": LEGEND_FONT_SIZE,
      "svg.fonttype": "none", "svg.hashsalt": "kvcalc", "path.simplify": True}


def render(chart: Chart, size: tuple[float, float] = DEFAULT_SIZE_IN,
           dpi: int = DEFAULT_DPI):
    """The matplotlib figure of ``chart`` (the caller closes it; call inside
    ``plt.rc_context(RC)``): drawn and laid out so that no two texts print over each other —
    long labels wrapped, wide legends moved below, overlapping tick labels thinned, crowded
    in-plot texts left out, a crowded figure made taller (:func:`text_collisions` checks)."""
    empty = nothing_to_draw(chart)
    if empty:
        raise UsageError(empty)
    import warnings

    _, plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=size, dpi=dpi, layout="constrained")
    try:
        with warnings.catch_warnings():
            # a crowded small figure collapses the axes until _fit_labels makes room
            warnings.filterwarnings("ignore", message="constrained_layout not applied")
            _draw_into(chart, fig, ax, size)
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _draw_into(chart: Chart, fig, ax, size: tuple[float, float]) -> None:
    """Draw ``chart`` into ``ax``, then make its texts fit (see :func:`render`)."""
    DRAWERS[chart.kind](chart, ax)
    heading = f"{chart.title}\n{chart.subtitle}"
    ax.set_title(_wrap(heading, size[0]), loc="left")
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel(chart.ylabel)
    ax.grid(True, which="major", alpha=0.35)
    _fit_labels(fig, ax, heading)
    _thin_tick_labels(fig, ax)
    _hide_crowded_texts(fig, ax)


#: the least share of the figure's height the axes keep (a crowded small figure grows taller)
MIN_AXES_SHARE = 0.35


def _fit_labels(fig, ax, heading: str) -> None:
    """Texts that outgrow a small figure are wrapped, not clipped or printed over others: the
    y label onto two lines when it is taller than the axes, an axes legend wider than the axes
    below them, a legend below the axes into one column with wrapped entries when it is wider
    than the figure, the title to the room right of where it starts; and a figure whose title
    and legend leave the axes less than :data:`MIN_AXES_SHARE` of its height grows taller."""
    import textwrap

    label = ax.yaxis.label
    for attempt in range(3):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        if not label.get_text() or label.get_window_extent(renderer).height <= \
                ax.get_window_extent(renderer).height:
            break
        text = label.get_text()
        cut = min((i for i, ch in enumerate(text) if ch == " "),
                  key=lambda i: abs(i - len(text) / 2), default=None)
        if "\n" not in text and cut is not None:
            label.set_text(text[:cut] + "\n" + text[cut + 1:])
        else:  # already two lines and still taller than a very small axes: a smaller font
            label.set_fontsize(label.get_fontsize() * 0.85)
    legend = ax.get_legend()
    if legend is not None and legend.get_window_extent(renderer).width > \
            ax.get_window_extent(renderer).width:
        # an axes legend wider than the axes: below them instead, where the figure is wide
        handles, texts = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
        legend.remove()
        fig.legend(handles=handles, labels=texts, loc="outside lower center", ncols=2)
        fig.canvas.draw()
    for legend in list(fig.legends):
        width = legend.get_window_extent(renderer).width
        if width <= fig.bbox.width:
            continue
        handles = legend.legend_handles
        texts = [t.get_text() for t in legend.get_texts()]
        longest = max(len(t) for t in texts)
        chars = max(20, int(longest * fig.bbox.width / width * legend._ncols) - 2)
        legend.remove()
        fig.legend(handles=handles, labels=[textwrap.fill(t, chars) for t in texts],
                   loc="outside lower center", ncols=1)
    fig.canvas.draw()
    title = ax._left_title
    box = title.get_window_extent(renderer)
    if title.get_text() and box.x1 > fig.bbox.x1:
        # rewrap the heading to the room right of where the title starts
        lines = title.get_text().split("\n")
        chars = int(max(map(len, lines)) * (fig.bbox.x1 - box.x0) / box.width) - 2
        title.set_text(_wrap_chars(heading, chars))
    # a small figure crowded by its title and legend: taller, so the axes keep some height
    for _ in range(3):
        fig.canvas.draw()
        height, axes_h = fig.bbox.height, ax.get_window_extent(renderer).height
        if axes_h >= MIN_AXES_SHARE * height:
            break
        w, h = fig.get_size_inches()
        fig.set_size_inches(w, h * (height - axes_h) / ((1 - MIN_AXES_SHARE) * height) + 0.1)


def _visible_tick_labels(axis) -> list:
    """The tick labels ``axis`` shows (major and minor, non-empty, inside the view)."""
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for tick in axis.get_major_ticks() + axis.get_minor_ticks():
        label = tick.label1
        if (label.get_visible() and label.get_text() and tick.get_visible()
                and lo - 1e-9 * abs(hi) <= tick.get_loc() <= hi + 1e-9 * abs(hi)):
            out.append(label)
    return out


def _thin_tick_labels(fig, ax) -> None:
    """Hide every other tick label of an axis while two of its labels overlap (minor labels
    first), so dense or long labels never print over each other."""
    for axis in (ax.xaxis, ax.yaxis):
        for _ in range(6):
            fig.canvas.draw()
            labels = _visible_tick_labels(axis)
            if not _overlapping(fig, labels):
                break
            minor = [t.label1 for t in axis.get_minor_ticks()
                     if t.label1 in labels]
            victims = minor if minor else sorted(
                labels, key=lambda t: t.get_position()[axis is ax.yaxis])[1::2]
            for label in victims:
                label.set_visible(False)


def _hide_crowded_texts(fig, ax) -> None:
    """Texts drawn inside the axes (the waste chart's shares, the timing chart's ×N) that would
    print over one drawn before them are left out."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    shown: list = []                    # the boxes of the texts kept
    for text in ax.texts:
        box = _padded_box(text, renderer)
        if any(_touch(box, other) for other in shown):
            text.set_visible(False)
        else:
            shown.append(box)


#: pixels kept clear around each text when testing for overlaps (labels must not touch)
TEXT_PAD_PX = 2


def _padded_box(text, renderer):
    """The drawn box of ``text``, grown by :data:`TEXT_PAD_PX` on every side."""
    from matplotlib.transforms import Bbox

    b = text.get_window_extent(renderer)
    return Bbox.from_extents(b.x0 - TEXT_PAD_PX, b.y0 - TEXT_PAD_PX, b.x1 + TEXT_PAD_PX,
                             b.y1 + TEXT_PAD_PX)


def _touch(a, b) -> bool:
    """Whether two padded boxes of texts that print something overlap."""
    return a.overlaps(b) and a.width > 2 * TEXT_PAD_PX and b.width > 2 * TEXT_PAD_PX


def _overlapping(fig, texts) -> list[tuple[str, str]]:
    """Pairs of the given text artists whose drawn boxes (grown by :data:`TEXT_PAD_PX`)
    overlap."""
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), _padded_box(t, renderer)) for t in texts]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:]
            if _touch(box_a, box_b)]


def _overlapping_between(fig, texts, others) -> list[tuple[str, str]]:
    """Pairs of one text of ``texts`` and one of ``others`` whose padded boxes overlap."""
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), _padded_box(t, renderer)) for t in others]
    out = []
    for t in texts:
        box_t = _padded_box(t, renderer)
        out += [(t.get_text(), b) for b, box in boxes if _touch(box_t, box)]
    return out


def text_collisions(fig) -> list[tuple[str, str]]:
    """Every pair of a chart's texts that print over each other: tick labels of one axis,
    tick labels and the axis labels, the title with the axes' texts, the legend with the tick
    and axis labels (tests/test_plot.py checks every chart kind)."""
    fig.canvas.draw()
    out = []
    for ax in fig.axes:
        x, y = _visible_tick_labels(ax.xaxis), _visible_tick_labels(ax.yaxis)
        labels = [t for t in (ax.xaxis.label, ax.yaxis.label) if t.get_text()]
        title = [t for t in (ax.title, ax._left_title, ax._right_title) if t.get_text()]
        inside = [t for t in ax.texts if t.get_visible()]
        out += _overlapping(fig, x) + _overlapping(fig, y) + _overlapping(fig, inside)
        out += _overlapping_between(fig, x, [ax.xaxis.label])
        out += _overlapping_between(fig, y, [ax.yaxis.label])
        out += _overlapping(fig, title) + _overlapping_between(fig, title, x + y + labels)
        legends = [l for l in [ax.get_legend(), *fig.legends] if l is not None]
        renderer = fig.canvas.get_renderer()
        for legend in legends:
            box = legend.get_window_extent(renderer)
            out += [("legend", t.get_text()) for t in x + y + labels + title
                    if box.overlaps(t.get_window_extent(renderer))]
        page = fig.bbox
        for t in x + y + labels + title + legends:
            b = t.get_window_extent(renderer)
            if b.x0 < page.x0 - 1 or b.x1 > page.x1 + 1 or b.y0 < page.y0 - 1 or \
                    b.y1 > page.y1 + 1:
                out.append(("figure edge", getattr(t, "get_text", lambda: "legend")()))
    return list(dict.fromkeys(out))


def _draw_memory(chart: Chart, ax) -> None:
    styles = _line_styles()
    curves: dict[tuple, list[dict]] = {}
    for r in chart.rows:
        if r["series"] == "kv_cache":
            curves.setdefault((r["model"], r["engine"], r["kv_dtype"]), []).append(r)
    models = _unique(r["model"] for r in chart.rows)
    color = {m: _color(i) for i, m in enumerate(models)}
    per_model: dict[str, list[tuple]] = {}
    for key in curves:
        per_model.setdefault(key[0], []).append(key)
    engines = _unique(k[1] for k in curves)
    for (model, engine, dtype), pts in curves.items():
        style = styles[per_model[model].index((model, engine, dtype)) % len(styles)]
        label = f"{model} ({engine + ', ' if len(engines) > 1 else ''}KV {dtype})"
        ax.plot([p["seq"] for p in pts], [p["gib"] for p in pts], color=color[model],
                linestyle=style, linewidth=2, label=label)
    budgets = [r for r in chart.rows if r["series"] == "kv_budget" and r["bytes"] > 0]
    gpu_names = _unique(r["gpu"] for r in budgets)
    for r in budgets:
        ax.axhline(r["gib"], color=color[r["model"]], linewidth=1.5,
                   linestyle=(0, (1, 1 + gpu_names.index(r["gpu"]))),
                   label=f"KV budget per GPU: {r['model']} on {r.get('gpu_label') or r['gpu']} "
                         f"({r['gib']:.1f} GiB)")
    _log2_x(ax, [r["seq"] for r in chart.rows if r["seq"]])
    values = [r["gib"] for r in chart.rows if r["gib"] > 0]
    if _log_y(chart.y_scale, values):
        _log_gib_y(ax, values)
    else:
        ax.set_ylim(bottom=0, top=max(values) * 1.08)
    # curves rise to the upper right and budgets run along the top: the lower right is free
    _legend(ax, "lower right")


def _log_y(scale: str, values: list[float]) -> bool:
    """``auto``: a log y axis when the values span more than :data:`LOG_Y_SPAN` times."""
    if scale == "auto":
        return bool(values) and max(values) / min(values) > LOG_Y_SPAN
    return scale == "log"


def _log_gib_y(ax, values: list[float]) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log", base=2)
    lo = 2 ** math.floor(math.log2(min(values)))
    hi = 2 ** math.ceil(math.log2(max(values) * 1.05))
    ax.set_ylim(lo, hi)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))


def _draw_concurrency(chart: Chart, ax) -> None:
    from matplotlib.lines import Line2D

    series: dict[tuple, list[dict]] = {}
    for r in chart.rows:
        series.setdefault((r["model"], r["gpu"], r["kv_dtype"]), []).append(r)
    handles = []
    for i, (key, pts) in enumerate(series.items()):
        model, gpu, dtype = key
        c = _color(i)
        ok = [p for p in pts if p["fits"]]
        ax.plot([p["max_len"] for p in ok], [p["paged"] for p in ok], color=c, marker="o",
                markersize=5, linewidth=2)
        held = [p for p in ok if p["contiguous"] > 0]
        ax.plot([p["max_len"] for p in held], [p["contiguous"] for p in held], color=c,
                marker="s", markersize=5, linestyle="--", linewidth=2)
        handles.append(Line2D([], [], color=c, linewidth=3,
                              label=f"{model} on {pts[0].get('gpu_label') or gpu}, KV {dtype}"))
        bad = [p for p in pts if not p["fits"]]
        if bad and bad[0].get("estimated_max_model_len"):
            longest = bad[0]["estimated_max_model_len"]
            ax.axvline(longest, color=c, linestyle=":", linewidth=1.5)
            handles.append(Line2D([], [], color=c, linestyle=":", linewidth=1.5,
                                  label=f"longest request that fits: {longest:,} tokens "
                                        f"(vLLM's estimate)"))
    handles += [
        Line2D([], [], color="black", marker="o", linewidth=2,
               label="paged: whole blocks of each request's length"),
        Line2D([], [], color="black", marker="s", linestyle="--", linewidth=2,
               label="contiguous: every request reserves --max-len"),
    ]
    ax.set_yscale("log")
    ax.margins(y=0.1)                   # flat paged lines must not hug the frame
    _plain_log_labels(ax.yaxis)
    _log2_x(ax, [r["max_len"] for r in chart.rows])
    _legend(ax, "best", handles=handles)


WASTE_PARTS = (
    ("token_bytes", "token states", "#2ca02c"),
    ("reservation_waste_bytes", "reservation waste (contiguous)", "#d62728"),
    ("internal_fragmentation_bytes", "internal fragmentation (paged, < 1 block/seq)", "#ff7f0e"),
    ("free_bytes", "free (less than one more sequence)", "#c7c7c7"),
)


def _draw_waste(chart: Chart, ax) -> None:
    groups: dict[tuple, dict[str, dict]] = {}
    for r in chart.rows:
        key = (r["model"], r["gpu"], r["kv_dtype"], r["max_len"])
        groups.setdefault(key, {})[r["allocator"]] = r
    multi = {i: len({k[i] for k in groups}) > 1 for i in range(4)}
    xs, labels = [], []
    width = 0.38
    seen: set[str] = set()
    for g, (key, pair) in enumerate(groups.items()):
        for j, name in enumerate(("contiguous", "paged")):
            r = pair.get(name)
            if r is None:
                continue
            x = g + (j - 0.5) * (width + 0.04)
            xs.append(x)
            conc = (f"{int(r['max_sequences']):,} seqs" if name == "contiguous"
                    else f"{r['max_sequences']:,.1f} seqs")
            parts = [key[0]] if multi[0] else []
            parts += [key[1]] if multi[1] else []
            parts += [f"KV {key[2]}"] if multi[2] else []
            parts += [f"max-len {_tok(key[3])}"] if multi[3] else []
            labels.append("\n".join([name, conc] + parts))
            bottom = 0.0
            budget = r["budget_bytes"] or 1
            for col, label, color in WASTE_PARTS:
                v = (r[col] or 0) / GiB
                ax.bar(x, v, width, bottom=bottom, color=color, edgecolor="white",
                       label=label if label not in seen else None)
                seen.add(label)
                share = (r[col] or 0) / budget
                if share >= 0.04:
                    ax.text(x, bottom + v / 2, f"{100 * share:.0f}%", ha="center", va="center",
                            fontsize=LEGEND_FONT_SIZE, color="black")
                bottom += v
    ax.set_xticks(xs, labels)
    ax.set_ylim(0, max(r["budget_bytes"] for r in chart.rows) / GiB * 1.22)
    ax.legend(loc="upper right", ncols=2)
    ax.grid(False, axis="x")


def _draw_timing(chart: Chart, ax) -> None:
    series: dict[tuple, list[dict]] = {}
    for r in chart.rows:
        series.setdefault((r["report"], r["use_cache"]), []).append(r)
    reports = _unique(r["report"] for r in chart.rows)
    for (report, cached), pts in series.items():
        c = _color(reports.index(report))
        head = "" if len(reports) == 1 else f"{pts[0]['model']} ({pts[0]['device_name']}): "
        what = "with cache (use_cache=True)" if cached else "without cache (use_cache=False)"
        ax.errorbar([p["new_tokens"] for p in pts], [p["seconds_mean"] for p in pts],
                    yerr=[p["seconds_std"] for p in pts], color=c, capsize=4, linewidth=2,
                    marker="o" if cached else "s", linestyle="-" if cached else "--",
                    label=head + what)
        if cached:
            without = {p["new_tokens"]: p for p in series.get((report, False), [])}
            for p in pts:
                w = without.get(p["new_tokens"])
                if w and p["seconds_mean"]:
                    ax.annotate(f"×{w['seconds_mean'] / p['seconds_mean']:.1f}",
                                (p["new_tokens"], w["seconds_mean"]), textcoords="offset points",
                                xytext=(0, 9), ha="center", fontsize=LEGEND_FONT_SIZE, color=c)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_labels(ax.xaxis)
    _plain_log_labels(ax.yaxis)
    ax.margins(x=0.08, y=0.12)
    _legend(ax, "upper left", title="×N above a point: time without / with the cache",
            title_fontsize=LEGEND_FONT_SIZE)


def timeline_chart(path: str | Path, allocator: str | None = None) -> Chart:
    """``kvcalc plot timeline``: the chart of a ``kvcalc simulate --timeline`` CSV (read and
    checked by :func:`kvcalc.simulation.plot.read_timeline`); ``allocator`` keeps one
    allocator's rows (stacked areas)."""
    from .simulation.plot import TIMELINE_COLUMNS, read_timeline

    rows, names = read_timeline(path, allocator)
    return Chart("timeline", f"KV memory over time: {', '.join(names)}",
                 f"kvcalc simulate --timeline {Path(path).name} (shares of the KV budget; times "
                 "modelled)", TIMELINE_COLUMNS, rows, xlabel="time (s, modelled)",
                 ylabel="share of the KV budget", y_scale="linear")


def _draw_timeline(chart: Chart, ax) -> None:
    """One allocator: the paper's categories stacked (token states, reservation, internal and
    external fragmentation, free) as shares of the KV budget. Several: the token-state share of
    each (solid) and its allocated share (token states + reservation + internal fragmentation,
    dashed)."""
    from .simulation.metrics import CATEGORIES

    colors = {"token_states": "#2a7ab9", "reservation": "#f2a541",
              "internal_fragmentation": "#d1495b", "external_fragmentation": "#7a4ea3",
              "free": "#d9d9d9"}
    labels = {"token_states": "token states", "reservation": "reservation",
              "internal_fragmentation": "internal fragmentation",
              "external_fragmentation": "external fragmentation", "free": "free"}
    rows = chart.rows
    names = list(dict.fromkeys(r["allocator"] for r in rows))
    if len(names) == 1:
        t = [r["time_s"] for r in rows]
        ax.stackplot(t, *[[r[c] for r in rows] for c in CATEGORIES],
                     labels=[labels[c] for c in CATEGORIES],
                     colors=[colors[c] for c in CATEGORIES], step="post")
        ax.set_ylim(0, 1)
        ax.legend(loc="upper right")
    else:
        for i, name in enumerate(names):
            mine = [r for r in rows if r["allocator"] == name]
            t = [r["time_s"] for r in mine]
            color = f"C{i}"
            ax.plot(t, [r["token_states"] for r in mine], color=color, drawstyle="steps-post",
                    label=f"{name}: token states")
            ax.plot(t, [r["token_states"] + r["reservation"] + r["internal_fragmentation"]
                        for r in mine], color=color, linestyle="--", drawstyle="steps-post",
                    label=f"{name}: allocated")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="best")


DRAWERS = {"memory": _draw_memory, "concurrency": _draw_concurrency, "waste": _draw_waste,
           "timing": _draw_timing, "timeline": _draw_timeline}


# --------------------------------------------------------------------------------------------
# helpers


def _plain_number(v: float) -> str:
    return f"{v:,.0f}" if v >= 1 else f"{v:g}"


def _plain_log_labels(axis) -> None:
    """Log-axis tick labels as plain numbers (1, 10, 100; 2 and 5 between decades when the axis
    spans little), not matplotlib's 2×10^0."""
    from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation

    class PlainMinor(LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            return _plain_number(x) if super().__call__(x, pos) else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: _plain_number(v)))
    axis.set_minor_formatter(PlainMinor(labelOnlyBase=False))


def _log2_x(ax, values: list[int]) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = min(values), max(values)
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo, hi)
    ticks = [2 ** k for k in range(int(math.floor(math.log2(lo))), int(math.ceil(math.log2(hi))) + 1)
             if lo <= 2 ** k <= hi]
    for end in (lo, hi):
        if all(abs(math.log2(end / t)) > 0.35 for t in ticks):
            ticks.append(end)
    ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tok(int(round(v)))))
    ax.xaxis.set_minor_formatter(NullFormatter())


#: legends with more entries than this go below the axes, in two columns
MAX_INSIDE_LEGEND = 4


def _legend(ax, loc: str, handles=None, **kw) -> None:
    if handles is None:
        handles, _ = ax.get_legend_handles_labels()
    if len(handles) <= MAX_INSIDE_LEGEND:
        ax.legend(handles=handles, loc=loc, **kw)
    else:
        ax.figure.legend(handles=handles, loc="outside lower center", ncols=2, **kw)


#: characters of title text per inch of figure width at TITLE_FONT_SIZE
TITLE_CHARS_PER_INCH = 9.5


def _wrap(text: str, width_in: float) -> str:
    """Wrap each title line to the figure's width (separators stay at line ends)."""
    return _wrap_chars(text, int(width_in * TITLE_CHARS_PER_INCH))


def _wrap_chars(text: str, chars: int) -> str:
    """Wrap each line of ``text`` to ``chars`` characters (at least 40; separators stay at
    line ends)."""
    import textwrap

    width = max(40, chars)
    # a non-breaking space before each separator keeps "·" at the end of a wrapped line
    text = text.replace(" · ", "\u00a0· ")
    return "\n".join(textwrap.fill(line, width, break_on_hyphens=False) for line in
                     text.split("\n"))


def _tok(n: int) -> str:
    """4096 -> '4k', 131072 -> '128k', 1048576 -> '1M', 1500 -> '1,500'."""
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10}k"
    return format_tokens(n)


def _color(i: int) -> str:
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
               "#17becf", "#7f7f7f", "#bcbd22")
    return palette[i % len(palette)]


def _line_styles() -> list:
    return ["-", "--", "-.", (0, (5, 1, 1, 1, 1, 1))]


def _unique(items) -> list:
    out: list = []
    for item in items:
        _add(out, item)
    return out


def _add(seen: list, item) -> None:
    if item not in seen:
        seen.append(item)


def _names(models: list[ModelInput]) -> str:
    return ", ".join(m.name for m in models)


def _subtitle(layouts: list[str], dtypes: list[str], gpus, tp: int) -> str:
    gpu_text = ", ".join(g.display_name for g in gpus) if gpus else "no GPU (--gpu adds a budget)"
    if gpus and tp > 1:
        gpu_text += f" (tp {tp}, per GPU)"
    return (f"{'; '.join(layouts)} · KV {', '.join(dtypes)} · GPU {gpu_text} · "
            f"kvcalc {__version__}")
