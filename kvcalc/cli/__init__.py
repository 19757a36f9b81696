"""The ``kvcalc`` command: a thin click layer. Subcommands live in their own modules and are
imported only when invoked, so ``kvcalc estimate`` never pays for ``plan`` or ``verify``."""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import KvcalcError

#: command name -> "module:attribute" (imported lazily)
COMMANDS = {
    "estimate": "kvcalc.cli.estimate:estimate",
    "models": "kvcalc.cli.models:models",
    "plan": "kvcalc.cli.plan:plan",
    "gpus": "kvcalc.cli.gpus:gpus",
    "verify": "kvcalc.cli.verify:verify",
    "plot": "kvcalc.cli.plot:plot",
}


class LazyGroup(click.Group):
    """A click group that imports subcommands on demand and turns user errors into one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # a command not built yet
                return None
            raise

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name and name not in COMMANDS and not name.startswith("-"):
            import difflib

            close = difflib.get_close_matches(name, list(COMMANDS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise click.UsageError(f"No such command '{name}'.{hint}", ctx)
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KvcalcError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - last line of defence: never a traceback
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: internal error: {type(exc).__name__}: {exc} "
                       "(run kvcalc --debug ... for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kvcalc")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """kvcalc: KV-cache memory and capacity planning for LLM inference.

    \b
    Examples:
      kvcalc estimate --model llama-7b --seq 4096
      kvcalc estimate --model ./config.json --seq 1k,32k,128k --engine vllm --kv-dtype fp8
      kvcalc models
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    cli.main(prog_name="kvcalc", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
