"""kvcalc estimate: KV bytes per token, per sequence and per batch."""

from __future__ import annotations

import click

from .. import api
from ..render import key_values, table, to_csv, to_json, to_yaml
from ..units import format_bytes
from .common import (TokenList, allocation_options, allocation_settings, echo_output,
                     format_option, layout_options, model_options, warn)

CSV_COLUMNS = ("model", "engine", "kv_dtype", "block_size", "seq", "batch", "bytes_per_token",
               "bytes_per_sequence", "bytes_total")


@click.command()
@model_options
@click.option("--seq", "-s", "seqs", type=TokenList("sequence length"), default="4096",
              show_default=True,
              help="Tokens in the cache per sequence; a list (1k,4k,32k) makes a sweep. "
                   "k = 1024, M = 1024^2.")
@click.option("--batch", "-b", "batches", type=TokenList("batch size"), default="1",
              show_default=True, help="Sequences in the batch; a list makes a sweep.")
@layout_options
@allocation_options
@format_option
def estimate(model, revision, seqs, batches, engine, kv_dtype, block_size, fmt, **versions):
    """KV-cache bytes per token, per sequence and per batch for one model.

    \b
    Examples:
      kvcalc estimate --model llama-7b --seq 4096
      kvcalc estimate --model deepseek-v3 --seq 32k --engine vllm --kv-dtype fp8
      kvcalc estimate --model gemma-3-27b --seq 1k,8k,128k --batch 1,8 --format csv
      kvcalc estimate --model model.gguf --engine llamacpp --ctx-size 32k --parallel 4
      kvcalc estimate --model model.gguf --engine ollama --num-ctx 8192 --num-parallel 4
    """
    settings = allocation_settings(engine, versions)
    versions = {k: v for k, v in versions.items() if k.endswith("_version")}
    results = api.estimate_sweep(model, revision=revision, seqs=seqs, batches=batches,
                                 engine=engine, kv_dtype=kv_dtype, block_size=block_size,
                                 **versions, **settings)
    records = [r.to_dict() for r in results]
    for message in dict.fromkeys(w for r in records for w in r["warnings"]):
        warn(message)
    if fmt == "json":
        echo_output(to_json(records[0] if len(records) == 1 else records))
    elif fmt == "yaml":
        echo_output(to_yaml(records[0] if len(records) == 1 else records))
    elif fmt == "csv":
        echo_output(to_csv(records, CSV_COLUMNS))
    elif len(records) == 1 and "llamacpp" in records[0] and _seq_defaulted():
        # llama.cpp / Ollama allocate the whole context up front: that is the one answer
        echo_output(_allocation_answer(records[0], fmt))
    elif len(records) == 1:
        echo_output(_single_table(records[0], fmt))
    else:
        echo_output(_sweep_table(records, fmt))


def _single_table(rec: dict, fmt: str) -> str:
    bold = "**" if fmt == "markdown" else ""
    header = key_values([
        ("Model", f"{rec['model']} ({rec['model_type']}; {_source(rec)})"),
        ("Engine", rec["engine_detail"]),
        ("KV dtype", rec["kv_dtype"]),
        ("Sequence", f"{rec['seq']:,} tokens in the cache x batch {rec['batch']:,}"),
    ], fmt)
    totals = table([
        ("per token", f"{rec['bytes_per_token']:,}", rec["human"]["per_token"]),
        ("per sequence", f"{rec['bytes_per_sequence']:,}", rec["human"]["per_sequence"]),
        (f"per batch ({rec['batch']})", f"{rec['bytes_total']:,}", rec["human"]["total"]),
    ], ("KV cache", "bytes", "human (GiB = 2^30)"), fmt)
    rows = []
    for g in rec["layers"]:
        rows.append((
            g["kind"], g["count"],
            f"{g['bytes_per_token']:,}" if g["bytes_per_token"] else "-",
            f"{g['window']:,}" if g["window"] else "-",
            f"{g['tokens_held']:,}" if g["bytes_per_token"] else "-",
            f"{g['fixed_bytes']:,}" if g["fixed_bytes"] else "-",
            format_bytes(g["bytes_per_sequence"]),
        ))
    layers = table(rows, ("layer kind", "layers", "B/token/layer", "window", "tokens held",
                          "state B/layer", "per sequence"), fmt)
    parts = [header, "", totals, "", layers, "", f"{bold}Formula{bold}: {rec['formula']}"]
    if "llamacpp" in rec:
        parts += ["", _allocation_table(rec["llamacpp"], fmt)]
    if rec["notes"]:
        parts.append("")
        parts.extend(f"note: {n}" for n in rec["notes"])
    return "\n".join(parts) + "\n"


def _seq_defaulted() -> bool:
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source("seqs") in (
        click.core.ParameterSource.DEFAULT, None)


def _allocation_answer(rec: dict, fmt: str) -> str:
    """The estimate of an engine that reserves its context at start-up: the model, the bytes
    of one cell, and what it allocates (no --seq table: --seq was not given)."""
    bold = "**" if fmt == "markdown" else ""
    header = key_values([
        ("Model", f"{rec['model']} ({rec['model_type']}; {_source(rec)})"),
        ("Engine", rec["engine_detail"]),
        ("KV dtype", rec["kv_dtype"]),
        ("Per token", f"{rec['bytes_per_token']:,} B ({rec['human']['per_token']}) per cell"),
    ], fmt)
    parts = [header, "", _allocation_table(rec["llamacpp"], fmt), "",
             f"{bold}Formula{bold}: {rec['formula']}"]
    if rec["notes"]:
        parts.append("")
        parts.extend(f"note: {n}" for n in rec["notes"])
    return "\n".join(parts) + "\n"


def _allocation_table(a: dict, fmt: str) -> str:
    """What llama.cpp allocates at start-up: one row per cache, and the total."""
    title = (f"llama.cpp allocates at start-up: n_ctx {a['n_ctx']:,}, n_ctx_seq "
             f"{a['n_ctx_seq']:,}, {a['n_seq_max']} slot(s) in {a['n_stream']} stream(s)"
             f"{' (unified)' if a['kv_unified'] else ''}, K {a['cache_type_k']}, V "
             f"{a['cache_type_v']}, flash attention {'on' if a['flash_attn'] else 'off'}, "
             f"n_ubatch {a['n_ubatch']:,}{', swa_full' if a['swa_full'] else ''}")
    rows = [(c["cache"], f"{c['cells_per_stream']:,}", c["n_stream"], c["layers"],
             f"{c['k_bytes']:,}", f"{c['v_bytes']:,}", f"{c['total_bytes']:,}",
             format_bytes(c["total_bytes"])) for c in a["caches"]]
    rows.append(("total", "", "", "", f"{a['k_bytes']:,}", f"{a['v_bytes']:,}",
                 f"{a['total_bytes']:,}", format_bytes(a["total_bytes"])))
    body = table(rows, ("cache", "cells/stream", "streams", "layers", "K bytes", "V bytes",
                        "bytes", "human"), fmt)
    return f"{title}\n\n{body}"


def _sweep_table(records: list[dict], fmt: str) -> str:
    first = records[0]
    title = (f"{first['model']} · {first['engine_detail']} · KV {first['kv_dtype']} · "
             f"{first['bytes_per_token']:,} B/token ({first['human']['per_token']})")
    rows = [(f"{r['seq']:,}", f"{r['batch']:,}", f"{r['bytes_per_sequence']:,}",
             r["human"]["per_sequence"], f"{r['bytes_total']:,}", r["human"]["total"])
            for r in records]
    body = table(rows, ("seq", "batch", "bytes/sequence", "per sequence", "bytes total", "total"), fmt)
    return f"{title}\n\n{body}\n"


def _source(rec: dict) -> str:
    src = rec["source"]
    if src.get("detail"):
        return src["detail"]
    if src["kind"] == "preset":
        return f"preset, hub id {src['hub_id']}" if src["hub_id"] else "preset"
    if src["kind"] == "hub":
        return f"hub {src['hub_id']}@{src['revision'] or 'main'}"
    return src["location"]
