"""Totals: per token, per sequence and per batch, grouped by layer kind. Pure integers (bytes)."""

from __future__ import annotations

from dataclasses import dataclass

from . import arch
from .layout import KEEP_CHUNK, KEEP_WINDOW, Layout, LayerCache


@dataclass(frozen=True)
class LayerGroup:
    """Layers that cost the same: kind, bytes per token, window, fixed state bytes."""

    kind: str
    count: int
    bytes_per_token: int          # per layer
    window: int | None
    fixed_bytes: int              # per layer per sequence
    slots_per_sequence: int       # token slots one layer holds for the sequence
    bytes_per_sequence: int       # all layers of the group, one sequence

    @property
    def total_bytes_per_token(self) -> int:
        return self.bytes_per_token * self.count


@dataclass(frozen=True)
class Estimate:
    """One point of ``kvcalc estimate``: a layout at ``seq`` cached tokens and ``batch`` sequences."""

    layout: Layout
    seq: int
    batch: int
    groups: tuple[LayerGroup, ...]

    @property
    def bytes_per_token(self) -> int:
        return self.layout.bytes_per_token

    @property
    def bytes_per_sequence(self) -> int:
        return sum(g.bytes_per_sequence for g in self.groups)

    @property
    def bytes_total(self) -> int:
        return self.batch * self.bytes_per_sequence


def group_layers(layers: tuple[LayerCache, ...], seq: int) -> tuple[LayerGroup, ...]:
    """Collapse identical layers into groups, in order of first appearance."""
    order: list[tuple] = []
    counts: dict[tuple, int] = {}
    first: dict[tuple, LayerCache] = {}
    for layer in layers:
        key = (layer.kind, layer.bytes_per_token, layer.keep, layer.window, layer.fixed_bytes)
        if key not in counts:
            order.append(key)
            counts[key] = 0
            first[key] = layer
        counts[key] += 1
    groups = []
    for key in order:
        layer, count = first[key], counts[key]
        window = layer.window if layer.keep in (KEEP_WINDOW, KEEP_CHUNK) else None
        groups.append(LayerGroup(layer.kind, count, layer.bytes_per_token, window,
                                 layer.fixed_bytes, layer.slots_held(seq),
                                 count * layer.bytes_for(seq)))
    return tuple(groups)


def estimate(layout: Layout, seq: int, batch: int = 1) -> Estimate:
    """KV bytes for ``batch`` sequences of ``seq`` cached tokens each (linear in batch)."""
    return Estimate(layout, seq, batch, group_layers(layout.layers, seq))


def formula(layout: Layout) -> str:
    """The per-token formula with this model's numbers, for humans (one line per kind)."""
    spec = layout.spec
    b = layout.kv_dtype
    parts: list[str] = []
    seen: set[str] = set()
    for layer, cache in zip(spec.layers, layout.layers):
        if cache.kind in seen:
            continue
        seen.add(cache.kind)
        n = sum(1 for c in layout.layers if c.kind == cache.kind)
        if isinstance(layer, arch.AttentionLayer) and cache.bytes_per_token:
            heads = cache.bytes_per_token // max(1, b.row_bytes(layer.head_dim_k) + b.row_bytes(layer.head_dim_v))
            dims = (f"({layer.head_dim_k} + {layer.head_dim_v})" if layer.head_dim_k != layer.head_dim_v
                    else f"2 x {layer.head_dim_k}")
            cap = ""
            if layer.window:
                cap = f", capped at {'W - 1' if layout.engine == 'hf' else 'the window'} (W = {layer.window})"
            parts.append(f"{cache.kind}: {n} layers x {heads} kv heads x {dims} x {_elem(b)}{cap}")
        elif isinstance(layer, arch.MLALayer):
            latent = cache.bytes_per_token == b.row_bytes(layer.kv_lora_rank + layer.qk_rope_head_dim)
            if latent:
                parts.append(f"mla: {n} layers x (kv_lora_rank {layer.kv_lora_rank} + "
                             f"qk_rope_head_dim {layer.qk_rope_head_dim}) x {_elem(b)}")
            else:
                parts.append(f"mla (decompressed): {n} layers x {layer.num_heads} heads x "
                             f"({layer.qk_nope_head_dim} + {layer.qk_rope_head_dim} + "
                             f"{layer.v_head_dim}) x {_elem(b)}")
        elif isinstance(layer, arch.StateLayer):
            parts.append(f"state ({layer.mixer}): {n} layers x {cache.fixed_bytes:,} B per sequence")
        elif cache.kind == arch.SHARED:
            parts.append(f"shared: {n} layers reuse another layer's KV (0 B)")
    return "; ".join(parts)


def _elem(dtype) -> str:
    if dtype.kind == "float" or dtype.kind == "fp8":
        return f"{dtype.bits // 8} B ({dtype.name})"
    return f"{dtype.name} rows incl. scales"
