"""Engines: one module per runtime behind one small interface, and the registry that names them.

An :class:`Engine` says

- which **settings** it takes, under the engine's own names and with its defaults
  (:attr:`Engine.settings`, a tuple of :class:`Setting`);
- how it **lays out** a :class:`~kvcalc.arch.ModelSpec`'s KV cache for those settings
  (:meth:`Engine.layout` -> :class:`~kvcalc.engines.cache.Layout`);
- which **capacity figures** it prints for a KV budget (:attr:`Engine.plans`; vLLM's start-up
  lines, :mod:`kvcalc.engines.vllm`);
- which **version bands** each rule holds for (:attr:`Engine.bands`, a tuple of :class:`Band`,
  each a version range, what it changes and a public source), the newest version checked
  (:attr:`Engine.newest_checked`) and the version installed here (:meth:`Engine.installed_version`).

The CLI, plan, plot and verify ask the registry (:func:`get_engine`, :func:`build_layout`) and
never compare engine names themselves. Adding an engine = one module that defines an
:class:`Engine` subclass and calls :func:`register`, its docs (docs/engines.md) and its tests.

>>> from kvcalc.engines import get_engine
>>> vllm = get_engine("vllm")
>>> vllm.newest_checked, vllm.band().name
('0.33.0', '0.33')
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass, replace
from typing import Any

from ..errors import UsageError, suggest
from .cache import Layout, parse_version

#: a version as kvcalc compares them: (major, minor)
Version = tuple[int, int]


def _normalised(name: str) -> str:
    """A distribution name as packaging normalises it (PEP 503), with '_' for the separators."""
    return re.sub(r"[-_.]+", "_", name).lower()


def distribution_version(package: str) -> str | None:
    """The version of the installed distribution ``package`` (what ``importlib.metadata.version``
    returns), None when it is not installed.

    importlib.metadata costs ~15 ms to import (email, zipfile, csv ...) on every start of a
    command that names the installed engine, so the usual case is read here from the name of the
    first ``<name>-<version>.dist-info`` folder on ``sys.path`` (PEP 376/427: the same folder
    importlib.metadata would read first); anything else (an egg, a folder name without a
    version, a zip on the path) is left to importlib.metadata."""
    want = _normalised(package)
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            stem, dot, suffix = name.rpartition(".")
            if not dot or suffix not in ("dist-info", "egg-info"):
                continue
            dist, _, version = stem.partition("-")
            if _normalised(dist) != want:
                continue
            if suffix == "dist-info" and version and "-" not in version:
                return version
            return _metadata_version(package)
    return None


def _metadata_version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Band:
    """A range of engine releases over which the modelled rules do not change.

    ``low`` and ``high`` are inclusive (major, minor) bounds; None leaves that side open.
    """

    name: str                      # how outputs name the band, e.g. "0.33" or "0.20-0.32"
    low: Version | None
    high: Version | None
    changes: tuple[str, ...]       # what this band does differently, one sentence each
    sources: tuple[str, ...]       # public sources (repository files, PRs) for the changes

    def contains(self, version: Version) -> bool:
        return ((self.low is None or version >= self.low)
                and (self.high is None or version <= self.high))

    @property
    def versions(self) -> str:
        """The range in words: ">= 0.33", "0.20-0.32", "< 4.56"."""
        def text(v: Version) -> str:
            return f"{v[0]}.{v[1]}"
        if self.low and self.high and self.low == self.high:
            return text(self.low)
        if self.low and self.high:
            return f"{text(self.low)}-{text(self.high)}"
        if self.low:
            return f">= {text(self.low)}"
        if self.high:
            return f"<= {text(self.high)}"
        return "all"


@dataclass(frozen=True)
class Setting:
    """One engine setting, under the engine's own name, with its default and kvcalc's flag."""

    name: str          # as the engine names it: block_size, enable_prefix_caching, ...
    default: Any
    flag: str | None   # the kvcalc option that sets it (None: not settable from kvcalc)
    description: str


class Engine:
    """The interface every engine module implements (one instance per engine, registered)."""

    #: registry name (``--engine``) and the other names accepted for it
    name: str = ""
    aliases: tuple[str, ...] = ()
    #: how outputs name the runtime: "transformers", "vLLM"
    display_name: str = ""
    #: the Python distribution whose installed version :meth:`installed_version` reports
    package: str = ""
    #: version bands, oldest first; the last one is the newest band modelled
    bands: tuple[Band, ...] = ()
    #: the newest release whose figures were checked against the engine itself
    newest_checked: str = ""
    #: the version a layout models when none is given
    default_version: str = ""
    #: the kvcalc option that picks the version (``--hf-version``, ``--vllm-version``)
    version_flag: str = ""
    #: an example version for error messages
    version_example: str = ""
    settings: tuple[Setting, ...] = ()
    #: True when the engine prints capacity figures for a budget (``kvcalc plan``)
    plans: bool = False
    #: True when the engine splits a model over GPUs (``--tp``)
    tensor_parallel: bool = False

    def installed_version(self) -> str | None:
        """The version of :attr:`package` installed in this environment, None when absent."""
        return distribution_version(self.package)

    def parse_version(self, version: str) -> Version:
        return parse_version(version, self.display_name, self.version_example)

    @property
    def checked_version(self) -> Version:
        """:attr:`newest_checked` as (major, minor): where the newest band ends."""
        return self.parse_version(self.newest_checked)

    def modelled_bands(self) -> tuple[Band, ...]:
        """:attr:`bands` with the newest one ending at the newest version checked: no band is
        open-ended, so a later release is never modelled silently (:meth:`newer_notice`)."""
        if not self.bands or self.bands[-1].high is not None:
            return self.bands
        return self.bands[:-1] + (replace(self.bands[-1], high=self.checked_version),)

    def band(self, version: str | None = None) -> Band:
        """The band that holds ``version`` (default: :attr:`default_version`). A version newer
        than the newest one checked gets the newest band's rules, and every result that uses
        them carries :meth:`newer_notice`."""
        v = self.parse_version(version or self.default_version)
        bands = self.modelled_bands()
        for band in bands:
            if band.contains(v):
                return band
        if bands and v > self.checked_version:
            return bands[-1]
        raise UsageError(f"{self.display_name} {version} is outside the bands kvcalc models "
                         f"({', '.join(b.versions for b in bands)})")

    def newer_notice(self, version: str | None) -> str | None:
        """One line when ``version`` (a requested version, MAJOR.MINOR[.PATCH]) is a release
        newer than :attr:`newest_checked` (compared as major.minor): its figures use the newest
        band's rules, which that release may have moved. None otherwise."""
        if not version or not self.newest_checked:
            return None
        if self.parse_version(version) <= self.checked_version:
            return None
        return (f"{self.display_name} {version} is newer than the newest version kvcalc "
                f"checked ({self.newest_checked}): figures use the {self.band(version).name} "
                "rules, unverified")

    def layout(self, spec, kv_dtype: str = "auto", *, version: str | None = None,
               block_size: int | None = None, tp: int = 1) -> Layout:
        """Lay ``spec`` out as this engine does, per GPU with tensor parallelism ``tp``."""
        raise NotImplementedError

    def describe(self, layout: Layout) -> str:
        """One line naming the engine, version band and layout settings of ``layout``."""
        raise NotImplementedError

    #: the values the engine's own choice-list options take ({option: values}), for the CLI's
    #: choice lists (llama-server's --cache-type-k/-v and --flash-attn, Ollama's
    #: OLLAMA_KV_CACHE_TYPE); read through :meth:`choices`
    CHOICES: dict[str, tuple[str, ...]] = {}

    def choices(self, option: str) -> tuple[str, ...] | None:
        """The values the engine's option ``option`` takes, None when it has no such list."""
        values = self.CHOICES.get(option)
        return tuple(values) if values is not None else None

    def server_settings(self, options: dict[str, Any]) -> Any:
        """The engine's server settings from its options by kvcalc's names, as kvcalc's real
        engine check runs them (llama-server's ``LlamaCppSettings``)."""
        raise UsageError(f"kvcalc runs no {self.display_name} server")

    def served_dtype(self, model_dtype: str) -> str:
        """The dtype the engine runs a checkpoint of ``model_dtype`` in (weights and 'auto')."""
        return model_dtype

    # -- planning hooks (``kvcalc plan``): every engine that plans answers them -----------------

    #: True when ``kvcalc plan``'s solvers (--target-concurrency, --solve-max-len) take the
    #: engine's figures: they search layouts and lengths on ``max_concurrency`` and ``fits``
    solves: bool = False

    #: the plan options only this engine takes (kvcalc option names, e.g. "--mem-fraction-static")
    plan_options: tuple[str, ...] = ()

    def plan_block_size(self, spec, inp) -> int:
        """The engine's default block / page size for a plan (tokens; 1 for a token-granular
        cache). Every engine that plans defines it."""
        raise NotImplementedError(f"{self.display_name} names no block size")

    def plan_backend(self, spec, inp) -> str:
        """The attention backend that chose the default block ("" when none is named)."""
        return ""

    def plan_budgets(self, spec, params, inp) -> list:
        """The KV budget per pipeline stage (:class:`kvcalc.budget.Budget`), term by term in
        the engine's own names (vLLM: total x utilization - weights - overheads, and 0.34's
        margin; SGLang: mem_fraction_static of the free memory …)."""
        raise NotImplementedError(f"{self.display_name} sizes no KV budget")

    def plan_figures(self, spec, inp, layout, budgets):
        """The capacity figures the engine prints for a plan: an object with ``key`` (the
        plan JSON's object for this engine), ``fits``, ``num_blocks``, ``kv_cache_tokens``,
        ``max_concurrency``, ``error``, ``notes``, ``record()`` and ``log_lines()``, and
        ``bytes_per_block`` where the engine takes a block-count override (each
        engine module defines its own: vLLM's ``VllmPlanFigures``, SGLang's
        ``SglangCapacity`` …)."""
        raise NotImplementedError(f"{self.display_name} prints no capacity figures")

    def plan_notes(self, spec, inp, layout, figures, budgets, paged) -> tuple[str, ...]:
        """The notes a plan adds for this engine (``paged``: the paged allocator's result)."""
        return tuple(getattr(figures, "notes", ()))

    def tp_refusal(self, spec, tp: int) -> str | None:
        """Why the engine refuses tensor parallelism ``tp`` for ``spec`` (one line), or None.
        By default the rule every engine that shards attention by heads shares
        (:func:`kvcalc.layout.head_split_problem`); an engine with its own words for it
        overrides this (vLLM: :func:`kvcalc.engines.vllm.tp_refusal`)."""
        from ..layout import head_split_problem

        problem = head_split_problem(spec, tp)
        if problem is None:
            return None
        kind, count, _, _ = problem
        what = (f"does not divide the {count} attention heads" if kind == "heads"
                else f"does not divide the {count} KV heads" if tp < count
                else f"is not a multiple of the {count} KV heads")
        return (f"--tp {tp} {what}: {self.display_name} shards the attention heads evenly "
                "over the GPUs")

    def plan_defaults(self, inp) -> Any:
        """The engine's serving defaults for a plan whose settings leave them open: an object
        with ``rules`` (the version band and settings modelled), ``era``, ``extensible``,
        ``utilization``, ``batched_tokens``, ``num_seqs`` and ``in_flight`` (see
        :meth:`kvcalc.engines.vllm.Vllm.plan_defaults`). Engines that plan with their own
        settings share the OpenAI-compatible server defaults of vLLM's ``get_batch_defaults``
        for the figures they do not set themselves."""
        return get_engine("vllm").plan_defaults(inp)

    def plan_max_len(self, spec, options: dict[str, Any]) -> int | None:
        """Tokens one request may reach under the engine's own settings (llama.cpp: the
        per-slot context of --ctx-size / --parallel; Ollama: --num-ctx), None when they do not
        say (``kvcalc plan`` then uses --max-len or the model's context length)."""
        return None

    def plan_kv_dtype(self, options: dict[str, Any]) -> str | None:
        """The KV dtype the engine's own settings name (llama.cpp's --cache-type-k/-v as
        "K/V", Ollama's --kv-cache-type), None when they name none (--kv-dtype then)."""
        return None

    def allocation(self, spec, options: dict[str, Any], kv_dtype: str = "auto",
                   version: str | None = None):
        """What the engine allocates up front for ``options`` (its own settings, by kvcalc's
        option names; None = not given): an object with ``layout``, ``record()``, ``notes``
        and ``extra`` (llama.cpp: every cache, :mod:`kvcalc.engines.llamacpp`), or None for
        engines that allocate as sequences grow."""
        return None


@dataclass(frozen=True)
class EngineCard:
    """What the registry knows of an engine without importing its module: its names, the
    module that defines it, and the facts the CLI's choice lists and help need. The engine's
    own class attributes are the truth; ``tests/test_layers.py`` checks each card against
    them."""

    name: str
    module: str                    # the module that defines and registers the engine
    aliases: tuple[str, ...]
    display_name: str
    plans: bool                    # prints capacity figures for a budget (kvcalc plan)
    version_flag: str
    default_version: str
    bands: tuple[str, ...]         # the bands' names, oldest first


#: the engines kvcalc ships, in the order outputs list them; a module is imported only when
#: its engine is asked for (:func:`get_engine`), so a command pays for the engine it uses
CARDS: tuple[EngineCard, ...] = (
    EngineCard("hf", "kvcalc.engines.transformers", ("transformers",), "transformers", False,
               "--hf-version", "5.25", ("<4.56", "4.56-5.14", "5.15-5.17", "5.18-5.24", ">=5.25")),
    EngineCard("vllm", "kvcalc.engines.vllm", (), "vLLM", True, "--vllm-version", "0.34",
               ("0.9-0.19", "0.20-0.32", "0.33", "0.34")),
    EngineCard("llamacpp", "kvcalc.engines.llamacpp", ("llama.cpp", "llama-cpp", "llama-server"),
               "llama.cpp", True, "--llamacpp-version", "2026.10", ("<2025.11", ">=2025.11")),
    EngineCard("ollama", "kvcalc.engines.ollama", (), "Ollama", True, "--ollama-version", "0.33",
               ("<0.30", ">=0.30")),
    EngineCard("sglang", "kvcalc.engines.sglang", (), "SGLang", True, "--sglang-version", "0.5",
               ("0.5.23",)),
    EngineCard("trtllm", "kvcalc.engines.trtllm", ("tensorrt-llm",), "TensorRT-LLM", True,
               "--trtllm-version", "1.2", ("0.10-1.1", "1.2")),
)
_CARDS = {key: card for card in CARDS for key in (card.name, *card.aliases)}

_REGISTRY: dict[str, Engine] = {}


def register(engine: Engine) -> Engine:
    """Add ``engine`` to the registry under its name and aliases."""
    for key in (engine.name, *engine.aliases):
        _REGISTRY[key] = engine
    return engine


def cards() -> tuple[EngineCard, ...]:
    """The shipped engines' cards (names, flags, bands), without importing any engine."""
    return CARDS


def engines() -> tuple[Engine, ...]:
    """Every engine, once each: the shipped ones in :data:`CARDS` order (this imports every
    engine module), then any registered from outside."""
    shipped = tuple(get_engine(card.name) for card in CARDS)
    return shipped + tuple(e for e in dict.fromkeys(_REGISTRY.values()) if e not in shipped)


def engine_names(planning: bool = False) -> tuple[str, ...]:
    """Names ``--engine`` accepts (aliases included); ``planning`` keeps engines that plan.
    Read from the cards (no engine module imported) and the engines registered from outside."""
    names = [k for k, card in _CARDS.items() if card.plans or not planning]
    names += [k for k, e in _REGISTRY.items()
              if k not in _CARDS and (e.plans or not planning)]
    return tuple(names)


def get_engine(name: str) -> Engine:
    """The engine registered as ``name`` (or an alias), with a suggestion when unknown; a
    shipped engine's module is imported on first use."""
    key = str(name).strip().lower()
    engine = _REGISTRY.get(key)
    if engine is None and key in _CARDS:
        importlib.import_module(_CARDS[key].module)   # registers the engine
        engine = _REGISTRY.get(key)
    if engine is None:
        known = engine_names()
        raise UsageError(f"unknown engine '{name}': choose one of {', '.join(known)}"
                         + suggest(str(name), list(known)))
    return engine


#: the up-front allocation settings of llama-server and Ollama -> the engine that takes them
ALLOCATION_OPTIONS = {
    "ctx_size": "llamacpp", "parallel": "llamacpp", "kv_unified": "llamacpp",
    "cache_type_k": "llamacpp", "cache_type_v": "llamacpp", "flash_attn": "llamacpp",
    "swa_full": "llamacpp", "batch_size": "llamacpp", "ubatch_size": "llamacpp",
    "num_ctx": "ollama", "num_parallel": "ollama", "kv_cache_type": "ollama",
    "flash_attention": "ollama", "num_batch": "ollama",
}


_LAYOUTS: dict[tuple, tuple[Any, Layout]] = {}


def cached_layout(spec, engine: str, kv_dtype: str = "auto", *, version: str | None = None,
                  block_size: int | None = None, tp: int = 1) -> Layout:
    """:func:`build_layout`, memoised per spec object (plans and solvers lay one spec out again
    and again; hashing a ModelSpec walks every layer)."""
    key = (id(spec), engine, version, kv_dtype, block_size, tp)
    hit = _LAYOUTS.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    layout = build_layout(spec, engine, kv_dtype, block_size=block_size, tp=tp, version=version)
    if len(_LAYOUTS) > 4096:
        _LAYOUTS.clear()
    _LAYOUTS[key] = (spec, layout)
    return layout


def build_layout(spec, engine: str = "hf", kv_dtype: str = "auto", *,
                 block_size: int | None = None, tp: int = 1,
                 version: str | None = None) -> Layout:
    """``get_engine(engine).layout(...)``: ``spec`` laid out by ``engine``."""
    return get_engine(engine).layout(spec, kv_dtype, version=version, block_size=block_size,
                                     tp=tp)

