"""The public Python API: resolve a model, estimate its KV cache.

Keyword arguments are named like the CLI options (``--seq`` -> ``seq``, ``--kv-dtype`` ->
``kv_dtype``, ``--hf-version`` -> ``hf_version``); results are frozen objects whose fields are
the keys of the command's JSON output, and ``to_dict()`` returns exactly that JSON document.
Errors are the typed exceptions of :mod:`kvcalc.errors` that the CLI turns into one line
(``ModelNotFoundError``, ``ConfigError``, ``UsageError``, ``HubError`` …, all ``KvcalcError``).
Nothing here imports torch or transformers.

>>> import kvcalc
>>> kvcalc.estimate("llama-7b", seq=4096).bytes_per_sequence
2147483648
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .arch import ModelSpec, build_spec
from .engines import build_layout, get_engine
from .errors import UsageError
from .memory import Estimate
from .memory import estimate as _estimate_point
from .reports import context_warnings, estimate_record, source_record
from .sources import ResolvedModel, resolve as _resolve
from .versions import drift_notice


class Result:
    """A frozen result: every key of the JSON output is an attribute (nested objects are
    read-only mappings); ``to_dict()`` returns the JSON document itself (a fresh copy)."""

    __slots__ = ("_record",)

    def __init__(self, record: Mapping[str, Any]):
        object.__setattr__(self, "_record", copy.deepcopy(dict(record)))

    def __getattr__(self, name: str) -> Any:
        try:
            value = object.__getattribute__(self, "_record")[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None
        return _frozen(value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __dir__(self) -> list[str]:
        return sorted(set(object.__dir__(self)) | set(self._record))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._record == self._record

    def __hash__(self) -> int:
        return hash(repr(sorted(self._record)))

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}={self._record[k]!r}" for k in self._repr_keys if k in self._record)
        return f"{type(self).__name__}({keys})"

    _repr_keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The command's JSON document (``--format json``), as plain Python objects."""
        return copy.deepcopy(self._record)


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


class EstimateResult(Result):
    """One point of ``kvcalc estimate``: the fields of ``kvcalc estimate --format json``
    (``bytes_per_token``, ``bytes_per_sequence``, ``bytes_total``, ``layers``, ``formula`` …)."""

    __slots__ = ()
    _repr_keys = ("model", "engine_detail", "kv_dtype", "seq", "batch", "bytes_per_token",
                  "bytes_per_sequence", "bytes_total")


@dataclass(frozen=True)
class Model:
    """A resolved model: where its config came from and the layers kvcalc read from it."""

    resolved: ResolvedModel = field(repr=False)
    spec: ModelSpec = field(repr=False)

    @property
    def name(self) -> str:
        return self.resolved.name

    @property
    def model_type(self) -> str:
        return self.spec.model_type

    @property
    def config(self) -> Mapping[str, Any]:
        """The raw config as read (read-only)."""
        return MappingProxyType(dict(self.resolved.config))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "model_type": self.model_type,
                "source": source_record(self.resolved),
                "layers": len(self.spec.layers),
                "max_position_embeddings": self.spec.max_position_embeddings,
                "notes": list(self.spec.notes), "warnings": list(self.spec.warnings)}

    def __repr__(self) -> str:
        return f"Model({self.name!r}, model_type={self.model_type!r}, {self.resolved.provenance})"




def resolve(model: Any, *, revision: str | None = None, name: str | None = None) -> Model:
    """Resolve a model as ``--model`` does: a preset name, a path (config.json, a directory, a
    preset YAML), a hub id (``org/name[@rev]``), or a config dict (``name`` names it; default:
    its ``model_type``). An existing :class:`Model` is returned as is."""
    if isinstance(model, Model):
        return model
    if isinstance(model, Mapping):
        if revision:
            raise UsageError("revision applies to hub ids only, not to a config dict")
        label = name or str(model.get("model_type") or "config")
        resolved = ResolvedModel(label, dict(model), "config", "<config dict>")
    elif isinstance(model, (str, os.PathLike)):
        resolved = _resolve(os.fspath(model), revision)
    else:
        raise UsageError(f"model must be a name, a path, a hub id or a config dict, not "
                         f"{type(model).__name__}")
    return Model(resolved, build_spec(resolved.config, resolved.name))


def estimate(model: Any, *, seq: int, batch: int = 1, engine: str = "hf",
             kv_dtype: str = "auto", block_size: int | None = None,
             hf_version: str | None = None, vllm_version: str | None = None,
             revision: str | None = None, **versions: str | None) -> EstimateResult:
    """KV-cache bytes of ``model`` for ``batch`` sequences of ``seq`` cached tokens, as the
    chosen engine lays it out (``kvcalc estimate --model M --seq S --batch B --format json``).

    ``<engine>_version`` keywords pick the engine's version band (``hf_version="5.14"``,
    ``vllm_version="0.32"``, …); the default is the engine's newest band."""
    m = resolve(model, revision=revision)
    for name, value in (("seq", seq), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"{name} must be a non-negative integer, not {value!r}")
    eng = get_engine(engine)
    versions = {"hf_version": hf_version, "vllm_version": vllm_version, **versions}
    version = versions.get(f"{eng.name}_version")
    # settings of engines that allocate up front (llama.cpp, Ollama: ctx_size, num_ctx, ...)
    settings = {k: v for k, v in versions.items() if not k.endswith("_version") and v is not None}
    alloc = eng.allocation(m.spec, settings, str(kv_dtype).lower(), version)
    if alloc is None and settings:
        raise UsageError(f"{', '.join(settings)}: not settings of {eng.display_name}")
    layout = alloc.layout if alloc is not None else build_layout(
        m.spec, engine, str(kv_dtype).lower(), block_size=block_size, version=version)
    warnings = (context_warnings(m.spec, [seq]) + ignored_settings(eng, block_size=block_size)
                + [n for n in [drift_notice(layout)] if n])
    point: Estimate = _estimate_point(layout, seq, batch)
    record = estimate_record(point, m.resolved, warnings)
    if alloc is not None:  # what the engine allocates at start-up ("llamacpp" object)
        record.update(alloc.records())
        record["notes"] = list(record["notes"]) + list(alloc.notes)
    return EstimateResult(record)


def ignored_settings(engine: Any, **given: Any) -> list[str]:
    """A warning for each setting given (not None) that ``engine`` does not take: e.g. a block
    size for transformers' token-granular DynamicCache."""
    takes = {s.name for s in engine.settings}
    return [f"{name} = {value} does not apply to {engine.display_name} (its settings: "
            f"{', '.join(sorted(takes)) or 'none'}): ignored"
            for name, value in given.items() if value is not None and name not in takes]


def estimate_sweep(model: Any, *, seqs: Sequence[int], batches: Sequence[int] = (1,),
                   **options: Any) -> list[EstimateResult]:
    """:func:`estimate` at every (seq, batch) pair, seq-major, as ``kvcalc estimate --seq
    S1,S2 --batch B1,B2`` lists them; the model is resolved once."""
    m = resolve(model, revision=options.pop("revision", None))
    return [estimate(m, seq=s, batch=b, **options) for s in seqs for b in batches]
