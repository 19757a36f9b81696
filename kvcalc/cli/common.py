"""Options shared by several commands, and the helpers that turn them into domain objects."""

from __future__ import annotations

import click

from ..dtypes import KV_DTYPE_CHOICES
from ..errors import UsageError
from ..engines import engine_names, engines, get_engine
from ..render import FORMATS, printable
from ..units import parse_bytes, parse_token_list, parse_tokens


def model_options(f):
    """--model and --revision."""
    f = click.option("--revision", default=None,
                     help="Hub revision (branch, tag or commit) for a hub id.")(f)
    f = click.option("--model", "-m", required=True,
                     help="Preset name or alias, path to a config.json (or its directory), "
                          "or a Hugging Face hub id org/name[@revision].")(f)
    return f


def version_options(f):
    """One --<engine>-version option per registered engine (--hf-version, --vllm-version)."""
    for engine in reversed(engines()):
        bands = ", ".join(f"{b.name}" for b in engine.bands)
        f = click.option(engine.version_flag, f"{engine.name}_version", default=None,
                         metavar="X.Y",
                         help=f"{engine.display_name} version whose layout is modelled "
                              f"(default {engine.default_version}; bands {bands}).")(f)
    return f


def engine_version(engine: str, versions: dict) -> str | None:
    """The version given for ``engine`` among the --<engine>-version options."""
    return versions.get(f"{get_engine(engine).name}_version")


def layout_options(f):
    """--engine, --kv-dtype, --block-size and the engines' --<engine>-version options."""
    f = version_options(f)
    f = click.option("--block-size", type=int, default=None,
                     help="vLLM block size in tokens (default 16).")(f)
    f = click.option("--kv-dtype", type=click.Choice(KV_DTYPE_CHOICES, case_sensitive=False),
                     default="auto", show_default=True,
                     help="KV cache element type; auto = the model's torch_dtype.")(f)
    f = click.option("--engine", type=click.Choice(engine_names()), default="hf",
                     show_default=True,
                     help="Runtime layout: hf (transformers DynamicCache) or vllm "
                          "(PagedAttention).")(f)
    return f


def format_option(f):
    return click.option("--format", "-f", "fmt", type=click.Choice(FORMATS), default="table",
                        show_default=True, help="Output format.")(f)


def tokens_type(what: str):
    return TokenList(what, single=True)


class TokenList(click.ParamType):
    """A token count or comma-separated list: 4096, 4k, 1k,32k,128K."""

    name = "tokens"

    def __init__(self, what: str = "token count", single: bool = False):
        self.what = what
        self.single = single

    def convert(self, value, param, ctx):
        if isinstance(value, (int, list)):
            return value
        try:
            return parse_tokens(value, self.what) if self.single else parse_token_list(value, self.what)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


def warn(message: str) -> None:
    click.echo(printable(f"warning: {message}"), err=True)


def echo_output(text: str) -> None:
    """Everything a command prints on stdout: escaped by the one sanitiser (render.printable)."""
    click.echo(printable(text), nl=not text.endswith("\n"))


class ByteSize(click.ParamType):
    """A byte amount: 3GiB, 80GB, 512MiB, or plain bytes."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_bytes(value, param.opts[0] if param else "size")
        except UsageError as exc:
            self.fail(str(exc), param, ctx)
