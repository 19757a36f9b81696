"""kvcalc verify: build the model with transformers, measure its cache, compare with estimate."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import click

from ..errors import KvcalcError, UsageError
from ..render import printable, key_values, table, to_csv, to_json, to_yaml
from ..units import format_bytes
from .common import TokenList, echo_output, format_option, llamacpp_options, warn

EXIT_VERIFY_FAILED = 4


@click.command()
@click.option("--model", "-m", default=None, help="Preset, config.json path, or hub id.")
@click.option("--revision", default=None, help="Hub revision for a hub id.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu", "meta"]), default="auto",
              show_default=True,
              help="auto = CUDA when present, else CPU; meta = shapes only, any model size.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Model and cache dtype (default: bf16 on CUDA, fp32 on CPU, the config's "
                   "on meta).")
@click.option("--prompt-len", type=TokenList("prompt length", single=True), default="32",
              show_default=True)
@click.option("--new-tokens", type=TokenList("new-token count"), default="1,10,100,1000",
              show_default=True, help="Generated tokens per run (a list).")
@click.option("--repeats", type=int, default=3, show_default=True,
              help="Timed runs per point, after one warm-up.")
@click.option("--layers", type=int, default=None,
              help="Keep the first N decoder layers (the prediction uses the same truncation).")
@click.option("--weights", type=click.Path(), default=None,
              help="Real weights: a checkpoint directory or a .gguf file.")
@click.option("--seq", "seqs", type=TokenList("sequence length"), default=None,
              help="meta: cache lengths to check (default: inside the windows and beyond).")
@click.option("--all", "all_presets", is_flag=True,
              help="meta: check every built-in preset.")
@click.option("--every-layer", is_flag=True,
              help="meta: run every decoder layer (default: each distinct layer once, its "
                   "twins replaying its cache calls; same bytes, several times faster).")
@click.option("--jobs", type=int, default=None,
              help="meta --all: parallel processes (default: the CPU count).")
@click.option("--threads", type=int, default=None,
              help="CPU threads for torch (default: torch's own choice; timings on a busy "
                   "machine are steadier with fewer).")
@click.option("--without-cache/--no-without-cache", default=True, show_default=True,
              help="Also time generation with use_cache=False.")
@click.option("--cache-tolerance", type=float, default=0.0, show_default=True,
              help="Allowed |error| of the cache bytes, percent (0 = exact).")
@click.option("--slope-tolerance", type=float, default=5.0, show_default=True,
              help="Allowed |error| of the CUDA bytes/token slope, percent.")
@click.option("--engine", type=click.Choice(("hf", "llamacpp")), default="hf",
              show_default=True,
              help="hf: transformers; llamacpp: llama.cpp through llama-cpp-python on the CPU "
                   "(--weights FILE.gguf, llama-server's options; docs/llamacpp.md).")
@click.option("--grid", is_flag=True,
              help="llamacpp: check a grid of context sizes, cache types, slots, unified, "
                   "swa_full and micro-batches.")
@llamacpp_options
@format_option
def verify(model, revision, device, dtype, prompt_len, new_tokens, repeats, layers, weights,
           seqs, all_presets, every_layer, jobs, threads, without_cache, cache_tolerance,
           slope_tolerance, fmt, engine="hf", grid=False, **server):
    """Measure real KV-cache memory with transformers and compare it with the prediction.

    \b
    Examples:
      kvcalc verify -m ./tiny/config.json --device cpu --new-tokens 1,10,50 --format json
      kvcalc verify -m llama-3.1-8b --device cuda --dtype bf16 --new-tokens 1,10,100,1000
      kvcalc verify -m deepseek-v3 --device cuda --layers 4
      kvcalc verify -m deepseek-v3 --device meta --seq 1k,32k
      kvcalc verify --device meta --all
      kvcalc verify --weights SmolLM2-135M-Instruct.Q4_1.gguf --device cpu --threads 1
      kvcalc verify --engine llamacpp --weights model.gguf --ctx-size 4096 --parallel 2
    """
    _check_numbers(repeats=repeats, jobs=jobs, threads=threads, layers=layers,
                   cache_tolerance=cache_tolerance, slope_tolerance=slope_tolerance)
    if engine == "llamacpp":  # kvcalc/verify/llamacpp.py, no torch needed
        from .verify_llamacpp import verify_llamacpp_command

        return verify_llamacpp_command(weights, model, server, grid, threads, fmt)
    if grid or any(v is not None for v in server.values()):
        raise UsageError("--grid and llama-server options apply to --engine llamacpp")
    from ..api import verify_require as require

    torch, transformers = require(*(("gguf",) if weights and str(weights).endswith(".gguf") else ()))
    if threads is not None:
        torch.set_num_threads(threads)
    if device == "meta" or all_presets:
        if all_presets and device not in ("meta", "auto"):
            raise UsageError("--all runs on the meta device (--device meta)")
        return _meta(model, revision, seqs, all_presets, dtype, layers, jobs, every_layer, fmt)
    if model is None and weights is None:
        raise UsageError("give --model (or --weights)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            warn("no CUDA device: verifying on the CPU (cache bytes exact; memory is the "
                 "process's peak RSS, best effort)")
    elif device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device (torch "
                         f"{torch.__version__}); use --device cpu or auto")
    from ..api import run_verify

    report = run_verify(model=model, revision=revision, device=device, dtype=dtype,
                        prompt_len=prompt_len, new_tokens=new_tokens, repeats=repeats,
                        layers=layers, weights=weights, with_and_without=without_cache,
                        cache_tolerance=cache_tolerance, slope_tolerance=slope_tolerance)
    _emit(report, fmt)
    if report.get("error"):
        raise KvcalcError(report["error"])
    if report.get("interrupted"):
        click.get_current_context().exit(130)
    if not report["passed"]:
        click.get_current_context().exit(EXIT_VERIFY_FAILED)


#: the most --repeats, --jobs and --threads verify takes
MAX_COUNT = 10_000


def _check_numbers(*, repeats, jobs, threads, layers, cache_tolerance, slope_tolerance) -> None:
    """Every numeric option, before anything is imported or built: counts at least 1 (a
    ``--layers 0`` must not verify the whole model), tolerances finite and not negative."""
    import math

    for flag, value in (("--repeats", repeats), ("--jobs", jobs), ("--threads", threads),
                        ("--layers", layers)):
        if value is not None and not 1 <= value <= MAX_COUNT:
            raise UsageError(f"{flag} must be from 1 to {MAX_COUNT:,}, got {value}")
    for flag, value in (("--cache-tolerance", cache_tolerance),
                        ("--slope-tolerance", slope_tolerance)):
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"{flag} must be a finite percentage of at least 0, got {value}")


@contextmanager
def _stop_workers_on_interrupt():
    """Ctrl-C during a parallel meta check stops the worker processes at once, so the queued
    checks are not run and the command exits 130 promptly (the process pool would otherwise
    run every queued check before the interrupt reached the command)."""
    import multiprocessing
    import signal

    def stop(signum, frame):
        for child in multiprocessing.active_children():
            child.terminate()
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, stop)
    except ValueError:  # not the main thread (an embedding program): leave SIGINT alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _emit(report: dict, fmt: str) -> None:
    if fmt == "json":
        echo_output(to_json(report))
        return
    if fmt == "yaml":
        echo_output(to_yaml(report))
        return
    if fmt == "csv":
        echo_output(to_csv(report["runs"]))
        return
    head = key_values([
        ("Model", f"{report['model']} ({report['parameters']:,} parameters, "
                  f"{report['weights']} weights{', first ' + str(report['layers']) + ' layers' if report['layers'] else ''})"),
        ("Device", f"{report['device']} ({report['device_name']})"),
        ("dtype", report["dtype"]),
        ("Versions", f"transformers {report['versions']['transformers']}, torch "
                     f"{report['versions']['torch']}"),
        ("Prompt", f"{report['prompt_len']} tokens; cache after g new tokens holds prompt + g - 1"),
    ], fmt)
    by_g: dict[int, dict] = {}
    for r in report["runs"]:
        by_g.setdefault(r["new_tokens"], {})[r["use_cache"]] = r
    rows = []
    for g, pair in by_g.items():
        w, wo = pair.get(True), pair.get(False)
        pred = report["predicted_by_new_tokens"].get(str(g))
        rows.append((
            f"{g:,}", f"{report['prompt_len'] + g - 1:,}",
            f"{pred:,}" if pred is not None else "-",
            f"{w['cache_bytes']:,}" if w and w["cache_bytes"] is not None else "-",
            ("=" if w and w["cache_bytes"] == pred else "≠") if w else "-",
            _secs(w), _secs(wo),
            f"{wo['seconds_mean'] / w['seconds_mean']:.2f}x" if w and wo and w["seconds_mean"] else "-",
            format_bytes(w["peak_bytes"]) if w and w["peak_bytes"] is not None else "-",
            format_bytes(wo["peak_bytes"]) if wo and wo["peak_bytes"] is not None else "-",
        ))
    body = table(rows, ("new tokens", "cached", "predicted B", "measured B", "", "with cache",
                        "without cache", "speed-up", "peak with", "peak without"), fmt)
    lines = [head, "", body, ""]
    if report.get("slope"):
        s = report["slope"]
        lines.append(f"CUDA KV bytes/token (allocator, cache dropped): measured "
                     f"{s['measured']:,.0f}, predicted {s['predicted']:,.0f} "
                     f"({s['error_pct']:+.2f}%, tolerance ±{s['tolerance_pct']}%)")
        if s.get("peak_slope") is not None:
            lines.append(f"slope of the with-cache peaks (context, includes activations): "
                         f"{s['peak_slope']:,.0f} B/token")
    lines.append(f"peak memory: {report['peak_note']}")
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines.append(f"verdict: {verdict} — cache bytes {report['measured_cache_bytes']:,} measured vs "
                 f"{report['predicted_cache_bytes']:,} predicted ({report['error_pct']:+.4f}%)"
                 if report["measured_cache_bytes"] is not None else f"verdict: {verdict}")
    if report.get("interrupted"):
        lines.append("interrupted: the table shows the runs that finished")
    if report.get("error"):
        lines.append("stopped: the table shows the runs that fitted")
    echo_output("\n".join(lines) + "\n")


def _secs(r) -> str:
    if not r or not r["seconds_mean"]:
        return "-"
    return f"{r['seconds_mean'] * 1000:,.1f} ± {r['seconds_std'] * 1000:,.1f} ms"


def _meta(model, revision, seqs, all_presets, dtype, layers, jobs, every_layer, fmt) -> None:
    import os

    import transformers

    from ..api import load_model as load_spec, preset_list as presets, truncate_config
    from ..api import check_many

    targets = []
    if all_presets:
        targets = [(p.name, dict(p.data["config"]), "partial" in str(p.data.get("source", "")))
                   for p in presets() if p.origin == "built-in"]
    else:
        if model is None:
            raise UsageError("give --model or --all")
        resolved, _ = load_spec(model, revision)
        targets = [(resolved.name, dict(resolved.config), False)]
    partial = {name: is_partial for name, _, is_partial in targets}
    work = [(name, truncate_config(raw, layers) if layers else raw, seqs, dtype)
            for name, raw, _ in targets]
    rows = []
    jobs = jobs or os.cpu_count() or 1
    with click.progressbar(length=len(work), label="meta check", show_pos=True,
                           file=sys.stderr) as bar, _stop_workers_on_interrupt():
        for results in check_many(work, jobs, every_layer):
            for r in results:
                rows.append({"model": r.model, "partial_config": partial[r.model], "seq": r.seq,
                             "dtype": r.dtype, "predicted_bytes": r.predicted_bytes,
                             "transformers_bytes": r.measured_bytes, "match": r.match,
                             "reason": r.error})
            bar.update(1)
    rows.sort(key=lambda r: (r["model"], r["seq"]))
    summary = {"transformers": transformers.__version__, "device": "meta",
               "checked": sum(1 for r in rows if r["match"] is not None),
               "matched": sum(1 for r in rows if r["match"]),
               "mismatched": sum(1 for r in rows if r["match"] is False),
               "not_built": sorted({r["model"] for r in rows if r["match"] is None}),
               "rows": rows}
    # a verdict needs at least one check: "0 of 0" (an unknown model_type, remote code) fails
    summary["passed"] = summary["checked"] > 0 and summary["mismatched"] == 0
    if fmt == "json":
        echo_output(to_json(summary))
    elif fmt == "yaml":
        echo_output(to_yaml(summary))
    elif fmt == "csv":
        echo_output(to_csv(rows))
    else:
        body = [(r["model"] + (" (partial)" if r["partial_config"] else ""), f"{r['seq']:,}",
                 r["dtype"], f"{r['predicted_bytes']:,}",
                 f"{r['transformers_bytes']:,}" if r["transformers_bytes"] is not None else "-",
                 {True: "yes", False: "NO", None: "not built: " + str(r["reason"])}[r["match"]])
                for r in rows]
        echo_output(f"meta-device check, transformers {transformers.__version__}: "
                    f"{summary['matched']} of {summary['checked']} checks match to the byte\n\n"
                    + table(body, ("model", "seq", "dtype", "predicted B", "transformers B",
                                   "match"), fmt) + "\n")
    if not summary["checked"]:
        reasons = sorted({str(r["reason"]) for r in rows if r["reason"]})
        # an error line, as every non-zero exit has (exit 4: nothing verified)
        click.echo(printable("error: no check could be made, so nothing is verified: "
                             + ("; ".join(reasons) or "nothing to check")), err=True)
    if not summary["passed"]:
        click.get_current_context().exit(EXIT_VERIFY_FAILED)
