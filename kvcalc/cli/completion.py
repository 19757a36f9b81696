"""Shell completion of preset names, GPU names and paths (click's shell_complete).

Engines, dtypes and output formats are ``click.Choice`` options, which click completes itself;
``--model`` and ``--gpu`` are free text (a preset or a path or a hub id; a catalog GPU or a
memory size), so their completions are attached here to every command that has them, in one
place (:func:`attach`), when the command is loaded. Install: docs/cli.md, "Shell completion".
"""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

from ..render import printable

#: option names (click's parameter names) -> completion function name
MODEL_PARAMS = frozenset({"model", "models"})
GPU_PARAMS = frozenset({"gpu", "gpus"})


def _looks_like_path(incomplete: str) -> bool:
    return incomplete.startswith((".", "/", "~")) or "/" in incomplete and incomplete.count("/") > 1


def complete_model(ctx: click.Context, param: click.Parameter, incomplete: str):
    """Preset names and aliases (built-in and the user's) starting with ``incomplete``; file
    completion when it looks like a path."""
    if _looks_like_path(incomplete):
        return [CompletionItem(incomplete, type="file")]
    from ..api import preset_list

    items = []
    for preset in preset_list():
        for name in (preset.name, *preset.aliases):
            if name.startswith(incomplete):
                items.append(entry(name, preset.display_name or None))
    return items or [CompletionItem(incomplete, type="file")]


def entry(value: str, help: str | None = None) -> CompletionItem:
    """One completion entry, its value and help escaped on one line (render.printable): a
    user preset's name or description reaches the terminal at TAB and may hold escape sequences
    or a newline that would inject another entry."""
    return CompletionItem(printable(value, one_line=True),
                          help=printable(help, one_line=True) if help else None)


def complete_gpu(ctx: click.Context, param: click.Parameter, incomplete: str):
    """GPU catalog names and aliases starting with ``incomplete``."""
    from ..api import gpu_catalog as load_catalog

    return [entry(name, gpu.name if name != gpu.name else None)
            for gpu in load_catalog() for name in (gpu.name, *gpu.aliases)
            if name.startswith(incomplete)]


def attach(command: click.Command) -> click.Command:
    """Give ``command``'s (and its subcommands') --model / --gpu options their completions,
    unless one was set where the option is declared."""
    for param in command.params:
        if not isinstance(param, click.Option) or param._custom_shell_complete is not None:
            continue
        if param.name in MODEL_PARAMS:
            param._custom_shell_complete = complete_model
        elif param.name in GPU_PARAMS:
            param._custom_shell_complete = complete_gpu
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            attach(sub)
    return command
