"""Totals: per token, per sequence and per batch, grouped by layer kind. Pure integers (bytes)."""

from __future__ import annotations

from dataclasses import dataclass

from .layout import KEEP_CHUNK, KEEP_WINDOW, LayerCache, Layout


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
    """The per-layer derivation with this model's numbers, one clause per layer group."""
    parts: list[str] = []
    seen: dict[str, int] = {}
    for cache in layout.layers:
        seen[cache.formula] = seen.get(cache.formula, 0) + 1
    kinds = {c.formula: c.kind for c in layout.layers}
    for text, count in seen.items():
        if text:
            parts.append(f"{kinds[text]}: {count} layers x {text}")
    return "; ".join(parts)
