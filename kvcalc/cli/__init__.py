"""The ``kvcalc`` command: a thin click layer. Subcommands live in their own modules and are
imported only when invoked, so ``kvcalc estimate`` never pays for ``plan`` or ``verify``."""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, as_user_error
from ..render import printable

#: command name -> "module:attribute" (imported lazily)
COMMANDS = {
    "estimate": "kvcalc.cli.estimate:estimate",
    "models": "kvcalc.cli.models:models",
    "plan": "kvcalc.cli.plan:plan",
    "gpus": "kvcalc.cli.gpus:gpus",
    "verify": "kvcalc.cli.verify:verify",
    "plot": "kvcalc.cli.plot:plot",
    "versions": "kvcalc.cli.versions:versions",
    "simulate": "kvcalc.cli.simulate:simulate",
    "check": "kvcalc.cli.check:check",
    "size": "kvcalc.cli.size:size",
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
            command = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # a command not built yet
                return None
            raise
        from .completion import attach

        return attach(command)

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name and name not in COMMANDS and not name.startswith("-"):
            import difflib

            close = difflib.get_close_matches(name, list(COMMANDS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise click.UsageError(f"No such command '{name}'.{hint}", ctx)
        return super().resolve_command(ctx, args)

    def main(self, *args, **kwargs):
        """click's main, ending in kvcalc's exit statuses whatever stops it outside a command
        (--help or --version to a full disk or a closed pipe, Ctrl-C while parsing), and
        flushing stdout before the exit so a failed final write is one line, not Python's
        "Exception ignored" and status 120."""
        try:
            try:
                return super().main(*args, **kwargs)
            except KeyboardInterrupt:
                _say("interrupted")
                sys.exit(EXIT_INTERRUPTED)
            except OSError as exc:
                sys.exit(_output_failed(exc, 0))
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            try:
                sys.stdout.flush()
            except (OSError, ValueError) as exc:
                code = _output_failed(exc, code) if isinstance(exc, OSError) else code
            raise SystemExit(code) from None

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.ClickException as exc:
            raise _escaped(exc)
        except KeyboardInterrupt:
            _say("interrupted")
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None

    def invoke(self, ctx: click.Context):
        import warnings

        try:
            with warnings.catch_warnings():
                _show_kvcalc_warnings()
                return super().invoke(ctx)
        except click.exceptions.ClickException as exc:
            raise _escaped(exc)
        except click.exceptions.Abort as exc:
            if not isinstance(exc.__context__, KeyboardInterrupt):
                raise
            _say("interrupted")   # Ctrl-C at a prompt
            ctx.exit(EXIT_INTERRUPTED)
        except click.exceptions.Exit:
            raise
        except KeyboardInterrupt:
            _say("interrupted")
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `kvcalc ... | head`: the reader left; nothing more to say
            _silence_stdout()
            ctx.exit(EXIT_BROKEN_PIPE)
        except Exception as exc:  # noqa: BLE001 - last line of defence: never a traceback
            if ctx.obj and ctx.obj.get("debug"):
                raise
            error = as_user_error(exc)
            if error is not None:
                _say(f"error: {error}")
                ctx.exit(error.exit_code)
            _say(f"error: internal error: {type(exc).__name__}: {exc} "
                 "(run kvcalc --debug ... for the traceback)")
            ctx.exit(1)


def _escaped(exc: click.exceptions.ClickException) -> click.exceptions.ClickException:
    """``exc`` with its message through render.printable: click's own parameter errors quote
    the value given (``--seq $'\\e]0;x\\a'``, or a value read from an environment variable)."""
    exc.message = printable(exc.message)
    return exc


def _show_kvcalc_warnings() -> None:
    """Warnings the library raises for the user (a skipped user preset) print as one
    ``warning:`` line each, once per run; other warnings keep Python's handling."""
    import warnings

    from ..api import PresetWarning

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PresetWarning):
            _say(f"warning: {message}")
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    warnings.simplefilter("default", PresetWarning)


def _say(line: str) -> None:
    """One line on stderr, escaped (it may quote a config or the hub)."""
    try:
        click.echo(printable(line), err=True)
    except OSError:  # stderr closed too
        pass


def _output_failed(exc: OSError, code: int) -> int:
    """The exit status after writing stdout failed with ``exc``: a closed pipe is 141 and says
    nothing; anything else (a full disk) is one error line, unless the run has already failed
    (``code`` not 0: its line was said). Stdout is pointed at /dev/null so the interpreter's
    last flush stays quiet."""
    import errno

    _silence_stdout()
    if exc.errno == errno.EPIPE:
        return EXIT_BROKEN_PIPE
    if code == 0:
        _say(f"error: {as_user_error(exc)}")
        return 1
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not complain."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests)
        pass


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
