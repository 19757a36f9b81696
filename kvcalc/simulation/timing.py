"""How long one engine step takes: a documented roofline estimate (every figure that depends on
it is *modelled*, not measured).

    step = overhead + (weights + KV read) / memory bandwidth + 2 x active params x tokens / peak

- a step reads the weights once and every scheduled request's cached KV once (its context,
  the tokens written this step included): bytes / the GPU's memory bandwidth (catalog);
- it computes 2 FLOPs per active parameter per token scheduled (prefill chunks and decode
  tokens alike) at the GPU's dense bf16 peak (catalog);
- plus a fixed per-step overhead (scheduler, sampler, kernel launches), 2 ms by default
  (``--step-overhead``).

With tensor parallelism every figure is per GPU (the weights' and the KV's shard, the FLOPs
divided by tp): the GPUs work at once; communication is not modelled.

The two roofline terms are added rather than maxed: a step that mixes a prefill chunk with
decodes pays for both, and the sum is an upper bound of the max within a factor of 2.
``--step-time`` replaces the whole estimate with a constant. Memory figures depend on time only
through arrivals: with every request arriving at once, time changes no memory figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

#: per-step overhead of the engine loop (scheduling, sampling, launches), seconds
DEFAULT_STEP_OVERHEAD_S = 0.002
#: FLOPs per active parameter per token (one multiply-add)
FLOPS_PER_PARAM_TOKEN = 2


@dataclass(frozen=True)
class StepTime:
    """The step-time model: ``duration(tokens, kv_tokens)`` in seconds."""

    overhead_s: float
    weight_bytes: int = 0
    kv_bytes_per_token: float = 0.0
    bandwidth: float = 0.0           # bytes/s
    flops_per_token: float = 0.0
    peak_flops: float = 0.0          # FLOP/s
    fixed_s: float | None = None     # --step-time

    def duration(self, tokens: int, kv_tokens: int) -> float:
        """One step scheduling ``tokens`` new tokens whose requests hold ``kv_tokens``."""
        if self.fixed_s is not None:
            return self.fixed_s
        return (self.overhead_s + (self.weight_bytes + self.kv_bytes_per_token * kv_tokens)
                / self.bandwidth + self.flops_per_token * tokens / self.peak_flops)

    def decode_series(self, running: int, kv_tokens: int) -> tuple[float, float]:
        """(c0, c1): decode step j of ``running`` requests holding ``kv_tokens`` before step 0
        lasts ``c0 + c1 x j`` (each request reads its context plus the token it writes)."""
        if self.fixed_s is not None:
            return self.fixed_s, 0.0
        c0 = self.duration(running, kv_tokens + running)
        return c0, self.kv_bytes_per_token * running / self.bandwidth

    def describe(self) -> str:
        if self.fixed_s is not None:
            return f"fixed {self.fixed_s * 1e3:g} ms per step (--step-time)"
        return (f"roofline: {self.overhead_s * 1e3:g} ms + (weights {self.weight_bytes / 2**30:.2f}"
                f" GiB + KV read) / {self.bandwidth / 1e12:.2f} TB/s + 2 x "
                f"{self.flops_per_token / 2 / 1e9:.2f} B params x tokens / "
                f"{self.peak_flops / 1e12:.0f} TFLOP/s")


def step_time_model(gpu, weight_bytes: int, kv_bytes_per_token: float, active_params: float,
                    overhead_s: float | None = None, fixed_s: float | None = None) -> StepTime:
    """The model for ``gpu`` (catalog bandwidth and bf16 peak), or a constant ``fixed_s``."""
    if fixed_s is not None:
        if not fixed_s > 0 or fixed_s != fixed_s or fixed_s == float("inf"):
            raise UsageError(f"invalid --step-time {fixed_s}: must be a positive number of "
                             "seconds")
        return StepTime(0.0, fixed_s=fixed_s)
    overhead = DEFAULT_STEP_OVERHEAD_S if overhead_s is None else overhead_s
    if not 0 <= overhead < float("inf"):
        raise UsageError(f"invalid --step-overhead {overhead}: must be a non-negative number")
    if not gpu.memory_bandwidth_bytes_per_s or not gpu.bf16_tflops:
        raise UsageError(f"the GPU catalog has no bandwidth or bf16 peak for {gpu.name}: give "
                         "--step-time SECONDS")
    return StepTime(overhead, weight_bytes, kv_bytes_per_token,
                    float(gpu.memory_bandwidth_bytes_per_s),
                    float(FLOPS_PER_PARAM_TOKEN * active_params), gpu.bf16_tflops * 1e12)
