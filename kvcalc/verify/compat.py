"""What the installed transformers calls its cache, found from what it exposes.

transformers renames its cache plumbing between releases: decoder layers received the cache as
``layer_past`` / ``past_key_value`` (4.x), ``past_key_values`` (5.0-5.23), then ``cache``
(5.24, huggingface/transformers "past_key_values -> cache" rename); model and ``generate``
outputs carried it as ``past_key_values`` up to 5.23 and as ``cache`` from 5.24 (with a
deprecated ``past_key_values`` property that reads, but does not clear, the new field). Every
name here is therefore found at run time, from objects, not from a list of names that the next
release will outdate:

* a cache is an instance of ``transformers.cache_utils.Cache`` (the base class of every cache
  since 4.36);
* the cache a layer receives is the argument whose value is such a cache;
* the cache in an output is the item whose value is such a cache; for transformers versions or
  models that still return legacy tuples, the output field whose declared type mentions the
  per-layer tuple of tensors (``Tuple[Tuple[torch.FloatTensor]]``) or ``Cache``;
* the cache methods that store something for one layer are the public ``update*`` methods of
  the cache's class that take a ``layer_idx``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any


def cache_base() -> type | None:
    """``transformers.cache_utils.Cache``, or None when transformers has no cache classes."""
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover - transformers < 4.36
        return None
    return Cache


def is_cache(value: Any) -> bool:
    base = cache_base()
    return base is not None and isinstance(value, base)


def call_cache(args: tuple, kwargs: dict) -> Any:
    """The cache object among a layer call's arguments (keyword or positional), or None."""
    for value in (*kwargs.values(), *args):
        if is_cache(value):
            return value
    return None


def _declared_cache_fields(out: Any) -> list[str]:
    """Fields of a ModelOutput dataclass declared as a cache (a ``Cache`` or the legacy nested
    tuple of tensors): the fallback for outputs that hold a legacy tuple, not a Cache object."""
    if not dataclasses.is_dataclass(out):
        return []
    found = []
    for f in dataclasses.fields(out):
        kind = str(f.type)
        if "Cache" in kind or "Tuple[Tuple[Tuple[" in kind.replace("typing.", "") \
                or "tuple[tuple[tuple[" in kind:
            found.append(f.name)
    return found


def output_cache_keys(out: Any) -> list[str]:
    """Keys of a ``ModelOutput`` (``generate`` or ``forward``) that hold the cache."""
    items = list(out.items()) if hasattr(out, "items") else []
    keys = [k for k, v in items if is_cache(v)]
    if keys:
        return keys
    present = {k for k, v in items if v is not None}
    return [k for k in _declared_cache_fields(out) if k in present]


def output_cache(out: Any) -> Any:
    """The cache an output carries (a Cache object or a legacy tuple), or None."""
    keys = output_cache_keys(out)
    return out[keys[0]] if keys else None


def release_output_cache(out: Any) -> None:
    """Drop every reference the output holds to its cache: the dict item and the attribute
    (``ModelOutput`` keeps each field twice; deprecated aliases only read the new field)."""
    for key in output_cache_keys(out):
        out[key] = None
        try:
            object.__setattr__(out, key, None)
        except (AttributeError, TypeError):  # pragma: no cover - frozen or slotted outputs
            pass


def cache_mutators(cache: Any) -> Iterator[tuple[str, inspect.Signature]]:
    """The public ``update*`` methods of the cache's class that store something for one layer
    (they take a ``layer_idx``), with their signatures."""
    for name in dir(type(cache)):
        if not name.startswith("update"):
            continue
        method = getattr(cache, name, None)
        if not callable(method):
            continue
        try:
            sig = inspect.signature(method)
        except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
            continue
        if "layer_idx" in sig.parameters:
            yield name, sig
