"""Options shared by several commands, and the helpers that turn them into domain objects."""

from __future__ import annotations

import click

from .. import api
from ..api import ALLOCATION_OPTIONS, KV_DTYPE_CHOICES, engine_names
from ..errors import UsageError
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
    for engine in reversed(api.engine_cards()):   # no engine module imported
        bands = ", ".join(engine.bands)
        f = click.option(engine.version_flag, f"{engine.name}_version", default=None,
                         metavar="X.Y",
                         help=f"{engine.display_name} version whose layout is modelled "
                              f"(default {engine.default_version}; bands {bands}).")(f)
    return f


def engine_version(engine: str, versions: dict) -> str | None:
    """The version given for ``engine`` among the --<engine>-version options."""
    return versions.get(f"{api.engine_name(engine)}_version")


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


#: options of the engines that allocate the cache up front, under the engines' own names
#: (llama-server's and Ollama's; docs/llamacpp.md), as estimate/plan keyword -> engines


def llamacpp_options(f):
    """llama-server's options, under its own names (--ctx-size, --parallel, ...)."""
    tokens = TokenList("token count", single=True)
    options = [
        click.option("--ctx-size", type=TokenList("token count", single=True, zero=True),
                     default=None,
                     help="llamacpp: llama-server -c, tokens over all slots (default 0 = the "
                          "model's context length)."),
        click.option("--parallel", type=int, default=None,
                     help="llamacpp: llama-server -np, slots (default auto: 4 with a unified "
                          "cache)."),
        click.option("--kv-unified/--no-kv-unified", "kv_unified", default=None,
                     help="llamacpp: one cache stream shared by all slots (default: on with "
                          "-np auto, off with an explicit --parallel)."),
        click.option("--cache-type-k", type=LazyChoice("cache_type"), default=None,
                     help="llamacpp: K cache type (default f16, or --kv-dtype)."),
        click.option("--cache-type-v", type=LazyChoice("cache_type"), default=None,
                     help="llamacpp: V cache type; quantized types need flash attention."),
        click.option("--flash-attn", type=LazyChoice("flash_attn"), default=None,
                     help="llamacpp: flash attention (default auto)."),
        click.option("--swa-full/--no-swa-full", "swa_full", default=None,
                     help="llamacpp: sliding-window layers keep the full context (default "
                          "off in llama-server, on in the C API and llama-cpp-python)."),
        click.option("--batch-size", type=int, default=None,
                     help="llamacpp: llama-server -b, logical batch (default 2048)."),
        click.option("--ubatch-size", type=int, default=None,
                     help="llamacpp: llama-server -ub, micro-batch (default 512); sizes the "
                          "SWA cache."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def ollama_options(f):
    """Ollama's settings (--num-ctx, ...), read from the OLLAMA_* variables when absent."""
    tokens = TokenList("token count", single=True)
    options = [
        click.option("--num-ctx", type=FromEnv(tokens), default=None,
                     envvar="OLLAMA_CONTEXT_LENGTH",
                     help="ollama: context per request (OLLAMA_CONTEXT_LENGTH; default 4096)."),
        click.option("--num-parallel", type=FromEnv(click.INT), default=None,
                     envvar="OLLAMA_NUM_PARALLEL",
                     help="ollama: requests at once (OLLAMA_NUM_PARALLEL; default 1)."),
        click.option("--kv-cache-type", type=FromEnv(LazyChoice("kv_cache_type")), default=None,
                     envvar="OLLAMA_KV_CACHE_TYPE",
                     help="ollama: K and V cache type (OLLAMA_KV_CACHE_TYPE; default f16)."),
        click.option("--flash-attention/--no-flash-attention", "flash_attention", default=None,
                     type=FromEnvBool(click.BOOL), envvar="OLLAMA_FLASH_ATTENTION",
                     help="ollama: OLLAMA_FLASH_ATTENTION (default: unset = auto)."),
        click.option("--num-batch", type=int, default=None,
                     help="ollama: num_batch (default 512 / 1024 / 2048 by num_ctx x "
                          "num_parallel)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def allocation_options(f):
    """llama-server's options and Ollama's (docs/llamacpp.md)."""
    return llamacpp_options(ollama_options(f))


def allocation_settings(engine: str, kwargs: dict) -> dict:
    """The up-front allocation options given, checked against ``engine``: an option of another
    engine is an error naming the engine it belongs to. Environment variables (OLLAMA_*) only
    count for Ollama."""
    name = api.engine_name(engine)
    ctx = click.get_current_context(silent=True)
    given = {}
    for key, owner in ALLOCATION_OPTIONS.items():
        value = kwargs.get(key)
        if value is None:
            continue
        from_env = ctx is not None and ctx.get_parameter_source(key) == \
            click.core.ParameterSource.ENVIRONMENT
        if owner != name:
            if from_env:
                continue
            raise UsageError(f"--{key.replace('_', '-')} is a setting of --engine {owner}, "
                             f"not {name}")
        if isinstance(value, InvalidFromEnv):
            raise UsageError(str(value))
        given[key] = value
    return given


def with_allocation_settings(engine: str, options: dict) -> dict:
    """``options`` with the up-front allocation options replaced by those
    :func:`allocation_settings` keeps for ``engine`` (the keyword arguments of kvcalc.api)."""
    kept = allocation_settings(engine, options)
    return {k: v for k, v in options.items() if k not in ALLOCATION_OPTIONS} | kept


def format_option(f):
    return click.option("--format", "-f", "fmt", type=click.Choice(FORMATS), default="table",
                        show_default=True, help="Output format.")(f)


def tokens_type(what: str):
    return TokenList(what, single=True)


class LazyChoice(click.Choice):
    """A click.Choice over :func:`kvcalc.api.option_choices` (``option``), read when the option
    is used, shown or completed: declaring llama-server's --cache-type-k does not import the
    llama.cpp engine."""

    def __init__(self, option: str, case_sensitive: bool = True):
        self._option = option
        self._choices: tuple[str, ...] | None = None
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:
        if self._choices is None:
            self._choices = api.option_choices(self._option)
        return self._choices

    @choices.setter
    def choices(self, value) -> None:
        self._choices = tuple(value)


class TokenList(click.ParamType):
    """A token count or comma-separated list: 4096, 4k, 1k,32k,128K."""

    name = "tokens"

    def __init__(self, what: str = "token count", single: bool = False, zero: bool = False):
        self.what = what
        self.single = single
        self.zero = zero          # 0 accepted (llama.cpp's -c 0: the trained context)

    def convert(self, value, param, ctx):
        if isinstance(value, (int, list)):
            return value
        if self.zero and str(value).strip() == "0":
            return 0
        try:
            return parse_tokens(value, self.what) if self.single else parse_token_list(value, self.what)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


def warn(message: str) -> None:
    click.echo(printable(f"warning: {message}"), err=True)


def echo_output(text: str) -> None:
    """Everything a command prints on stdout: escaped by the one sanitiser (render.printable)."""
    click.echo(printable(text), nl=not text.endswith("\n"))


class InvalidFromEnv:
    """A value an environment variable gave that its option's type refused: an error only when
    the option is used (OLLAMA_NUM_PARALLEL=abc does not fail a plain estimate)."""

    def __init__(self, envvar: str, message: str):
        self.envvar, self.message = envvar, message

    def __str__(self) -> str:
        return f"invalid {self.envvar} in the environment: {self.message}"


class FromEnv(click.ParamType):
    """``inner``, for an option that an environment variable may set: a value from the
    environment that ``inner`` refuses becomes :class:`InvalidFromEnv` (refused by
    :func:`allocation_settings` when the engine that reads it runs), not an error at parse
    time; a value given on the command line is checked at once, as ``inner`` does."""

    def __init__(self, inner):
        self.inner = click.types.convert_type(inner)
        self.name = self.inner.name

    def convert(self, value, param, ctx):
        try:
            return self.inner.convert(value, param, ctx)
        except click.BadParameter as exc:
            source = ctx.get_parameter_source(param.name) if ctx and param else None
            if source is click.core.ParameterSource.ENVIRONMENT:
                envvar = param.envvar if isinstance(param.envvar, str) else param.name
                return InvalidFromEnv(envvar, exc.message)
            raise

    def get_metavar(self, *args, **kwargs):
        return self.inner.get_metavar(*args, **kwargs)

    def shell_complete(self, ctx, param, incomplete):
        return self.inner.shell_complete(ctx, param, incomplete)

    def to_info_dict(self):
        return self.inner.to_info_dict()


class FromEnvBool(FromEnv, click.types.BoolParamType):
    """:class:`FromEnv` for an on/off flag (click requires a boolean type for --x/--no-x)."""


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


def echo_structured(data, fmt: str) -> bool:
    """Print ``data`` as JSON or YAML when ``fmt`` asks for one (True), else print nothing."""
    from ..render import to_json, to_yaml

    if fmt not in ("json", "yaml"):
        return False
    echo_output(to_json(data) if fmt == "json" else to_yaml(data))
    return True


def check_writable(path: str, option: str) -> None:
    """Fail before a long run, not after it, when the file ``option`` names cannot be
    written -- without creating it (a refused or interrupted run leaves no empty file)."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    problem = ("is a directory" if os.path.isdir(path) else
               "no such folder" if not os.path.isdir(folder) else
               "permission denied" if not os.access(folder, os.W_OK) else None)
    if problem:
        raise UsageError(f"cannot write {option} {path}: {problem}")
