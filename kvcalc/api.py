"""The public Python API: resolve a model, estimate its KV cache, plan a deployment, simulate
it over time.

Keyword arguments are named like the CLI options (``--seq`` -> ``seq``, ``--kv-dtype`` ->
``kv_dtype``, ``--hf-version`` -> ``hf_version``); results are frozen objects whose fields are
the keys of the command's JSON output, and ``to_dict()`` returns exactly that JSON document.
Errors are the typed exceptions of :mod:`kvcalc.errors` that the CLI turns into one line
(``ModelNotFoundError``, ``ConfigError``, ``UsageError``, ``HubError`` …, all ``KvcalcError``).
Nothing here imports torch or transformers.

>>> import kvcalc
>>> kvcalc.estimate("llama-7b", seq=4096).bytes_per_sequence
2147483648
>>> kvcalc.plan("llama-3.1-8b", gpu="h100", max_len="8k").vllm["num_gpu_blocks"]
7344
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from .arch import ModelSpec, build_spec
from .engines import build_layout, get_engine
from .errors import UsageError
from .inputs import validated
from .memory import Estimate
from .memory import estimate as _estimate_point
from .reports import context_warnings, estimate_record, source_record
from .sources import ResolvedModel, resolve as _resolve
from .versions import engine_version_notices, version_notices


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


class PlanResult(Result):
    """One ``kvcalc plan``: the fields of ``kvcalc plan --format json`` (``budget``,
    ``bytes_per_token``, ``num_blocks``, ``max_concurrency``, ``vllm`` / ``sglang`` /
    ``trtllm`` / ``llamacpp``, ``workload``, ``fits``, ``does_not_fit``, ``sizing`` …)."""

    __slots__ = ()
    _repr_keys = ("model", "gpu", "num_gpus", "kv_dtype", "max_len", "bytes_per_token",
                  "num_blocks", "max_concurrency", "fits")


class SimulateResult(Result):
    """One ``kvcalc simulate``: the fields of ``kvcalc simulate --format json`` (``requests``,
    ``completed``, ``rejected``, ``allocators`` keyed by allocator name …); with
    ``timeline_interval`` given, :meth:`timeline` has the memory breakdown over time."""

    __slots__ = ("_timeline",)
    _repr_keys = ("model", "gpu", "workload", "requests", "completed", "rejected")

    def __init__(self, record: Mapping[str, Any], timeline: Sequence[Mapping[str, Any]] = ()):
        super().__init__(record)
        object.__setattr__(self, "_timeline", tuple(MappingProxyType(dict(r))
                                                    for r in timeline))

    def timeline(self) -> tuple[Mapping[str, Any], ...]:
        """One row per allocator per ``timeline_interval`` modelled seconds: ``allocator``,
        ``time_s``, ``running``, ``waiting``, ``preemptions`` and the memory categories as
        fractions of the KV budget (the CSV ``kvcalc simulate --timeline`` writes)."""
        return self._timeline


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


@validated("estimate")
def estimate(model: Any, *, seq: int, batch: int = 1, engine: str = "hf",
             kv_dtype: str = "auto", block_size: int | None = None,
             hf_version: str | None = None, vllm_version: str | None = None,
             revision: str | None = None, **versions: str | None) -> EstimateResult:
    """KV-cache bytes of ``model`` for ``batch`` sequences of ``seq`` cached tokens, as the
    chosen engine lays it out (``kvcalc estimate --model M --seq S --batch B --format json``).

    ``<engine>_version`` keywords pick the engine's version band (``hf_version="5.14"``,
    ``vllm_version="0.32"``, …); the default is the engine's newest band."""
    from .engines import ALLOCATION_OPTIONS

    eng = get_engine(engine)
    versions = {"hf_version": hf_version, "vllm_version": vllm_version, **versions}
    version = versions.get(f"{eng.name}_version")
    # settings of engines that allocate up front (llama.cpp, Ollama: ctx_size, num_ctx, ...)
    settings = {k: v for k, v in versions.items() if not k.endswith("_version") and v is not None}
    for key in settings:
        if key not in ALLOCATION_OPTIONS:
            raise UsageError(f"estimate takes no keyword {key!r}")
    m = resolve(model, revision=revision)
    alloc = eng.allocation(m.spec, settings, str(kv_dtype).lower(), version)
    if alloc is None and settings:
        raise UsageError(f"{', '.join(settings)}: not settings of {eng.display_name}")
    layout = alloc.layout if alloc is not None else build_layout(
        m.spec, engine, str(kv_dtype).lower(), block_size=block_size, version=version)
    warnings = (context_warnings(m.spec, [seq]) + ignored_settings(eng, block_size=block_size)
                + version_notices(layout) + list(getattr(alloc, "warnings", ())))
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


# ------------------------------------------------------------------------------------- plan

#: --weights-dtype for llama.cpp and Ollama: llama.cpp's file types (kvcalc.gguf_weights);
#: ``LLAMACPP_FILE_TYPES`` is read on first use (module ``__getattr__`` below), so an estimate
#: does not import the GGUF weights tables

#: keyword -> flag of the settings only some planning engines take (SGLang, TensorRT-LLM; each
#: engine lists the flags it takes in ``plan_options``)
ENGINE_PLAN_OPTIONS = {
    "mem_fraction_static": "--mem-fraction-static",
    "max_running_requests": "--max-running-requests",
    "max_total_tokens": "--max-total-tokens",
    "chunked_prefill_size": "--chunked-prefill-size",
    "cuda_graph_max_bs": "--cuda-graph-max-bs",
    "disable_cuda_graph": "--disable-cuda-graph",
    "free_memory": "--free-memory",
    "free_gpu_memory_fraction": "--free-gpu-memory-fraction",
    "max_tokens": "--max-tokens",
    "max_gpu_total_bytes": "--max-gpu-total-bytes",
    "host_cache_size": "--host-cache-size",
    # llama.cpp's offload (llama-server -ngl, -ts, -sm, -nkvo, -ot) and Ollama's num_gpu
    "n_gpu_layers": "--n-gpu-layers",
    "tensor_split": "--tensor-split",
    "split_mode": "--split-mode",
    "no_kv_offload": "--no-kv-offload",
    "override_tensor": "--override-tensor",
    "mmproj": "--mmproj",
    "num_gpu": "--num-gpu",
    "gpu_overhead": "--gpu-overhead",
    "ollama_version": "--ollama-version",
}
#: byte-size keywords: an int, or a size such as "3GiB"
_BYTE_OPTIONS = ("overhead", "weights_memory", "activation_memory", "non_torch_memory",
                 "cuda_graph_memory", "kv_budget", "free_memory", "max_gpu_total_bytes",
                 "host_cache_size", "gpu_overhead")


@dataclass(frozen=True)
class PlanRun:
    """What one plan computed: the result, and the domain objects the CLI's table draws from."""

    result: PlanResult
    plan: Any            # kvcalc.planning.Plan
    model: Model


def plan(model: Any, **options: Any) -> PlanResult:
    """GPU sizing, as ``kvcalc plan --format json``: budget, KV capacity, the engine's own
    start-up figures, contiguous versus paged concurrency, and (with ``target_concurrency`` /
    ``solve_max_len``) the smallest deployment or the largest context.

    Keywords are the CLI options' names: ``gpu`` ("h100", a catalog name or a size such as
    "48GiB"), ``tp``, ``pp``, ``replicas``, ``max_len`` (an int or "32k"), ``engine``
    ("vllm", "sglang", "trtllm", "llamacpp", "ollama"), ``kv_dtype``, ``block_size``,
    ``gpu_util``, ``weights_dtype``, the memory overrides (``overhead``, ``weights_memory``,
    ``activation_memory``, ``non_torch_memory``, ``cuda_graph_memory``, ``kv_budget``: an int
    of bytes or a size such as "3GiB"), vLLM's settings (``max_batched_tokens``,
    ``max_num_seqs``, ``async_scheduling``, ``disable_hybrid_kv_cache_manager``,
    ``num_gpu_blocks_override``, ``vllm_version``, ``enable_prefix_caching``,
    ``num_speculative_tokens``, ``allow_chunked_local_hybrid``), SGLang's and TensorRT-LLM's
    (``mem_fraction_static``, ``free_memory``, ``free_gpu_memory_fraction``, ``max_tokens`` …),
    llama.cpp's and Ollama's (``ctx_size``, ``parallel``, ``num_ctx`` …), the workload
    (``prompt_len`` + ``output_len``, or ``dist`` + ``mean`` + ``std`` [+ ``samples``,
    ``seed``], or ``trace``) and the solvers (``target_concurrency``, ``solve_max_len``).
    A plan that does not fit is a result with ``fits`` False and a ``does_not_fit`` object
    (the CLI exits 3), not an exception."""
    return run_plan(model, **options).result


@validated("plan")
def run_plan(model: Any, *, gpu: Any = "h100", tp: int = 1, pp: int = 1, replicas: int = 1,
             max_len: Any = None, engine: str = "vllm", kv_dtype: str = "auto",
             block_size: int | None = None, gpu_util: float | None = None,
             weights_dtype: str = "auto", overhead: Any = None, weights_memory: Any = None,
             activation_memory: Any = None, non_torch_memory: Any = None,
             cuda_graph_memory: Any = None, kv_budget: Any = None,
             max_batched_tokens: int | None = None, max_num_seqs: int | None = None,
             async_scheduling: bool = True, disable_hybrid_kv_cache_manager: bool = False,
             num_gpu_blocks_override: int | None = None, vllm_version: str | None = None,
             enable_prefix_caching: bool = True, num_speculative_tokens: int = 0,
             allow_chunked_local_hybrid: bool | None = None, enforce_eager: bool = False,
             prompt_len: Any = None,
             output_len: Any = None, dist: str | None = None, mean: float | None = None,
             std: float | None = None, samples: int | None = None, seed: int = 0,
             trace: Any = None, target_concurrency: int | None = None,
             solve_max_len: int | None = None, revision: str | None = None,
             **engine_options: Any) -> PlanRun:
    """:func:`plan`, keeping the domain objects (the CLI draws its tables from them)."""
    given = {k: v for k, v in locals().items() if k != "model"}
    from .planning import make_plan, smallest_deployment, solve_max_len as _solve_max_len
    from .reports import plan_record, shortfall_record, sizing_record

    m, inp, workload, warnings = _plan_setup(model, given)
    if target_concurrency is not None or solve_max_len is not None:
        if _own_plan_figures(get_engine(engine)):
            raise UsageError(f"--target-concurrency and --solve-max-len solve with vLLM's "
                             f"rules; --engine {engine} does not take them (use --engine vllm)")
    result = make_plan(m.spec, inp, workload)
    record = plan_record(result, m.resolved)
    override_fits(result, num_gpu_blocks_override)
    warnings += list(result.warnings) + version_notices(result.layout)
    if not result.fits:
        record["does_not_fit"] = shortfall_record(result, m.spec, inp)
    if target_concurrency is not None:
        sizing = smallest_deployment(m.spec, inp, target_concurrency)
        record["sizing"] = sizing_record(sizing, target_concurrency, inp)
    if solve_max_len is not None:
        if solve_max_len > inp.num_seqs():
            warnings.append(f"--solve-max-len {solve_max_len:,} exceeds max_num_seqs "
                            f"({inp.num_seqs():,}): vLLM never runs that many at once "
                            "(--max-num-seqs)")
        limit = max(inp.max_len, m.spec.max_position_embeddings or inp.max_len)
        record["max_len_for_concurrency"] = {
            "concurrency": solve_max_len,
            "max_len": _solve_max_len(m.spec, inp, solve_max_len, limit)}
    record["warnings"] = list(dict.fromkeys(warnings))
    return PlanRun(PlanResult(record), result, m)


def compare_gpus(model: Any, **options: Any) -> list[Result]:
    """``kvcalc plan --compare-gpus``: the plan on every catalog GPU, one result per GPU (best
    first; with ``target_concurrency``, the fewest GPUs that serve it). Takes :func:`plan`'s
    keywords; warnings are issued with :func:`warnings.warn` (the rows are the JSON list)."""
    run = run_compare(model, **options)
    import warnings as _warnings
    for message in run.warnings:
        _warnings.warn(message, stacklevel=2)
    return [Result(row) for row in run.rows]


@dataclass(frozen=True)
class CompareRun:
    """What :func:`compare_gpus` computed: the JSON rows, the warnings, and the inputs."""

    rows: list[dict[str, Any]]
    warnings: list[str]
    inputs: Any          # kvcalc.planning.PlanInputs (on the first catalog GPU's terms)
    model: Model


@validated("plan")
def run_compare(model: Any, **options: Any) -> CompareRun:
    """:func:`compare_gpus` as plain rows, for the CLI."""
    from .reports import compare_records

    target = options.pop("target_concurrency", None)
    if options.pop("solve_max_len", None) is not None:
        raise UsageError("--solve-max-len does not combine with --compare-gpus")
    m, inp, workload, warnings = _plan_setup(model, {**_plan_defaults(), **options,
                                                     "target_concurrency": target})
    return CompareRun(compare_records(m.spec, inp, workload, target), warnings, inp, m)



def _same_keywords(func: Any, like: Any, returns: Any) -> None:
    """Give ``func`` (which takes ``**options``) the keyword signature of ``like``, so that
    help() and editors list the keywords."""
    import inspect

    func.__signature__ = inspect.signature(like).replace(return_annotation=returns)


_same_keywords(plan, run_plan, PlanResult)
_same_keywords(compare_gpus, run_plan, "list[Result]")


def override_fits(plan: Any, override: int | None) -> None:
    """``--num-gpu-blocks-override`` beyond what the KV budget holds is refused (plan and
    simulate): vLLM would try to allocate that many blocks and fail at start-up, and figures
    past it mean nothing (a negative fragmentation, a plan that "fits" 2**62 blocks)."""
    per_block = getattr(plan.engine_figures, "bytes_per_block", None)
    if override is None or not per_block:
        return
    kv = min(b.kv_bytes for b in plan.budgets)
    holds = max(kv, 0) // per_block
    if override > holds:
        raise UsageError(f"invalid --num-gpu-blocks-override {override:,}: the KV budget "
                         f"({kv:,} bytes per GPU) holds {holds:,} blocks of {per_block:,} "
                         f"bytes; {get_engine(plan.inputs.engine).display_name} would fail "
                         "to allocate more")


def _own_plan_figures(runtime: Any) -> bool:
    """Whether ``runtime`` plans with figures the solvers do not search and without the
    serving-scheduler settings (--gpu-util, --max-batched-tokens …) of the engines that do
    (``Engine.solves``)."""
    return not runtime.solves


@lru_cache(maxsize=1)
def _plan_keywords() -> frozenset[str]:
    """The keywords :func:`run_plan` names (the others are engine options)."""
    import inspect
    return frozenset(k for k, p in inspect.signature(run_plan).parameters.items()
                     if p.default is not inspect.Parameter.empty)


def _plan_defaults() -> dict[str, Any]:
    import inspect
    return {k: p.default for k, p in inspect.signature(run_plan).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _size(value: Any, key: str) -> Any:
    """A byte-size keyword: an int as given, a string such as "3GiB" parsed."""
    from .units import parse_bytes
    return parse_bytes(value, f"--{key.replace('_', '-')}") if isinstance(value, str) else value


#: llama-server's and Ollama's settings that are token counts ("32k" accepted)
_TOKEN_SETTINGS = ("ctx_size", "num_ctx")


def _server_settings(given: Mapping[str, Any], engine: str) -> tuple[dict[str, Any],
                                                                     dict[str, Any]]:
    """Split ``given`` (None values dropped) into llama-server's and Ollama's settings, which
    must be ``engine``'s own (else a UsageError naming the engine that takes them), and the
    rest."""
    from .engines import ALLOCATION_OPTIONS
    from .units import parse_tokens

    own: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            continue
        owner = ALLOCATION_OPTIONS.get(key)
        if owner is None:
            rest[key] = value
            continue
        if owner != engine:
            raise UsageError(f"--{key.replace('_', '-')} is a setting of --engine {owner}, "
                             f"not {engine}")
        own[key] = (parse_tokens(value, key.replace("_", " "))
                    if key in _TOKEN_SETTINGS and isinstance(value, str) else value)
    return own, rest


def _plan_setup(model: Any, o: dict[str, Any]):
    """Resolve the model, check and convert the options, and build the plan's inputs and
    workload. Returns (model, PlanInputs, Workload, warnings)."""
    from .hardware import resolve_gpu
    from .params import default_weights_dtype, weights_dtype_bytes
    from .planning import PlanInputs
    from .units import parse_tokens
    from .workload import DEFAULT_SAMPLES, choose_workload

    o = dict(o)
    extra = dict(o.pop("engine_options", None) or {})
    keywords = _plan_keywords()
    for key in [k for k in o if k not in keywords]:
        extra[key] = o.pop(key)     # compare_gpus passes everything as one mapping
    for name in ("target_concurrency", "solve_max_len"):
        value = o.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise UsageError(f"invalid --{name.replace('_', '-')} {value}: must be at least 1")
    m = resolve(model, revision=o["revision"])
    warnings = list(m.spec.warnings)
    runtime = get_engine(o["engine"])
    for key in _BYTE_OPTIONS:
        for where in (o, extra):
            if key in where:
                where[key] = _size(where[key], key)
    for key in ("max_len", "prompt_len", "output_len"):
        if isinstance(o.get(key), str):
            o[key] = parse_tokens(o[key], key.replace("_", " "))
    own, options = _server_settings(extra, runtime.name)   # llama-server's, Ollama's; the rest
    for key in options:
        if key not in ENGINE_PLAN_OPTIONS:
            raise UsageError(f"unknown plan option {key!r}")
    max_len = o["max_len"]
    if max_len is None:
        max_len = (runtime.plan_max_len(m.spec, own) or m.spec.max_position_embeddings or 4096)
    kv_dtype = runtime.plan_kv_dtype(own) or str(o["kv_dtype"]).lower()
    wdtype = o["weights_dtype"]
    if hasattr(runtime, "plan_weights_dtype"):    # llama.cpp, Ollama: a GGUF file type
        wdtype = runtime.plan_weights_dtype(m.spec, wdtype)
    else:
        wdtype = (runtime.served_dtype(default_weights_dtype(m.spec)) if wdtype == "auto"
                  else wdtype)
        weights_dtype_bytes(wdtype)
    engine_options = _engine_options(runtime, {ENGINE_PLAN_OPTIONS[k]: (k, v)
                                               for k, v in options.items()})
    engine_options += _engine_options(runtime, {f"--{k.replace('_', '-')}": (k, v)
                                                for k, v in own.items()})
    gpu_util = o["gpu_util"]
    inp = PlanInputs(
        gpu=resolve_gpu(o["gpu"]), tp=o["tp"], pp=o["pp"], replicas=o["replicas"],
        gpu_util=gpu_util, weights_dtype=wdtype, kv_dtype=kv_dtype,
        block_size=o["block_size"], max_len=max_len,
        max_batched_tokens=o["max_batched_tokens"], max_num_seqs=o["max_num_seqs"],
        overhead=o["overhead"], cuda_graph=o["cuda_graph_memory"],
        activation=o["activation_memory"], non_torch=o["non_torch_memory"],
        weights=o["weights_memory"], kv_budget=o["kv_budget"],
        # the planning engine's own version option (--vllm-version, --ollama-version)
        version=(o["vllm_version"] if runtime.name == "vllm"
                 else options.get(f"{runtime.name}_version")),
        engine=o["engine"], async_scheduling=o["async_scheduling"],
        disable_hybrid=o["disable_hybrid_kv_cache_manager"],
        num_blocks_override=o["num_gpu_blocks_override"],
        prefix_caching=o["enable_prefix_caching"],
        speculative_tokens=o["num_speculative_tokens"], enforce_eager=o["enforce_eager"],
        chunked_local_hybrid=o["allow_chunked_local_hybrid"],
        free_memory=options.get("free_memory"), engine_options=engine_options)
    if _own_plan_figures(runtime):
        vllm_only = [flag for flag, given in (
            ("--gpu-util", gpu_util is not None),
            ("--max-batched-tokens", o["max_batched_tokens"] is not None),
            ("--max-num-seqs", o["max_num_seqs"] is not None),
            ("--cuda-graph-memory", o["cuda_graph_memory"] is not None),
            ("--activation-memory", o["activation_memory"] is not None),
            ("--non-torch-memory", o["non_torch_memory"] is not None),
            ("--num-gpu-blocks-override", o["num_gpu_blocks_override"] is not None)) if given]
        if vllm_only:
            warnings.append(f"{', '.join(vllm_only)}: vLLM setting(s), not used by --engine "
                            f"{o['engine']} (docs/engines.md)")
    workload, clipped = choose_workload(
        max_len, o["prompt_len"], o["output_len"], o["dist"], o["mean"], o["std"],
        DEFAULT_SAMPLES if o["samples"] is None else o["samples"], o["seed"], o["trace"])
    return m, inp, workload, warnings + clipped


def _engine_options(runtime: Any, given: dict) -> tuple:
    """The engine-only options given, as (setting name, value) pairs; one the engine does not
    take is an error naming the engine that does."""
    from .engines import engines

    out = []
    for flag, (name, value) in given.items():
        if value is None:
            continue
        if flag not in runtime.plan_options:
            owners = [e.display_name for e in engines() if flag in e.plan_options]
            raise UsageError(f"{flag} is a setting of {' / '.join(owners) or 'another engine'}; "
                             f"--engine {runtime.name} does not take it")
        out.append((name, value))
    for name, value in out:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # sizes may be 0 (no host cache, no GPU overhead, no cap) but for the free memory
            sized = name in _BYTE_OPTIONS and name != "free_memory"
            bad = (not 0 < value <= 1) if isinstance(value, float) else \
                value < 0 if sized else value < 1
            if bad:
                rule = ("in (0, 1]" if isinstance(value, float) else
                        "0 or more" if sized else "positive")
                raise UsageError(f"invalid --{name.replace('_', '-')} {value}: must be {rule}")
    return tuple(out)


# --------------------------------------------------------------------------------- simulate

#: the engines whose scheduler and cache ``simulate`` replays (kvcalc.simulation.ENGINES)
SIMULATED_ENGINES = ("vllm", "llamacpp", "sglang", "trtllm")
#: ``simulate``'s allocator names: vLLM's paged pool and the contiguous baselines, llama-server's
#: slots, SGLang's radix-tree pool, TensorRT-LLM's block pool
#: (kvcalc.simulation.ENGINE_ALLOCATORS)
SIMULATE_ALLOCATORS = ("paged", "orca-max", "orca-pow2", "orca-oracle", "llamacpp-slots",
                       "sglang-radix", "trtllm-paged")
#: ``--capacity-scheduler-policy`` choices of ``simulate --engine trtllm``
#: (kvcalc.simulation.trtllm.POLICIES)
TRTLLM_CAPACITY_POLICIES = ("GUARANTEED_NO_EVICT", "MAX_UTILIZATION")
#: the step-time calibrations ``simulate`` takes (kvcalc.simulation.timing.calibrations():
#: fitted per engine on measured runs, and the uncalibrated roofline)
SIMULATE_CALIBRATIONS = ("vllm", "sglang", "trtllm", "roofline")


def _check_workload(trace: Any, synthetic: tuple, rate: Any, concurrency: Any,
                    calibration: str | None) -> None:
    """simulate's and size's workload: a trace or synthetic arrivals (any of ``synthetic``
    given), not both and not neither; an open or a closed loop; a known calibration."""
    synthetic_given = any(x is not None for x in synthetic)
    if trace and synthetic_given:
        raise UsageError("give --trace, or synthetic arrivals (--rate or --concurrency with "
                         "--input-len and --output-len; --requests, --dist), not both")
    if not trace and not synthetic_given:
        raise UsageError("give a workload: --trace NAME|FILE, or --input-len and --output-len "
                         "(with --rate or --concurrency, and --requests)")
    if concurrency is not None and rate is not None:
        raise UsageError("--rate sets open-loop arrivals and --concurrency a closed loop: "
                         "give one of them")
    if calibration is not None and calibration not in SIMULATE_CALIBRATIONS:
        raise UsageError(f"unknown --calibration '{calibration}': choose from "
                         f"{', '.join(SIMULATE_CALIBRATIONS)}")


@validated("simulate")
def simulate(model: Any, *, trace: Any = None, rate_scale: float = 1.0,
             rate: float | None = None, requests: int | None = None, input_len: Any = None,
             output_len: Any = None, dist: str | None = None, input_std: float | None = None,
             output_std: float | None = None, seed: int = 0, allocator: Any = None,
             prefix_caching: bool = True, cpu_offload: Any = 0, step_time: float | None = None,
             step_overhead: float | None = None, timeline_interval: float | None = None,
             concurrency: int | None = None, warmup: int = 0, calibration: str | None = None,
             ignore_eos: bool = False, capacity_scheduler_policy: str | None = None,
             max_batch_size: int | None = None, max_num_tokens: int | None = None,
             enable_chunked_prefill: bool = False,
             engine: str = "vllm", gpu: Any = "h100", tp: int = 1, pp: int = 1,
             max_len: Any = None,
             kv_dtype: str = "auto", block_size: int | None = None,
             gpu_util: float | None = None, weights_dtype: str = "auto", overhead: Any = None,
             weights_memory: Any = None, activation_memory: Any = None,
             non_torch_memory: Any = None, cuda_graph_memory: Any = None, kv_budget: Any = None,
             max_batched_tokens: int | None = None, max_num_seqs: int | None = None,
             num_gpu_blocks_override: int | None = None, vllm_version: str | None = None,
             revision: str | None = None, **server_settings: Any) -> SimulateResult:
    """The KV cache over time, as ``kvcalc simulate --format json``: requests from a trace
    (``trace``: a built-in name such as "azure-conv-2023" or a CSV/JSONL path; ``rate_scale``)
    or synthetic (``requests``, ``rate``, ``input_len``, ``output_len`` [, ``dist``,
    ``input_std``, ``output_std``, ``seed``]) replayed through vLLM v1's scheduler and cache
    and the contiguous baselines (``allocator``: a name or a list of "paged", "orca-max",
    "orca-pow2", "orca-oracle"; "llamacpp-slots" with ``engine="llamacpp"`` and llama-server's
    ``ctx_size`` / ``parallel``), on the capacity :func:`plan` computes from the same
    model/GPU/budget keywords. ``concurrency``: a closed loop keeping that many requests in
    flight (a new one as each finishes; the first ``warmup`` left out of the latency figures).
    ``pp``: pipeline stages (vLLM), each holding its layers of every request in its own budget;
    the stage with the fewest blocks limits the replica, steps last the slowest stage's time.
    Times are modelled: a step-time ``calibration`` (``SIMULATE_CALIBRATIONS``; default the
    engine's own, the uncalibrated roofline for llama.cpp), or ``step_time``.
    ``engine="sglang"``: SGLang's scheduler and radix-tree token pool (``ignore_eos``: requests
    sent with ignore_eos, their remaining output reserved whole; SGLang's plan settings such as
    ``max_running_requests``, ``chunked_prefill_size``, ``mem_fraction_static``);
    ``engine="trtllm"``: TensorRT-LLM's capacity scheduler (``capacity_scheduler_policy``:
    ``TRTLLM_CAPACITY_POLICIES``), ``max_batch_size``, ``max_num_tokens``,
    ``enable_chunked_prefill``, KV block reuse (``prefix_caching``)."""
    from .simulation import Options, result_record, simulate as run_simulation
    from .simulation.metrics import CATEGORIES
    from .simulation.requests import load_trace, synthetic
    from .units import parse_tokens

    if engine not in SIMULATED_ENGINES:
        raise UsageError(f"simulate replays {', '.join(SIMULATED_ENGINES[:-1])} or "
                         f"{SIMULATED_ENGINES[-1]}, not --engine {engine}")
    _check_workload(trace, (rate, requests, input_len, output_len, dist), rate, concurrency,
                    calibration)
    if timeline_interval is not None and not timeline_interval > 0:
        raise UsageError(f"invalid --timeline-interval {timeline_interval}: must be positive")
    for name, value in (("--input-std", input_std), ("--output-std", output_std)):
        if value is not None and not 0 <= value < float("inf"):
            raise UsageError(f"invalid {name} {value}: must be a non-negative number of tokens")
    settings, unknown = _server_settings(server_settings, engine)
    for key in unknown:
        if key not in ENGINE_PLAN_OPTIONS or engine not in ("sglang", "trtllm"):
            raise UsageError(f"unknown simulate option {key!r}")
    trt_only = [flag for flag, given in (
        ("--capacity-scheduler-policy", capacity_scheduler_policy is not None),
        ("--max-batch-size", max_batch_size is not None),
        ("--max-num-tokens", max_num_tokens is not None),
        ("--enable-chunked-prefill", bool(enable_chunked_prefill))) if given]
    if trt_only and engine != "trtllm":
        raise UsageError(f"{trt_only[0]} is a setting of --engine trtllm, not {engine}")
    if ignore_eos and engine != "sglang":
        raise UsageError(f"--ignore-eos is a setting of --engine sglang, not {engine}")
    if capacity_scheduler_policy is not None and \
            str(capacity_scheduler_policy).upper() not in TRTLLM_CAPACITY_POLICIES:
        raise UsageError(f"unknown --capacity-scheduler-policy '{capacity_scheduler_policy}': "
                         f"choose from {', '.join(TRTLLM_CAPACITY_POLICIES)}")
    for name, value in (("--max-batch-size", max_batch_size),
                        ("--max-num-tokens", max_num_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise UsageError(f"invalid {name} {value}: must be a whole number >= 1")
    input_len, output_len, max_len = (parse_tokens(v, what) if isinstance(v, str) else v
                                      for v, what in ((input_len, "prompt length"),
                                                      (output_len, "output length"),
                                                      (max_len, "max length")))
    cpu_offload = _size(cpu_offload, "cpu_offload")
    m = resolve(model, revision=revision)
    warnings = list(m.spec.warnings)
    if max_len is None:
        max_len = m.spec.max_position_embeddings or 4096
    if engine == "llamacpp" and settings.get("ctx_size"):
        # the per-slot context, as kvcalc plan --engine llamacpp derives it
        max_len = get_engine("llamacpp").plan_max_len(m.spec, settings) or max_len
    inp = _simulation_inputs(m, engine, settings, locals())
    if num_gpu_blocks_override is not None:
        from .planning import make_plan
        from .workload import fixed

        override_fits(make_plan(m.spec, inp, fixed(1, 0)), num_gpu_blocks_override)
    if trace:
        arrivals = load_trace(trace).scaled(rate_scale)
    else:
        if rate_scale != 1.0:
            raise UsageError("--rate-scale scales a --trace; give --rate for synthetic arrivals")
        if input_len is None or output_len is None:
            raise UsageError("synthetic arrivals need --input-len and --output-len")
        n = 1000 if requests is None else requests
        # validate now (one clear line), generate lazily per allocator
        next(iter(synthetic(n, rate, input_len, output_len, dist, input_std, output_std,
                            max_len, seed)))

        def arrivals():
            return synthetic(n, rate, input_len, output_len, dist, input_std, output_std,
                             max_len, seed)
    names = [allocator] if isinstance(allocator, str) else list(allocator or ())
    options = Options(allocators=tuple(dict.fromkeys(names)) or Options().allocators,
                      prefix_caching=prefix_caching, cpu_offload_bytes=cpu_offload,
                      step_time_s=step_time, step_overhead_s=step_overhead,
                      timeline_interval_s=timeline_interval, calibration=calibration,
                      concurrency=concurrency, warmup=warmup, ignore_eos=bool(ignore_eos),
                      capacity_scheduler_policy=(str(capacity_scheduler_policy).upper()
                                                 if capacity_scheduler_policy else None),
                      max_batch_size=max_batch_size, max_num_tokens=max_num_tokens,
                      enable_chunked_prefill=bool(enable_chunked_prefill))
    total = len(arrivals) if trace else n
    if warmup and isinstance(warmup, int) and warmup >= total:
        raise UsageError(f"invalid --warmup {warmup}: it leaves none of the {total:,} "
                         f"requests to measure")
    result = run_simulation(m.spec, inp, arrivals, options)
    warnings += engine_version_notices(engine, inp.version)
    record = result_record(result)
    record["model"] = m.name
    if not trace:
        record["workload"] = (f"synthetic: {n:,} requests, "
                              + (f"Poisson {rate:g}/s" if rate else
                                 "closed loop" if concurrency else "all at time 0") + ", "
                              + (f"{dist} " if dist else "fixed ")
                              + f"prompt {input_len:,} / output {output_len:,} tokens, "
                                f"seed {seed}")
    if concurrency:
        record["workload"] += (f"; closed loop: {concurrency:,} in flight, a new request as each "
                               f"finishes" + (f", the first {warmup:,} (warm-up) left out of "
                                              f"the latency figures" if warmup else ""))
    limit = result.config.max_len
    for name, r in result.runs.items():
        if r.totals.rejected:
            warnings.append(f"{name}: {r.totals.rejected:,} requests rejected (prompt >= "
                            + (f"the slot context {limit:,}" if engine == "llamacpp" else
                               f"--max-len {limit:,}, or larger than the whole KV cache"
                               + (", or longer than --max-num-tokens without "
                                  "--enable-chunked-prefill" if engine == "trtllm" else ""))
                            + ")")
    record["warnings"] = list(dict.fromkeys(list(record.get("warnings", ())) + warnings))
    timeline = []
    if timeline_interval is not None:
        for name, r in result.runs.items():
            slots = r.budget_slots or 1
            for t, running, waiting, pre, *mem in r.totals.timeline:
                timeline.append({"allocator": name, "time_s": t, "running": running,
                                 "waiting": waiting, "preemptions": pre,
                                 **{c: v / slots for c, v in zip(CATEGORIES, mem)}})
    return SimulateResult(record, timeline)


def _simulation_inputs(m: Model, engine: str, settings: dict[str, Any], o: dict[str, Any]):
    """The plan inputs a simulation runs on (the budget, block size and engine band of
    :func:`plan`)."""
    from .params import default_weights_dtype, weights_dtype_bytes
    from .planning import PlanInputs
    from .hardware import resolve_gpu

    sizes = {k: _size(o[k], k) for k in ("overhead", "weights_memory", "activation_memory",
                                         "non_torch_memory", "cuda_graph_memory", "kv_budget")}
    # SGLang's and TensorRT-LLM's plan settings (--max-running-requests, --max-tokens, ...)
    plan_settings = {k: (_size(v, k) if k in _BYTE_OPTIONS else v)
                     for k, v in o["server_settings"].items()
                     if k in ENGINE_PLAN_OPTIONS and v is not None}
    engine_options = tuple(settings.items())
    if plan_settings:
        engine_options += _engine_options(get_engine(engine), {
            ENGINE_PLAN_OPTIONS[k]: (k, v) for k, v in plan_settings.items()})
    wdtype = (get_engine(engine).served_dtype(default_weights_dtype(m.spec))
              if o["weights_dtype"] == "auto" else o["weights_dtype"])
    weights_dtype_bytes(wdtype)
    return PlanInputs(
        gpu=resolve_gpu(o["gpu"]), tp=o["tp"], pp=o["pp"],
        gpu_util=o["gpu_util"],
        weights_dtype=wdtype, kv_dtype=str(o["kv_dtype"]).lower(),
        block_size=o["block_size"], max_len=o["max_len"],
        max_batched_tokens=o["max_batched_tokens"], max_num_seqs=o["max_num_seqs"],
        overhead=sizes["overhead"], cuda_graph=sizes["cuda_graph_memory"],
        activation=sizes["activation_memory"], non_torch=sizes["non_torch_memory"],
        weights=sizes["weights_memory"], kv_budget=sizes["kv_budget"],
        version=o["vllm_version"] if engine == "vllm" else None, engine=engine,
        num_blocks_override=o["num_gpu_blocks_override"], prefix_caching=o["prefix_caching"],
        free_memory=plan_settings.get("free_memory"), engine_options=engine_options)


# ------------------------------------------------------------------------------------- size

#: --router choices of ``kvcalc size`` (kvcalc.sizing.router.ROUTERS)
SIZE_ROUTERS = ("round-robin", "least-outstanding", "prefix-aware")


class SizeResult(Result):
    """One ``kvcalc size``: the fields of ``kvcalc size --format json`` (``answer``: the
    cheapest configuration meeting every objective, or None; ``pareto``: the indexes of the
    configurations on the cost / latency front; ``configurations``: every configuration with
    its status and why; ``counts``; ``objectives``; ``prices`` …). Times are modelled."""

    __slots__ = ()
    _repr_keys = ("model", "workload", "answer_label", "answer_gpus", "answer_usd_per_hour")


def _listed(value: Any, what: str) -> list:
    """A scalar, a list, or a comma-separated string, as a list without repeats."""
    if value is None:
        return [None]
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = []
        for v in value:
            items += [x.strip() for x in v.split(",")] if isinstance(v, str) else [v]
    else:
        items = [value]
    if any(v == "" for v in items):
        raise UsageError(f"invalid {what} {value!r}: an empty item")
    return list(dict.fromkeys(items))


def _counts_list(value: Any, what: str, lo: int = 1, hi: int = 1 << 16) -> list:
    out = []
    for v in _listed(value, what):
        if v is None or (isinstance(v, str) and v in ("auto", "default")):
            out.append(None)
            continue
        try:
            n = int(v) if not isinstance(v, bool) and str(v).strip().isdigit() else None
        except ValueError:
            n = None
        if n is None or not lo <= n <= hi:
            raise UsageError(f"invalid {what} {v!r}: whole numbers from {lo} to {hi:,}, "
                             "comma-separated")
        out.append(n)
    return list(dict.fromkeys(out))


def _switches(value: Any, what: str) -> list[bool]:
    out = []
    for v in _listed(value, what):
        if isinstance(v, bool):
            out.append(v)
        elif str(v).lower() in ("on", "true", "yes", "1"):
            out.append(True)
        elif str(v).lower() in ("off", "false", "no", "0"):
            out.append(False)
        else:
            raise UsageError(f"invalid {what} {v!r}: on, off or on,off")
    return list(dict.fromkeys(out))


def size(model: Any, *, slo: Any, trace: Any = None, rate_scale: float = 1.0,
         rate: float | None = None, requests: int | None = None,
         concurrency: int | None = None, warmup: int = 0, input_len: Any = None,
         output_len: Any = None, dist: str | None = None, input_std: float | None = None,
         output_std: float | None = None, seed: int = 0, gpu: Any = "h100",
         engine: Any = "vllm", tp: Any = (1, 2, 4, 8), kv_dtype: Any = "auto",
         weights_dtype: Any = "auto", max_num_seqs: Any = None, prefix_caching: Any = True,
         router: Any = "least-outstanding", cpu_offload: Any = 0, price: Any = None,
         max_len: Any = None, gpu_util: float | None = None,
         max_batched_tokens: int | None = None, calibration: str | None = None,
         vllm_version: str | None = None, max_replicas: int | None = None,
         jobs: int | None = None, ray: Any = None, disagg: bool = False,
         link_rate: Any = None, pareto_span: Any = 1.25,
         revision: str | None = None) -> SizeResult:
    """The fewest GPUs that meet the objectives, as ``kvcalc size --format json``: every
    configuration of the search space (``gpu``, ``engine``, ``tp``, ``kv_dtype``,
    ``weights_dtype``, ``max_num_seqs``, ``prefix_caching``, ``router``: each a value, a list or
    a comma-separated string) planned as :func:`plan` does and replayed as :func:`simulate`
    does on the traffic (``trace`` [+ ``rate_scale``], or ``rate`` / ``concurrency`` with
    ``input_len`` / ``output_len`` [+ ``dist``, ``input_std``, ``output_std``, ``requests``,
    ``seed``]) with R replicas behind ``router``; ``slo``: objectives such as
    ``["ttft_p99=2s", "tpot_p99=50ms"]``; ``price``: USD per GPU-hour by GPU (``{"h100": 2.5}``
    or ``"h100=2.5"``; default table in docs/sizing.md). ``jobs``: worker processes (default
    all cores); ``ray``: run the simulations as Ray tasks (``True`` for a local Ray, or a
    cluster address). ``disagg``: P prefill + D decode replicas (``link_rate``: bytes/s per
    GPU between them). ``pareto_span``: configurations that cannot cost less than this many
    times the cheapest fleet found are not simulated further (``"all"`` or None: the whole
    Pareto front). Times are modelled (the calibrated step time)."""
    from .hardware import resolve_gpu as _resolve_gpu
    from .params import weights_dtype_bytes
    from .simulation.requests import load_trace, synthetic
    from .sizing import (Candidate, Context, DEFAULT_MAX_REPLICAS, LocalRunner, Settings,
                         Traffic, parse_objectives, parse_prices, price_table, size_fleet)
    from .sizing.router import ROUTERS
    from .units import parse_bytes, parse_tokens

    objectives = parse_objectives(_listed(slo, "--slo") if slo is not None else ())
    _check_workload(trace, (rate, requests, input_len, output_len, dist, concurrency), rate,
                    concurrency, calibration)
    for name, v, lo in (("--jobs", jobs, 1), ("--max-replicas", max_replicas, 1),
                        ("--concurrency", concurrency, 1), ("--requests", requests, 1),
                        ("--warmup", warmup, 0), ("--max-batched-tokens", max_batched_tokens, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo
                              or v > 1 << 24):
            raise UsageError(f"invalid {name} {v!r}: a whole number from {lo} to {1 << 24:,}")
    if gpu_util is not None and not (isinstance(gpu_util, (int, float)) and 0 < gpu_util <= 1):
        raise UsageError(f"invalid --gpu-util {gpu_util!r}: must be in (0, 1]")
    if not (isinstance(rate_scale, (int, float)) and 0 < rate_scale < float("inf")):
        raise UsageError(f"invalid --rate-scale {rate_scale!r}: must be a positive number")
    m = resolve(model, revision=revision)
    warnings = list(m.spec.warnings)
    input_len, output_len, max_len = (parse_tokens(v, what) if isinstance(v, str) else v
                                      for v, what in ((input_len, "prompt length"),
                                                      (output_len, "output length"),
                                                      (max_len, "max length")))
    if max_len is None:
        max_len = m.spec.max_position_embeddings or 4096
    gpus = []
    for g in _listed(gpu, "--gpu"):
        gpus.append(_resolve_gpu(g).name)
    engines = []
    for e in _listed(engine, "--engine"):
        engines.append(engine_name(str(e)))
    tps = _counts_list(tp, "--tp")
    if None in tps:
        raise UsageError("invalid --tp auto: give numbers such as 1,2,4,8")
    kvs = [str(k).lower() for k in _listed(kv_dtype, "--kv-dtype")]
    for k in kvs:
        if k not in KV_DTYPE_CHOICES:
            raise UsageError(f"invalid --kv-dtype {k!r}: choose from {', '.join(KV_DTYPE_CHOICES)}")
    wds = [str(w).lower() for w in _listed(weights_dtype, "--weights-dtype")]
    for w in wds:
        if w != "auto":
            weights_dtype_bytes(w)
    seqs = _counts_list(max_num_seqs, "--max-num-seqs")
    prefixes = _switches(prefix_caching, "--prefix-caching")
    routers = [str(r) for r in _listed(router, "--router")]
    for r in routers:
        if r not in ROUTERS:
            raise UsageError(f"unknown --router '{r}': choose from {', '.join(ROUTERS)}")
    offloads = [parse_bytes(v, "--cpu-offload") if isinstance(v, str) else int(v or 0)
                for v in _listed(cpu_offload, "--cpu-offload")]
    prices = price_table(gpus, parse_prices(_listed(price, "--price") if price else (),
                                            lambda g: _resolve_gpu(g).name))
    if trace:
        tr = load_trace(trace).scaled(rate_scale)
        traffic = Traffic(tr.description, tr.arrivals, tr.hash_block, None, warmup)
    else:
        if rate_scale != 1.0:
            raise UsageError("--rate-scale scales a --trace; give --rate for synthetic arrivals")
        if input_len is None or output_len is None:
            raise UsageError("synthetic arrivals need --input-len and --output-len")
        n = 1000 if requests is None else requests
        arrivals = tuple(synthetic(n, rate, input_len, output_len, dist, input_std, output_std,
                                   max_len, seed))
        what = (f"Poisson {rate:g}/s" if rate else f"closed loop, {concurrency:,} in flight"
                if concurrency else "all at time 0")
        traffic = Traffic(f"synthetic: {n:,} requests, {what}, " + (f"{dist} " if dist else
                          "fixed ") + f"prompt {input_len:,} / output {output_len:,} tokens, "
                          f"seed {seed}", arrivals, 512, concurrency, warmup)
    if warmup and warmup >= len(traffic.arrivals):
        raise UsageError(f"invalid --warmup {warmup}: it leaves none of the "
                         f"{len(traffic.arrivals):,} requests to measure")
    disagg_settings = None
    if disagg:
        from .sizing.disagg import disagg_settings as _disagg

        disagg_settings = _disagg(objectives, link_rate)
    elif link_rate is not None:
        raise UsageError("--link-rate is the prefill-to-decode link of --disagg")
    import itertools

    candidates = [Candidate(g, e, t, k, w, s, p, r, o) for g, e, t, k, w, s, p, r, o in
                  itertools.product(gpus, engines, tps, kvs, wds, seqs, prefixes, routers,
                                    offloads)]
    ctx = Context(m.spec, traffic, objectives,
                  Settings(max_len, gpu_util, max_batched_tokens, calibration, vllm_version),
                  disagg_settings)
    if ray is not None and ray is not False:
        from .sizing.ray_runner import RayRunner

        runner = RayRunner(None if ray is True else str(ray))
    else:
        runner = LocalRunner(jobs)
    if pareto_span in (None, "all"):
        span = None
    else:
        try:
            span = float(pareto_span)
        except (TypeError, ValueError):
            span = float("nan")
        if isinstance(pareto_span, bool) or not 1 <= span < float("inf"):
            raise UsageError(f"invalid --pareto-span {pareto_span!r}: a number >= 1, or all")
    record = size_fleet(ctx, candidates, prices, runner,
                        max_replicas or DEFAULT_MAX_REPLICAS, span)
    warnings += engine_version_notices("vllm", vllm_version)
    answer = record["answer"]
    return SizeResult({"model": m.name, "workload": traffic.description,
                       "requests": len(traffic.arrivals), "max_len": max_len,
                       "answer_label": answer["label"] if answer else None,
                       "answer_gpus": answer["gpus"] if answer else None,
                       "answer_usd_per_hour": answer["usd_per_hour"] if answer else None,
                       **record, "warnings": list(dict.fromkeys(warnings))})


# ------------------------------------------------------------------------------------ check

#: exit status of ``kvcalc check`` when the engine would refuse to start
CHECK_REFUSED = 3


class CheckResult(Result):
    """One ``kvcalc check``: the fields of ``kvcalc check --format json`` (``boots``,
    ``lines``, ``refusals``, ``ignored_flags``, ``suggestions``, ``plan`` …)."""

    __slots__ = ()
    _repr_keys = ("engine", "model", "gpu", "boots", "lines")


def check(command: Any, *, gpu: Any = None, gpus: int | None = None,
          target_concurrency: int | None = None, kv_budget: Any = None,
          free_memory: Any = None, weights_memory: Any = None) -> CheckResult:
    """Read an engine's own launch command (a string as pasted, or its tokens) and answer as
    ``kvcalc check --format json``: the start-up lines the engine prints, whether it boots
    (every start-up check kvcalc can foresee, with the engine's message), the smallest
    changes that boot (or reach ``target_concurrency``), each verified, and the plan behind it.
    ``gpu`` / ``gpus``: the card and how many there are; ``kv_budget`` (vLLM's "Available KV
    cache memory"), ``free_memory`` (SGLang / TensorRT-LLM) and ``weights_memory``: figures a
    real start-up measured. A command kvcalc cannot read raises
    :class:`kvcalc.launch.CommandError` (a UsageError naming the token). See docs/check.md."""
    from .inputs import check_inputs
    from .launch import run_check

    given = {"gpu": gpu, "target_concurrency": target_concurrency, "kv_budget": kv_budget,
             "free_memory": free_memory, "weights_memory": weights_memory}
    checked = dict.fromkeys(given)
    checked.update(check_inputs({k: v for k, v in given.items() if v is not None},
                                command="check"))
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1):
        raise UsageError(f"invalid --gpus {gpus!r}: must be at least 1")
    measured = {k: checked[k] for k in ("kv_budget", "free_memory", "weights_memory")}
    return CheckResult(run_check(command, run_plan=run_plan, resolve=resolve, gpu=checked["gpu"],
                                 gpus=gpus, target_concurrency=checked["target_concurrency"],
                                 **measured))



# ----------------------------------------------------------- lists and helpers (the CLI's too)
# What a command offers as choices and the small helpers it needs, so that kvcalc/cli/ imports
# this module (and render, errors, units) and never an engine, sources, arch or planning.
# Each is cheap: none imports an engine module unless it answers about that engine.

from .dtypes import KV_DTYPE_CHOICES  # noqa: E402  (--kv-dtype)
from .engines import ALLOCATION_OPTIONS, engine_names  # noqa: E402,F401  (--engine choices)


def engine_cards() -> tuple[Any, ...]:
    """The shipped engines' registry cards (``name``, ``aliases``, ``display_name``,
    ``plans``, ``version_flag``, ``default_version``, ``bands``), read without importing any
    engine module: what ``--engine`` and the ``--<engine>-version`` options show."""
    from .engines import cards

    return cards()


def engine_name(engine: str) -> str:
    """The registry name of ``engine`` or one of its aliases ("llama.cpp" -> "llamacpp")."""
    from .engines import CARDS

    key = str(engine).strip().lower()
    for card in CARDS:
        if key == card.name or key in card.aliases:
            return card.name
    return get_engine(engine).name


def engine_info(engine: str) -> Any:
    """The :class:`kvcalc.engines.Engine` registered as ``engine`` (its settings, bands,
    ``tensor_parallel`` …); imports that engine's module only."""
    return get_engine(engine)


#: the engine whose own option each choice list is (:meth:`kvcalc.engines.Engine.choices`)
_CHOICE_OWNERS = {"cache_type": "llamacpp", "flash_attn": "llamacpp", "kv_cache_type": "ollama"}


def option_choices(option: str) -> tuple[str, ...]:
    """The values an engine's own option takes, for a choice list: ``"cache_type"``
    (llama-server's --cache-type-k/-v), ``"flash_attn"`` (llama-server's --flash-attn),
    ``"kv_cache_type"`` (Ollama's OLLAMA_KV_CACHE_TYPE), ``"llamacpp_file_type"``
    (--weights-dtype for llama.cpp and Ollama). Imports the engine that defines them."""
    owner = _CHOICE_OWNERS.get(option)
    if owner is not None:
        return get_engine(owner).choices(option) or ()
    if option == "llamacpp_file_type":
        return __getattr__("LLAMACPP_FILE_TYPES")
    raise UsageError(f"no choice list named {option!r}")


def preset_list() -> list[Any]:
    """Every model preset (user presets first; each with ``name``, ``aliases``,
    ``display_name``, ``hub_id``, ``origin``, ``path``, ``data``)."""
    from .sources import all_presets

    return all_presets()


def find_preset(name: str) -> Any:
    """The preset named ``name`` (or an alias), None when there is none."""
    from .sources import find_preset as _find

    return _find(name)


def unknown_preset_hint(name: str) -> str:
    """The tail of an "unknown preset" message: a hub id's ``models add`` hint, or the close
    preset names."""
    from .errors import suggest
    from .sources import preset_names

    if "/" in name:
        return f" (a hub id: save it with `kvcalc models add {name}`)"
    return suggest(name, preset_names())


def preset_summary(preset: Any) -> dict[str, Any]:
    """One row of ``kvcalc models``: the preset's names and origin, its layers by kind, dtype
    and KV bytes per token in transformers and vLLM (``error`` when kvcalc cannot read it)."""
    from .errors import KvcalcError
    from .sources import builtin_preset_dir

    row = {"name": preset.name, "display_name": preset.display_name, "hub_id": preset.hub_id,
           "aliases": list(preset.aliases), "origin": preset.origin, "path": str(preset.path),
           "folder": str(preset.path.parent),
           "overrides_builtin": preset.origin == "user" and any(
               (builtin_preset_dir() / f"{preset.name}{s}").is_file()
               for s in (".yaml", ".yml"))}
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


def user_preset_dirs() -> list[Any]:
    """The user preset folders, highest priority first (docs/models.md)."""
    from .sources import user_preset_dirs as _dirs

    return _dirs()


def ollama_names() -> list[dict[str, Any]]:
    """The Ollama library names kvcalc resolves: ``ollama``, ``preset``, ``quantization``,
    ``note``."""
    from .ollama_names import TABLE

    return [{"ollama": m.name, "preset": m.preset, "quantization": m.quant, "note": m.note}
            for m in TABLE]


def add_preset(hub_id: str, name: str | None = None, revision: str | None = None,
               force: bool = False) -> dict[str, Any]:
    """``kvcalc models add``: save a hub model's config.json as a user preset. Returns
    ``name``, ``repo_id``, ``commit``, ``path`` and ``overrides_builtin``."""
    from datetime import date

    from . import hub
    from .errors import KvcalcError
    from .sources import HUB_ID, builtin_preset_dir, check_preset_name, save_user_preset

    if not HUB_ID.match(hub_id):
        raise UsageError(f"'{hub_id}' is not a hub id: models add takes org/name[@revision] "
                         "(a local config.json can be used directly with --model)")
    repo_id, _ = hub.split_revision(hub_id, revision)
    key = check_preset_name(name or repo_id.split("/")[-1])
    resolved = hub.resolve_hub(hub_id, revision)
    try:
        spec = build_spec(resolved.config, key)
    except KvcalcError as exc:
        raise KvcalcError(f"not saved: kvcalc cannot read the config of {repo_id}: {exc}") from None
    commit = resolved.revision or resolved.ref
    fetched = "read from the hub cache" if resolved.cached else f"fetched {date.today()}"
    data = {
        "name": key,
        "display_name": repo_id.split("/")[-1],
        "hub_id": repo_id,
        "aliases": [],
        "family": spec.model_type,
        "source": f"hub {repo_id}@{commit} {fetched}",
        "notes": f"Saved by `kvcalc models add {hub_id}` from {hub.endpoint()} "
                 f"({resolved.ref or 'main'}).",
        "config": dict(resolved.config),
    }
    path = save_user_preset(key, data, force=force)
    return {"name": key, "repo_id": repo_id, "commit": commit, "path": path,
            "overrides_builtin": any((builtin_preset_dir() / f"{key}{s}").is_file()
                                     for s in (".yaml", ".yml"))}


def gpu_catalog() -> list[Any]:
    """The GPU catalog (:class:`kvcalc.hardware.GpuSpec` each: ``name``, ``aliases``,
    ``memory_bytes``, ``memory_gib``, bandwidth, sources)."""
    from .hardware import load_catalog

    return load_catalog()


def resolve_gpu(gpu: Any) -> Any:
    """A catalog GPU by name or alias, or a bare memory size such as "48GiB"."""
    from .hardware import resolve_gpu as _resolve_gpu

    return _resolve_gpu(gpu)


def load_model(model: str, revision: str | None = None) -> tuple[Any, ModelSpec]:
    """(provenance, ModelSpec) of ``--model``, as every command reads it."""
    m = resolve(model, revision=revision)
    return m.resolved, m.spec


def truncate_config(config: Mapping[str, Any], layers: int) -> dict[str, Any]:
    """``config`` cut to its first ``layers`` layers (``kvcalc verify --layers``)."""
    from .arch import truncate_config as _truncate

    return _truncate(config, layers)


def llamacpp_server_settings(options: Mapping[str, Any]) -> Any:
    """llama-server's settings (``LlamaCppSettings``) from its options by kvcalc's names
    (``ctx_size``, ``parallel`` …), as ``kvcalc verify --engine llamacpp`` runs them."""
    return get_engine("llamacpp").server_settings(dict(options))


def engine_versions() -> list[Any]:
    """Every engine's version bands, newest checked and installed version (``kvcalc
    versions``)."""
    from .versions import all_engine_versions

    return all_engine_versions()


def verify_requirement(*args: Any, **kwargs: Any) -> Any:
    """:func:`kvcalc.versions.verify_requirement` (``kvcalc versions``)."""
    from .versions import verify_requirement as _verify_requirement

    return _verify_requirement(*args, **kwargs)


def __getattr__(name: str) -> Any:
    """``PresetWarning`` (a skipped user preset) and ``LLAMACPP_FILE_TYPES`` (llama.cpp's file
    types, --weights-dtype of llama.cpp and Ollama), imported on first use."""
    if name == "LLAMACPP_FILE_TYPES":
        from .gguf_weights import FILE_TYPES

        globals()[name] = tuple(FILE_TYPES)
        return globals()[name]
    if name == "PresetWarning":
        from .sources import PresetWarning

        return PresetWarning
    if name in _PLAN_NAMES:
        module, attr = _PLAN_NAMES[name]
        globals()[name] = getattr(importlib.import_module(module), attr)
        return globals()[name]
    raise AttributeError(f"module 'kvcalc.api' has no attribute {name!r}")


#: public names read on first use (so that importing kvcalc.api stays cheap): what
#: ``kvcalc plan``'s options show (the length distributions and the default sample count of
#: kvcalc.workload, vLLM's chunked-local environment variable), the charts of kvcalc.plot
#: (matplotlib only when one is drawn), the checks against real engines of kvcalc.verify
#: (torch / transformers / llama-cpp-python only when one runs), and the one atomic writer
_PLAN_NAMES = {
    "DISTRIBUTIONS": ("kvcalc.workload", "DISTRIBUTIONS"),
    "DEFAULT_SAMPLES": ("kvcalc.workload", "DEFAULT_SAMPLES"),
    "CHUNKED_LOCAL_HYBRID_ENV": ("kvcalc.engines.vllm", "CHUNKED_LOCAL_HYBRID_ENV"),
    **{name: ("kvcalc.plot", name) for name in (
        "KINDS", "DEFAULT_DPI", "DEFAULT_SIZE_IN", "PlanOptions", "WorkloadOptions",
        "ModelInput", "memory_chart", "concurrency_chart", "waste_chart", "timing_chart",
        "timeline_chart", "check_out", "draw", "to_text")},
    "atomic_write": ("kvcalc.files", "atomic_write"),
    "MEMORY_CATEGORIES": ("kvcalc.simulation.metrics", "CATEGORIES"),
    "verify_require": ("kvcalc.verify.backend", "require"),
    "run_verify": ("kvcalc.verify.run", "run_verify"),
    "check_many": ("kvcalc.verify.meta", "check_many"),
    "llamacpp_verify_grid": ("kvcalc.verify.llamacpp", "grid"),
    "verify_llamacpp": ("kvcalc.verify.llamacpp", "verify_llamacpp"),
}


def weights_dtype_text(dtype: str) -> str:
    """How a weights dtype is stored, in words ("bf16: 2 B", "int4: 0.5 B + scales" …)."""
    from .params import weights_dtype_bytes

    return weights_dtype_bytes(dtype)[2]


def engine_card(engine: str) -> Any:
    """The registry card of ``engine`` (name, display name, version flag, default version,
    band names), without importing the engine's module."""
    name = engine_name(engine)
    return next(card for card in engine_cards() if card.name == name)
