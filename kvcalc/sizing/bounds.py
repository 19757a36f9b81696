"""Analytic bounds from the step-time model, computed before anything is simulated.

The step time of :mod:`kvcalc.simulation.timing` is (all coefficients non-negative)

    step(T, kv, extra) = base + per_token x T + c_wmem x Wd + c_flop x flop x T
                       + c_max x max(Wd, flop x T) + (kv_s + attn_s) x kv + attn_s x extra
                       (+ the routed experts' read, + c_mix with a prompt chunk)

It is subadditive in T (two steps never cost less than one step doing both), increasing in
every argument, and linear in kv. Hence, for a configuration and a traffic:

**Latency floors (any number of replicas).** A request of p prompt tokens and o output tokens
cannot get its first token sooner than the frontend plus its prompt in the fewest chunks
(ceil(p / max_num_batched_tokens) steps, each alone in its step with its query-key pairs:
whatever the chunking, the prompt computes p (p + 1) / 2 pairs, and the fewest chunks read the
least KV and pay the fewest per-step terms), nor decode
faster than one request alone: its time per output token is at least the mean of
step(1, p + j) over j = 1 .. o - 1 = step(1, p + o / 2). Every request's latency is at least its
floor, so every percentile (and the mean) of the latencies is at least that of the floors
(order statistics keep the order); the floors go through the same log-bucketed histogram as the
simulation's figures. A configuration whose floor already exceeds an objective misses it with
any number of replicas and is not simulated.

**Throughput floor (fewest replicas).** Over the whole traffic the replicas together run at
least ``steps = max(tokens / max_num_batched_tokens, decode tokens / max_num_seqs)`` steps and
compute every token once (tokens = prompt + output - 1 per request), so the busy time of the
fleet is at least

    L = steps x (base + c_wmem x Wd) + tokens x (per_token + c_flop x flop)
        + c_max x max(steps x Wd, flop x tokens) + (kv_s + attn_s) x KV reads

with KV reads = sum over requests of p + (o - 1) p + (o - 1) o / 2 (each decode step reads its
context). R replicas offer R x (span + allowance) seconds, span = first to last arrival,
allowance = the largest time objective: fewer than ceil(L / (span + allowance)) replicas
cannot keep up with the arrivals without building a backlog longer than the objectives (this
is the one assumption: a fleet busier than the time it has is taken to miss). Preemption,
recomputation and the frontend only add to L.

**Steady-state estimate.** For comparison with tools that size from a steady state
(AIConfigurator's, benchmark tables): the largest decode batch n (<= max_num_seqs, within the
KV cache at the mean request length) whose decode step meets the TPOT objective gives a replica
n / step output tokens per second; the traffic's mean output rate over it is the steady-state
replica count. It ignores prefill interference, queueing and bursts.
"""

from __future__ import annotations

import math

from ..simulation.scheduler import prefill_pairs



def _terms(timing):
    f = {k: getattr(timing, k, 0.0) or 0.0 for k in (
        "base_s", "per_token_s", "per_seq_s", "w_dense_s", "c_wmem", "c_flop", "flop_s",
        "c_max", "kv_s", "attn_s")}
    return f


def sound(timing) -> bool:
    """Whether the bounds hold for this model (every term non-negative, not a pipeline)."""
    if getattr(timing, "stages", 1) != 1:
        return False
    return all(v >= 0 for v in _terms(timing).values())


class TrafficStats:
    """What the bounds need of a traffic, computed once: sorted keys of the monotone floors,
    and the sums of the throughput floor."""

    def __init__(self, arrivals, warmup: int = 0):
        self.arrivals = arrivals
        measured = arrivals[warmup:]
        self.measured = measured
        self.prompts = sorted(a.prompt for a in measured)
        #: TPOT floor = step(1, p + o / 2): nondecreasing in p + o / 2 (requests of 2+ tokens)
        self.decode_keys = sorted(a.prompt + a.output / 2 for a in measured if a.output >= 2)
        tokens = decode = kv = 0
        for a in arrivals:
            p, o = a.prompt, a.output
            tokens += p + o - 1
            decode += o - 1
            kv += p + (o - 1) * p + (o - 1) * o // 2
        self.tokens, self.decode, self.kv = tokens, decode, kv
        self.span = arrivals[-1].arrival_s - arrivals[0].arrival_s if arrivals else 0.0
        self.longest = max((a.prompt + a.output - 1 for a in arrivals), default=0)
        self.longest_prompt = max((a.prompt for a in arrivals), default=0)


def _rank_value(sorted_values, p: float):
    """The value of rank ceil(p / 100 x n) (LogHistogram.percentile's rank)."""
    n = len(sorted_values)
    if not n:
        return None
    return sorted_values[max(1, math.ceil(p / 100 * n)) - 1]


def ttft_floor(timing, prompt: int, max_batched_tokens: int) -> float:
    """The TTFT floor of one request of ``prompt`` tokens (module docstring): the frontend and
    the prompt in chunks of ``max_batched_tokens``, each step scheduling this request alone."""
    M = max(1, max_batched_tokens)
    total = timing.frontend(prompt)
    for start in range(0, prompt, M):
        new = min(M, prompt - start)
        total += timing.duration(new, start + new, prefill_pairs(start, new), 1)
    return total


def latency_floors(timing, stats: TrafficStats, max_batched_tokens: int,
                   objectives) -> dict[str, float]:
    """Each objective's statistic over the per-request floors (modelled seconds). A
    percentile of a floor that is nondecreasing in one key (TTFT: the prompt; TPOT: p + o / 2)
    is the floor at that key's percentile; means and E2E go request by request."""
    M = max(1, max_batched_tokens)

    def dur(tokens: int, kv: int) -> float:   # a step of this request alone
        return timing.duration(tokens, kv, 0, 1)

    slope = dur(1, 1) - dur(1, 0)           # (kv_s + attn_s): per held token
    d1 = dur(1, 0)

    def ttft(p: int) -> float:
        return ttft_floor(timing, p, M)

    def tpot(key: float) -> float:
        return d1 + slope * key

    out = {}
    for o in objectives:
        if o.metric == "queue":
            out[o.name] = 0.0
        elif o.stat != "mean" and o.metric == "ttft":
            v = _rank_value(stats.prompts, float(o.stat[1:]))
            out[o.name] = ttft(v) if v is not None else 0.0
        elif o.stat != "mean" and o.metric == "tpot":
            v = _rank_value(stats.decode_keys, float(o.stat[1:]))
            out[o.name] = tpot(v) if v is not None else 0.0
        else:
            values = []
            for a in stats.measured:
                t = ttft(a.prompt)
                if o.metric == "ttft":
                    values.append(t)
                elif a.output >= 2:
                    tp = tpot(a.prompt + a.output / 2)
                    values.append(tp if o.metric == "tpot" else t + (a.output - 1) * tp)
                elif o.metric == "e2e":
                    values.append(t)
            if not values:
                out[o.name] = 0.0
            elif o.stat == "mean":
                out[o.name] = sum(values) / len(values)
            else:
                out[o.name] = _rank_value(sorted(values), float(o.stat[1:]))
    return out


def busy_floor(timing, stats: TrafficStats, max_batched_tokens: int,
               max_num_seqs: int) -> float:
    """L: the fleet's least busy time for the traffic (modelled seconds)."""
    steps = max(math.ceil(stats.tokens / max_batched_tokens),
                math.ceil(stats.decode / max_num_seqs))
    if getattr(timing, "fixed_s", None) is not None:
        return steps * timing.fixed_s
    f = _terms(timing)
    # every request is scheduled in at least one step per output token (the first comes from
    # its last prompt chunk): per_seq_s x (decode tokens + requests)
    return (steps * (f["base_s"] + f["c_wmem"] * f["w_dense_s"])
            + f["per_seq_s"] * (stats.decode + len(stats.arrivals))
            + stats.tokens * (f["per_token_s"] + f["c_flop"] * f["flop_s"])
            + f["c_max"] * max(steps * f["w_dense_s"], f["flop_s"] * stats.tokens)
            + (f["kv_s"] + f["attn_s"]) * stats.kv)


def replicas_floor(timing, stats: TrafficStats, max_batched_tokens: int, max_num_seqs: int,
                   allowance_s: float) -> tuple[int, float, float]:
    """(fewest replicas, L, seconds one replica offers)."""
    if len(stats.arrivals) < 2:
        return 1, 0.0, 0.0
    span = stats.span + allowance_s
    L = busy_floor(timing, stats, max_batched_tokens, max_num_seqs)
    return (max(1, math.ceil(L / span)) if span > 0 else 1), L, span


def steady_state(timing, stats: TrafficStats, max_num_seqs: int, capacity_tokens: int,
                 tpot_limit_s: float | None) -> dict:
    """The steady-state estimate (module docstring): replicas and per-replica throughput."""
    arrivals = stats.arrivals
    if len(arrivals) < 2 or stats.span <= 0:
        return {}
    mean_len = sum(a.prompt + a.output / 2 for a in arrivals) / len(arrivals)
    rate = (stats.decode + len(arrivals)) / stats.span
    most = max(1, min(max_num_seqs, int(capacity_tokens // max(1.0, mean_len))))

    def step(n: int) -> float:
        return timing.duration(n, n * mean_len, 0, n)

    n = most
    if tpot_limit_s is not None:
        lo, hi = 0, most
        while lo < hi:                      # largest n with step(n) <= the TPOT objective
            mid = (lo + hi + 1) // 2
            if step(mid) <= tpot_limit_s:
                lo = mid
            else:
                hi = mid - 1
        n = lo
    if n < 1:
        return {"batch": 0, "replica_output_tokens_per_s": 0.0, "replicas": None}
    per = n / step(n)
    return {"batch": n, "replica_output_tokens_per_s": round(per, 2),
            "output_tokens_per_s": round(rate, 2),
            "replicas": max(1, math.ceil(rate / per)) if per > 0 else None}
