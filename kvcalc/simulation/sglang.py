"""SGLang's scheduler and token pool over time (``kvcalc simulate --engine sglang``).

Read from SGLang 0.5.23 (the release ``kvcalc plan --engine sglang`` models; sgl-project/sglang
at tag v0.5.23), facts only:

- ``python/sglang/srt/managers/scheduler.py`` (``get_next_batch_to_run``,
  ``get_new_batch_prefill``, ``update_running_batch``): each step first tries a **prefill
  batch** (the prompt being chunked, then waiting requests first come first served: the
  default ``--schedule-policy fcfs``); only when it builds none does the running batch
  **decode** one token each (``--enable-mixed-chunk`` off, its default). A prefill attempt that
  runs out of tokens (``NO_TOKEN``) marks the batch full, and no admission is tried again until
  a request leaves the running batch;
- ``python/sglang/srt/managers/schedule_policy.py`` (``PrefillAdder``) and
  ``python/sglang/srt/mem_cache/prefill_budget.py``: a request is admitted when its new tokens
  + ``min(max_new_tokens, 4096)`` + one page is less than the pool's available and evictable
  tokens less the offset reserved for the running requests -- ``min(max_new_tokens - output,
  4096) x new_token_ratio`` each -- and for the requests admitted before it in this step
  (their page-rounded new tokens + one page + their ``max_new_tokens``); ``max_prefill_tokens``
  (16,384) caps a batch's new tokens without chunking, ``chunked_prefill_size`` (the plan's)
  cuts a prompt into chunks of whole pages, one request at a time; at most
  ``max_running_requests`` requests;
- ``scheduler_components/new_token_ratio_tracker.py`` and ``environ.py``: the ratio starts at
  ``SGLANG_INIT_NEW_TOKEN_RATIO`` 0.7 (x ``--schedule-conservativeness`` 1.0), decays by
  ``(0.7 - 0.7 x 0.14) / 600`` per decode step that needs no retraction down to ``0.7 x
  SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR 0.14 = 0.098``, is reset when the server idles, and after a
  retraction becomes ``min(1, (decoded tokens + SGLANG_RETRACT_DECODE_STEPS 20 x requests) /
  (max_new_tokens + 1))`` of the requests still running;
- ``schedule_batch.py`` (``check_decode_mem``, ``retract_decode``, ``release_req``): a decode
  step needs a new page for each request whose cached tokens fill its pages; when the available
  and evictable tokens cannot give them, requests are **retracted** -- the one with the fewest
  output tokens first, the longest prompt among equals (``--retraction-policy length``) -- at
  least one, until the rest fit; a retracted request frees what the radix tree does not hold,
  goes to the back of the waiting queue and is prefilled again (its prompt and its output so
  far); after each one the tree evicts until ``remaining x 20`` tokens are available;
- ``mem_cache/radix_cache.py``: the prefix cache is a radix tree over the pool's tokens (page
  size 1 by default on Hopper, ``--page-size``); a match is page-aligned and at most ``tokens -
  1``; computed prefill chunks are inserted, a finished request's tokens are inserted and
  unlocked, unlocked nodes are evicted least recently used first, leaves first.

Hybrid pools (``kvcalc plan --engine sglang`` sizes them; the facts below are read from
``mem_cache/prefill_budget.py`` as stored at sgl-project/sglang commit 036da26 and
``managers/schedule_batch.py``, snapshots of main not diffed against the v0.5.23 tag):

- **SWA** (``SWATokenToKVPoolAllocator``, gpt-oss and Llama 4): every token takes a slot in
  the full pool (``max_total_num_tokens``) and in the SWA pool
  (``swa_max_total_num_tokens``); a step allocates all its new tokens in both, then each
  request keeps only its last ``sliding_window`` + one page of tokens in the SWA pool.
  Admission (``SWAPrefillBudget``) adds to the full-pool check an SWA check:
  ``estimate_swa_kv_tokens`` = ``max(allocated - window, 0) + min(extend + max_new_tokens,
  window) + page`` (allocated: the chunk at most) must be less than the SWA pool's free
  tokens less what this step admitted before; a prompt chunk is cut to the SWA pool's free
  tokens less one page. Freed from the SWA pool: a request's tokens before ``computed -
  window - page_size`` (``schedule_batch.py`` ``_evict_swa``). A decode step needs a page
  per request in each pool; when either cannot give them, requests are retracted as above;
- **Mamba** (``HybridReqToTokenPool`` / ``MambaPool``): a request admitted takes
  :data:`MAMBA_SLOTS_PER_REQUEST` state slots of ``max_mamba_cache_size`` and holds them until
  it finishes or is retracted; no free slots, no admission;
- the hybrid pools run without prefix hits (``SWARadixCache`` keeps a prefix only while its
  window's SWA tokens are cached; ``MambaRadixCache`` only at cached states: neither is
  modelled, so a hybrid run counts no hit and, on retraction, recomputes everything).

What a trace can say about shared prefixes is Mooncake's hash ids (one per 512 prompt tokens):
a tree node here is one hash block (its page-aligned tokens), so a hit is the run of leading
hash blocks cached -- what a token-granular tree finds for prompts that agree block by block.
A request's tokens beyond its hash ids (all of an Azure request's) are inserted under its own
node, which only that request can match again (after a retraction); a finished request's own
node is freed rather than kept, since no later request can name it (an evictable node counts
as free memory either way).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..errors import UsageError
from ..layout import KEEP_ALL, KEEP_WINDOW
from .metrics import StepLoop
from .scheduler import ClosedLoop, Req, Totals

#: ``SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION`` (environ.py): max_new_tokens counted at most this
CLIP_MAX_NEW_TOKENS = 4096
#: ``SGLANG_INIT_NEW_TOKEN_RATIO``, ``SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR``,
#: ``SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS``, ``SGLANG_RETRACT_DECODE_STEPS`` (environ.py)
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600
RETRACT_DECODE_STEPS = 20
#: ``--max-prefill-tokens`` default (arg_groups/fields/schedule.py)
MAX_PREFILL_TOKENS = 16384
#: Mamba state slots one running request holds: the figure ``kvcalc plan --engine sglang``
#: divides ``max_mamba_cache_size`` by for ``max_running_requests`` (kvcalc.engines.sglang's
#: constant of the same name, from ``_calculate_mamba_ratio``: 3 + 2 tracking slots of the
#: radix cache's extra buffer; simulation does not import an engine module, a test checks they
#: agree)
MAMBA_SLOTS_PER_REQUEST = 5


@dataclass(frozen=True)
class SglangConfig:
    """The scheduler settings of one run (SGLang's names)."""

    max_total_num_tokens: int
    page_size: int
    max_running_requests: int
    chunked_prefill_size: int | None
    max_prefill_tokens: int = MAX_PREFILL_TOKENS
    schedule_conservativeness: float = 1.0
    #: requests sent with ignore_eos (sglang.bench_serving's default): the running requests'
    #: remaining output is reserved whole (ratio 1) instead of x new_token_ratio
    ignore_eos: bool = False
    prefix_caching: bool = True
    #: hybrid SWA (gpt-oss, Llama 4): the SWA pool's tokens and the window its layers keep
    swa_max_total_num_tokens: int | None = None
    sliding_window: int | None = None
    #: Mamba / GDN hybrids: state slots in the pool and slots one running request holds
    max_mamba_cache_size: int | None = None
    mamba_slots_per_request: int = 0
    #: bytes of a full-pool token, an SWA-pool token, a Mamba slot, a budget slot (hybrids)
    full_bytes_per_token: int = 0
    swa_bytes_per_token: int = 0
    mamba_slot_bytes: int = 0
    cell_size: int = 0

    @property
    def init_ratio(self) -> float:
        return min(INIT_NEW_TOKEN_RATIO * self.schedule_conservativeness, 1.0)

    @property
    def min_ratio(self) -> float:
        return min(self.init_ratio * MIN_NEW_TOKEN_RATIO_FACTOR, 1.0)

    @property
    def ratio_decay(self) -> float:
        return (self.init_ratio - self.min_ratio) / NEW_TOKEN_RATIO_DECAY_STEPS


def swa_tokens(extend: int, max_new: int, window: int, page: int,
               chunk: int | None = None) -> int:
    """``estimate_swa_kv_tokens`` (``mem_cache/prefill_budget.py``): the SWA tokens a request
    admitted with ``extend`` new tokens and ``max_new`` to generate is charged -- what its
    allocation (a chunk at most) leaves beyond one window, the window (or less), one page."""
    alloc = extend if chunk is None else min(extend, chunk)
    return max(alloc - window, 0) + min(extend + max_new, window) + page


class _Node:
    __slots__ = ("pages", "ref")

    def __init__(self, pages: int):
        self.pages = pages
        self.ref = 0


class SglangPool:
    """The token pool (pages of ``page_size`` tokens) and its radix tree, in pages. Every page
    is free, in an unlocked (evictable) node, in a locked node, or private to a request:
    ``free + evictable + locked + private == total``."""

    def __init__(self, total_pages: int, page_size: int, hash_block: int):
        self.total = total_pages
        self.p = page_size
        self.H = hash_block
        self.free = total_pages
        self.evictable = 0
        self.locked = 0
        self.private = 0
        self.nodes: dict = {}
        #: unlocked nodes, least recently used first
        self.lru: OrderedDict = OrderedDict()
        self.evicted_pages = 0

    # ---- tree ---------------------------------------------------------------------------
    def segments(self, r) -> list[tuple[object, int]]:
        """(node key, end token) of ``r``'s hash blocks, page-aligned ends (cached on r)."""
        if r.tkeys is None:
            out, last, p, H = [], 0, self.p, self.H
            for j, h in enumerate(r.hash_ids or ()):
                end = min((j + 1) * H, r.prompt) // p * p
                if end <= last:
                    break
                out.append((h, end))
                last = end
            r.tkeys = out
        return r.tkeys

    def match(self, r) -> tuple[list, int]:
        """The nodes ``r`` finds cached (leading hash blocks, then its own node) and the tokens
        they cover: page-aligned, at most ``tokens - 1``."""
        limit = (r.num_tokens - 1) // self.p * self.p
        path, hit = [], 0
        nodes = self.nodes
        segs = self.segments(r)
        for key, end in segs:
            if end > limit or key not in nodes:
                return path, hit
            path.append(key)
            hit = end
        own = ("own", r.rid)
        node = nodes.get(own)
        if node is not None and hit + node.pages * self.p <= limit and len(path) == len(segs):
            path.append(own)
            hit += node.pages * self.p
        return path, hit

    def unlocked_pages(self, path) -> int:
        return sum(self.nodes[k].pages for k in path if self.nodes[k].ref == 0)

    def lock(self, path) -> None:
        for k in path:
            n = self.nodes[k]
            if n.ref == 0:
                del self.lru[k]
                self.evictable -= n.pages
                self.locked += n.pages
            n.ref += 1

    def unlock(self, path) -> None:
        # leaves first: the deepest node becomes the least recently used of the path
        for k in reversed(path):
            n = self.nodes[k]
            n.ref -= 1
            if n.ref == 0:
                self.locked -= n.pages
                self.evictable += n.pages
                self.lru[k] = None
                self.lru.move_to_end(k)

    def evict(self, pages: int) -> None:
        """Free at least ``pages`` pages from unlocked nodes, least recently used first."""
        lru, nodes = self.lru, self.nodes
        while pages > 0 and lru:
            k, _ = lru.popitem(last=False)
            n = nodes.pop(k)
            self.evictable -= n.pages
            self.free += n.pages
            self.evicted_pages += n.pages
            pages -= n.pages

    def take(self, pages: int) -> None:
        """Allocate ``pages`` private pages, evicting as needed."""
        if pages > self.free:
            self.evict(pages - self.free)
        assert pages <= self.free, "SGLang pool exhausted (admission should prevent it)"
        self.free -= pages
        self.private += pages

    def give(self, pages: int) -> None:
        self.private -= pages
        self.free += pages


class SReq(Req):
    """A request in SGLang's pool: the tree nodes it locks and its private pages."""

    __slots__ = ("path", "shared", "priv", "swa", "swa_lo", "mslots")

    def __init__(self, rid, a, output):
        super().__init__(rid, a, output)
        self.path: list = []
        self.shared = 0      # tokens its locked nodes cover
        self.priv = 0        # private pages
        self.swa = 0         # SWA pool pages held (hybrid SWA)
        self.swa_lo = 0      # pages at its start already freed from the SWA pool
        self.mslots = 0      # Mamba state slots held


class SglangLoop(StepLoop):
    """SGLang's scheduler (see the module docstring) on :class:`SglangPool`."""

    request_type = SReq
    closed_loop_type = ClosedLoop

    def __init__(self, arrivals, cfg, timing, tot: Totals, sg: SglangConfig,
                 budget_slots: float, hash_block: int):
        super().__init__(arrivals, cfg, timing, tot, budget_slots)
        self.sg = sg
        self.pool = SglangPool(sg.max_total_num_tokens // sg.page_size, sg.page_size, hash_block)
        self.ratio = sg.init_ratio
        self.batch_full = False
        self.chunked: SReq | None = None
        self.kv_sum = 0          # computed tokens of the requests holding pages
        self.shared_sum = 0      # tokens their locked nodes cover (per request)
        self.aborted = 0
        # hybrid pools (None / 0 on a full-attention model: the loop is then unchanged)
        self.W = sg.sliding_window if sg.swa_max_total_num_tokens is not None else None
        self.swa_total = (sg.swa_max_total_num_tokens // sg.page_size
                          if self.W is not None else 0)
        self.swa_free = self.swa_total
        self.mamba_total = sg.max_mamba_cache_size or 0
        self.mamba_free = self.mamba_total
        self.mk = sg.mamba_slots_per_request if sg.max_mamba_cache_size is not None else 0
        self.hybrid = self.W is not None or self.mk > 0
        #: bytes of a full-pool token, an SWA-pool token and a Mamba slot, over the bytes of
        #: one budget slot (set by :func:`run` from the plan; 1, 0, 0 on a dense model)
        self.fb, self.sb, self.mb = 1.0, 0.0, 0.0
        if self.hybrid:
            self.fb = sg.full_bytes_per_token / sg.cell_size
            self.sb = sg.swa_bytes_per_token / sg.cell_size
            self.mb = sg.mamba_slot_bytes / sg.cell_size
        #: the most each pool held at once (pages, SWA pages, Mamba slots)
        self.peak_full = self.peak_swa = self.peak_mamba = 0

    # ---- requests --------------------------------------------------------------------
    def rejects(self, r) -> bool:
        """A request SGLang could never admit, even into an empty pool: its prompt +
        ``min(max_new_tokens, 4096)`` + one page reaches the pool's tokens (hybrid SWA: or its
        SWA estimate, :func:`swa_tokens`, reaches the SWA pool's, ``swa_never_fits``)."""
        p = self.sg.page_size
        if (r.prompt + min(r.output, CLIP_MAX_NEW_TOKENS) + p >= self.sg.max_total_num_tokens
                or -(-r.final // p) > self.pool.total):
            return True
        if self.W is not None:
            chunk = self.sg.chunked_prefill_size
            need = swa_tokens(r.prompt, min(r.output, CLIP_MAX_NEW_TOKENS), self.W, p, chunk)
            # and a prompt chunk beside a full window must fit an otherwise empty SWA pool
            peak = self.W + min(r.prompt, chunk or r.prompt) + 2 * p
            return need >= self.swa_total * p or peak > self.swa_total * p
        return False

    def busy(self) -> bool:
        return self.chunked is not None

    def on_idle(self) -> None:
        self.ratio = self.sg.init_ratio

    def _grow(self, r: SReq, upto: int) -> None:
        need = -(-upto // self.pool.p) - r.shared // self.pool.p - r.priv
        if need > 0:
            self.pool.take(need)
            r.priv += need
        if self.W is not None:           # the SWA pool holds the same new tokens
            need = -(-upto // self.pool.p) - r.swa_lo - r.swa
            if need > 0:
                assert need <= self.swa_free, "SGLang SWA pool exhausted"
                self.swa_free -= need
                r.swa += need
                if self.swa_total - self.swa_free > self.peak_swa:   # in flight counts
                    self.peak_swa = self.swa_total - self.swa_free

    def _slide(self, r: SReq) -> None:
        """Free from the SWA pool ``r``'s pages before ``computed - window - page_size``
        (``ScheduleBatch._evict_swa`` with ``free_swa``, before the next step runs)."""
        lo = max(0, (r.computed - self.W - self.pool.p) // self.pool.p)
        if lo > r.swa_lo:
            d = lo - r.swa_lo
            r.swa -= d
            self.swa_free += d
            r.swa_lo = lo

    def _insert(self, r: SReq) -> None:
        """Cache ``r``'s computed page-aligned prompt blocks (hash blocks, then its own node)."""
        if not self.sg.prefix_caching:
            return
        pool, p = self.pool, self.pool.p
        segs = pool.segments(r)
        nodes = pool.nodes
        n_hash = sum(1 for k in r.path if type(k) is not tuple)
        c = r.computed
        while n_hash < len(segs) and segs[n_hash][1] <= c:
            key, end = segs[n_hash]
            pages = (end - r.shared) // p
            if key in nodes:             # a twin computed it too: keep the tree's copy
                pool.give(pages)
            else:
                nodes[key] = _Node(pages)
                pool.private -= pages
                pool.evictable += pages  # lock() moves them to locked
                pool.lru[key] = None
            r.priv -= pages
            pool.lock([key])
            r.path.append(key)
            r.shared = end
            self.shared_sum += pages * p
            n_hash += 1
        if n_hash < len(segs):
            return
        aligned = c // p * p
        if aligned <= r.shared:
            return
        own = ("own", r.rid)
        grow = (aligned - r.shared) // p
        if r.path and r.path[-1] == own:
            node = nodes[own]
            node.pages += grow
            pool.locked += grow
        else:
            old = nodes.pop(own, None)
            if old is not None:          # an old copy nobody matched: dropped
                del pool.lru[own]
                pool.evictable -= old.pages
                pool.free += old.pages
            node = nodes[own] = _Node(grow)
            node.ref = 1
            pool.locked += grow
            r.path.append(own)
        pool.private -= grow
        r.priv -= grow
        r.shared = aligned
        self.shared_sum += grow * p

    def _release(self, r: SReq, finished: bool) -> None:
        """Free ``r``'s pages: private ones back to the pool, its nodes unlocked (a finished
        request's own node freed)."""
        pool = self.pool
        pool.give(r.priv)
        r.priv = 0
        if self.hybrid:
            self.swa_free += r.swa
            self.mamba_free += r.mslots
            r.swa = r.swa_lo = r.mslots = 0
        path = r.path
        if finished and path and type(path[-1]) is tuple:
            own = path.pop()
            node = pool.nodes.pop(own)
            pool.locked -= node.pages
            pool.free += node.pages
        pool.unlock(path)
        self.kv_sum -= r.computed
        self.shared_sum -= r.shared
        r.path, r.shared = [], 0

    # ---- one step ----------------------------------------------------------------------
    def step(self) -> None:
        if not self._prefill():
            if self.running:
                self._decode()
            elif self.waiting:     # nothing runs and the head cannot be admitted: refuse it
                self.waiting.pop(0)
                self.aborted += 1
                self._refuse()

    def _prefill(self) -> bool:
        sg, pool, p = self.sg, self.pool, self.pool.p
        if not self.running:
            self.batch_full = False
        if (self.batch_full or not self.waiting) and self.chunked is None:
            return False
        allocatable = sg.max_running_requests - len(self.running) - (
            1 if self.chunked is not None else 0)
        if allocatable <= 0 and self.chunked is None:
            self.batch_full = True
            return False
        ratio = 1.0 if sg.ignore_eos else self.ratio
        total_off = sum(min(r.output - r.generated, CLIP_MAX_NEW_TOKENS)
                        for r in self.running) * ratio
        cur_off = 0
        avail = (pool.free + pool.evictable) * p
        rem_input = sg.max_prefill_tokens
        rem_chunk = sg.chunked_prefill_size
        batch: list[tuple[SReq, int, list, int]] = []

        def ceil_p(n: int) -> int:
            return -(-n // p) * p

        def reserve(ext: int, max_new: int) -> None:
            nonlocal total_off, cur_off, rem_input, rem_chunk
            ext = ceil_p(ext)
            total_off += ext + p + max_new
            cur_off += ext + p
            rem_input -= ext
            if rem_chunk is not None:
                rem_chunk -= ext

        def state() -> str:
            if avail - total_off <= 0 or avail - cur_off <= 0:
                return "no_token"
            if rem_input <= 0 or (rem_chunk is not None and rem_chunk <= 0):
                return "other"
            return "continue"

        W = self.W
        swa_off = 0
        r = cont = self.chunked
        if r is not None:
            rem = min(rem_chunk, int(avail - total_off)) if rem_chunk is not None else None
            if rem is not None and rem <= 0:
                rem = rem_chunk
            if W is not None and rem is not None:
                # the chunk also fits the SWA pool's free tokens less one page
                rem = min(rem, (r.swa_lo + r.swa + self.swa_free - 1) * p - r.computed)
                if rem < p:
                    rem = 0
            left = r.num_tokens - r.computed
            truncated = rem is not None and left > rem
            new = ((r.computed + rem) // p * p - r.computed) if truncated else left
            if new > 0:
                batch.append((r, new, [], 0))
                reserve(new, 0 if truncated else min(r.output, CLIP_MAX_NEW_TOKENS))
                self.chunked = r if truncated else None
                if W is not None:
                    swa_off += swa_tokens(new, 0 if truncated else min(
                        r.output, CLIP_MAX_NEW_TOKENS), W, p, rem_chunk)
            elif W is not None and not self.running:   # cannot progress alone: out of memory
                self.chunked = None
                self._release(r, True)
                self.aborted += 1
                self._refuse()
                return True
        admitted = 0
        for r in self.waiting:
            if state() == "other":
                break
            if admitted >= allocatable:
                self.batch_full = True
                break
            path, hit = pool.match(r) if sg.prefix_caching else ([], 0)
            ext = r.num_tokens - hit
            max_new = min(max(r.output - r.generated, 0), CLIP_MAX_NEW_TOKENS)
            pinned = pool.unlocked_pages(path) * p
            if not ext + max_new + p < avail - pinned - total_off:
                self.batch_full = bool(batch) or bool(self.running)
                break
            if W is not None:                # SWAPrefillBudget.check_prefill: the SWA pool
                need_swa = swa_tokens(ceil_p(ext), max_new, W, p, rem_chunk)
                if not need_swa < self.swa_free * p - swa_off:
                    self.batch_full = bool(batch) or bool(self.running)
                    break
            if self.mk and self.mamba_free - admitted * self.mk < self.mk:
                self.batch_full = True       # no free Mamba slot (alloc_req_slots)
                break
            if rem_chunk is None and batch and ceil_p(ext) >= rem_input:
                break
            if rem_chunk is not None and ceil_p(ext) > rem_chunk:
                end = (hit + rem_chunk // p * p) // p * p
                ext = end - hit
                if ext <= 0 or self.chunked is not None:
                    break
                self.chunked = r
                max_new = 0
            pool.lock(path)
            avail -= pinned
            batch.append((r, ext, path, hit))
            admitted += 1
            reserve(ext, max_new)
            if W is not None:
                swa_off += need_swa
            s = state()
            if s != "continue":
                if s == "no_token":
                    self.batch_full = True
                break
        if not batch:
            return False
        # the prefill batch runs: admitted requests leave the queue, every chunk is computed
        tot = self.tot
        tokens = kv = 0
        extra = 0.0
        sampled, finished = [], []
        for r, ext, path, hit in batch:
            if r is not cont:                        # admitted this step
                self.waiting.remove(r)
                self.admitted(r)
                tot.queried_tokens += r.num_tokens
                r.path = list(path)
                r.shared = hit
                if self.mk:
                    self.mamba_free -= self.mk
                    r.mslots = self.mk
                self.shared_sum += hit
                r.computed = hit
                self.kv_sum += hit
                if hit:
                    tot.prefix_hit_tokens += hit
                    if r.preempted:
                        tot.resume_hit_tokens += hit
            c = r.computed
            self._grow(r, c + ext)
            tokens += ext
            kv += c + ext
            if ext > 1:
                extra += (ext - 1) * (c + ext / 2)
            self.kv_sum += ext
            done = self.computed(r, ext)
            self._insert(r)
            if done:
                sampled.append(r)
                if r.generated >= r.output:
                    self._release(r, True)
                    finished.append(r)
                else:
                    self.running.append(r)
        if W is not None:    # the batch's tokens were all allocated; now the window slides
            for r in self.holders():
                self._slide(r)
        if finished:
            self.batch_full = False
        self.end_step(tokens, kv, extra, len(batch), sampled, finished)
        return True

    def _need_pages(self, reqs) -> int:
        p = self.pool.p
        return sum(1 for r in reqs if r.computed % p == 0)

    def _short(self, reqs) -> bool:
        """``check_decode_mem``: the pages the next decode needs exceed the available and
        evictable ones (hybrid SWA: of either pool)."""
        need = self._need_pages(reqs)
        return need > self.pool.free + self.pool.evictable or (
            self.W is not None and need > self.swa_free)

    def _decode(self) -> None:
        sg, tot = self.sg, self.tot
        running = self.running
        before = len(running)
        if self._short(running):
            keep = sorted(running, key=lambda r: (r.generated, -r.prompt), reverse=True)
            retracted = []
            first = True
            while first or self._short(keep):
                if len(keep) == 1:
                    break
                first = False
                r = keep.pop()
                self._retract(r, len(keep))
                retracted.append(r)
            if len(keep) <= 1 and self._short(keep):
                r = keep.pop()                       # aborted: out of memory even alone
                self._release(r, True)
                self.aborted += 1
                tot.rejected += 1
                if self.closed is not None:
                    self.closed.release(self.t, 1)
            kept = {id(r) for r in keep}
            self.running = running = [r for r in running if id(r) in kept]
            self.waiting.extend(retracted)
            tot.preemptions += len(retracted)
            decoded = sum(r.generated for r in running)
            self.ratio = min(1.0, (decoded + RETRACT_DECODE_STEPS * len(running))
                             / (sum(r.output for r in running) + 1))
            self.on_retract(retracted)
        else:
            self.ratio = max(self.ratio - sg.ratio_decay, sg.min_ratio)
        if len(running) < before:
            self.batch_full = False
        if not running:
            return
        sampled, finished, still = [], [], []
        W = self.W
        for r in running:
            self._grow(r, r.computed + 1)
            self.kv_sum += 1
            self.computed(r, 1)
            sampled.append(r)
            if r.generated >= r.output:
                self._release(r, True)
                finished.append(r)
            else:
                still.append(r)
        if W is not None:
            for r in still:
                self._slide(r)
        n = len(running)
        kv = self.kv_sum + sum(r.computed for r in finished)
        self.running = still
        if finished:
            self.batch_full = False
        self.end_step(n, kv, 0.0, n, sampled, finished)

    def on_retract(self, retracted: list) -> None:
        """Called after a retraction, with the ratio set (tests watch it)."""

    def _retract(self, r: SReq, remaining: int) -> None:
        """``release_req``: what the tree holds stays cached, the rest is freed; then the tree
        evicts until ``remaining x 20`` tokens are available."""
        self._release(r, False)
        r.computed = 0
        r.preempted = True
        need = remaining * RETRACT_DECODE_STEPS
        pool = self.pool
        if pool.free * pool.p < need:
            pool.evict(-(-(need - pool.free * pool.p) // pool.p))

    # ---- memory ------------------------------------------------------------------------
    def holders(self) -> list:
        return self.running + ([self.chunked] if self.chunked is not None else [])

    def pools_slots(self) -> float:
        """The pools' bytes (full, SWA, Mamba slots) in budget slots."""
        p = self.pool.p
        return (self.pool.total * p * self.fb + self.swa_total * p * self.sb
                + self.mamba_total * self.mb)

    def idle_split(self) -> tuple[float, float]:
        pool = self.pool
        if self.hybrid:
            pools = self.pools_slots()
            return self.budget_slots - pools, pools
        return self.budget_slots - pool.total * pool.p, pool.total * pool.p

    def snapshot(self) -> tuple:
        if self.hybrid:
            return self._hybrid_snapshot()
        pool, p = self.pool, self.pool.p
        private_tokens = self.kv_sum - self.shared_sum
        tails = pool.private * p - private_tokens
        ifrag = 0
        if p > 1:
            for r in self.holders():
                covered = r.shared + r.priv * p
                if covered > r.final:
                    ifrag += covered - r.final
        return (pool.locked * p + private_tokens, tails - ifrag, ifrag,
                self.budget_slots - pool.total * p, (pool.free + pool.evictable) * p)

    def _hybrid_snapshot(self) -> tuple:
        """The categories with SWA / Mamba pools, each pool's tokens or slots weighed by its
        bytes (in budget slots): states = full tokens + SWA tokens in their windows + the
        running requests' Mamba slots; internal fragmentation = the last pages' unfilled
        tokens of both pools; free = free pages and slots; the rest of the budget is external
        (pools' rounding, SGLang's spare Mamba slot)."""
        pool, p = self.pool, self.pool.p
        fb, sb, mb = self.fb, self.sb, self.mb
        holders = self.holders()
        private_tokens = self.kv_sum - self.shared_sum
        tails = pool.private * p - private_tokens
        ifrag = 0
        if p > 1:
            for r in holders:
                covered = r.shared + r.priv * p
                if covered > r.final:
                    ifrag += covered - r.final
        swa_used = self.swa_total - self.swa_free
        swa_tok = sum(r.computed - r.swa_lo * p for r in holders) if self.W is not None else 0
        m_used = self.mamba_total - self.mamba_free
        full_used = pool.locked + pool.private
        if full_used > self.peak_full:
            self.peak_full = full_used
        if swa_used > self.peak_swa:
            self.peak_swa = swa_used
        if m_used > self.peak_mamba:
            self.peak_mamba = m_used
        states = (pool.locked * p + private_tokens) * fb + swa_tok * sb + m_used * mb
        reserve = (tails - ifrag) * fb
        frag = ifrag * fb + (swa_used * p - swa_tok) * sb
        free = (pool.free + pool.evictable) * p * fb + self.swa_free * p * sb \
            + self.mamba_free * mb
        return (states, reserve, frag, self.budget_slots - self.pools_slots(), free)

    def check(self) -> None:
        pool = self.pool
        holders = self.holders()
        if self.hybrid:
            assert 0 <= self.swa_free <= self.swa_total, "SWA pages"
            assert self.swa_free + sum(r.swa for r in holders) == self.swa_total, \
                "SWA pages not conserved"
            assert 0 <= self.mamba_free <= self.mamba_total, "Mamba slots"
            assert self.mamba_free + sum(r.mslots for r in holders) == self.mamba_total, \
                "Mamba slots not conserved"
            if self.W is not None:
                for r in holders:
                    assert r.swa_lo * self.pool.p <= max(0, r.computed - self.W) and \
                        r.swa == -(-r.computed // self.pool.p) - r.swa_lo, \
                        "SWA pages of a request"
            assert len(holders) <= self.sg.max_running_requests + 1, "running requests"
        assert pool.free + pool.evictable + pool.locked + pool.private == pool.total, \
            "pages not conserved"
        assert 0 <= pool.free <= pool.total, "free pages"
        assert pool.private == sum(r.priv for r in holders), "private pages"
        refs: dict = {}
        for r in holders:
            for k in r.path:
                refs[k] = refs.get(k, 0) + 1
            assert r.shared + r.priv * pool.p >= r.computed, "a request's tokens fit its pages"
        for k, n in pool.nodes.items():
            assert n.ref == refs.get(k, 0), "node references"
        assert pool.locked == sum(n.pages for n in pool.nodes.values() if n.ref), "locked"
        assert pool.evictable == sum(pool.nodes[k].pages for k in pool.lru), "evictable"
        assert self.kv_sum == sum(r.computed for r in holders), "computed tokens"
        assert self.shared_sum == sum(r.shared for r in holders), "shared tokens"


def run(arrivals, cfg, timing, sg: SglangConfig, budget_slots: float,
        hash_block: int) -> Totals:
    """Replay ``arrivals`` through SGLang's scheduler on its pool (:class:`SglangLoop`)."""
    tot = Totals()
    loop = SglangLoop(arrivals, cfg, timing, tot, sg, budget_slots, hash_block)
    loop.run()
    return tot


def hybrid_kind(plan) -> str | None:
    """``"swa"`` (gpt-oss, Llama 4), ``"mamba"`` (Mamba / GDN hybrids) or None."""
    cap = plan.engine_figures
    if cap.swa_max_total_num_tokens is not None:
        return "swa"
    if cap.max_mamba_cache_size is not None:
        return "mamba"
    return None


# --------------------------------------------------------------------------------------------
# kvcalc simulate --engine sglang: the plan's pool, one run, the JSON record

#: the allocator name of SGLang's runs
ALLOCATOR = "sglang-radix"


def check_plan(plan) -> None:
    """SGLang's pools as ``kvcalc plan --engine sglang`` computes them: the token pool, and
    the SWA pool (gpt-oss, Llama 4) or the Mamba state pool (Mamba / GDN hybrids)."""
    cap = plan.engine_figures
    if not cap.fits:
        raise UsageError(f"the plan does not fit: {cap.log_lines()[0]} (kvcalc plan --engine "
                         f"sglang shows why)")
    if plan.inputs.pp != 1:
        raise UsageError("kvcalc simulate models SGLang on one pipeline stage: use --pp 1")
    if cap.swa_max_total_num_tokens is not None and cap.max_mamba_cache_size is not None:
        raise UsageError(f"kvcalc simulate models SGLang's SWA pool or its Mamba pool; "
                         f"{plan.spec.model_type} needs both at once (not modelled)")
    if cap.max_running_requests < 1:
        raise UsageError(f"SGLang runs no request on this plan: max_running_requests 0 "
                         f"(max_mamba_cache_size {cap.max_mamba_cache_size} < "
                         f"{MAMBA_SLOTS_PER_REQUEST} slots per request)")


def settings(plan, options) -> SglangConfig:
    """The scheduler settings of a run on ``plan`` with ``options`` (kvcalc.simulation's)."""
    if options.cpu_offload_bytes:
        raise UsageError("--cpu-offload is a vLLM setting (SGLang's host tier, HiCache, is not "
                         "modelled)")
    cap = plan.engine_figures
    chunk = cap.chunked_prefill_size if cap.chunked_prefill_size > 0 else None
    kind = hybrid_kind(plan)
    if kind is None:
        return SglangConfig(cap.max_total_num_tokens, cap.page_size, cap.max_running_requests,
                            chunk, ignore_eos=options.ignore_eos,
                            prefix_caching=options.prefix_caching)
    layers = plan.layout.layers
    full_b = sum(c.bytes_per_token for c in layers if c.keep == KEEP_ALL)
    extra = {}
    if kind == "swa":
        extra = dict(swa_max_total_num_tokens=cap.swa_max_total_num_tokens,
                     sliding_window=min(c.window for c in layers if c.keep == KEEP_WINDOW),
                     swa_bytes_per_token=sum(c.bytes_per_token for c in layers
                                             if c.keep == KEEP_WINDOW))
    else:
        extra = dict(max_mamba_cache_size=cap.max_mamba_cache_size,
                     mamba_slots_per_request=MAMBA_SLOTS_PER_REQUEST,
                     mamba_slot_bytes=cap.mamba_bytes_per_request)
    # the hybrid pools run without prefix hits (SWARadixCache / MambaRadixCache: not modelled)
    return SglangConfig(cap.max_total_num_tokens, cap.page_size, cap.max_running_requests, chunk,
                        ignore_eos=options.ignore_eos, prefix_caching=False,
                        full_bytes_per_token=full_b, cell_size=cap.cell_size, **extra)


def capacity(plan, sg: SglangConfig) -> dict:
    """What the engine-neutral driver needs: the pool in token slots, the budget in token
    slots, KV bytes per token, the calibration, the loop's token and request limits."""
    cap = plan.engine_figures
    budget = cap.available_bytes
    if sg.max_mamba_cache_size is not None:   # the state pool: max_mamba_cache_size + 1 slots
        budget += (sg.max_mamba_cache_size + 1) * sg.mamba_slot_bytes
    return {"pool_slots": sg.max_total_num_tokens, "usable_blocks": sg.max_total_num_tokens
            // sg.page_size, "budget_slots": budget / cap.cell_size,
            "bytes_per_token": cap.cell_size, "calibration": "sglang",
            "batched_tokens": sg.chunked_prefill_size or sg.max_prefill_tokens,
            "seqs": sg.max_running_requests}


def record(plan, sg: SglangConfig) -> dict:
    """The SGLang fields of the JSON record."""
    cap = plan.engine_figures
    return {
        "kv_budget_bytes": cap.available_bytes,
        "bytes_per_token": cap.cell_size,
        "page_size": sg.page_size,
        "max_total_num_tokens": sg.max_total_num_tokens,
        "max_running_requests": sg.max_running_requests,
        "chunked_prefill_size": sg.chunked_prefill_size,
        "max_prefill_tokens": sg.max_prefill_tokens,
        "schedule_policy": "fcfs",
        "new_token_ratio": {"init": round(sg.init_ratio, 6), "min": round(sg.min_ratio, 6),
                            "decay_per_step": round(sg.ratio_decay, 9)},
        "ignore_eos": sg.ignore_eos,
    } | _hybrid_record(sg)


def _hybrid_record(sg: SglangConfig) -> dict:
    """The SWA / Mamba pool fields (none on a full-attention model)."""
    if sg.swa_max_total_num_tokens is not None:
        return {"swa_max_total_num_tokens": sg.swa_max_total_num_tokens,
                "sliding_window": sg.sliding_window, "prefix_caching": False}
    if sg.max_mamba_cache_size is not None:
        return {"max_mamba_cache_size": sg.max_mamba_cache_size,
                "mamba_slots_per_request": sg.mamba_slots_per_request,
                "mamba_bytes_per_slot": sg.mamba_slot_bytes, "prefix_caching": False}
    return {}
