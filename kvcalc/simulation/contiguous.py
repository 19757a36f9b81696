"""Contiguous KV reservation, as the PagedAttention paper's baselines (Kwon et al., SOSP 2023,
§2.3 and Fig. 2: Orca (Max), Orca (Pow2), Orca (Oracle)).

Each request reserves one contiguous range of token slots when it is admitted and keeps it until
it finishes, in a linear address space of ``KV budget // bytes per token`` slots:

- ``orca-max``: ``max_len`` slots (the most a request may reach);
- ``orca-pow2``: the next power of two of prompt + output (at most ``max_len``);
- ``orca-oracle``: exactly prompt + output.

A real first-fit allocator places the ranges (lowest address that fits), freed ranges merge
with free neighbours, so external fragmentation arises as it does in practice: a waiting request
whose range fits in the free slots in total but in no single hole is not admitted. Reserved
ranges never run out, so nothing is ever preempted. The scheduler is the same continuous-
batching loop as vLLM's (Orca's iteration-level scheduling): only the allocation differs.
"""

from __future__ import annotations

import bisect

POLICIES = ("orca-max", "orca-pow2", "orca-oracle")
#: llama.cpp's server slots (:class:`SlotsCache`)
SLOTS = "llamacpp-slots"


def reservation(policy: str, prompt: int, output: int, max_len: int) -> int:
    """Token slots one request reserves under ``policy``."""
    need = prompt + output
    if policy == "orca-max":
        return max_len
    if policy == "orca-pow2":
        return min(max_len, 1 << (need - 1).bit_length())
    return need


class ContiguousCache:
    def __init__(self, policy: str, pool_slots: int, budget_slots: float, max_len: int):
        self.name = policy
        self.policy = policy
        self.n = pool_slots
        self.budget_slots = budget_slots
        self.max_len = max_len
        #: free holes: sorted starts and their sizes
        self.starts: list[int] = [0] if pool_slots else []
        self.sizes: list[int] = [pool_slots] if pool_slots else []
        self.reserved = 0
        #: over the admitted requests: slots they will fill (min(reservation, final tokens))
        self.keep_total = 0

    def rejects(self, r) -> bool:
        r.reserve = reservation(self.policy, r.prompt, r.output, self.max_len)
        return r.reserve > self.n

    def lookup(self, r):
        return None

    def admit(self, r, hits, upto: int) -> bool:
        if r.addr >= 0:
            return True
        for i, size in enumerate(self.sizes):
            if size >= r.reserve:                       # first fit
                r.addr = self.starts[i]
                if size == r.reserve:
                    del self.starts[i], self.sizes[i]
                else:
                    self.starts[i] += r.reserve
                    self.sizes[i] -= r.reserve
                self.reserved += r.reserve
                self.keep_total += min(r.reserve, r.final)
                return True
        return False

    def grow(self, r, upto: int) -> bool:
        return True

    def on_computed(self, r) -> None:
        return None

    def free(self, r, preempted: bool) -> None:
        if r.addr < 0:
            return
        start, size = r.addr, r.reserve
        i = bisect.bisect_left(self.starts, start)
        # merge with the hole after, then the hole before
        if i < len(self.starts) and start + size == self.starts[i]:
            size += self.sizes[i]
            del self.starts[i], self.sizes[i]
        if i > 0 and self.starts[i - 1] + self.sizes[i - 1] == start:
            self.sizes[i - 1] += size
        else:
            self.starts.insert(i, start)
            self.sizes.insert(i, size)
        self.reserved -= r.reserve
        self.keep_total -= min(r.reserve, r.final)
        r.addr = -1

    def max_steps(self, running, k: int) -> int:
        return k

    # ---- memory ------------------------------------------------------------------------
    def used_slots(self, running) -> int:
        return self.reserved

    def _free_split(self, head) -> tuple[int, int]:
        """(stranded, usable) free slots: slots outside the largest hole are stranded; all of
        them when the waiting request at the head would fit in the total but in no hole."""
        total = self.n - self.reserved
        largest = max(self.sizes) if self.sizes else 0
        if head is not None and head.addr < 0 and largest < head.reserve <= total:
            return total, 0
        return total - largest, largest

    def idle_split(self) -> tuple[float, float]:
        return self.budget_slots - self.n, self.n

    def snapshot(self, running, head, computed: int | None = None) -> tuple[float, ...]:
        toks = sum(r.computed for r in running) if computed is None else computed
        res = self.keep_total - toks
        ifrag = self.reserved - self.keep_total
        stranded, usable = self._free_split(head)
        return (toks, res, ifrag, self.budget_slots - self.n + stranded, usable)

    def decode_integrals(self, running, k: int, c0: float, c1: float, d_total: float,
                         dj: float, head) -> tuple[float, ...]:
        toks = res = ifrag = 0.0
        for r in running:
            keep = min(r.reserve, r.final)
            tok = (r.computed + 1) * d_total + dj
            toks += tok
            res += keep * d_total - tok
            ifrag += (r.reserve - keep) * d_total
        stranded, usable = self._free_split(head)
        return (toks, res, ifrag, (self.budget_slots - self.n + stranded) * d_total,
                usable * d_total)

    def bulk_integrals(self, n: int, computed: int, k: int, c0: float, c1: float,
                       d_total: float, dj: float, head, lazy=None,
                       events=None) -> tuple[float, ...]:
        """:meth:`decode_integrals` from the aggregates: ``computed`` tokens held by ``n``
        requests at the start of the run."""
        toks = (computed + n) * d_total + n * dj
        res = self.keep_total * d_total - toks
        ifrag = (self.reserved - self.keep_total) * d_total
        stranded, usable = self._free_split(head)
        return (toks, res, ifrag, (self.budget_slots - self.n + stranded) * d_total,
                usable * d_total)

    def check(self, running) -> None:
        assert sum(self.sizes) + self.reserved == self.n, "slots not conserved"
        assert sum(r.reserve for r in running if r.addr >= 0) == self.reserved
        assert sum(min(r.reserve, r.final) for r in running) == self.keep_total
        for a, b, s in zip(self.starts, self.starts[1:], self.sizes):
            assert a + s < b, "holes overlap or touch"


class SlotsCache(ContiguousCache):
    """llama.cpp's server slots (``llama-server --parallel P``, unified KV cache off): P
    streams of ``n_ctx_seq`` cells each, allocated at start-up (:mod:`kvcalc.engines.llamacpp`).

    A request takes a whole idle slot when it starts and gives it back when it finishes: it
    reserves ``n_ctx_seq`` cells, fills ``prompt + output - 1`` of them (token states and
    reservation) and never the rest (internal fragmentation). Slots are interchangeable, so an
    idle slot is free memory whichever slot it is: there is no external fragmentation inside
    the allocation; the KV budget llama.cpp does not allocate is external fragmentation (it
    never grows its cache). A prompt that fills the slot's context is rejected and generation
    stops when the context is full (the scheduler's ``max_len`` is ``n_ctx_seq``).
    """

    def __init__(self, slots: int, slot_cells: int, budget_slots: float):
        super().__init__("orca-max", slots * slot_cells, budget_slots, slot_cells)
        self.name = SLOTS
        self.slots = slots
        self.slot_cells = slot_cells

    def _free_split(self, head) -> tuple[int, int]:
        # the holes are whole slots (first fit of equal ranges in P x n_ctx_seq cells): any
        # idle slot serves the next request
        return 0, self.n - self.reserved


class HybridContiguousCache(ContiguousCache):
    """The paper's contiguous baselines on a hybrid model: a request reserves one range for
    all its KV cache groups, each group sized as a contiguous system would size it -- a full
    attention group the policy's reservation R, a sliding-window group a ring buffer of
    min(R, W) slots, a chunked-local group min(R, C) (one chunk), a Mamba / GDN group one
    state page (``block_size`` slots: vLLM's page is one attention block). Slots are token
    positions of one group (the pool is the KV budget in those units, as for the paged pool).

    Token states are what the groups hold of the request: full attention every computed
    token, a window its last min(c, W), a chunk buffer min(c, C), a Mamba group its state
    page once the request has started. The scheduler asks every step in detail
    (``bulk_decode``), as a window's fill stops growing at W."""

    bulk_decode = False

    def __init__(self, policy: str, pool_slots: int, budget_slots: float, max_len: int,
                 groups, block_size: int):
        super().__init__(policy, pool_slots, budget_slots, max_len)
        self.groups = groups
        self.block = block_size
        #: token states of the admitted requests (kept up to date at every step)
        self.fill_total = 0

    def _sizes(self, tokens: int) -> int:
        """Slots of all the groups for a reservation of ``tokens`` tokens."""
        total = 0
        for g in self.groups:
            if g.kind == "mamba":
                total += self.block
            elif g.kind in ("sliding", "chunked"):
                total += min(tokens, g.window)
            else:
                total += tokens
        return total

    def _fill(self, tokens: int) -> int:
        """Slots the groups fill with ``tokens`` computed tokens."""
        if tokens <= 0:
            return 0
        return self._sizes(tokens)

    def rejects(self, r) -> bool:
        r.reserve = self._sizes(reservation(self.policy, r.prompt, r.output, self.max_len))
        return r.reserve > self.n

    def admit(self, r, hits, upto: int) -> bool:
        placed = r.addr >= 0
        if not super().admit(r, hits, upto):
            return False
        if not placed:
            # what the reservation will hold: each group's fill at the last step, capped
            self.keep_total += self._keep(r) - min(r.reserve, r.final)
        self._set_fill(r, upto)
        return True

    def _keep(self, r) -> int:
        return min(r.reserve, self._fill(r.final))

    def _set_fill(self, r, tokens: int) -> None:
        f = self._fill(tokens)
        was = r.bkeys[0] if r.bkeys else 0
        self.fill_total += f - was
        r.bkeys = [f]

    def grow(self, r, upto: int) -> bool:
        self._set_fill(r, upto)
        return True

    def free(self, r, preempted: bool) -> None:
        if r.addr < 0:
            return
        self.keep_total += min(r.reserve, r.final) - self._keep(r)
        super().free(r, preempted)
        self.fill_total -= r.bkeys[0] if r.bkeys else 0
        r.bkeys = None

    def snapshot(self, running, head, computed: int | None = None) -> tuple[float, ...]:
        toks = self.fill_total
        res = self.keep_total - toks
        ifrag = self.reserved - self.keep_total
        stranded, usable = self._free_split(head)
        return (toks, res, ifrag, self.budget_slots - self.n + stranded, usable)

    def check(self, running) -> None:
        assert sum(self.sizes) + self.reserved == self.n, "slots not conserved"
        assert sum(r.reserve for r in running if r.addr >= 0) == self.reserved
        assert sum(self._keep(r) for r in running) == self.keep_total
        assert sum(r.bkeys[0] for r in running if r.bkeys) == self.fill_total
        for a, b, s in zip(self.starts, self.starts[1:], self.sizes):
            assert a + s < b, "holes overlap or touch"
