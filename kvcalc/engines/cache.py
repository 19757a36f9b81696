"""What every engine layout is made of: one :class:`LayerCache` per decoder layer, the
:class:`Layout` that holds them, and the per-kind byte formulas the engines share.

A layout turns each layer of a :class:`~kvcalc.arch.ModelSpec` into a :class:`LayerCache`: the
bytes one cached token costs in that layer, how many token slots a sequence of ``n`` tokens
holds there (windows, chunks, block rounding) and the fixed bytes per sequence (recurrent
states). Which layout an engine builds, for which settings and version band, lives in that
engine's module (``kvcalc/engines/transformers.py``, ``kvcalc/engines/vllm.py``); derivations
are in docs/formulas.md and docs/engines.md.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field, replace
from functools import cached_property

from .. import arch
from ..arch import AttentionLayer, MLALayer, ModelSpec, StateLayer
from ..dtypes import KVDtype
from ..errors import UsageError
from ..units import cdiv

#: how many tokens a layer keeps for a sequence
KEEP_ALL = "all"         # every token (full attention, MLA)
KEEP_WINDOW = "window"   # the last tokens of a sliding window
KEEP_CHUNK = "chunk"     # the tokens of the current attention chunk (vLLM) / last C-1 (hf)
KEEP_NONE = "none"       # nothing per token (states, shared, MLP-only layers)


@dataclass(frozen=True)
class LayerCache:
    """The cost of one layer's cache in one engine layout (all integers, bytes or tokens)."""

    index: int
    kind: str
    bytes_per_token: int
    keep: str = KEEP_ALL
    #: sliding window W or chunk size C in tokens (for KEEP_WINDOW / KEEP_CHUNK)
    window: int | None = None
    #: paged engines allocate whole blocks of this many tokens; None = token-granular
    block_size: int | None = None
    #: bytes per sequence that do not depend on its length (recurrent states)
    fixed_bytes: int = 0
    #: hf only: a sliding layer caps at ``window - 1`` tokens when True, keeps all when False
    capped: bool = True
    #: state layers: the recurrent mixer (mamba, mamba2, gated_deltanet) and, for GDN, the key
    #: head dimension (vLLM's planning depends on both)
    mixer: str | None = None
    state_head_dim: int = 0
    #: how bytes_per_token / fixed_bytes were derived, with this model's numbers
    formula: str = field(default="", compare=False)

    def slots_held(self, n: int) -> int:
        """Token slots this layer holds for one sequence whose cache has ``n`` tokens."""
        if self.keep == KEEP_NONE or n <= 0:
            return 0
        if self.block_size is None:  # token-granular (hf DynamicCache)
            if self.keep == KEEP_ALL or not self.capped:
                return n
            return min(n, self.window - 1)
        bs = self.block_size
        blocks = cdiv(n, bs)
        if self.keep == KEEP_WINDOW:
            # vLLM SlidingWindowManager: tokens before n - W + 1 are skipped; whole skipped blocks
            # are freed (get_num_skipped_tokens = max(0, n - W + 1)).
            blocks -= max(0, n - self.window + 1) // bs
        elif self.keep == KEEP_CHUNK:
            # vLLM ChunkedLocalAttentionManager: tokens of completed chunks are skipped.
            blocks -= (n // self.window) * self.window // bs
        return blocks * bs

    def bytes_for(self, n: int) -> int:
        """Bytes this layer holds for one sequence of ``n`` cached tokens."""
        return self.slots_held(n) * self.bytes_per_token + self.fixed_bytes

    @property
    def page_bytes(self) -> int:
        """vLLM page: one block of this layer (0 for token-granular layouts)."""
        return (self.block_size or 0) * self.bytes_per_token


@dataclass(frozen=True)
class Layout:
    """A model laid out by one engine: one :class:`LayerCache` per decoder layer."""

    spec: ModelSpec
    engine: str
    kv_dtype: KVDtype
    layers: tuple[LayerCache, ...]
    block_size: int | None = None
    tp: int = 1
    #: the engine version the layout models and the name of its version band
    version: str | None = None
    band: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token adds while inside every window, over layers with per-token KV."""
        return sum(layer.bytes_per_token for layer in self.layers if layer.keep != KEEP_NONE)

    @property
    def fixed_bytes_per_sequence(self) -> int:
        return sum(layer.fixed_bytes for layer in self.layers)

    def bytes_per_sequence(self, n: int) -> int:
        """Exact bytes one sequence of ``n`` cached tokens holds (windows, states, blocks)."""
        return sum(count * layer.bytes_for(n) for layer, count in self._distinct)

    @cached_property
    def _distinct(self) -> tuple[tuple[LayerCache, int], ...]:
        """Identical layers collapsed (index aside): sums cost one term per kind of layer."""
        counts: dict[LayerCache, int] = {}
        for layer in self.layers:
            key = replace(layer, index=0)
            counts[key] = counts.get(key, 0) + 1
        return tuple(counts.items())


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
