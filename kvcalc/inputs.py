"""The inputs of kvcalc's commands, declared once: each keyword's type and bounds.

The Python API (:mod:`kvcalc.api`) checks every keyword it is given against :data:`PARAMS`
(:func:`validated`), and the CLI is a client of that API, so one declaration holds for both:
a count is an ``int`` (never a bool, never a float), a token count or a byte amount is an
``int`` or a size string (``"32k"``, ``"3GiB"``), a fraction is a finite number in its range,
a switch is a bool, and a keyword no command takes is refused. Every refusal is a
:class:`~kvcalc.errors.UsageError` naming the option as the CLI spells it; docs/security.md
lists the bounds.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import UsageError
from .units import MAX_BYTES, MAX_TOKENS, parse_bytes, parse_tokens
from .workload import DISTRIBUTIONS, MAX_SEQUENCES

#: most GPUs in one parallel dimension (--tp, --pp, --replicas) and the largest KV block in
#: tokens: vLLM's largest blocks (hybrid models aligned to a Mamba state) are a few thousand
#: tokens, the largest clusters a few thousand GPUs
MAX_GPUS = 1 << 16
MAX_BLOCK_SIZE = 1 << 16
#: arrival rates (requests per second) and rate scales a simulation accepts: past these a
#: run's modelled times overflow or lose their precision
MIN_RATE, MAX_RATE = 1e-6, 1e9
MIN_RATE_SCALE, MAX_RATE_SCALE = 1e-6, 1e6
#: modelled seconds: a step time or overhead, a timeline interval
MAX_STEP_S = 3600.0
MIN_TIMELINE_S, MAX_TIMELINE_S = 1e-3, 1e9


@dataclass(frozen=True)
class Param:
    """One keyword: ``kind`` is count (an int), tokens (an int or "32k"), bytes (an int or
    "3GiB"), number (a finite int or float), bool, text, texts (text or a list of text) or path;
    ``lo``/``hi`` bound numbers (``open_lo``: lo itself excluded); ``choices`` bound text."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    choices: tuple[str, ...] | None = None
    #: False: None is not "not given" but an invalid value (the keyword has a real default)
    nullable: bool = True

    def check(self, name: str, value: Any) -> Any:
        """``value`` converted (sizes parsed), or a UsageError naming ``--name``."""
        flag = "--" + name.replace("_", "-")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise UsageError(f"invalid {flag} {value!r}: must be True or False")
            return value
        if self.kind in ("text", "texts", "path"):
            return self._text(flag, value)
        if self.kind == "tokens":
            value = parse_tokens(value, flag) if isinstance(value, (str, bool)) else value
        elif self.kind == "bytes":
            value = parse_bytes(value, flag) if isinstance(value, (str, bool)) else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.kind != "number" and not isinstance(value, int)):
            what = "an integer" if self.kind == "count" else (
                "a number" if self.kind == "number" else
                "an integer or a size such as " + ("32k" if self.kind == "tokens" else "3GiB"))
            raise UsageError(f"invalid {flag} {value!r}: must be {what}")
        low_ok = self.lo is None or (value > self.lo if self.open_lo else value >= self.lo)
        finite = not isinstance(value, float) or math.isfinite(value)
        if not finite or not low_ok or (self.hi is not None and value > self.hi):
            raise UsageError(f"invalid {flag} {value!r}: must be {self.rule()} "
                             "(docs/security.md)")
        return value

    def _text(self, flag: str, value: Any) -> Any:
        if self.kind == "path" and isinstance(value, os.PathLike):
            return value
        items = list(value) if (self.kind == "texts" and isinstance(value, (list, tuple))) \
            else [value]
        for item in items:
            if not isinstance(item, str) or not item:
                raise UsageError(f"invalid {flag} {item!r}: must be a non-empty string")
            if self.choices is not None and item not in self.choices:
                raise UsageError(f"invalid {flag} {item!r}: choose one of "
                                 f"{', '.join(self.choices)}")
        return value

    def rule(self) -> str:
        lo = "" if self.lo is None else f"{_num(self.lo)}"
        hi = "" if self.hi is None else f"{_num(self.hi)}"
        if lo and hi:
            return (f"greater than {lo} and at most {hi}" if self.open_lo
                    else f"from {lo} to {hi}")
        return (f"greater than {lo}" if self.open_lo else f"at least {lo}") if lo \
            else f"at most {hi}"


def _num(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def _count(lo: int = 1, hi: int = MAX_TOKENS) -> Param:
    return Param("count", lo, hi)


_FRACTION = Param("number", 0.0, 1.0, open_lo=True)
_TOKENS = Param("tokens", 1, MAX_TOKENS)
_BYTES = Param("bytes", 0, MAX_BYTES)
_TEXT = Param("text")
_BOOL = Param("bool")
_STD = Param("number", 0, MAX_TOKENS)

#: every keyword of estimate / plan / simulate that kvcalc checks, with its bounds
PARAMS: dict[str, Param] = {
    # shared
    "seq": _TOKENS, "batch": _count(1, MAX_TOKENS), "engine": _TEXT, "kv_dtype": _TEXT,
    "block_size": _count(1, MAX_BLOCK_SIZE), "revision": _TEXT, "gpu": _TEXT,
    "tp": _count(1, MAX_GPUS), "pp": _count(1, MAX_GPUS), "replicas": _count(1, MAX_GPUS),
    "max_len": _TOKENS, "gpu_util": _FRACTION, "weights_dtype": _TEXT,
    **{k: _BYTES for k in ("overhead", "weights_memory", "activation_memory",
                           "non_torch_memory", "cuda_graph_memory", "kv_budget",
                           "max_gpu_total_bytes", "host_cache_size", "cpu_offload")},
    "free_memory": Param("bytes", 0, MAX_BYTES, open_lo=True),
    "max_batched_tokens": _count(), "max_num_seqs": _count(),
    "num_gpu_blocks_override": _count(0), "num_speculative_tokens": _count(0),
    **{k: _BOOL for k in ("async_scheduling", "disable_hybrid_kv_cache_manager",
                          "enable_prefix_caching", "allow_chunked_local_hybrid",
                          "prefix_caching", "disable_cuda_graph", "kv_unified", "swa_full",
                          "flash_attention", "enforce_eager")},
    # the workload of plan
    "prompt_len": _TOKENS, "output_len": _TOKENS,
    "dist": Param("text", choices=DISTRIBUTIONS),
    "mean": Param("number", 1, MAX_TOKENS), "std": _STD,
    "samples": _count(1, MAX_SEQUENCES), "seed": Param("count", None, None),
    "trace": Param("path"), "target_concurrency": _count(), "solve_max_len": _count(),
    # SGLang's and TensorRT-LLM's plan settings
    "mem_fraction_static": _FRACTION, "free_gpu_memory_fraction": _FRACTION,
    **{k: _count() for k in ("max_running_requests", "max_total_tokens",
                             "chunked_prefill_size", "cuda_graph_max_bs", "max_tokens")},
    # llama-server's and Ollama's settings (ctx_size 0: the model's context length)
    "ctx_size": Param("tokens", 0, MAX_TOKENS), "num_ctx": _TOKENS,
    **{k: _count() for k in ("parallel", "batch_size", "ubatch_size", "num_parallel",
                             "num_batch")},
    **{k: _TEXT for k in ("cache_type_k", "cache_type_v", "flash_attn", "kv_cache_type")},
    # llama.cpp's offload (-ngl N|all|auto, -ts, -sm, -ot) and Ollama's num_gpu: checked by
    # kvcalc.engines.llamacpp
    **{k: _TEXT for k in ("n_gpu_layers", "tensor_split", "split_mode", "override_tensor",
                          "num_gpu")},
    "no_kv_offload": _BOOL, "mmproj": Param("path"),
    # Ollama: OLLAMA_GPU_OVERHEAD (bytes set aside per GPU)
    "gpu_overhead": _BYTES, "ollama_version": _TEXT,
    # simulate
    "rate": Param("number", MIN_RATE, MAX_RATE),
    "rate_scale": Param("number", MIN_RATE_SCALE, MAX_RATE_SCALE),
    "requests": _count(1, MAX_SEQUENCES), "input_len": _TOKENS,
    "input_std": _STD, "output_std": _STD, "allocator": Param("texts"),
    "step_time": Param("number", 0.0, MAX_STEP_S, open_lo=True),
    "step_overhead": Param("number", 0.0, MAX_STEP_S),
    "timeline_interval": Param("number", MIN_TIMELINE_S, MAX_TIMELINE_S),
    # simulate's closed loop and step-time calibration (kvcalc.simulation.timing)
    "concurrency": _count(1, MAX_SEQUENCES), "warmup": _count(0, MAX_SEQUENCES),
    "calibration": _TEXT,
}


#: keywords whose default is a value, not None: None for them is an error, not "not given"
REQUIRED = ("seq", "batch", "engine", "kv_dtype", "gpu", "tp", "pp", "replicas",
            "weights_dtype", "seed", "async_scheduling", "disable_hybrid_kv_cache_manager",
            "enable_prefix_caching", "num_speculative_tokens", "rate_scale", "prefix_caching",
            "warmup")
for _name in REQUIRED:
    PARAMS[_name] = dataclasses.replace(PARAMS[_name], nullable=False)


def version_keyword(name: str) -> bool:
    """``hf_version``, ``vllm_version``, ...: an engine's version keyword."""
    return name.endswith("_version")


def check_inputs(values: Mapping[str, Any], *, strict: bool = True,
                 command: str = "kvcalc") -> dict[str, Any]:
    """``values`` with every declared keyword checked and converted (None means "not given"
    and passes); an undeclared keyword is refused when ``strict`` ("unknown ``command``
    option")."""
    out = dict(values)
    for name, value in values.items():
        param = PARAMS.get(name)
        if value is None:
            if param is not None and not param.nullable:
                raise UsageError(f"invalid --{name.replace('_', '-')} None: give a value or "
                                 "leave the keyword out")
            continue
        if param is None:
            if version_keyword(name):
                PARAMS["revision"].check(name, value)
            elif strict:
                raise UsageError(f"unknown {command} option {name!r}")
            continue
        out[name] = param.check(name, value)
    return out


def validated(command: str) -> Callable[[Callable], Callable]:
    """A decorator for the API function of ``command`` (estimate, plan, simulate): check its
    keyword arguments against :data:`PARAMS` before it runs -- its named keywords that are
    declared, and every keyword its ``**options`` collects (an undeclared one is a UsageError
    naming it). Named keywords not declared here pass unchecked."""
    return functools.partial(_validated, command=command)


def _validated(func: Callable, command: str) -> Callable:
    signature = inspect.signature(func)
    extra = next((p.name for p in signature.parameters.values()
                  if p.kind is inspect.Parameter.VAR_KEYWORD), None)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise UsageError(f"{func.__name__}(): {exc}") from None
        named = {k: v for k, v in bound.arguments.items() if k != extra and k in PARAMS}
        bound.arguments.update(check_inputs(named, command=command))
        if extra is not None and extra in bound.arguments:
            bound.arguments[extra] = check_inputs(bound.arguments[extra], command=command)
        return func(*bound.args, **bound.kwargs)

    return wrapper
