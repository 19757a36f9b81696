"""vLLM v1's KV cache manager over time: a pool of ``num_gpu_blocks`` blocks of ``block_size``
tokens (the figures ``kvcalc plan`` computes), prefix caching and an optional CPU tier.

As ``vllm/v1/core/kv_cache_manager.py``, ``block_pool.py`` and ``kv_cache_utils.py``:

- a request holds ``ceil(tokens / block_size)`` blocks; blocks come from the head of the free
  queue (``FreeKVCacheBlockQueue``); the null block is never handed out (vLLM >= 0.20);
- prefix caching: a *full* block is identified by the hash of its tokens chained with its
  prefix's; computed full blocks are cached; a new request reuses the longest run of cached
  blocks of its prompt (at most ``tokens - 1``: the last token is always computed); freed blocks
  go to the tail of the free queue (a request's blocks in reverse order, so its tail is evicted
  first) and keep their hash until the head of the queue reaches them and they are evicted
  (least recently freed first) -- a hit takes a block back out of the queue;
- in a trace, the hash of block ``m`` is the Mooncake hash id of the 512-token block holding
  its last token plus its end offset in that block (equal ids = equal prefixes). Requests
  without hash ids share nothing, but a preempted request finds its own blocks again while they
  are cached (recompute becomes a cache hit);
- CPU tier (``--cpu-offload SIZE``): a cached block evicted from the GPU goes to an LRU store of
  ``SIZE // block bytes`` blocks; a lookup continues there after the GPU hits end; CPU hits
  need GPU blocks but no compute (counted as offload hits).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from operator import mul

from ..units import largest_satisfying


class PagedCache:
    name = "paged"

    def __init__(self, num_blocks: int, block_size: int, budget_slots: float,
                 prefix_caching: bool = True, cpu_blocks: int = 0, hash_block: int = 512):
        self.n = num_blocks                    # usable blocks (null block excluded)
        self.B = block_size
        self.budget_slots = budget_slots       # the KV budget in token slots
        self.prefix = prefix_caching
        self.hash_block = hash_block
        self.free_count = num_blocks
        #: free queue: int keys = runs of clean blocks (value: count); tuple keys = one cached
        #: block each (value 1); iteration order = eviction order
        self.queue: OrderedDict = OrderedDict()
        self._serial = -1
        if num_blocks:
            self.queue[self._serial] = num_blocks
        #: cached blocks on the GPU: key -> reference count (0 = in the free queue)
        self.cache: dict = {}
        self.cpu_blocks = cpu_blocks
        self.cpu: OrderedDict | None = OrderedDict() if cpu_blocks else None
        self.evictions = 0
        self._tables: tuple | None = None
        self._columns: tuple | None = None
        #: blocks the running requests hold (shared blocks once per holder), and the slots of
        #: their last blocks that will never be filled (internal fragmentation): kept up to
        #: date at every change so that :meth:`snapshot` need not walk the batch
        self.held_total = 0
        self.ifrag_slots = 0

    # ---- capacity ----------------------------------------------------------------------
    def rejects(self, r) -> bool:
        """A request whose last step needs more blocks than the pool holds never finishes."""
        return -(-r.final // self.B) > self.n

    def _pop(self, n: int) -> None:
        self.free_count -= n
        q = self.queue
        while n:
            k = next(iter(q))
            if type(k) is int and k < 0:
                v = q[k]
                if v > n:
                    q[k] = v - n           # stays at the head of the queue
                    return
                del q[k]
                n -= v
            else:
                del q[k]
                del self.cache[k]
                self.evictions += 1
                if self.cpu is not None:
                    self.cpu[k] = None
                    self.cpu.move_to_end(k)
                    if len(self.cpu) > self.cpu_blocks:
                        self.cpu.popitem(last=False)
                n -= 1

    def _push_clean(self, n: int) -> None:
        if n:
            self._serial -= 1
            self.queue[self._serial] = n
            self.free_count += n

    # ---- keys --------------------------------------------------------------------------
    # a block's identity: trace blocks an int >= 0 (hash id x (H + 1) + end offset in the
    # hash block), a preempted request's own blocks (rid, m); clean runs in the queue use
    # negative ints
    def _tkeys(self, r) -> list[int]:
        """The identities of ``r``'s full prompt blocks that its trace hash ids name."""
        if r.tkeys is None:
            ids, B, H = r.hash_ids or (), self.B, self.hash_block
            n = min(r.prompt // B, len(ids) * H // B)
            r.tkeys = [ids[(e - 1) // H] * (H + 1) + e - (e - 1) // H * H
                       for e in range(B, (n + 1) * B, B)]
        return r.tkeys

    def _key(self, r, m: int):
        t = self._tkeys(r)
        if m < len(t):
            return t[m]
        return (r.rid, m) if r.preempted else None

    # ---- the scheduler's calls ---------------------------------------------------------
    def lookup(self, r):
        """Cached leading blocks of ``r``: (hit tokens, GPU hit tokens, CPU hit tokens, GPU
        keys, CPU keys), or None."""
        if not self.prefix or r.computed or (r.hash_ids is None and not r.preempted):
            return None
        limit = (r.num_tokens - 1) // self.B
        gpu, cpu = [], []
        cache, store = self.cache, self.cpu
        t = self._tkeys(r)
        n = len(t)
        own = r.preempted
        for m in range(limit):
            if m < n:
                key = t[m]
            elif own:
                key = (r.rid, m)
            else:
                break
            if key in cache:
                gpu.append(key)
            elif store is not None and key in store:
                cpu.append(key)
            else:
                break
        if not gpu and not cpu:
            return None
        B = self.B
        return ((len(gpu) + len(cpu)) * B, len(gpu) * B, len(cpu) * B, gpu, cpu)

    def admit(self, r, hits, upto: int) -> bool:
        if r.waste < 0:
            last = -(-r.final // self.B)
            r.waste = last * self.B - r.final          # slots of the last block never filled
            r.last_block_from = self.B * (last - 1)    # tokens held before it is allocated
        blocks = -(-upto // self.B)
        if hits is None:
            if blocks > self.free_count:
                return False
            self._pop(blocks)
            self._hold(r, blocks)
            r.bkeys = [] if r.hash_ids is not None else None
            return True
        _, _, _, gpu, cpu = hits
        cache = self.cache
        idle = sum(1 for k in gpu if cache[k] == 0)
        new = blocks - len(gpu)
        if new > self.free_count - idle:
            return False
        for k in gpu:
            if cache[k] == 0:
                del self.queue[k]
                self.free_count -= 1
            cache[k] += 1
        for k in cpu:                  # used now: the most recent in the CPU tier's LRU
            self.cpu.move_to_end(k)
        self._pop(new)
        for k in cpu:                  # loaded from the CPU tier into fresh GPU blocks
            cache[k] = 1
        self._hold(r, blocks)
        r.bkeys = gpu + cpu
        return True

    def grow(self, r, upto: int) -> bool:
        need = -(-upto // self.B) - r.held
        if need <= 0:
            return True
        if need > self.free_count:
            return False
        self._pop(need)
        self._hold(r, r.held + need)
        return True

    def _hold(self, r, blocks: int) -> None:
        """``r`` holds ``blocks`` blocks now (more than before)."""
        self.held_total += blocks - r.held
        over = blocks * self.B - r.final
        if over > 0:
            was = r.held * self.B - r.final
            self.ifrag_slots += over - was if was > 0 else over
        r.held = blocks

    def on_computed(self, r) -> None:
        """Cache the prompt blocks ``r`` filled (those a trace hash identifies)."""
        if not self.prefix or r.hash_ids is None:
            return
        keys = r.bkeys
        t = self._tkeys(r)
        full = min(r.computed // self.B, len(t))
        if len(keys) >= full:
            return
        cache = self.cache
        for m in range(len(keys), full):
            key = t[m]
            if key in cache:
                keys.append(None)      # a twin computed concurrently: stays private
            else:
                cache[key] = 1
                keys.append(key)

    def free(self, r, preempted: bool) -> None:
        held = r.held
        if not r.bkeys and not (preempted and self.prefix):
            # no cached blocks: every block goes back clean (_push_clean)
            if held:
                self._serial -= 1
                self.queue[self._serial] = held
                self.free_count += held
            self.held_total -= held
            over = held * self.B - r.final
            if over > 0:
                self.ifrag_slots -= over
            r.held = 0
            r.bkeys = None
            return
        cache = self.cache
        keys = r.bkeys or []
        if preempted and self.prefix:
            # keep the computed full blocks cached under this request's own identity
            full = r.computed // self.B
            keys = list(keys) + [None] * (full - len(keys))
            for m in range(full):
                if keys[m] is None:
                    key = self._key(r, m)
                    if key not in cache:
                        cache[key] = 1
                        keys[m] = key
        shared = [k for k in keys if k is not None]
        self._push_clean(r.held - len(shared))
        for k in reversed(shared):
            cache[k] -= 1
            if cache[k] == 0:
                self.queue[k] = 1
                self.free_count += 1
        self.held_total -= r.held
        over = r.held * self.B - r.final
        if over > 0:
            self.ifrag_slots -= over
        r.held = 0
        r.bkeys = None

    # ---- bulk decode -------------------------------------------------------------------
    def max_steps(self, running, k: int) -> int:
        """Most decode steps (<= k) whose new blocks the free queue can give."""
        B, free = self.B, self.free_count
        if free >= len(running) * (k // B + 1):
            return k           # each request crosses at most k // B + 1 block boundaries

        def need(s: int) -> int:
            return sum(-(-(r.computed + s) // B) - r.held for r in running)

        if need(k) <= free:
            return k
        return largest_satisfying(lambda s: need(s) <= free, k - 1)

    # ---- memory ------------------------------------------------------------------------
    def used_slots(self, running) -> int:
        return (self.n - self.free_count) * self.B

    def idle_split(self) -> tuple[float, float]:
        ext = self.budget_slots - self.n * self.B
        return ext, self.n * self.B

    def snapshot(self, running, head, computed: int | None = None) -> tuple[float, ...]:
        """The categories now, in token slots (``computed``: the running requests' computed
        tokens, when the caller keeps their sum)."""
        B = self.B
        if computed is None:
            computed = sum(r.computed for r in running)
        tails = self.held_total * B - computed
        ifrag = self.ifrag_slots
        used = (self.n - self.free_count) * B
        return (used - tails, tails - ifrag, ifrag, self.budget_slots - self.n * B,
                self.n * B - used)

    def _tail_tables(self) -> tuple[list[list[int]], list[list[int]]]:
        """P0[u][b] = sum_{s<b} (u - s) mod B and P1[u][b] = sum_{s<b} s ((u - s) mod B): the
        unused tail of a request's last block over b decode steps, starting from tail u.
        Tables of B x (B + 1) integers up to :data:`TAIL_TABLE_MAX_B`; above it (the tables
        grow as B^2: 1.8 GB at 4,096) the same integers in closed form (:func:`tail_sums`),
        computed when asked for."""
        if self._tables is None and self.B > TAIL_TABLE_MAX_B:
            self._tables = (_ClosedForm(self.B, 0), _ClosedForm(self.B, 1))
        if self._tables is None:
            B = self.B
            p0, p1 = [], []
            for u in range(B):
                row0, row1, t0, t1 = [0], [0], 0, 0
                for step in range(B):
                    rho = (u - step) % B
                    t0 += rho
                    t1 += step * rho
                    row0.append(t0)
                    row1.append(t1)
                p0.append(row0)
                p1.append(row1)
            self._tables = (p0, p1)
        return self._tables

    def decode_integrals(self, running, k: int, c0: float, c1: float, d_total: float,
                         dj: float, head) -> tuple[float, ...]:
        """Time-weighted memory over k decode steps, step j lasting c0 + c1 j seconds.

        A request holding c tokens holds t = c + j + 1 at the end of step j, in ceil(t/B)
        blocks; its unused tail rho(t) = B ceil(t/B) - t = (u - j) mod B with u = rho(c + 1)
        repeats every B steps, so with k = a B + b:

            sum_j (c0 + c1 j) rho = a c0 S + c1 B S a(a-1)/2 + a c1 W(u)
                                    + (c0 + c1 a B) P0[u][b] + c1 P1[u][b]

        (S = B(B-1)/2, W(u) = P1[u][B]; :meth:`_tail_tables`). The tail slots either fill
        later (reservation) or never (internal fragmentation: once the request holds its last
        block, B ceil(final/B) - final slots)."""
        B = self.B
        p0, p1 = self._tail_tables()
        a, b = divmod(k, B)
        n = len(running)
        S = B * (B - 1) // 2
        per_request = a * c0 * S + c1 * B * S * a * (a - 1) / 2
        w_coef, p0_coef = a * c1, c0 + c1 * a * B
        held_now = computed = 0
        tail_sum = 0.0
        ifrag = 0.0
        for r in running:
            c = r.computed
            held_now += r.held
            computed += c
            u = (-c - 1) % B
            row0, row1 = p0[u], p1[u]
            tail_sum += w_coef * row1[B] + p0_coef * row0[b] + c1 * row1[b]
            waste = r.waste
            if waste:
                j0 = r.last_block_from - c
                if j0 < k:
                    if j0 <= 0:
                        ifrag += waste * d_total
                    else:
                        ifrag += waste * (d_total - (c0 * j0 + c1 * j0 * (j0 - 1) / 2))
        tails = n * per_request + tail_sum
        toks = (computed + n) * d_total + n * dj
        dup = (held_now - (self.n - self.free_count)) * B   # shared blocks counted twice
        used = toks + tails - dup * d_total
        total_slots = self.n * B
        return (used - tails, tails - ifrag, ifrag,
                (self.budget_slots - total_slots) * d_total, total_slots * d_total - used)

    def bulk_integrals(self, n: int, computed: int, k: int, c0: float, c1: float,
                       d_total: float, dj: float, head, lazy, events) -> tuple[float, ...]:
        """:meth:`decode_integrals` from the batch's aggregates instead of its requests:
        ``lazy`` = (tails[u]: requests that start the run with u slots of their last block
        unused; slots of internal fragmentation held at the start; blocks the requests hold;
        blocks in use), ``events``: (j0, waste) of each request that gets its last block at
        step j0 of the run."""
        tails, ifrag_slots, held_now, used_blocks = lazy
        B = self.B
        w, col0, col1 = self._tail_columns()
        a, b = divmod(k, B)
        S = B * (B - 1) // 2
        per_request = a * c0 * S + c1 * B * S * a * (a - 1) / 2
        tail_sum = (a * c1 * sum(map(mul, tails, w)) + (c0 + c1 * a * B)
                    * sum(map(mul, tails, col0[b])) + c1 * sum(map(mul, tails, col1[b])))
        ifrag = ifrag_slots * d_total
        if events:
            for j0, waste in events:
                ifrag += waste * (d_total - (c0 * j0 + c1 * j0 * (j0 - 1) / 2))
        tails = n * per_request + tail_sum
        toks = (computed + n) * d_total + n * dj
        dup = (held_now - used_blocks) * B                  # shared blocks counted twice
        used = toks + tails - dup * d_total
        total_slots = self.n * B
        return (used - tails, tails - ifrag, ifrag,
                (self.budget_slots - total_slots) * d_total, total_slots * d_total - used)

    def _tail_columns(self) -> tuple[list[int], list[list[int]], list[list[int]]]:
        """:meth:`_tail_tables` by column: (W[u] = P1[u][B], P0[.][b], P1[.][b])."""
        if self._columns is None and self.B > TAIL_TABLE_MAX_B:
            B = self.B
            self._columns = ([tail_sums(u, B, B)[1] for u in range(B)],
                             _ClosedForm(B, 0, by_column=True),
                             _ClosedForm(B, 1, by_column=True))
        if self._columns is None:
            p0, p1 = self._tail_tables()
            B = self.B
            self._columns = ([p1[u][B] for u in range(B)],
                             [[p0[u][b] for u in range(B)] for b in range(B + 1)],
                             [[p1[u][b] for u in range(B)] for b in range(B + 1)])
        return self._columns

    def check(self, running) -> None:
        """Conservation: blocks held by running requests + free blocks = the pool."""
        shared = {}
        private = 0
        for r in running:
            keys = [k for k in (r.bkeys or []) if k is not None]
            private += r.held - len(keys)
            for k in keys:
                shared[k] = shared.get(k, 0) + 1
        assert sum(self.queue.values()) == self.free_count, "free queue count"
        assert private + len(shared) + self.free_count == self.n, "blocks not conserved"
        for k, refs in shared.items():
            assert self.cache[k] == refs, "reference count"
        assert 0 <= self.free_count <= self.n
        assert self.held_total == sum(r.held for r in running), "held blocks"
        assert self.ifrag_slots == sum(max(0, r.held * self.B - r.final) for r in running)


#: the largest block size whose tail sums are kept as tables (:meth:`PagedCache._tail_tables`)
TAIL_TABLE_MAX_B = 256


def tail_sums(u: int, b: int, B: int) -> tuple[int, int]:
    """(P0[u][b], P1[u][b]) of :meth:`PagedCache._tail_tables` in closed form: for s <= u the
    tail is u - s; for u < s < b it wraps to u - s + B, which adds B per such step (and B s to
    P1)."""
    wraps = max(0, b - u - 1)                 # steps s = u + 1 .. b - 1
    p0 = b * u - b * (b - 1) // 2 + B * wraps
    p1 = u * (b * (b - 1) // 2) - (b - 1) * b * (2 * b - 1) // 6
    if wraps:
        p1 += B * ((b - 1) * b // 2 - u * (u + 1) // 2)
    return p0, p1


class _ClosedForm:
    """P0 or P1 (``which`` 0 or 1) indexed as the tables are, [u][b] (or by column, [b] -> the
    list over u), each entry from :func:`tail_sums`."""

    __slots__ = ("B", "which", "by_column", "u")

    def __init__(self, B: int, which: int, by_column: bool = False, u: int | None = None):
        self.B, self.which, self.by_column, self.u = B, which, by_column, u

    def __getitem__(self, i: int):
        if self.u is not None:                   # a row: [u][b]
            return tail_sums(self.u, i, self.B)[self.which]
        if self.by_column:                       # a column: [b] -> [P(u, b) for u]
            return [tail_sums(u, i, self.B)[self.which] for u in range(self.B)]
        return _ClosedForm(self.B, self.which, u=i)


# --------------------------------------------------------------------------------------------
# Hybrid models: several KV cache groups on one block pool


#: the group kinds of :class:`HybridCache` (vLLM's single-type managers)
FULL_GROUP, SLIDING_GROUP, CHUNKED_GROUP, MAMBA_GROUP = "full", "sliding", "chunked", "mamba"
GROUP_KINDS = (FULL_GROUP, SLIDING_GROUP, CHUNKED_GROUP, MAMBA_GROUP)


@dataclass(frozen=True)
class GroupSpec:
    """One KV cache group as vLLM's ``HybridKVCacheCoordinator`` manages it: its kind, the
    sliding window W or attention chunk C (tokens), and for Mamba groups whether they run in
    "align" mode (prefix caching on, vLLM >= 0.33) and their prefill checkpoint blocks."""

    kind: str
    window: int = 0
    align: bool = False
    checkpoint: int = 0

    def skipped_blocks(self, processed: int, B: int) -> int:
        """Leading blocks no longer needed once ``processed`` tokens are processed
        (``get_num_skipped_tokens // block_size``; for Mamba in align mode every block before
        the one holding the last state, ``cdiv(processed, B) - 1``)."""
        if self.kind == SLIDING_GROUP:
            return max(0, processed - self.window + 1) // B
        if self.kind == CHUNKED_GROUP:
            return processed // self.window * self.window // B
        if self.kind == MAMBA_GROUP and self.align and processed > 0:
            return (processed - 1) // B
        return 0

    def peak_blocks(self, final: int, B: int, in_flight: int) -> int:
        """Blocks one request of ``final`` tokens holds at most (vLLM's
        ``max_memory_usage_bytes / page``, at most the request's own length)."""
        n = -(-final // B)
        if self.kind == SLIDING_GROUP:
            return min(n, -(-(self.window - 1 + in_flight) // B) + 1)
        if self.kind == CHUNKED_GROUP:
            return min(n, -(-(self.window + in_flight) // B))
        if self.kind == MAMBA_GROUP:
            return 2 + self.checkpoint if self.align else 1
        return n


class _Table:
    """One request's blocks in one group: block indices ``lo .. n - 1`` are held (attention)
    or the indices in ``held`` (Mamba); ``shared``: index -> prefix-cache key of the held
    blocks that are in the cache (reference counted), the others are private."""

    __slots__ = ("lo", "n", "held", "shared", "cached_upto", "checkpointed")

    def __init__(self):
        self.lo = 0
        self.n = 0
        self.held: list[int] | None = None
        self.shared: dict = {}
        self.cached_upto = 0
        self.checkpointed = False


class _HState:
    """A request's tables (one per group) and the computed counts at the start of its last
    scheduled steps (the tokens in flight with async scheduling)."""

    __slots__ = ("tables", "marks", "tail", "ifrag", "cap", "next_free", "upto")

    def __init__(self, groups: int):
        self.tables = [_Table() for _ in range(groups)]
        self.marks: list[int] = []
        #: the most tokens the held blocks take without a new block, the fewest processed
        #: tokens at which a group frees a block, and the tokens the blocks were sized for
        self.cap = 0
        self.next_free = 0
        self.upto = 0
        self.tail = 0          # slots of the attention groups' last blocks not yet filled
        self.ifrag = 0         # of which never filled (the request's final length reached)


class HybridCache(PagedCache):
    """vLLM v1's ``HybridKVCacheCoordinator`` over time: several KV cache groups (full
    attention, sliding window, chunked local attention, Mamba / GDN state) allocating from one
    block pool of ``num_blocks`` blocks of ``block_size`` tokens (a block id holds one page of
    each layer of a group; vLLM makes the pages equal), as ``vllm/v1/core/kv_cache_coordinator.py``
    and ``single_type_kv_cache_manager.py`` (vLLM 0.34):

    - each step a request first frees what its groups no longer need
      (``remove_skipped_blocks``) on the *processed* tokens -- its computed tokens less those
      still in flight (with async scheduling the previous step's: ``lag`` steps), then asks
      every group for the blocks the step needs; admission and growth succeed only if the
      total over the groups fits in the free blocks (``get_num_blocks_to_allocate``);
    - full attention: ``ceil(tokens / B)`` blocks; sliding window W: blocks wholly before token
      ``processed - W + 1`` are freed; chunked local attention C: blocks before the current
      chunk ``processed // C x C`` are freed;
    - Mamba / GDN, "align" mode (prefix caching on): the block holding the running state, the
      previous state until the step after the next block boundary is processed, and, on the
      prompt's last chunk, a prefill checkpoint block at the last block boundary inside the
      chunk (Mamba-2 and FlashInfer GDN layers): at most 2 (+1) blocks. "none" mode: 1 block;
    - prefix caching: full blocks are cached per group; a hit is the fixed point of the
      groups' own rules (``HybridKVCacheCoordinator.find_longest_cache_hit``): full attention a
      leading run of cached blocks, sliding window the last ``ceil((W - 1) / B)`` blocks before
      the hit's end, chunked local the blocks of the hit's current chunk, Mamba a cached state
      at a block boundary (hits only at aligned checkpoints); blocks freed while the request
      runs (out of the window, old states) stay cached under its own identity, so a preempted
      request finds them again while they are not evicted.

    The scheduler asks it for every step in detail (``bulk_decode`` is False: a decoding
    request can free and allocate at different ticks in different groups)."""

    name = "paged"
    #: the scheduler takes no bulk decode runs with this cache (each step asks :meth:`grow`)
    bulk_decode = False
    B = 0              # the scheduler's lazy block phases do not apply (see ``block``)

    def __init__(self, groups: tuple[GroupSpec, ...], num_blocks: int, block_size: int,
                 budget_slots: float, prefix_caching: bool = True, hash_block: int = 512,
                 lag: int = 1, in_flight: int = 0):
        super().__init__(num_blocks, block_size, budget_slots, prefix_caching, 0, hash_block)
        self.B = 0
        self.block = block_size
        self.groups = groups
        self.lag = lag
        self.in_flight = in_flight
        self.tail_slots = 0
        self.peak_blocks = 0
        self.n_attention = sum(1 for g in groups if g.kind != MAMBA_GROUP)
        #: lookup order: full attention first (its leading run bounds the others)
        self._order = sorted(range(len(groups)), key=lambda g: groups[g].kind != FULL_GROUP)

    # ---- capacity ----------------------------------------------------------------------
    def rejects(self, r) -> bool:
        B, T = self.block, self.in_flight
        return sum(g.peak_blocks(r.final, B, T) for g in self.groups) > self.n

    # ---- keys --------------------------------------------------------------------------
    def _tkeys(self, r) -> list[int]:
        """:meth:`PagedCache._tkeys` in blocks of ``block`` tokens."""
        if r.tkeys is None:
            ids, B, H = r.hash_ids or (), self.block, self.hash_block
            n = min(r.prompt // B, len(ids) * H // B)
            r.tkeys = [ids[(e - 1) // H] * (H + 1) + e - (e - 1) // H * H
                       for e in range(B, (n + 1) * B, B)]
        return r.tkeys

    def _bkey(self, r, m: int, own: bool):
        """The prefix-cache identity of ``r``'s block ``m`` (a trace block, else the
        request's own when ``own``), or None."""
        t = self._tkeys(r)
        if m < len(t):
            return t[m]
        return (r.rid, m) if own else None

    # ---- the pool ----------------------------------------------------------------------
    def _take(self, keys) -> None:
        """Hold the cached blocks ``keys`` ((group, key) pairs)."""
        cache = self.cache
        for k in keys:
            if cache[k] == 0:
                del self.queue[k]
                self.free_count -= 1
            cache[k] += 1

    def _release(self, r, g: int, tab: _Table, m: int, own: bool, tokens: int,
                 cached: list) -> int:
        """Give back ``r``'s block ``m`` of group ``g``: a shared block loses a reference
        (its key joins ``cached`` at 0: cached and evictable); a private full block with an
        identity is cached (joins ``cached``); anything else goes back clean (returns 1: the
        caller queues the clean blocks as one run, before the cached ones)."""
        key = tab.shared.pop(m, None)
        cache = self.cache
        if key is not None:
            cache[key] -= 1
            if cache[key] == 0:
                cached.append(key)
            return 0
        spec = self.groups[g]
        if self.prefix and (m + 1) * self.block <= tokens and (
                spec.kind != MAMBA_GROUP or spec.align):
            k = self._bkey(r, m, own)
            if k is not None and (g, k) not in cache:
                cache[(g, k)] = 0
                cached.append((g, k))
                return 0
        return 1

    def _queue(self, clean: int, cached: list) -> None:
        """Freed blocks to the tail of the free queue: the clean ones, then the cached ones
        (evicted last)."""
        self._push_clean(clean)
        q = self.queue
        for k in cached:
            q[k] = 1
        self.free_count += len(cached)

    # ---- lookups -----------------------------------------------------------------------
    def lookup(self, r):
        if not self.prefix or r.computed or (r.hash_ids is None and not r.preempted):
            return None
        B, groups, cache = self.block, self.groups, self.cache
        own = r.preempted
        t = self._tkeys(r)
        nt = len(t)

        def cached(g: int, m: int) -> bool:
            if m < nt:
                return (g, t[m]) in cache
            return own and (g, (r.rid, m)) in cache

        hit = (r.num_tokens - 1) // B * B
        while hit > 0:
            before = hit
            for g in self._order:
                hit = self._group_hit(groups[g], g, hit, cached)
                if hit == 0:
                    break
            if hit >= before:
                break
        if hit <= 0:
            return None
        plan = []
        for g, spec in enumerate(groups):
            nb = hit // B
            if spec.kind == MAMBA_GROUP:
                idx = [nb - 1] if spec.align else []
            else:
                idx = list(range(spec.skipped_blocks(hit, B), nb))
            plan.append([(m, (g, self._bkey(r, m, own))) for m in idx])
        return (hit, hit, 0, plan, None)

    def _group_hit(self, spec: GroupSpec, g: int, limit: int, cached) -> int:
        """The longest hit of one group within ``limit`` tokens (vLLM's per-manager
        ``find_longest_cache_hit``)."""
        B = self.block
        nb = limit // B
        kind = spec.kind
        if kind == FULL_GROUP:
            m = 0
            while m < nb and cached(g, m):
                m += 1
            return m * B
        if kind == SLIDING_GROUP:
            need = -(-(spec.window - 1) // B)
            run = 0
            for m in range(nb - 1, -1, -1):
                if cached(g, m):
                    run += 1
                    if run >= need:
                        return (m + run) * B
                else:
                    run = 0
            return run * B
        if kind == CHUNKED_GROUP:
            m = limit // spec.window * spec.window // B
            while m < nb and cached(g, m):
                m += 1
            return m * B
        if not spec.align:          # Mamba without prefix caching: no hit
            return 0
        for m in range(nb - 1, -1, -1):
            if cached(g, m):
                return (m + 1) * B
        return 0

    # ---- the scheduler's calls ---------------------------------------------------------
    def admit(self, r, hits, upto: int) -> bool:
        st = _HState(len(self.groups))
        B = self.block
        hit = hits[0] if hits else 0
        plan = hits[3] if hits else None
        cache = self.cache
        evictable = 0
        for g, spec in enumerate(self.groups):
            tab = st.tables[g]
            blocks = plan[g] if plan else ()
            if spec.kind == MAMBA_GROUP:
                tab.held = [m for m, _ in blocks]
            else:
                tab.lo = tab.n = hit // B
            for _, k in blocks:
                if cache[k] == 0:
                    evictable += 1
        need = 0
        for g, spec in enumerate(self.groups):
            need += self._new_blocks(spec, st.tables[g], hit, upto, r)
        if need + evictable > self.free_count:
            return False
        if plan:
            for g, spec in enumerate(self.groups):
                tab = st.tables[g]
                blocks = plan[g]
                if not blocks:
                    continue
                self._take([k for _, k in blocks])
                for m, k in blocks:
                    tab.shared[m] = k
                if spec.kind != MAMBA_GROUP:
                    tab.lo = blocks[0][0]
                tab.cached_upto = hit // B
                n = len(blocks)
                self.held_total += n
                r.held += n
        r.bkeys = st
        self._allocate(r, st, hit, upto)
        return True

    def grow(self, r, upto: int) -> bool:
        st = r.bkeys
        c = r.computed
        marks = st.marks
        processed = marks[0] if self.lag and marks else c
        if upto <= st.cap and processed < st.next_free:
            # nothing to free nor to allocate: only the last blocks' tails shrink
            d = (upto - st.upto) * self.n_attention
            st.upto = upto
            st.tail -= d
            self.tail_slots -= d
            marks.append(c)
            if len(marks) > self.lag:
                del marks[0]
            return True
        self._remove_skipped(r, st, processed)
        need = 0
        for g, spec in enumerate(self.groups):
            need += self._new_blocks(spec, st.tables[g], c, upto, r)
        if need > self.free_count:
            return False
        self._allocate(r, st, c, upto)
        return True

    def _new_blocks(self, spec: GroupSpec, tab: _Table, start: int, upto: int, r) -> int:
        """Blocks group ``spec`` needs to compute tokens ``start .. upto``."""
        B = self.block
        if spec.kind != MAMBA_GROUP:
            return max(0, -(-upto // B) - tab.n)
        held = tab.held
        if not spec.align:
            return 0 if held else 1
        s = -(-upto // B) - 1
        need = 0 if s in held else 1
        return need + self._checkpoint(spec, tab, start, upto, r, held)

    def _checkpoint(self, spec: GroupSpec, tab: _Table, start: int, upto: int, r,
                    held) -> int:
        """1 when this chunk reaches the prompt's end and a block boundary lies strictly
        inside it: the Mamba prefill checkpoint block (``_needs_internal_checkpoint``)."""
        if not spec.checkpoint or tab.checkpointed or upto < r.num_tokens:
            return 0
        B = self.block
        idx = -(-upto // B) - 2
        if idx < 0 or start >= (idx + 1) * B or idx in held:
            return 0
        return 1

    def _allocate(self, r, st: _HState, start: int, upto: int) -> None:
        B = self.block
        new = 0
        tail = 0
        ifrag = 0
        final = r.final
        for g, spec in enumerate(self.groups):
            tab = st.tables[g]
            if spec.kind == MAMBA_GROUP:
                if tab.held is None:
                    tab.held = []
                held = tab.held
                if not spec.align:
                    if not held:
                        held.append(0)
                        new += 1
                    continue
                ck = self._checkpoint(spec, tab, start, upto, r, held)
                s = -(-upto // B) - 1
                if s not in held:
                    held.append(s)
                    new += 1
                if ck:
                    held.append(s - 1)
                    tab.checkpointed = True
                    new += 1
                continue
            want = -(-upto // B)
            if want > tab.n:
                new += want - tab.n
                tab.n = want
            over = tab.n * B - upto
            tail += over
            if tab.n * B > final:
                ifrag += tab.n * B - final
        if new:
            self._pop(new)
            self.held_total += new
            r.held += new
        self.tail_slots += tail - st.tail
        self.ifrag_slots += ifrag - st.ifrag
        st.tail, st.ifrag = tail, ifrag
        st.upto = upto
        self._events(st)
        marks = st.marks
        marks.append(start)
        if len(marks) > self.lag:
            del marks[0]
        used = self.n - self.free_count
        if used > self.peak_blocks:
            self.peak_blocks = used

    def _events(self, st: _HState) -> None:
        """The request's next events: ``cap`` (tokens its blocks hold) and ``next_free``
        (processed tokens at which a group frees a block)."""
        B = self.block
        cap = nxt = 1 << 62
        for g, spec in enumerate(self.groups):
            tab = st.tables[g]
            kind = spec.kind
            if kind == MAMBA_GROUP:
                if spec.align and tab.held:
                    nxt = min(nxt, (min(tab.held) + 1) * B + 1)
                continue
            cap = min(cap, tab.n * B)
            if kind == SLIDING_GROUP:
                nxt = min(nxt, (tab.lo + 1) * B + spec.window - 1)
            elif kind == CHUNKED_GROUP:
                C = spec.window
                nxt = min(nxt, -(-(tab.lo + 1) * B // C) * C)
        st.cap, st.next_free = cap, nxt

    def _remove_skipped(self, r, st: _HState, processed: int) -> None:
        """Free what the groups no longer need once ``processed`` tokens are processed."""
        B = self.block
        freed = clean = 0
        cached: list = []
        c = r.computed
        for g, spec in enumerate(self.groups):
            if spec.kind == FULL_GROUP:
                continue
            tab = st.tables[g]
            skip = spec.skipped_blocks(processed, B)
            if spec.kind == MAMBA_GROUP:
                if not spec.align or tab.held is None:
                    continue
                keep = [m for m in tab.held if m >= skip]
                if len(keep) != len(tab.held):
                    for m in sorted(tab.held, reverse=True):
                        if m < skip:
                            clean += self._release(r, g, tab, m, True, c, cached)
                            freed += 1
                    tab.held = keep
                continue
            skip = min(skip, tab.n)
            if skip > tab.lo:
                for m in range(skip - 1, tab.lo - 1, -1):
                    clean += self._release(r, g, tab, m, True, c, cached)
                freed += skip - tab.lo
                tab.lo = skip
        if freed:
            self._queue(clean, cached)
            self.held_total -= freed
            r.held -= freed
            self._events(st)

    def on_computed(self, r) -> None:
        """Cache the full prompt blocks ``r`` holds that a trace hash identifies, per group."""
        if not self.prefix or r.hash_ids is None or r.bkeys is None:
            return
        t = self._tkeys(r)
        full = min(r.computed // self.block, len(t))
        cache = self.cache
        for g, spec in enumerate(self.groups):
            tab = r.bkeys.tables[g]
            if tab.cached_upto >= full:
                continue
            if spec.kind == MAMBA_GROUP:
                held = tab.held or ()
                ms = [m for m in held if tab.cached_upto <= m < full]
            else:
                ms = range(max(tab.cached_upto, tab.lo), min(full, tab.n))
            for m in ms:
                if m in tab.shared:
                    continue
                key = (g, t[m])
                if key not in cache:
                    cache[key] = 1
                    tab.shared[m] = key
            tab.cached_upto = full

    def free(self, r, preempted: bool) -> None:
        st = r.bkeys
        if st is None:
            return
        c = r.computed
        own = preempted and self.prefix
        clean = 0
        cached: list = []
        for g, spec in enumerate(self.groups):
            tab = st.tables[g]
            if spec.kind == MAMBA_GROUP:
                ms = sorted(tab.held or (), reverse=True)
            else:
                ms = range(tab.n - 1, tab.lo - 1, -1)     # tail blocks first
            for m in ms:
                clean += self._release(r, g, tab, m, own, c, cached)
        self._queue(clean, cached)
        self.held_total -= r.held
        self.tail_slots -= st.tail
        self.ifrag_slots -= st.ifrag
        r.held = 0
        r.bkeys = None

    # ---- memory ------------------------------------------------------------------------
    def used_slots(self, running) -> int:
        return (self.n - self.free_count) * self.block

    def idle_split(self) -> tuple[float, float]:
        nB = self.n * self.block
        return self.budget_slots - nB, nB

    def snapshot(self, running, head, computed: int | None = None) -> tuple[float, ...]:
        """The categories now, in token slots of one block of one group: token states (every
        held slot that holds a token or a state), reservation (the attention groups' last
        blocks' slots still to be filled), internal fragmentation (of those, the ones the
        request never reaches), external fragmentation (the budget beyond the pool), free."""
        B = self.block
        nB = self.n * B
        used = (self.n - self.free_count) * B
        tails, ifrag = self.tail_slots, self.ifrag_slots
        return (used - tails, tails - ifrag, ifrag, self.budget_slots - nB, nB - used)

    def check(self, running) -> None:
        """Conservation over the groups: private blocks + distinct shared blocks + free
        blocks = the pool; reference counts; the aggregates."""
        shared: dict = {}
        private = held = tail = ifrag = 0
        for r in running:
            st = r.bkeys
            if st is None:
                continue
            n_r = 0
            for g, spec in enumerate(self.groups):
                tab = st.tables[g]
                ms = list(tab.held or ()) if spec.kind == MAMBA_GROUP else \
                    list(range(tab.lo, tab.n))
                n_r += len(ms)
                for m in ms:
                    k = tab.shared.get(m)
                    if k is None:
                        private += 1
                    else:
                        shared[k] = shared.get(k, 0) + 1
                assert set(tab.shared) <= set(ms), "shared blocks are held"
            assert n_r == r.held, "held blocks of a request"
            held += n_r
            tail += st.tail
            ifrag += st.ifrag
        assert sum(self.queue.values()) == self.free_count, "free queue count"
        assert private + len(shared) + self.free_count == self.n, "blocks not conserved"
        for k, refs in shared.items():
            assert self.cache[k] == refs, "reference count"
        assert 0 <= self.free_count <= self.n
        assert self.held_total == held, "held blocks"
        assert self.tail_slots == tail and self.ifrag_slots == ifrag, "tails"

