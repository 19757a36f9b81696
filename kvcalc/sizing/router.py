"""R replicas behind a router: which replica each request goes to.

The router decides at each request's arrival from what it can know at that moment, then every
replica's share of the arrivals is simulated on its own (:mod:`.evaluate`). What the router
knows of the replicas is its own bookkeeping, not the simulation's state (the simulator runs
one replica at a time and does not expose per-request completions):

- ``round-robin``: request i goes to replica i mod R;
- ``least-outstanding``: to the replica with the fewest requests outstanding -- sent and not
  finished -- where a request's finish is *estimated* when it is sent: its arrival plus the
  frontend latency, its prompt's prefill in chunks of ``max_num_batched_tokens`` and its output
  tokens at the decode step time of the replica's outstanding batch (the calibrated step-time
  model, :mod:`kvcalc.simulation.timing`); ties go to the lowest replica number;
- ``prefix-aware``: as llm-d's scheduler with its precise prefix-cache scorer routes (the
  scorer tracks the KV-cache events of every vLLM instance), two scorers in [0, 1] added with
  equal weights: the prefix score, the share of the request's prefix hash blocks (Mooncake's,
  one per 512 prompt tokens) that the replica holds as a leading run, and the load score,
  ``(most - outstanding) / (most - least)`` over the replicas (1 when all are equal, as
  llm-d's queue scorer normalises); the highest total wins, ties to the least outstanding,
  then the lowest number. A request without hash ids goes to the least-outstanding replica.
  Pure affinity (the longest match wins whatever the load) sends every request sharing a
  system prompt to one replica, which is why llm-d combines the scorers; the equal weights are
  kvcalc's choice, not llm-d's defaults. The router's picture of a replica's cache is an LRU of
  the hash blocks it sent there, as many as the replica's KV cache holds (usable blocks x block
  size / 512 tokens): vLLM's eviction order (least recently freed) is close to it but not the
  same, and blocks freed by preemption are not seen.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Callable, Sequence

from ..errors import UsageError

ROUTERS = ("round-robin", "least-outstanding", "prefix-aware")


def route(arrivals: Sequence, replicas: int, policy: str,
          service_s: Callable[[int, int, int], float] | None = None,
          prefix_capacity: int = 0) -> list[list]:
    """``arrivals`` (sorted by time) split into ``replicas`` lists, each sorted by time.
    ``service_s(prompt, output, outstanding)``: the router's estimate of a request's time in a
    replica that has ``outstanding`` requests (least-outstanding, prefix-aware);
    ``prefix_capacity``: hash blocks a replica's cache holds (prefix-aware)."""
    if policy not in ROUTERS:
        raise UsageError(f"unknown --router '{policy}': choose from {', '.join(ROUTERS)}")
    out: list[list] = [[] for _ in range(replicas)]
    if replicas == 1:
        out[0] = list(arrivals)
        return out
    if policy == "round-robin":
        for i, a in enumerate(arrivals):
            out[i % replicas].append(a)
        return out
    if service_s is None:
        raise UsageError(f"--router {policy} needs a service-time estimate")
    finishing: list[list[float]] = [[] for _ in range(replicas)]   # heaps of estimated finishes
    caches: list[OrderedDict] | None = (
        [OrderedDict() for _ in range(replicas)] if policy == "prefix-aware" else None)
    for a in arrivals:
        t = a.arrival_s
        for heap in finishing:
            while heap and heap[0] <= t:
                heapq.heappop(heap)
        loads = [len(h) for h in finishing]
        if caches is not None and a.hash_ids:
            most, least = max(loads), min(loads)
            blocks = len(a.hash_ids)
            best = None
            for i, cache in enumerate(caches):
                n = 0
                for h in a.hash_ids:
                    if h not in cache:
                        break
                    n += 1
                load = (most - loads[i]) / (most - least) if most > least else 1.0
                score = (n / blocks + load, -loads[i], -i)
                if best is None or score > best:
                    best, pick = score, i
        else:
            pick = min(range(replicas), key=lambda i: loads[i])
        out[pick].append(a)
        heapq.heappush(finishing[pick], t + service_s(a.prompt, a.output,
                                                      len(finishing[pick])))
        if caches is not None and a.hash_ids and prefix_capacity > 0:
            cache = caches[pick]
            for h in a.hash_ids:
                cache[h] = None
                cache.move_to_end(h)
            while len(cache) > prefix_capacity:
                cache.popitem(last=False)
    return out
