"""``kvcalc size``: the fewest GPUs -- of which kind, with which parallelism, dtypes and engine
settings, behind which router -- that serve a traffic within its latency objectives, at the
lowest cost.

Engine-neutral: every configuration is planned by ``kvcalc plan``'s code
(:func:`kvcalc.planning.make_plan`: does it boot, how many KV blocks) and replayed by
``kvcalc simulate``'s (:func:`kvcalc.simulation.simulate`: the engine's scheduler and cache,
the calibrated step time); this package only chooses what to simulate (:mod:`.search`, with
the bounds of :mod:`.bounds`), splits the arrivals over replicas (:mod:`.router`), merges the
replicas' figures (:mod:`.evaluate`) and ranks the fleets by cost (:mod:`.prices`).
Disaggregated prefill/decode: :mod:`.disagg`. docs/sizing.md has the method and its limits.
"""

from __future__ import annotations

from ..errors import UsageError
from .evaluate import Candidate, Context, Settings, Traffic, evaluate, setup
from .objectives import Objective, parse_objectives
from .prices import DEFAULT_PRICES, PRICE_SOURCE, parse_prices, price_table
from .router import ROUTERS, route
from .search import DEFAULT_MAX_REPLICAS, LocalRunner, run_search

__all__ = ["Candidate", "Context", "Settings", "Traffic", "Objective", "ROUTERS",
           "DEFAULT_MAX_REPLICAS", "DEFAULT_PARETO_SPAN", "DEFAULT_PRICES", "PRICE_SOURCE",
           "LocalRunner",
           "evaluate", "setup", "route", "parse_objectives", "parse_prices", "price_table",
           "size_fleet"]

#: how many configurations one search may hold (the product of the lists given)
MAX_CONFIGURATIONS = 20_000


#: default --pareto-span: fleets that cannot cost less than this many times the cheapest found
#: are not simulated further
DEFAULT_PARETO_SPAN = 1.25


def size_fleet(ctx: Context, candidates: list[Candidate], prices: dict[str, dict], runner,
               most: int = DEFAULT_MAX_REPLICAS,
               span: float | None = DEFAULT_PARETO_SPAN) -> dict:
    """Search ``candidates`` for the cheapest fleet meeting ``ctx.objectives``; the record of
    ``kvcalc size --format json`` without the model and workload lines (docs/sizing.md)."""
    from .search import misses_text

    if not candidates:
        raise UsageError("the search space is empty")
    if len(candidates) > MAX_CONFIGURATIONS:
        raise UsageError(f"{len(candidates):,} configurations: at most "
                         f"{MAX_CONFIGURATIONS:,} (narrow --gpu, --tp, --kv-dtype ...)")
    if ctx.disagg is not None:
        from dataclasses import replace

        pools = [replace(c, pool=pool) for c in candidates for pool in ("prefill", "decode")]
        states = run_search(ctx, pools, runner, most, prices, None)
        rows = [_disagg_row(ctx, i, c, _row(ctx, states[2 * i], prices, misses_text),
                            _row(ctx, states[2 * i + 1], prices, misses_text), prices)
                for i, c in enumerate(candidates)]
        span = None
    else:
        states = run_search(ctx, candidates, runner, most, prices, span)
        rows = [_row(ctx, st, prices, misses_text) for st in states]
    met = [r for r in rows if r["status"] == "meets"]
    met.sort(key=lambda r: (r["usd_per_hour"], r["gpus"], r["answer"]["margin"], r["index"]))
    answer = met[0] if met else None
    if answer is not None and ctx.disagg is None:
        _check_answer(ctx, states[answer["index"]], answer, runner)
    front, best_margin = [], float("inf")
    for r in met:
        if r["answer"]["margin"] < best_margin - 1e-12:
            best_margin = r["answer"]["margin"]
            front.append(r["index"])
            r["pareto"] = True
    counts = _counts(states)
    if ctx.disagg is not None:
        counts["pools"] = counts["configurations"]
        counts["configurations"] = len(candidates)
        counts["by_status"] = {}
        for r in rows:
            counts["by_status"][r["status"]] = counts["by_status"].get(r["status"], 0) + 1
    timing = next((st.su.timing for st in states if st.su is not None), None)
    return {
        "objectives": [o.record() for o in ctx.objectives],
        "time_figures": "modelled",
        "step_time_model": timing.describe() if timing is not None else None,
        "calibration": (timing.calibration.name if timing is not None and
                        timing.fixed_s is None else None),
        "calibration_source": (timing.calibration.source if timing is not None else None),
        "prices": prices,
        "max_replicas": most,
        "pareto_span": span,
        "answer": answer,
        "pareto": front,
        "configurations": rows,
        "counts": counts,
        "runner": runner.describe(),
    }


def _row(ctx, st, prices, misses_text) -> dict:
    c = st.c
    row = {"index": st.index, "label": c.label, **c.record(), "status": st.status,
           "reason": st.reason, "bounds": st.bounds,
           "step_time_model": st.su.timing.describe() if st.su is not None else None,
           "usd_per_gpu_hour": prices[c.gpu]["usd_per_gpu_hour"] if c.gpu in prices else None,
           "evaluations": [dict(replicas=r, how=st.how[r], meets=o["meets"],
                                values_s=o["values_s"], misses=o["misses"],
                                why=misses_text(ctx, o))
                           for r, o in sorted(st.evals.items())]}
    if st.su is not None:
        row["num_gpu_blocks"] = st.su.plan.engine_figures.num_blocks
        row["kv_tokens_per_replica"] = st.su.usable_blocks * st.su.block_size
        row["max_num_seqs_used"] = st.su.max_num_seqs
        row["weights_dtype_used"] = st.su.weights_dtype
    if st.status == "meets":
        out = st.evals[st.hi]
        usd = prices[c.gpu]["usd_per_gpu_hour"] * out["gpus"]
        tok = out["output_tokens_per_s"]
        row.update(replicas=st.hi, gpus=out["gpus"], usd_per_hour=round(usd, 4),
                   usd_per_million_output_tokens=round(usd / (tok * 3600) * 1e6, 4)
                   if tok > 0 else None,
                   output_tokens_per_s_per_gpu=out["output_tokens_per_s_per_gpu"],
                   answer=out, pareto=False)
        below = st.evals.get(st.hi - 1)
        row["replicas_minus_one"] = (
            "none" if st.hi == 1 else
            f"misses: {misses_text(ctx, below)}" if below is not None else
            f"below the throughput floor ({st.bounds.get('replicas_floor')} replicas)")
    return row


def _disagg_row(ctx, index: int, c, prefill: dict, decode: dict, prices) -> dict:
    """One configuration with --disagg: its prefill pool and its decode pool together."""
    row = {"index": index, "label": c.label, **c.record(), "disagg": True,
           "prefill": prefill, "decode": decode,
           "bounds": {"link": prefill["bounds"].get("link") or decode["bounds"].get("link")},
           "step_time_model": prefill["step_time_model"],
           "usd_per_gpu_hour": prices[c.gpu]["usd_per_gpu_hour"], "evaluations": []}
    if prefill["status"] == decode["status"] == "meets":
        p, d = prefill["answer"], decode["answer"]
        gpus = p["gpus"] + d["gpus"]
        usd = prices[c.gpu]["usd_per_gpu_hour"] * gpus
        tok = d["output_tokens_per_s"]
        answer = {**d, "replicas": p["replicas"] + d["replicas"], "gpus": gpus,
                  "values_s": {**p["values_s"], **d["values_s"]},
                  "misses": {}, "margin": max(p["margin"], d["margin"]),
                  "output_tokens_per_s_per_gpu": round(tok / gpus, 2) if gpus else 0.0}
        row.update(status="meets", reason="", replicas=answer["replicas"],
                   prefill_replicas=p["replicas"], decode_replicas=d["replicas"], gpus=gpus,
                   usd_per_hour=round(usd, 4),
                   usd_per_million_output_tokens=round(usd / (tok * 3600) * 1e6, 4)
                   if tok > 0 else None,
                   output_tokens_per_s_per_gpu=answer["output_tokens_per_s_per_gpu"],
                   answer=answer, pareto=False,
                   replicas_minus_one=f"prefill {p['replicas'] - 1}: "
                                      f"{prefill['replicas_minus_one']}; decode "
                                      f"{d['replicas'] - 1}: {decode['replicas_minus_one']}")
    else:
        bad = prefill if prefill["status"] != "meets" else decode
        row.update(status=bad["status"], reason=f"{bad['pool']} pool: {bad['reason']}")
    return row


def _check_answer(ctx, st, row, runner) -> None:
    """The answer's R - 1 replicas, simulated when the search did not (it was below the
    throughput floor): the floor is checked, not trusted, for the answer."""
    r = st.hi
    if r <= 1 or (r - 1) in st.evals:
        return
    from .search import misses_text, worker_evaluate

    out = worker_evaluate(ctx, {}, st.c, r - 1)
    st.evals[r - 1] = out
    st.how[r - 1] = "simulated (check of the answer)"
    row["evaluations"].insert(0, dict(replicas=r - 1, how=st.how[r - 1], meets=out["meets"],
                                      values_s=out["values_s"], misses=out["misses"],
                                      why=misses_text(ctx, out)))
    row["evaluations"].sort(key=lambda e: e["replicas"])
    row["replicas_minus_one"] = ("MEETS (the throughput floor was too high; the answer is "
                                 "not the fewest)" if out["meets"] else
                                 f"misses: {misses_text(ctx, out)}")


def _counts(states) -> dict:
    """Configurations by outcome, and (configuration, replicas) points by how they were
    decided."""
    by_status: dict[str, int] = {}
    simulated = shared = bound = inferred = whole = 0
    for st in states:
        by_status[st.status] = by_status.get(st.status, 0) + 1
        if not st.evals:
            whole += 1
            continue
        simulated += sum(1 for h in st.how.values() if h.startswith("simulated"))
        shared += sum(1 for h in st.how.values() if h.startswith("same run"))
        top = st.hi if st.hi is not None else st.lo
        bound += max(0, st.floor - 1)
        inferred += top - len([r for r in st.evals if r <= top]) - max(0, st.floor - 1)
    return {"configurations": len(states), "by_status": by_status,
            "points_simulated": simulated, "points_shared": shared,
            "points_below_throughput_floor": bound,
            "points_by_monotonicity": max(0, inferred),
            "configurations_decided_without_simulation": whole}



