"""Disaggregated prefill/decode (``kvcalc size --disagg``): P prefill replicas and D decode
replicas of one configuration, the KV cache of every prompt moved from the first to the second.

A simpler model than the colocated one, and separable: the two pools are searched on their own,
each for its fewest replicas, and the fleet is P + D replicas.

- **Prefill pool**: every request arrives as in the traffic with one output token (the prompt
  computed, the first token sampled), replayed by the same scheduler and cache; its TTFT and
  queueing objectives are checked there.
- **Decode pool**: a request arrives when its KV cache does: its arrival plus the TTFT floor of
  its prompt (unloaded prefill; the prefill pool's own queueing is not carried over, since the
  simulator gives no per-request times) plus the transfer, ``KV bytes per token per GPU x
  prompt / link rate`` (each of the tp GPUs moves its shard over its own link). It holds its
  prompt's blocks from the start, and the step that takes the prompt in costs a decode step
  (the step-time model sees the request as one decoding token; the KV read of the prompt is
  counted): vLLM's decode instance allocates the blocks and receives them, it does not compute
  them. Its TPOT objectives are checked there.
- **E2E** objectives are refused with --disagg (the two pools' times are not joined per request).
- **The link**: the KV bytes every request moves (the engine's bytes per token, from ``kvcalc
  plan``'s layout, x its prompt, per GPU and per replica), the mean rate the traffic needs,
  the busiest second's, and the transfer time of the p99 prompt at ``--link-rate``.

Cost pruning (``--pareto-span``) does not apply: every configuration's pools are searched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..errors import UsageError
from ..simulation import Options, simulate
from ..simulation.requests import Arrival, Trace
from ..simulation.timing import StepTime
from .merge import Merged, outcome, service_estimate
from .bounds import TrafficStats, latency_floors, replicas_floor, ttft_floor
from .router import route

#: default --link-rate, bytes/s per GPU: one 400 Gb/s NIC (InfiniBand NDR / ConnectX-7)
DEFAULT_LINK_RATE = 50_000_000_000
PREFILL_METRICS = ("ttft", "queue")
DECODE_METRICS = ("tpot",)


@dataclass(frozen=True)
class DisaggSettings:
    link_rate: int = DEFAULT_LINK_RATE


def disagg_settings(objectives, link_rate) -> DisaggSettings:
    if any(o.metric == "e2e" for o in objectives):
        raise UsageError("--disagg models TTFT and queueing on the prefill pool and TPOT on "
                         "the decode pool; E2E objectives are not modelled with --disagg")
    if not any(o.metric in PREFILL_METRICS for o in objectives) or \
            not any(o.metric in DECODE_METRICS for o in objectives):
        raise UsageError("--disagg needs a TTFT or queueing objective (the prefill pool) and "
                         "a TPOT objective (the decode pool)")
    rate = DEFAULT_LINK_RATE if link_rate is None else link_rate
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise UsageError(f"invalid --link-rate {link_rate!r}: bytes per second, e.g. 50GB")
    return DisaggSettings(rate)


def pool_objectives(ctx, pool: str):
    metrics = PREFILL_METRICS if pool == "prefill" else DECODE_METRICS
    return tuple(o for o in ctx.objectives if o.metric in metrics)


@dataclass(frozen=True)
class DecodeOnlyStepTime(StepTime):
    """The step time of a decode instance: a step that takes in a transferred prompt costs
    as if the prompt's request decoded one token (its KV read counted, no prefill compute)."""

    def duration(self, tokens, kv_tokens, extra_pairs=0, seqs=0):
        if extra_pairs and seqs:
            tokens = min(tokens, seqs)
        return StepTime.duration(self, tokens, kv_tokens, 0, seqs)

    def describe(self) -> str:
        return StepTime.describe(self) + "; decode instance (prompts arrive computed)"


def decode_only(timing: StepTime) -> StepTime:
    if timing.fixed_s is not None or type(timing) is not StepTime:
        return timing
    return DecodeOnlyStepTime(**{f.name: getattr(timing, f.name) for f in fields(StepTime)})


_ARRIVALS: dict = {}


def pool_arrivals(ctx, c, su) -> tuple:
    """The pool's arrivals (module docstring), cached per process."""
    key = (id(ctx), c.pool, su.max_batched_tokens, id(su.timing))
    hit = _ARRIVALS.get(key)
    if hit is not None:
        return hit
    if len(_ARRIVALS) > 64:
        _ARRIVALS.clear()
    arrivals = ctx.traffic.arrivals
    if c.pool == "prefill":
        out = tuple(Arrival(a.arrival_s, a.prompt, 1, a.hash_ids) for a in arrivals)
    else:
        per_token = su.plan.bytes_per_token
        rate = ctx.disagg.link_rate
        out = sorted((Arrival(a.arrival_s + ttft_floor(su.timing, a.prompt, su.max_batched_tokens)
                              + per_token * a.prompt / rate, a.prompt, a.output)
                      for a in arrivals), key=lambda a: a.arrival_s)
        out = tuple(out)
    _ARRIVALS[key] = out
    return out


def evaluate_disagg(ctx, c, replicas: int, su) -> dict:
    arrivals = pool_arrivals(ctx, c, su)
    router = c.router if c.pool == "prefill" else (
        "least-outstanding" if c.router == "prefix-aware" else c.router)
    parts = route(arrivals, replicas, router,
                  service_estimate(su.timing, su.max_batched_tokens),
                  su.usable_blocks * su.block_size // ctx.traffic.hash_block)
    merged = Merged()
    transform = decode_only if c.pool == "decode" else None
    for part in parts:
        if not part:
            continue
        res = simulate(ctx.spec, su.inputs, Trace(ctx.traffic.description, tuple(part),
                                                  ctx.traffic.hash_block),
                       Options(allocators=("paged",), prefix_caching=c.prefix_caching,
                               cpu_offload_bytes=c.cpu_offload,
                               calibration=su.calibration,
                               timing_transform=transform))
        merged.add(res.runs["paged"].totals)
    return outcome(ctx, merged, replicas * c.tp, replicas, pool_objectives(ctx, c.pool))


def link_figures(ctx, su, stats: TrafficStats) -> dict:
    """The KV bytes the prompts move and the rate the link must carry."""
    per_token = su.plan.bytes_per_token                       # per GPU
    tp = su.inputs.tp
    prompts = [a.prompt for a in stats.arrivals]
    total = per_token * sum(prompts) * tp
    seconds: dict[int, int] = {}
    for a in stats.arrivals:
        s = int(a.arrival_s)
        seconds[s] = seconds.get(s, 0) + per_token * a.prompt * tp
    p99 = sorted(prompts)[max(1, math.ceil(0.99 * len(prompts))) - 1] if prompts else 0
    rate = ctx.disagg.link_rate
    return {
        "kv_bytes_per_token_per_gpu": per_token,
        "kv_bytes_per_request_mean": int(total // max(1, len(prompts))),
        "kv_bytes_per_request_p99": per_token * p99 * tp,
        "kv_bytes_total": int(total),
        "rate_needed_mean_bytes_per_s": int(total / stats.span) if stats.span > 0 else None,
        "rate_needed_busiest_second_bytes_per_s": max(seconds.values(), default=0),
        "link_rate_bytes_per_s_per_gpu": rate,
        "transfer_s_p99_prompt": round(per_token * p99 / rate, 6),
    }


def prepare_disagg(ctx, st, stats: TrafficStats) -> None:
    """Floors of one pool (the prefill pool also has the throughput floor)."""
    from ..simulation.metrics import LATENCY_BUCKET_RATIO

    su = st.su
    objectives = pool_objectives(ctx, st.c.pool)
    arrivals = pool_arrivals(ctx, st.c, su)
    pstats = TrafficStats(arrivals)
    st.bounds["link"] = link_figures(ctx, su, stats)
    timing = su.timing if st.c.pool == "prefill" else decode_only(su.timing)
    floors = latency_floors(timing, pstats, su.max_batched_tokens, objectives)
    st.bounds["latency_floor_s"] = {k: round(v, 6) for k, v in floors.items()}
    missed = [o for o in objectives if floors[o.name] > o.limit_s * LATENCY_BUCKET_RATIO]
    if missed:
        st.status = "misses at any replica count"
        st.reason = "; ".join(f"{st.c.pool} pool: {o.name} is at least {floors[o.name]:.4g} s "
                              f"(modelled floor), objective {o.limit_s:.4g} s" for o in missed)
        return
    if st.c.pool == "prefill":
        floor, busy, span = replicas_floor(su.timing, pstats, su.max_batched_tokens,
                                           su.max_num_seqs, max(o.limit_s for o in objectives))
        st.floor, st.lo = floor, floor - 1
        st.bounds["replicas_floor"] = floor
        st.bounds["busy_floor_s"] = round(busy, 3)
