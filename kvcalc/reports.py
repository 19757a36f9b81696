"""Domain results -> plain dicts (the documented machine-readable contract, docs/cli.md).

Numbers stay raw integers (bytes, tokens); human-readable forms sit next to them.
"""

from __future__ import annotations

from typing import Any

from .arch import ModelSpec
from .engines import get_engine
from .engines.cache import Layout
from .memory import Estimate, formula
from .sources import ResolvedModel
from .units import format_bytes


def source_record(resolved: ResolvedModel) -> dict[str, Any]:
    return {
        "kind": resolved.kind,
        "location": resolved.location,
        "hub_id": resolved.hub_id,
        "revision": resolved.revision,
        "ref": resolved.ref,
        "cached": resolved.cached,
        "detail": resolved.provenance,
    }


def engine_detail(layout: Layout) -> str:
    """The engine, version band and layout settings, in one line (the engine's own words)."""
    return get_engine(layout.engine).describe(layout)


def context_warnings(spec: ModelSpec, seqs: list[int]) -> list[str]:
    limit = spec.max_position_embeddings
    if not limit:
        return []
    over = [s for s in seqs if s > limit]
    if not over:
        return []
    return [f"seq {max(over):,} exceeds the model's context length "
            f"(max_position_embeddings = {limit:,})"]


def estimate_record(est: Estimate, resolved: ResolvedModel, warnings: list[str]) -> dict[str, Any]:
    layout = est.layout
    spec = layout.spec
    return {
        "model": resolved.name,
        "model_type": spec.model_type,
        "source": source_record(resolved),
        "engine": layout.engine,
        "engine_detail": engine_detail(layout),
        "engine_version": layout.version,
        "version_band": layout.band,
        "kv_dtype": layout.kv_dtype.name,
        "block_size": layout.block_size,
        "seq": est.seq,
        "batch": est.batch,
        "bytes_per_token": est.bytes_per_token,
        "bytes_per_sequence": est.bytes_per_sequence,
        "bytes_total": est.bytes_total,
        "human": {
            "per_token": format_bytes(est.bytes_per_token),
            "per_sequence": format_bytes(est.bytes_per_sequence),
            "total": format_bytes(est.bytes_total),
        },
        "layers": [
            {
                "kind": g.kind,
                "count": g.count,
                "bytes_per_token": g.bytes_per_token,
                "bytes_per_token_total": g.total_bytes_per_token,
                "window": g.window,
                "fixed_bytes": g.fixed_bytes,
                "tokens_held": g.slots_per_sequence,
                "bytes_per_sequence": g.bytes_per_sequence,
            }
            for g in est.groups
        ],
        "formula": formula(layout),
        "max_position_embeddings": spec.max_position_embeddings,
        "notes": list(spec.notes) + list(layout.notes),
        "warnings": list(spec.warnings) + warnings,
    }
