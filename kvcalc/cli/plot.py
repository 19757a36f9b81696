"""kvcalc plot: charts of what estimate, plan and verify compute (matplotlib, optional extra)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import click

from .. import api
from ..api import KV_DTYPE_CHOICES, engine_info, engine_names
from ..errors import UsageError
from .common import ByteSize, TokenList, echo_output, version_options, warn

FORMAT_CHOICES = ("png", "svg", "csv", "json")
PLAN_KV_DTYPES = ("auto", "fp32", "fp16", "bf16", "fp8", "int8", "int4")
WEIGHT_CHOICES = ("auto", "bf16", "fp16", "fp32", "fp8", "int8", "int4", "mxfp4", "nvfp4")
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*[xX×]\s*([0-9]+(?:\.[0-9]+)?)\s*$")


class PlotGroup(click.Group):
    """``kvcalc plot KIND``: an unknown kind is one line with a suggestion, not a usage page."""

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name and not name.startswith("-") and name not in self.commands:
            close = difflib.get_close_matches(name, list(self.commands), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UsageError(f"unknown plot kind '{name}': choose one of "
                             f"{', '.join(self.commands)}{hint}")
        return super().resolve_command(ctx, args)

    def list_commands(self, ctx):
        KINDS = api.KINDS

        return list(KINDS)


#: the largest side of a chart image, in pixels (a 10x6 in chart at 600 dpi is 6,000 px)
MAX_PLOT_PIXELS = 10_000


class FigureSize(click.ParamType):
    """WIDTHxHEIGHT in inches: 10x6."""

    name = "WxH"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        m = _SIZE.match(str(value))
        if not m or float(m.group(1)) <= 0 or float(m.group(2)) <= 0:
            self.fail(f"invalid size '{value}': use WIDTHxHEIGHT in inches, e.g. 10x6", param, ctx)
        return float(m.group(1)), float(m.group(2))


def output_options(f):
    """--out, --format, --size, --dpi (every kind)."""
    DEFAULT_DPI = api.DEFAULT_DPI
    DEFAULT_SIZE_IN = api.DEFAULT_SIZE_IN

    w, h = DEFAULT_SIZE_IN
    f = click.option("--dpi", type=click.IntRange(50, 600), default=DEFAULT_DPI,
                     show_default=True, help="Image resolution (pixels per inch).")(f)
    f = click.option("--size", type=FigureSize(), default=f"{w:g}x{h:g}", show_default=True,
                     help="Figure size in inches, WIDTHxHEIGHT (10x6 at 100 dpi = 1000x600 px).")(f)
    f = click.option("--format", "-f", "fmt", type=click.Choice(FORMAT_CHOICES), default=None,
                     help="png or svg (default: from --out), or csv/json: the data behind the "
                          "chart, to stdout or to --out.")(f)
    f = click.option("--out", "-o", default=None, metavar="FILE",
                     help="Image to write: FILE.png or FILE.svg (FILE.csv/.json for the data).")(f)
    return f


def models_option(f):
    f = click.option("--revision", default=None, help="Hub revision for hub ids.")(f)
    f = click.option("--model", "-m", "models", multiple=True, required=True,
                     help="Preset, config.json path or hub id; repeat for several models.")(f)
    return f


def plan_options(f):
    """The budget flags of ``kvcalc plan`` that change the KV budget."""
    f = click.option("--kv-budget", type=ByteSize(), default=None,
                     help="Skip the budget: KV memory per GPU (vLLM's 'Available KV cache "
                          "memory').")(f)
    f = click.option("--weights-dtype", type=click.Choice(WEIGHT_CHOICES), default="auto",
                     show_default=True, help="Weight storage for the budget (as plan).")(f)
    f = click.option("--gpu-util", type=float, default=None,
                     help="vLLM gpu_memory_utilization (default 0.9, as plan).")(f)
    f = click.option("--tp", type=int, default=1, show_default=True,
                     help="Tensor-parallel size: figures per GPU (vllm layout).")(f)
    return f


def range_options(f):
    f = click.option("--max-len", type=TokenList("max length", single=True), default=None,
                     help="Right end of the x axis (default: each model's context length).")(f)
    f = click.option("--min-len", type=TokenList("min length", single=True), default=None,
                     help="Left end of the x axis (default 1k).")(f)
    return f


def workload_options(f):
    """plan's workload flags."""
    f = click.option("--trace", default=None, metavar="FILE",
                     help="Workload trace: JSONL or CSV with prompt_len and output_len.")(f)
    f = click.option("--seed", type=int, default=0, show_default=True)(f)
    f = click.option("--samples", type=int, default=None, help="Draws for --dist (default 2000).")(f)
    f = click.option("--std", type=float, default=None, help="Standard deviation for --dist.")(f)
    f = click.option("--mean", type=float, default=None, help="Mean length for --dist (tokens).")(f)
    f = click.option("--dist", type=click.Choice(("uniform", "normal", "lognormal")), default=None,
                     help="Workload: total length drawn from this distribution.")(f)
    f = click.option("--output-len", type=TokenList("output length", single=True), default=None,
                     help="Fixed workload: generated tokens per request.")(f)
    f = click.option("--prompt-len", type=TokenList("prompt length", single=True), default=None,
                     help="Fixed workload: prompt tokens per request.")(f)
    return f


@click.group(cls=PlotGroup)
def plot():
    """Charts of KV memory, concurrency, waste and timings (needs: pip install 'kvcalc[plot]').

    \b
    Kinds:
      memory       KV memory vs context length, per model/layout/dtype; --gpu adds the budget
      concurrency  max concurrent sequences vs context length, contiguous vs paged
      waste        where the KV budget goes: token states, reservation waste,
                   internal fragmentation, free (stacked bars)
      timing       generation time with/without the cache, from a verify JSON report
      timeline     KV memory over time, from a `kvcalc simulate --timeline` CSV

    \b
    Examples:
      kvcalc plot memory -m llama-7b -m llama-3.1-8b --gpu h100 --out mem.png
      kvcalc plot concurrency -m llama-3.1-8b --gpu h100 --gpu a100-40gb --dist lognormal \\
          --mean 900 --std 700 --out conc.png
      kvcalc plot waste -m llama-3.1-8b --gpu h100 --max-len 2k,8k,32k --dist lognormal \\
          --mean 500 --std 400 --out waste.svg
      kvcalc plot timing --from report.json --out timing.png
      kvcalc plot memory -m gemma-3-27b --format csv
    """


def planner_layout_options(f):
    """--gpu (repeatable), --engine vllm, --kv-dtype (repeatable), --block-size: the planner
    charts (concurrency, waste)."""
    f = click.option("--block-size", type=int, default=None,
                     help="Tokens per KV block (default: vLLM's, as plan).")(f)
    f = click.option("--kv-dtype", "kv_dtypes", type=click.Choice(PLAN_KV_DTYPES), multiple=True,
                     default=("auto",), show_default=True, help="KV dtype (repeat to compare).")(f)
    f = click.option("--engine", type=click.Choice(engine_names(planning=True)), default="vllm",
                     show_default=True,
                     help="Layout the planner models (vLLM PagedAttention).")(f)
    f = click.option("--gpu", "-g", "gpus", multiple=True, default=("h100",), show_default=True,
                     help="Catalog GPU or a size such as 48GiB; repeat to compare GPUs.")(f)
    return f


@plot.command()
@models_option
@click.option("--engine", "engines", type=click.Choice(engine_names()), multiple=True,
              default=("hf",), show_default=True, help="Layout (repeat to compare hf and vllm).")
@click.option("--kv-dtype", "kv_dtypes", type=click.Choice(KV_DTYPE_CHOICES, case_sensitive=False),
              multiple=True, default=("auto",), show_default=True,
              help="KV cache element type (repeat to compare).")
@click.option("--block-size", type=int, default=None, help="vLLM block size (default 16).")
@version_options
@click.option("--batch", "-b", type=TokenList("batch size", single=True), default="1",
              show_default=True, help="Sequences: the y axis is the KV of this many.")
@range_options
@click.option("--gpu", "-g", "gpus", multiple=True,
              help="Add each model's KV budget on this GPU (catalog name or 48GiB), as plan.")
@plan_options
@click.option("--y-scale", type=click.Choice(("auto", "linear", "log")), default="auto",
              show_default=True,
              help="y axis; auto = log when the values span more than 16x.")
@output_options
def memory(models, revision, engines, kv_dtypes, block_size, batch, min_len, max_len, gpus, tp,
           gpu_util, weights_dtype, kv_budget, y_scale, out, fmt, size, dpi, **versions):
    """KV memory vs context length (log x, 1k to the models' context length).

    Each point is what `kvcalc estimate` prints for that sequence length; sliding-window and
    hybrid models show their plateaus. With --gpu, a line per model at `kvcalc plan`'s KV
    budget per GPU on that card.

    \b
    Example:
      kvcalc plot memory -m llama-7b -m llama-3.1-8b --gpu h100 --out mem.png
    """
    PlanOptions = api.PlanOptions
    memory_chart = api.memory_chart

    kind = _check_out(out, fmt)
    single = [e for e in engines if not engine_info(e).tensor_parallel]
    if tp > 1 and single:
        raise UsageError(f"--tp needs --engine vllm (the {single[0]} layout models one process)")
    chart = memory_chart(_load(models, revision), engines=list(engines),
                         kv_dtypes=_dtypes(kv_dtypes), batch=batch,
                         gpus=_gpus(gpus), min_len=min_len, max_len=max_len,
                         block_size=block_size, versions=versions,
                         plan=PlanOptions(tp=tp, gpu_util=gpu_util, weights_dtype=weights_dtype,
                                          block_size=block_size, kv_budget=kv_budget),
                         y_scale=y_scale)
    _emit(chart, kind, out, size, dpi)


@plot.command()
@models_option
@planner_layout_options
@range_options
@plan_options
@workload_options
@output_options
def concurrency(models, revision, gpus, engine, kv_dtypes, block_size, min_len, max_len, tp,
                gpu_util, weights_dtype, kv_budget, prompt_len, output_len, dist, mean, std,
                samples, seed, trace, out, fmt, size, dpi):
    """Maximum concurrent sequences vs context length, contiguous vs paged.

    Each point is `kvcalc plan --max-len L` on the GPU for the workload: contiguous
    allocation reserves L tokens per sequence, paged holds whole blocks of the actual lengths.
    Without a workload every request is L tokens long (as plan).

    \b
    Example:
      kvcalc plot concurrency -m llama-3.1-8b --gpu h100 --dist lognormal --mean 900 \\
          --std 700 --out conc.png
    """
    PlanOptions = api.PlanOptions
    WorkloadOptions = api.WorkloadOptions
    concurrency_chart = api.concurrency_chart

    kind = _check_out(out, fmt)
    chart = concurrency_chart(
        _load(models, revision), gpus=_gpus(gpus), kv_dtypes=_dtypes(kv_dtypes),
        workload=WorkloadOptions(prompt_len, output_len, dist, mean, std, samples, seed, trace),
        min_len=min_len, max_len=max_len,
        plan=PlanOptions(tp=tp, gpu_util=gpu_util, weights_dtype=weights_dtype,
                         block_size=block_size, kv_budget=kv_budget))
    _emit(chart, kind, out, size, dpi)


@plot.command()
@models_option
@planner_layout_options
@click.option("--max-len", "max_lens", type=TokenList("max length"), default=None,
              help="Reservation length(s), a list such as 2k,8k,32k: one pair of bars each "
                   "(default: the model's context length, as plan).")
@plan_options
@workload_options
@output_options
def waste(models, revision, gpus, engine, kv_dtypes, block_size, max_lens, tp, gpu_util,
          weights_dtype, kv_budget, prompt_len, output_len, dist, mean, std, samples, seed,
          trace, out, fmt, size, dpi):
    """Where the KV memory goes under a workload: stacked bars, contiguous vs paged.

    Token states, reservation waste (contiguous), internal fragmentation (paged) and free
    memory, in GiB of the KV budget per GPU: the allocator figures `kvcalc plan` prints.

    \b
    Example:
      kvcalc plot waste -m llama-3.1-8b --gpu h100 --max-len 2k,8k,32k --dist lognormal \\
          --mean 500 --std 400 --out waste.png
    """
    PlanOptions = api.PlanOptions
    WorkloadOptions = api.WorkloadOptions
    waste_chart = api.waste_chart

    kind = _check_out(out, fmt)
    workload = WorkloadOptions(prompt_len, output_len, dist, mean, std, samples, seed, trace)
    if workload.describe() == "every request at --max-len":
        warn("no workload given: every request is --max-len long, so nothing is wasted; "
             "give --prompt-len/--output-len, --dist or --trace")
    chart = waste_chart(_load(models, revision), gpus=_gpus(gpus), kv_dtypes=_dtypes(kv_dtypes),
                        max_lens=max_lens, workload=workload,
                        plan=PlanOptions(tp=tp, gpu_util=gpu_util, weights_dtype=weights_dtype,
                                         block_size=block_size, kv_budget=kv_budget))
    _emit(chart, kind, out, size, dpi)


@plot.command()
@click.option("--from", "reports", multiple=True, required=True, metavar="REPORT.json",
              help="A `kvcalc verify --format json` report; repeat to overlay several.")
@output_options
def timing(reports, out, fmt, size, dpi):
    """Generation time vs new tokens, with and without the KV cache (log scales, mean ± std),
    from `kvcalc verify --format json` reports.

    \b
    Example:
      kvcalc verify -m llama-3.1-8b --device cuda --format json > report.json
      kvcalc plot timing --from report.json --out timing.png
    """
    timing_chart = api.timing_chart

    kind = _check_out(out, fmt)
    _emit(timing_chart(list(reports)), kind, out, size, dpi)


@plot.command()
@click.option("--from", "timeline", required=True, metavar="TIMELINE.csv",
              help="A `kvcalc simulate --timeline` CSV.")
@click.option("--allocator", default=None,
              help="Draw one allocator's categories stacked (default: all, as lines).")
@output_options
def timeline(timeline, allocator, out, fmt, size, dpi):
    """KV memory over time from `kvcalc simulate --timeline`: one allocator's token states,
    reservation, fragmentation and free stacked, or every allocator's token-state share.

    \b
    Example:
      kvcalc simulate -m llama-3.1-8b --trace azure-conv-2023 --timeline t.csv
      kvcalc plot timeline --from t.csv --allocator paged --out timeline.png
    """
    timeline_chart = api.timeline_chart

    kind = _check_out(out, fmt)
    _emit(timeline_chart(timeline, allocator), kind, out, size, dpi)


# --------------------------------------------------------------------------------------------


def _check_out(out, fmt) -> str:
    check_out = api.check_out

    return check_out(out, fmt)


def _load(models, revision):
    from ..api import load_model as load_spec
    ModelInput = api.ModelInput

    out = []
    for name in models:
        resolved, spec = load_spec(name, revision)
        for message in spec.warnings:
            warn(message)
        if all(m.name != resolved.name for m in out):
            out.append(ModelInput(resolved.name, spec))
    return out


def _gpus(names):
    from ..api import resolve_gpu

    return [resolve_gpu(n) for n in dict.fromkeys(names)]


def _dtypes(values):
    return list(dict.fromkeys(v.lower() for v in values))


def _emit(chart, kind: str, out: str | None, size, dpi: int) -> None:
    atomic_write = api.atomic_write
    draw = api.draw
    to_text = api.to_text

    for message in chart.warnings:
        warn(message)
    if kind in ("csv", "json"):
        text = to_text(chart, kind)
        if out:
            try:   # the file appears only when complete
                with atomic_write(out) as fh:
                    fh.write(text)
            except OSError as exc:
                raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
            click.echo(f"wrote {out} ({len(chart.rows):,} rows)", err=True)
        else:
            echo_output(text)
        return
    width, height = round(size[0] * dpi), round(size[1] * dpi)
    if max(width, height) > MAX_PLOT_PIXELS:  # docs/security.md
        raise UsageError(f"a {width:,}x{height:,} px image is too large: at most "
                         f"{MAX_PLOT_PIXELS:,} px a side (lower --size or --dpi)")
    path = draw(chart, out, size, dpi)
    click.echo(f"wrote {path} ({round(size[0] * dpi)}x{round(size[1] * dpi)} px, "
               f"{chart.kind} chart, {len(chart.rows):,} data rows)")
