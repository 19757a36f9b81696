"""kvcalc models: list presets (and where each comes from), show one, add one from the hub."""

from __future__ import annotations

import click

from .. import api
from ..errors import ModelNotFoundError
from ..render import key_values, table, to_csv, to_json, to_yaml
from ..units import format_bytes
from .common import echo_output, format_option


@click.group(invoke_without_command=True)
@click.option("--ollama", "ollama", is_flag=True,
              help="List the Ollama library names kvcalc resolves (family:size -> preset, "
                   "default quantization); add -variant and -quant to a tag as Ollama does.")
@format_option
@click.pass_context
def models(ctx, ollama, fmt):
    """List model presets with their KV bytes per token (model dtype).

    \b
    Examples:
      kvcalc models
      kvcalc models --format json
      kvcalc models --ollama
      kvcalc models show llama-7b
      kvcalc models add Qwen/Qwen3-8B --as qwen3-8b-mine
    """
    if ctx.invoked_subcommand is not None:
        return
    if ollama:
        rows = api.ollama_names()
        if fmt in ("json", "yaml", "csv"):
            echo_output({"json": to_json, "yaml": to_yaml}.get(fmt, lambda r: to_csv(
                r, ("ollama", "preset", "quantization", "note")))(rows))
        else:
            echo_output(table([(r["ollama"], r["preset"], r["quantization"].upper(),
                                r["note"] or "") for r in rows],
                              ("Ollama name", "preset", "default quant", "note"), fmt) + "\n")
        return
    rows = [api.preset_summary(p) for p in api.preset_list()]
    if fmt == "json":
        echo_output(to_json(rows))
    elif fmt == "yaml":
        echo_output(to_yaml(rows))
    elif fmt == "csv":
        echo_output(to_csv(rows, ("name", "hub_id", "model_type", "layers", "dtype",
                                  "bytes_per_token_hf", "bytes_per_token_vllm", "origin",
                                  "path")))
    else:
        body = [(r["name"], r.get("hub_id") or "-", r.get("model_type", "?"),
                 _kinds(r.get("layer_kinds", {})), r.get("dtype", "?"),
                 _bpt(r.get("bytes_per_token_hf")), _bpt(r.get("bytes_per_token_vllm")),
                 _origin(r)) for r in rows]
        echo_output(table(body, ("name", "hub id", "type", "layers", "dtype", "hf B/token",
                                 "vllm B/token", "origin"), fmt) + "\n" + _folders_note(fmt))


def _origin(row: dict) -> str:
    if row["origin"] != "user":
        return row["origin"]
    text = f"user {_tilde(row['folder'])}"
    return text + " (overrides built-in)" if row.get("overrides_builtin") else text


def _tilde(path: str) -> str:
    from pathlib import Path

    home = str(Path.home())
    return "~" + path[len(home):] if home != "/" and path.startswith(home + "/") else path


def _folders_note(fmt: str) -> str:
    folders = ", ".join(_tilde(str(d)) for d in api.user_preset_dirs())
    if fmt == "markdown":
        return ""
    return (f"\nUser presets (first wins, then built-in): {folders}\n"
            "Add one with: kvcalc models add org/name [--as NAME]\n")


@models.command("show")
@click.argument("name")
@format_option
def show(name, fmt):
    """Show one preset: provenance, layers and the config fields kvcalc reads."""
    preset = api.find_preset(name)
    if preset is None:
        raise ModelNotFoundError(f"unknown preset '{name}'" + api.unknown_preset_hint(name))
    row = api.preset_summary(preset)
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


@models.command("add")
@click.argument("hub_id", metavar="ORG/NAME[@REVISION]")
@click.option("--as", "name", default=None, metavar="NAME",
              help="Preset name (default: the repository name, lowercased).")
@click.option("--revision", default=None, help="Branch, tag or commit (default main).")
@click.option("--force", is_flag=True, help="Replace a user preset of the same name.")
def add(hub_id, name, revision, force):
    """Save a hub model's config.json as a user preset.

    \b
    The preset goes to the first user preset folder ($KVCALC_PRESETS, else
    $XDG_CONFIG_HOME/kvcalc/presets) and then resolves by name, offline, ahead of a
    built-in preset of the same name. Writes are atomic; an existing user preset is kept
    unless --force.

    \b
    Examples:
      kvcalc models add meta-llama/Llama-3.1-8B
      kvcalc models add Qwen/Qwen3-8B@main --as qwen3-8b-mine
      kvcalc estimate --model qwen3-8b-mine --seq 32k
    """
    saved = api.add_preset(hub_id, name, revision, force)
    commit = saved["commit"]
    click.echo(f"saved {saved['repo_id']}@{(commit or 'main')[:12]} as preset '{saved['name']}' "
               f"in {saved['path']}"
               + (" (overrides the built-in preset of that name)" if saved["overrides_builtin"]
                  else ""))
    click.echo(f"use it with: kvcalc estimate --model {saved['name']}")
