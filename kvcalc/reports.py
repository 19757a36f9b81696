"""Domain results -> plain dicts (the documented machine-readable contract, docs/cli.md).

Numbers stay raw integers (bytes, tokens); human-readable forms sit next to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .arch import ModelSpec
from .engines import get_engine
from .layout import Layout
from .memory import Estimate, formula
from .sources import ResolvedModel
from .units import GiB, format_bytes, format_gib

if TYPE_CHECKING:
    from .planning import Plan, PlanInputs, Sizing
    from .workload import Workload


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


# ---------------------------------------------------------------------------------- plan

def plan_record(p: Plan, resolved: ResolvedModel) -> dict[str, Any]:
    """The documented JSON contract of ``kvcalc plan`` (docs/planning.md): the fields every
    engine shares, and the planning engine's own object (``vllm``, ``sglang``, ``trtllm``,
    ``llamacpp`` …), which its figures fill (``record_fields``; the ``vllm`` field stays in
    its place and is null when another engine plans)."""
    b, inp, figures = p.budget, p.inputs, p.engine_figures
    record = _plan_record(p, resolved, b, inp, figures, p.contiguous, p.paged)
    fields = getattr(figures, "record_fields", None)
    record.update(fields() if fields else {"engine": inp.engine, figures.key: figures.record()})
    return record


def _plan_record(p: Plan, resolved, b, inp: PlanInputs, figures, c, g) -> dict:
    """The record every engine shares."""
    return {
        "model": resolved.name,
        "source": source_record(resolved),
        "gpu": inp.gpu.name,
        "gpu_memory_bytes": inp.gpu.memory_bytes,
        "num_gpus": p.num_gpus,
        "tp": inp.tp,
        "pp": inp.pp,
        "replicas": inp.replicas,
        "kv_dtype": p.layout.kv_dtype.name,
        "weights_dtype": inp.weights_dtype,
        "parameters": p.params.total,
        "active_parameters": p.params.active,
        "max_len": inp.max_len,
        "budget": {
            "total_bytes": b.total_bytes,
            "utilization": b.utilization,
            "requested_bytes": b.requested_bytes,
            "weights_bytes": b.weights_bytes,
            "activation_bytes": b.activation_bytes,
            "non_torch_bytes": b.non_torch_bytes,
            "cuda_graph_bytes": b.cuda_graph_bytes,
            "overhead_bytes": b.overhead_bytes,
            "margin_bytes": b.margin_bytes,
            "kv_bytes": b.kv_bytes,
            "source": b.source,
            "per_stage_kv_bytes": [s.kv_bytes for s in p.budgets],
        },
        "human": {
            "gpu_memory": format_bytes(inp.gpu.memory_bytes),
            "requested": format_bytes(b.requested_bytes),
            "weights": format_bytes(b.weights_bytes),
            "overhead": format_bytes(b.overhead_bytes),
            "kv_budget": format_bytes(b.kv_bytes) if b.kv_bytes >= 0
            else "-" + format_bytes(-b.kv_bytes),
            "bytes_per_token": format_bytes(p.bytes_per_token),
        },
        "bytes_per_token": p.bytes_per_token,
        "kv_capacity_tokens": p.kv_capacity_tokens,
        "block_size": getattr(figures, "block_size", None) or p.layout.block_size,
        "num_blocks": p.num_blocks,
        "max_concurrency": {
            "contiguous": int(c.max_sequences) * inp.replicas,
            "paged": round(g.max_sequences * inp.replicas, 2),
        },
        "engine_version": p.layout.version,
        "version_band": p.layout.band,
        "vllm": None,
        "workload": {
            "description": p.workload.description,
            "mean_tokens": round(p.workload.mean_length, 1),
            "allocators": {a.name: _alloc_record(a, inp.replicas) for a in (c, g)},
            "paged_gain": round(g.max_sequences / c.max_sequences, 2) if c.max_sequences else None,
        },
        "fits": p.fits,
        "notes": list(p.notes) + list(getattr(figures, "record_notes", ())),
        "warnings": list(p.warnings),
    }


def _alloc_record(a, replicas: int) -> dict:
    return {
        "max_sequences_per_replica": round(a.max_sequences, 2),
        "slots_reserved_per_sequence": round(a.slots_reserved_per_sequence, 1),
        "slots_used_per_sequence": round(a.slots_used_per_sequence, 1),
        "bytes_per_sequence": int(a.bytes_per_sequence),
        "token_bytes_per_sequence": int(a.token_bytes_per_sequence),
        "memory_utilization": round(a.utilization, 4),
        "waste_bytes": int(a.waste_bytes),
        "waste_fraction": round(a.waste_bytes / a.budget_bytes, 4) if a.budget_bytes else 0,
        "free_bytes": int(a.free_bytes),
    }


def shortfall_record(p: Plan, spec: ModelSpec, inp: PlanInputs) -> dict:
    """Why a plan does not fit, by how much, and what would: the engine's figures say why
    (``shortfall()``: a reason and the bytes short; else the engine's error); engines whose
    figures the solvers search (``Engine.solves``) also say what would fit."""
    figures = p.engine_figures
    own = getattr(figures, "shortfall", None)
    if own is None or not get_engine(inp.engine).solves:
        reason = getattr(figures, "shortfall_reason", None) or figures.error
        return {"reason": reason or "the pool holds no token", "shortfall_bytes":
                max(0, -p.budget.kv_bytes), "shortfall_gib": round(max(0, -p.budget.kv_bytes)
                                                                   / GiB, 2),
                "estimated_max_model_len": 0, "engine_error": figures.error,
                "would_fit": {"fits": False}}
    reason, shortfall, longest = own()
    from .planning import smallest_deployment

    sizing = smallest_deployment(spec, inp, 1)
    return {
        "reason": reason,
        "shortfall_bytes": int(shortfall),
        "shortfall_gib": round(shortfall / GiB, 2),
        "estimated_max_model_len": longest,
        f"{figures.key}_error": figures.error,
        "would_fit": sizing_record(sizing, 1, inp),
    }


def sizing_record(s: Sizing, target: int, inp: PlanInputs) -> dict:
    """The ``sizing`` object: the smallest deployment found for ``target`` requests."""
    return {"target_concurrency": target, "max_len": inp.max_len, "gpu": s.gpu.name,
            "fits": s.fits, "tp": s.tp, "pp": s.pp, "replicas": s.replicas,
            "num_gpus": s.num_gpus, "per_replica_concurrency": round(s.per_replica_concurrency, 2),
            "kv_concurrency": round(s.kv_concurrency, 2), "limited_by": s.limited_by,
            "reason": s.reason}


def compare_records(spec: ModelSpec, inp: PlanInputs, workload: Workload,
                    target: int | None) -> list[dict[str, Any]]:
    """``kvcalc plan --compare-gpus``: the plan on every catalog GPU, one row each, best first
    (fewest GPUs for ``target``, else the highest concurrency)."""
    from .hardware import load_catalog
    from .planning import PlanInputs, make_plan, smallest_deployment

    rows = []
    for gpu in load_catalog():
        trial = PlanInputs(**{**inp.__dict__, "gpu": gpu})
        try:
            p = make_plan(spec, trial, workload)
        except Exception as exc:  # noqa: BLE001 - one bad row must not hide the others
            rows.append({"gpu": gpu.name, "error": str(exc)})
            continue
        cap = p.engine_figures
        row = {"gpu": gpu.name, "memory_bytes": gpu.memory_bytes,
               "kv_bytes": p.budget.kv_bytes, "num_gpu_blocks": p.num_blocks,
               "kv_cache_tokens": cap.kv_cache_tokens,
               "max_concurrency": round(cap.max_concurrency, 2), "fits": p.fits}
        if target is not None:
            s = smallest_deployment(spec, trial, target)
            row.update({"gpus_needed": s.num_gpus if s.fits else None, "tp": s.tp, "pp": s.pp,
                        "replicas": s.replicas})
        rows.append(row)
    key = (lambda r: (r.get("gpus_needed") is None, r.get("gpus_needed") or 0, -r.get("kv_bytes", 0))) \
        if target is not None else (lambda r: -r.get("max_concurrency", 0))
    return sorted(rows, key=key)
