"""KV-cache element types: how many bytes a row of E cached values costs, scales included.

A *row* is one token's keys (or values) for one head: ``E`` = head_dim elements.

| name  | storage                   | scale overhead modelled                                        |
|-------|---------------------------|----------------------------------------------------------------|
| fp32  | 4 B / element             | none                                                           |
| fp16  | 2 B / element             | none                                                           |
| bf16  | 2 B / element             | none                                                           |
| fp8   | 1 B / element (e4m3)      | none per token: one fp32 scale per layer tensor (vLLM          |
|       |                           | ``--kv-cache-dtype fp8``, HF ``QuantizedCache(backend="fp8")``)  |
| int8  | 1 B / element             | one fp32 scale per token per head for K and for V (+4 B a row, |
|       |                           | vLLM ``int8_per_token_head``)                                  |
| int4  | 0.5 B / element (packed)  | groups of 64 elements along the head with an fp16 scale and an |
|       |                           | fp16 zero-point (+4 B per group; HF QuantizedCache/HQQ default |
|       |                           | ``q_group_size=64``)                                           |

``auto`` resolves to the model's ``torch_dtype`` (``dtype`` in newer configs), as vLLM's
``--kv-cache-dtype auto`` and transformers' default cache do; a config that names no dtype is
taken as bf16 and a warning says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError
from .units import cdiv

INT4_GROUP_SIZE = 64          # elements per int4 quantisation group (HF QuantizedCache q_group_size)
INT4_GROUP_SCALE_BYTES = 4    # fp16 scale + fp16 zero-point per group
INT8_ROW_SCALE_BYTES = 4      # one fp32 scale per token per head (vLLM int8_per_token_head)


@dataclass(frozen=True)
class KVDtype:
    name: str
    bits: int
    #: "float" | "fp8" | "int8" | "int4": decides the scale metadata per row (module doc)
    kind: str

    def row_bytes(self, elements: int) -> int:
        """Bytes to cache ``elements`` values of one token and one head (one K or one V row)."""
        data = cdiv(elements * self.bits, 8)
        if self.kind == "int8":
            return data + INT8_ROW_SCALE_BYTES
        if self.kind == "int4":
            return data + cdiv(elements, INT4_GROUP_SIZE) * INT4_GROUP_SCALE_BYTES
        return data

    @property
    def element_bytes(self) -> int:
        """Whole bytes per element for unquantised storage (floats); 1 for fp8/int8."""
        return max(1, self.bits // 8)


DTYPES: dict[str, KVDtype] = {
    "fp32": KVDtype("fp32", 32, "float"),
    "fp16": KVDtype("fp16", 16, "float"),
    "bf16": KVDtype("bf16", 16, "float"),
    "fp8": KVDtype("fp8", 8, "fp8"),
    "int8": KVDtype("int8", 8, "int8"),
    "int4": KVDtype("int4", 4, "int4"),
}

_ALIASES = {
    "float32": "fp32", "float": "fp32", "f32": "fp32",
    "float16": "fp16", "half": "fp16", "f16": "fp16",
    "bfloat16": "bf16",
    "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "float8": "fp8", "float8_e4m3fn": "fp8", "e4m3": "fp8",
    "uint8": "int8",
}

KV_DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16", "fp8", "int8", "int4")
WEIGHT_DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def normalise_dtype_name(name: str | None) -> str | None:
    """'bfloat16' -> 'bf16', 'torch.float16' -> 'fp16'; None for unknown/empty."""
    if not name:
        return None
    key = str(name).lower().removeprefix("torch.")
    key = _ALIASES.get(key, key)
    return key if key in DTYPES else None


def resolve_kv_dtype(name: str, model_dtype: str) -> KVDtype:
    """The KV dtype for ``--kv-dtype NAME``; ``auto`` means the model's dtype."""
    if name == "auto":
        return DTYPES[model_dtype]
    key = normalise_dtype_name(name)
    if key is None:
        raise UsageError(
            f"unknown KV dtype '{name}': choose one of {', '.join(KV_DTYPE_CHOICES)}"
        )
    return DTYPES[key]
