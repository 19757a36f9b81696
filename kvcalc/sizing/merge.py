"""The replicas' figures merged (latency histograms add up bucket by bucket), a fleet's
outcome against the objectives, and the router's service-time estimate."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..simulation.metrics import LogHistogram


def service_estimate(timing, max_batched_tokens: int):
    """The router's estimate of a request's time in a replica with ``n`` requests outstanding:
    the frontend, the prompt in chunks of ``max_batched_tokens``, then its output tokens at the
    decode step time of ``n + 1`` requests of its mean length (modelled)."""
    M = max(1, max_batched_tokens)

    def estimate(prompt: int, output: int, n: int) -> float:
        k = -(-prompt // M)
        prefill = k * timing.duration(-(-prompt // k), prompt)
        mean = prompt + output // 2
        return (timing.frontend(prompt) + prefill
                + max(0, output - 1) * timing.duration(n + 1, (n + 1) * mean))
    return estimate


@dataclass
class Merged:
    """The replicas' figures added up."""

    requests: int = 0
    completed: int = 0
    rejected: int = 0
    preemptions: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    prefix_hit_tokens: int = 0
    resume_hit_tokens: int = 0
    measured_output_tokens: int = 0
    start: float | None = None
    end: float = 0.0
    max_running: int = 0
    hist: dict = field(default_factory=lambda: {k: LogHistogram() for k in
                                                ("ttft", "tpot", "e2e", "queue_delay")})

    def add(self, t) -> None:
        self.requests += t.requests
        self.completed += t.completed
        self.rejected += t.rejected
        self.preemptions += t.preemptions
        self.prompt_tokens += t.prompt_tokens
        self.output_tokens += t.output_tokens
        self.prefix_hit_tokens += t.prefix_hit_tokens
        self.resume_hit_tokens += t.resume_hit_tokens
        self.measured_output_tokens += t.measured_output_tokens
        if t.measured_start is not None:
            self.start = t.measured_start if self.start is None else min(self.start,
                                                                          t.measured_start)
            self.end = max(self.end, t.measured_end)
        if t.running.counts:
            self.max_running = max(self.max_running, max(t.running.counts))
        for name, h in self.hist.items():
            merge_histogram(h, getattr(t, name))


def merge_histogram(into: LogHistogram, other: LogHistogram) -> None:
    """Add ``other``'s observations to ``into`` (same buckets: the merge is exact)."""
    into.n += other.n
    into.total += other.total
    into.zeros += other.zeros
    for b, k in other.counts.items():
        into.counts[b] = into.counts.get(b, 0) + k


def outcome(ctx, m: Merged, gpus: int, replicas: int, objectives=None) -> dict:
    objectives = ctx.objectives if objectives is None else objectives
    values = {o.name: o.value(m.hist[o.histogram]) for o in objectives}
    values = {k: round(v, 6) for k, v in values.items()}
    misses = {o.name: round(values[o.name] / o.limit_s, 4) for o in objectives
              if values[o.name] > o.limit_s}
    meets = not misses and m.rejected == 0 and m.completed > 0
    window = (m.end - m.start) if m.start is not None else 0.0
    tok_s = m.measured_output_tokens / window if window > 0 else 0.0
    return {
        "replicas": replicas,
        "gpus": gpus,
        "meets": meets,
        "values_s": values,
        "misses": misses,
        "margin": round(max(values[o.name] / o.limit_s for o in objectives), 4),
        "requests": m.requests,
        "completed": m.completed,
        "rejected": m.rejected,
        "preemptions": m.preemptions,
        "prefix_hit_tokens": m.prefix_hit_tokens,
        #: hits of other requests' blocks (the prefix reuse routing can win), not the
        #: preempted requests' own blocks found again
        "shared_prefix_hit_tokens": m.prefix_hit_tokens - m.resume_hit_tokens,
        "prompt_tokens": m.prompt_tokens,
        "output_tokens": m.output_tokens,
        "max_running": m.max_running,
        "output_tokens_per_s": round(tok_s, 2),
        "output_tokens_per_s_per_gpu": round(tok_s / gpus, 2) if gpus else 0.0,
        "window_s": round(window, 6),
        "latency_s": {name: h.summary() for name, h in m.hist.items()},
    }


