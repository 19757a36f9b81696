"""The layout vocabulary: one :class:`LayerCache` per decoder layer and the :class:`Layout` that
holds them -- what every engine produces (kvcalc.engines) and what the per-sequence sums, the
workload allocators and the plans read, below the engines.

A layout turns each layer of a :class:`~kvcalc.arch.ModelSpec` into a :class:`LayerCache`: the
bytes one cached token costs in that layer, how many token slots a sequence of ``n`` tokens
holds there (windows, chunks, block rounding) and the fixed bytes per sequence (recurrent
states). Which layout an engine builds, for which settings and version band, lives in that
engine's module; derivations are in docs/formulas.md and docs/engines.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

from .arch import ModelSpec
from .dtypes import KVDtype
from .units import cdiv

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


def head_split_problem(spec: ModelSpec, tp: int) -> tuple[str, int, int, int] | None:
    """Why ``tp`` GPUs cannot share ``spec``'s attention heads evenly, or None: engines that
    shard attention by heads (Megatron-style column-parallel Q/K/V) need ``tp`` to divide the
    attention heads, and to divide the KV heads (tp < KV heads) or be a multiple of them (tp >=
    KV heads: each KV head replicated on tp / KV heads GPUs); MLA layers replicate the latent.
    Returns ``("heads", heads, heads, tp)`` or ``("kv", kv, numerator, denominator)``."""
    from .arch import AttentionLayer

    if tp <= 1:
        return None
    heads = spec.num_attention_heads
    if heads and heads % tp:
        return ("heads", heads, heads, tp)
    for kv in sorted({l.kv_heads for l in spec.layers if isinstance(l, AttentionLayer)}):
        num, den = (kv, tp) if tp < kv else (tp, kv)
        if num % den:
            return ("kv", kv, num, den)
    return None

