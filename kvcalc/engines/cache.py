"""What every engine layout is made of: one :class:`LayerCache` per decoder layer and the
:class:`Layout` that holds them (defined in :mod:`kvcalc.layout`, below the engines, and
re-exported here), and the per-kind byte formulas the engines share.

A layout turns each layer of a :class:`~kvcalc.arch.ModelSpec` into a :class:`LayerCache`: the
bytes one cached token costs in that layer, how many token slots a sequence of ``n`` tokens
holds there (windows, chunks, block rounding) and the fixed bytes per sequence (recurrent
states). Which layout an engine builds, for which settings and version band, lives in that
engine's module (``kvcalc/engines/transformers.py``, ``kvcalc/engines/vllm.py``); derivations
are in docs/formulas.md and docs/engines.md.
"""

from __future__ import annotations

import re

from .. import arch
from ..arch import AttentionLayer, MLALayer, StateLayer
from ..dtypes import KVDtype
from ..errors import UsageError
from ..units import cdiv

# the layout vocabulary lives below the engines (kvcalc/layout.py); engines import it from here
from ..layout import (KEEP_ALL, KEEP_CHUNK, KEEP_NONE, KEEP_WINDOW, LayerCache,  # noqa: F401,E402
                      Layout)


def parse_version(text: str, what: str = "transformers", example: str = "4.57") -> tuple[int, int]:
    """``"5.23"`` / ``"0.33.0"`` / ``"5.24.0.dev0"`` -> ``(major, minor)``; anything else
    (``-1.-1``, ``5``, ``５.23``, ``1e3``) is a UsageError."""
    m = _VERSION.match(str(text))
    if not m:
        raise UsageError(f"invalid {what} version '{text}': use MAJOR.MINOR, e.g. {example}")
    return int(m[1]), int(m[2])


#: MAJOR.MINOR[.PATCH][suffix] in ASCII digits (PEP 440 releases, pre/dev/post/local tails)
_VERSION = re.compile(r"^\s*([0-9]{1,4})\.([0-9]{1,4})(?:\.[0-9]{1,6})?(?:[.+\-]?[A-Za-z0-9.+\-]{1,32})?\s*$")


def require_at_least_one(**sizes: int) -> None:
    """One line for the first layout size below 1 (tensor parallelism, block / page size), the
    check every engine's layout makes first; keywords are the sizes' names as the message says
    them (``tensor_parallel_size`` -> "tensor-parallel size")."""
    for name, value in sizes.items():
        if value < 1:
            label = LAYOUT_SIZE_NAMES.get(name, name)
            raise UsageError(f"invalid {label} {value}: must be at least 1")


#: how errors name a layout size
LAYOUT_SIZE_NAMES = {"tensor_parallel_size": "tensor-parallel size", "block_size": "block size",
                     "page_size": "--page-size", "tokens_per_block": "--tokens-per-block"}


def attention_bytes_per_token(kv_heads: int, head_dim_k: int, head_dim_v: int,
                              dtype: KVDtype) -> int:
    """K and V rows for every cached head: ``kv_heads x (row(hd_k) + row(hd_v))``.

    For unquantised dtypes this is the textbook ``kv_heads x (hd_k + hd_v) x bytes``.
    """
    return kv_heads * (dtype.row_bytes(head_dim_k) + dtype.row_bytes(head_dim_v))


#: DeepSeek-V3.2 lightning-indexer keys: fp8 values + one fp32 scale per this many, in vLLM
#: (``DeepseekV32IndexerCache``) and SGLang (``DSATokenToKVPool``) alike
INDEXER_QUANT_BLOCK = 128


def indexer_bytes_per_token(layer: MLALayer) -> int:
    """DeepSeek-V3.2 lightning-indexer keys: ``index_head_dim`` fp8 values plus one fp32 scale
    per :data:`INDEXER_QUANT_BLOCK` values, whatever the KV dtype (vLLM and SGLang)."""
    if not layer.indexer_head_dim:
        return 0
    d = layer.indexer_head_dim
    return d + d // INDEXER_QUANT_BLOCK * 4


def mla_latent_bytes_per_token(layer: MLALayer, dtype: KVDtype) -> int:
    """One latent row per token: ``(kv_lora_rank + qk_rope_head_dim) x bytes`` (576 elements
    for DeepSeek V2/V3/R1 and Kimi K2)."""
    return dtype.row_bytes(layer.kv_lora_rank + layer.qk_rope_head_dim)


def mla_expanded_bytes_per_token(layer: MLALayer, dtype: KVDtype) -> int:
    """Decompressed K (``qk_nope + qk_rope``) and V (``v_head_dim``) for every head."""
    return attention_bytes_per_token(layer.num_heads, layer.qk_nope_head_dim + layer.qk_rope_head_dim,
                                     layer.v_head_dim, dtype)


def state_bytes(layer: StateLayer, conv_columns: int, conv_bytes: int, ssm_bytes: int,
                tp: int = 1) -> int:
    """Fixed per-sequence state: conv buffer ``conv_dim x columns`` + the SSM/recurrent tensor.

    With tensor parallelism the channels and heads are split across ranks (ceil division).
    """
    ssm_elements = 1
    for d in layer.ssm_shape:
        ssm_elements *= d
    conv = cdiv(layer.conv_dim, tp) * conv_columns * conv_bytes
    ssm = cdiv(ssm_elements, tp) * ssm_bytes
    return conv + ssm


# --------------------------------------------------------------------------------------------
# Human-readable derivations (shown by `estimate`, one per layer kind)


def element_text(dtype: KVDtype) -> str:
    if dtype.kind in ("float", "fp8"):
        return f"{dtype.bits // 8} B ({dtype.name})"
    return f"{dtype.name} (+ scales)"


def attention_formula(heads: int, layer: AttentionLayer, dtype: KVDtype) -> str:
    dims = (f"2 x {layer.head_dim_k}" if layer.head_dim_k == layer.head_dim_v
            else f"({layer.head_dim_k} + {layer.head_dim_v})")
    return f"{heads} kv heads x {dims} x {element_text(dtype)}"


def mla_latent_formula(layer: MLALayer, dtype: KVDtype) -> str:
    return (f"latent (kv_lora_rank {layer.kv_lora_rank} + qk_rope_head_dim "
            f"{layer.qk_rope_head_dim}) x {element_text(dtype)}")


def state_formula(layer: StateLayer, conv_columns: int, conv_bytes: int, ssm_bytes: int,
                  tp: int = 1) -> str:
    split = f" / tp {tp}" if tp > 1 else ""
    shape = " x ".join(str(d) for d in layer.ssm_shape)
    return (f"{layer.mixer} state per sequence: conv {layer.conv_dim} x {conv_columns} x "
            f"{conv_bytes} B + ssm {shape} x {ssm_bytes} B{split}")


def no_cache_formula(layer: arch.Layer) -> str:
    if isinstance(layer, arch.SharedLayer):
        return "reuses the KV of an earlier layer of the same kind: 0 B"
    if isinstance(layer, arch.NoCacheLayer):
        return f"{layer.reason}: 0 B"
    return "0 B"
