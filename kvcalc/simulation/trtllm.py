"""TensorRT-LLM's batch manager over time (``kvcalc simulate --engine trtllm``).

Read from NVIDIA/TensorRT-LLM (the 1.2 band ``kvcalc plan --engine trtllm`` models), facts only:

- ``cpp/tensorrt_llm/batch_manager/capacityScheduler.cpp``: every iteration the capacity
  scheduler walks the active requests in arrival order.
  ``GUARANTEED_NO_EVICT`` (the default ``capacity_scheduler_policy``) keeps every request in
  progress and subtracts the blocks each needs *to completion* (``getRemainingBlocksToCompletion``:
  ``ceil((prompt + max_new_tokens) / tokens_per_block)`` less the blocks it holds) from the free
  blocks; a new request is started only if its own blocks to completion fit what is left, and
  the first one that does not fit stops the walk -- nothing is ever evicted.
  ``MAX_UTILIZATION`` schedules a request when the blocks it needs for *this* step fit
  (``getNeededBlocksOneStep``: its prompt, or one block at a block boundary); when one does not,
  the last started request behind it is **paused** (its blocks freed, to be prefilled again with
  the tokens it had generated) and the walk retries;
- ``cpp/tensorrt_llm/batch_manager/microBatchScheduler.cpp``: the scheduled requests fill one
  in-flight batch in the same order while ``max_batch_size`` (2,048) requests and
  ``max_num_tokens`` (8,192) tokens last -- one token per generation request, the prompt (or,
  with ``enable_chunked_prefill``, a chunk of whole blocks) per context request; without
  chunked prefill (the LLM API's default) a prompt longer than ``max_num_tokens`` cannot run;
- ``cpp/tensorrt_llm/batch_manager/kvCacheManager.cpp``: blocks of ``tokens_per_block`` (32)
  from the pool ``kvcalc plan --engine trtllm`` computes; KV block reuse
  (``enable_block_reuse``, on by default) finds a request's leading full prompt blocks cached
  (at most ``prompt - 1`` tokens), freed blocks stay reusable until evicted least recently used
  first -- the same pool as vLLM's prefix cache (:class:`.paged.PagedCache`, no null block);
  a paused request finds its own blocks again while they are cached.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from .metrics import StepLoop
from .paged import PagedCache
from .scheduler import ClosedLoop, Req, Totals

GUARANTEED_NO_EVICT = "GUARANTEED_NO_EVICT"
MAX_UTILIZATION = "MAX_UTILIZATION"
#: ``--capacity-scheduler-policy`` choices (``CapacitySchedulerPolicy``, llm_args.py)
POLICIES = (GUARANTEED_NO_EVICT, MAX_UTILIZATION)
#: LLM API defaults (``tensorrt_llm/llmapi/llm_args.py``: ``max_batch_size`` 2048,
#: ``max_num_tokens`` 8192)
MAX_BATCH_SIZE = 2048
MAX_NUM_TOKENS = 8192


@dataclass(frozen=True)
class TrtllmConfig:
    blocks: int
    tokens_per_block: int
    max_batch_size: int = MAX_BATCH_SIZE
    max_num_tokens: int = MAX_NUM_TOKENS
    policy: str = GUARANTEED_NO_EVICT
    enable_block_reuse: bool = True
    enable_chunked_prefill: bool = False


class TrtllmLoop(StepLoop):
    """The capacity and micro-batch schedulers (see the module docstring) on a block pool."""

    request_type = Req
    closed_loop_type = ClosedLoop

    def __init__(self, arrivals, cfg, timing, tot: Totals, tc: TrtllmConfig,
                 budget_slots: float, hash_block: int):
        super().__init__(arrivals, cfg, timing, tot, budget_slots)
        self.tc = tc
        self.cache = PagedCache(tc.blocks, tc.tokens_per_block, budget_slots,
                                tc.enable_block_reuse, 0, hash_block)
        #: TensorRT-LLM's active requests in arrival order: started ones (in ``running``)
        #: and those waiting for their context (in ``waiting``) in one list
        self.active: list = []
        self.kv_sum = 0

    def take_arrivals(self) -> None:
        n = len(self.waiting)
        super().take_arrivals()
        self.active.extend(self.waiting[n:])

    def rejects(self, r) -> bool:
        B = self.tc.tokens_per_block
        if -(-(r.prompt + r.output) // B) > self.tc.blocks:
            return True          # never fits, even alone
        return not self.tc.enable_chunked_prefill and r.prompt > self.tc.max_num_tokens

    # ---- blocks ---------------------------------------------------------------------------
    def to_completion(self, r) -> int:
        """``getRemainingBlocksToCompletion``: blocks for prompt + max_new_tokens, less held."""
        B = self.tc.tokens_per_block
        return -(-(r.prompt + r.output) // B) - r.held

    def one_step(self, r, tokens: int) -> int:
        """Blocks ``r`` needs to compute ``tokens`` more (``getNeededBlocksOneStep``)."""
        B = self.tc.tokens_per_block
        return max(0, -(-(r.computed + tokens) // B) - r.held)

    # ---- one iteration ----------------------------------------------------------------
    def step(self) -> None:
        tc = self.tc
        started = [r for r in self.active if r.held or r.computed]
        if tc.policy == GUARANTEED_NO_EVICT:
            fitting = self._no_evict()
        else:
            fitting = self._max_utilization()
        batch = self._micro_batch(fitting)
        if not batch:
            if not started and self.waiting:       # nothing can ever start it: refuse
                r = self.waiting.pop(0)
                self.active.remove(r)
                self._refuse()
                return
            raise AssertionError("TensorRT-LLM loop: nothing scheduled")
        self._run(batch)

    def _no_evict(self) -> list:
        tc = self.tc
        available = self.cache.free_count
        scheduled, pending = [], []
        for r in self.active:
            if len(scheduled) >= tc.max_batch_size:
                break
            if r.generated and r.computed == r.num_tokens - 1:     # generation in progress
                scheduled.append(r)
                available -= self.to_completion(r)
            else:
                pending.append(r)
        for r in pending:
            if len(scheduled) >= tc.max_batch_size:
                break
            need = self.to_completion(r)
            if need > available:
                break
            scheduled.append(r)
            available -= need
        return scheduled

    def _max_utilization(self) -> list:
        tc, cache = self.tc, self.cache
        free = cache.free_count
        used = 0
        scheduled = []
        active = list(self.active)
        end = len(active)
        i = 0
        while i < end:
            r = active[i]
            need = self.one_step(r, self._context_tokens(r) if r.computed < r.num_tokens - 1
                                 or not r.generated else 1)
            if len(scheduled) < tc.max_batch_size and used + need <= free:
                scheduled.append(r)
                used += need
                i += 1
                continue
            # pause the last started request from the end of the list down to this one (it
            # may be the one paused), and retry
            j = end - 1
            while j >= i and not (active[j].held or active[j].computed):
                j -= 1
            if j < i:
                break
            victim = active[j]
            free += victim.held
            self._pause(victim)
            end = j
        return scheduled

    def _context_tokens(self, r) -> int:
        """The tokens a context request computes in one iteration, before the token budget."""
        return r.num_tokens - r.computed

    def _pause(self, r) -> None:
        """Free a started request's blocks; it is prefilled again (prompt + generated)."""
        self.cache.free(r, preempted=True)
        self.kv_sum -= r.computed
        r.computed = 0
        r.preempted = True
        if r in self.running:
            self.running.remove(r)
        if r not in self.waiting:
            self.waiting.append(r)
        self.tot.preemptions += 1

    def _micro_batch(self, fitting: list) -> list:
        """(request, new tokens) within ``max_batch_size`` and ``max_num_tokens``."""
        tc, cache, tot = self.tc, self.cache, self.tot
        B = tc.tokens_per_block
        budget = tc.max_num_tokens
        out = []
        for r in fitting:
            if len(out) >= tc.max_batch_size or budget <= 0:
                break
            if r.generated and r.computed == r.num_tokens - 1:
                out.append((r, 1))
                budget -= 1
                continue
            if not r.held:                           # its first context chunk: reuse
                hits = cache.lookup(r) if tc.enable_block_reuse else None
                hit = hits[0] if hits else 0
            else:
                hits, hit = None, r.computed
            left = r.num_tokens - hit
            if left > budget:
                if not tc.enable_chunked_prefill:
                    break
                new = (hit + budget) // B * B - hit
                if new <= 0:
                    break
            else:
                new = left
            if not r.held:
                if not cache.admit(r, hits, hit + new):
                    break
                self.waiting.remove(r)
                self.admitted(r)
                tot.queried_tokens += r.num_tokens
                if hits:
                    tot.prefix_hit_tokens += hits[1]
                    if r.preempted:
                        tot.resume_hit_tokens += hits[0]
                r.computed = hit
                self.kv_sum += hit
                self.running.append(r)
            out.append((r, new))
            budget -= new
        return out

    def _run(self, batch: list) -> None:
        cache = self.cache
        tokens = kv = 0
        extra = 0.0
        sampled, finished = [], []
        for r, new in batch:
            c = r.computed
            ok = cache.grow(r, c + new)
            assert ok, "TensorRT-LLM pool exhausted (the capacity scheduler should prevent it)"
            tokens += new
            kv += c + new
            if new > 1:
                extra += (new - 1) * (c + new / 2)
            self.kv_sum += new
            done = self.computed(r, new)
            cache.on_computed(r)
            if done:
                sampled.append(r)
                if r.generated >= r.output:
                    finished.append(r)
        for r in finished:
            cache.free(r, preempted=False)
            self.kv_sum -= r.computed
            self.running.remove(r)
            self.active.remove(r)
        self.end_step(tokens, kv, extra, len(batch), sampled, finished)

    # ---- memory ------------------------------------------------------------------------
    def idle_split(self) -> tuple[float, float]:
        return self.cache.idle_split()

    def snapshot(self) -> tuple:
        snap = list(self.cache.snapshot(None, None, self.kv_sum))
        if self.tc.policy == GUARANTEED_NO_EVICT:
            # blocks promised to the running requests' remaining tokens: reserved, not free
            B = self.tc.tokens_per_block
            res = ifr = 0
            for r in self.running:
                total = -(-(r.prompt + r.output) // B)
                if total <= r.held:
                    continue
                last = -(-r.final // B)
                if r.held < last:
                    never = last * B - r.final + (total - last) * B
                else:
                    never = (total - r.held) * B
                ifr += never
                res += (total - r.held) * B - never
            snap[1] += res
            snap[2] += ifr
            snap[4] -= res + ifr
        return tuple(snap)

    def check(self) -> None:
        self.cache.check(self.running)
        assert self.kv_sum == sum(r.computed for r in self.running), "computed tokens"
        assert len(self.active) == len(self.running) + len(self.waiting), "active requests"
        if self.tc.policy == GUARANTEED_NO_EVICT:
            promised = sum(max(0, self.to_completion(r)) for r in self.running)
            assert promised <= self.cache.free_count, "blocks promised beyond the free ones"


def run(arrivals, cfg, timing, tc: TrtllmConfig, budget_slots: float,
        hash_block: int) -> Totals:
    tot = Totals()
    TrtllmLoop(arrivals, cfg, timing, tot, tc, budget_slots, hash_block).run()
    return tot


# --------------------------------------------------------------------------------------------
# kvcalc simulate --engine trtllm: the plan's pool, one run, the JSON record

#: the allocator name of TensorRT-LLM's runs
ALLOCATOR = "trtllm-paged"


def check_plan(plan) -> None:
    cap = plan.engine_figures
    if not cap.fits:
        raise UsageError(f"the plan does not fit: {cap.error} (kvcalc plan --engine trtllm "
                         f"shows why)")
    if plan.inputs.pp != 1:
        raise UsageError("kvcalc simulate models TensorRT-LLM on one pipeline stage: use --pp 1")
    if any(c.fixed_bytes for c in plan.layout.layers):
        raise UsageError(f"kvcalc simulate models TensorRT-LLM's attention blocks; "
                         f"{plan.spec.model_type} has Mamba states (not modelled)")


def settings(plan, options) -> TrtllmConfig:
    """The batch manager's settings of a run on ``plan`` with ``options``."""
    if options.cpu_offload_bytes:
        raise UsageError("--cpu-offload is a vLLM setting (TensorRT-LLM's host blocks, "
                         "--host-cache-size, are not modelled)")
    cap = plan.engine_figures
    policy = (options.capacity_scheduler_policy or GUARANTEED_NO_EVICT).upper()
    if policy not in POLICIES:
        raise UsageError(f"unknown --capacity-scheduler-policy '{policy}': choose from "
                         f"{', '.join(POLICIES)}")
    for flag, value in (("--max-batch-size", options.max_batch_size),
                        ("--max-num-tokens", options.max_num_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise UsageError(f"invalid {flag} {value}: must be a whole number >= 1")
    return TrtllmConfig(cap.blocks, cap.tokens_per_block,
                        options.max_batch_size or MAX_BATCH_SIZE,
                        options.max_num_tokens or MAX_NUM_TOKENS, policy,
                        options.prefix_caching, options.enable_chunked_prefill)


def capacity(plan, tc: TrtllmConfig) -> dict:
    cap = plan.engine_figures
    pool = tc.blocks * tc.tokens_per_block
    return {"pool_slots": pool, "usable_blocks": tc.blocks,
            "budget_slots": max(plan.budget.kv_bytes / cap.bytes_per_token, pool),
            "bytes_per_token": cap.bytes_per_token, "calibration": "trtllm",
            "batched_tokens": tc.max_num_tokens, "seqs": tc.max_batch_size}


def record(plan, tc: TrtllmConfig) -> dict:
    cap = plan.engine_figures
    return {
        "kv_budget_bytes": cap.kv_cache_bytes,
        "bytes_per_token": cap.bytes_per_token,
        "tokens_per_block": tc.tokens_per_block,
        "blocks": tc.blocks,
        "max_batch_size": tc.max_batch_size,
        "max_num_tokens": tc.max_num_tokens,
        "capacity_scheduler_policy": tc.policy,
        "enable_block_reuse": tc.enable_block_reuse,
        "enable_chunked_prefill": tc.enable_chunked_prefill,
    }
