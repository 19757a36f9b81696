"""kvcalc models: list presets, show one."""

from __future__ import annotations

import click

from ..arch import build_spec
from ..errors import KvcalcError, ModelNotFoundError
from ..layout import build_layout
from ..render import key_values, table, to_csv, to_json, to_yaml
from ..sources import all_presets, find_preset, preset_names, suggest
from ..units import format_bytes
from .common import echo_output, format_option


def _summary(preset) -> dict:
    row = {"name": preset.name, "display_name": preset.display_name, "hub_id": preset.hub_id,
           "aliases": list(preset.aliases), "origin": preset.origin, "path": str(preset.path)}
    try:
        spec = build_spec(preset.data["config"], preset.name)
        row["model_type"] = spec.model_type
        row["layers"] = spec.num_layers
        kinds: dict[str, int] = {}
        for layer in spec.layers:
            kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
        row["layer_kinds"] = kinds
        row["dtype"] = spec.dtype
        row["bytes_per_token_hf"] = build_layout(spec, "hf").bytes_per_token
        row["bytes_per_token_vllm"] = build_layout(spec, "vllm").bytes_per_token
        row["max_position_embeddings"] = spec.max_position_embeddings
    except KvcalcError as exc:
        row["error"] = str(exc)
    return row


@click.group(invoke_without_command=True)
@format_option
@click.pass_context
def models(ctx, fmt):
    """List model presets with their KV bytes per token (model dtype).

    \b
    Examples:
      kvcalc models
      kvcalc models --format json
      kvcalc models show llama-7b
    """
    if ctx.invoked_subcommand is not None:
        return
    rows = [_summary(p) for p in all_presets()]
    if fmt == "json":
        echo_output(to_json(rows))
    elif fmt == "yaml":
        echo_output(to_yaml(rows))
    elif fmt == "csv":
        echo_output(to_csv(rows, ("name", "hub_id", "model_type", "layers", "dtype",
                                  "bytes_per_token_hf", "bytes_per_token_vllm", "origin")))
    else:
        body = [(r["name"], r.get("hub_id") or "-", r.get("model_type", "?"),
                 _kinds(r.get("layer_kinds", {})), r.get("dtype", "?"),
                 _bpt(r.get("bytes_per_token_hf")), _bpt(r.get("bytes_per_token_vllm")),
                 r["origin"]) for r in rows]
        echo_output(table(body, ("name", "hub id", "type", "layers", "dtype", "hf B/token",
                                 "vllm B/token", "origin"), fmt) + "\n")


@models.command("show")
@click.argument("name")
@format_option
def show(name, fmt):
    """Show one preset: provenance, layers and the config fields kvcalc reads."""
    preset = find_preset(name)
    if preset is None:
        raise ModelNotFoundError(f"unknown preset '{name}'" + suggest(name, preset_names()))
    row = _summary(preset)
    row["source"] = preset.data.get("source")
    row["notes"] = preset.data.get("notes")
    if fmt in ("json", "yaml"):
        row["config"] = dict(preset.data["config"])
        echo_output(to_json(row) if fmt == "json" else to_yaml(row))
        return
    if fmt == "csv":
        echo_output(to_csv([row]))
        return
    pairs = [("name", row["name"]), ("display name", row["display_name"]),
             ("aliases", ", ".join(row["aliases"]) or "-"), ("hub id", row["hub_id"] or "-"),
             ("origin", f"{row['origin']} ({row['path']})"), ("source", row["source"] or "-"),
             ("notes", row["notes"] or "-")]
    if "error" in row:
        pairs.append(("error", row["error"]))
    else:
        pairs += [("model type", row["model_type"]), ("layers", _kinds(row["layer_kinds"])),
                  ("dtype", row["dtype"]),
                  ("max context", f"{row['max_position_embeddings']:,}" if row["max_position_embeddings"] else "-"),
                  ("hf B/token", _bpt(row["bytes_per_token_hf"])),
                  ("vllm B/token", _bpt(row["bytes_per_token_vllm"]))]
    echo_output(key_values(pairs, fmt) + "\n")


def _kinds(kinds: dict) -> str:
    return " + ".join(f"{n} {k}" for k, n in kinds.items()) or "-"


def _bpt(value) -> str:
    return f"{value:,} ({format_bytes(value)})" if value is not None else "?"
