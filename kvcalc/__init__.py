"""kvcalc: KV-cache capacity planning for LLM inference.

The public API (pure Python, no torch; docs/api.md):

>>> import kvcalc
>>> kvcalc.estimate("llama-7b", seq=4096).bytes_per_sequence
2147483648
>>> kvcalc.resolve("llama-3.1-8b").model_type
'llama'
>>> kvcalc.plan("llama-3.1-8b", gpu="h100", max_len="8k").fits
True

``resolve``, ``estimate``, ``plan``, ``simulate``, ``check`` and ``size`` take keyword arguments named like the CLI options and return
frozen results whose ``to_dict()`` is the command's JSON output; errors are the typed
exceptions of :mod:`kvcalc.errors` (all :class:`KvcalcError`). Names are imported on first use,
so ``import kvcalc`` stays as cheap as ``kvcalc estimate``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it (imported lazily, PEP 562)
_EXPORTS = {
    "resolve": "kvcalc.api", "estimate": "kvcalc.api", "estimate_sweep": "kvcalc.api",
    "plan": "kvcalc.api", "compare_gpus": "kvcalc.api", "simulate": "kvcalc.api",
    "SimulateResult": "kvcalc.api", "check": "kvcalc.api", "CheckResult": "kvcalc.api",
    "size": "kvcalc.api", "SizeResult": "kvcalc.api",
    "Model": "kvcalc.api", "EstimateResult": "kvcalc.api", "PlanResult": "kvcalc.api",
    "Result": "kvcalc.api",
    "KvcalcError": "kvcalc.errors", "UsageError": "kvcalc.errors",
    "ModelNotFoundError": "kvcalc.errors", "ConfigError": "kvcalc.errors",
    "MissingFieldError": "kvcalc.errors", "HubError": "kvcalc.errors",
    "LimitError": "kvcalc.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kvcalc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
