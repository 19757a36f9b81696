"""llama.cpp's compute buffer, byte for byte: its worst-case graph and ggml-alloc's allocator.

llama.cpp sizes the compute buffer when it creates a context (``llama_context::sched_reserve``,
src/llama-context.cpp): it builds the model's graph for a worst-case micro-batch and hands it to
ggml's graph allocator (``ggml_backend_sched_reserve`` -> ``ggml_gallocr_reserve_n``,
ggml/src/ggml-alloc.c), which walks the graph in order, places every tensor the graph computes
in one buffer (best fit among the freed blocks, parents reused in place where the op allows),
frees each one after its last consumer, and makes the buffer as large as the highest offset
reached. The graph is reserved three times (prompt processing, ``n_tokens = min(n_ctx,
n_ubatch)``; token generation, one token per sequence; prompt processing again) and the buffer
only grows, so its size is the larger of the two graphs' peaks.

This module does the same in Python, at llama.cpp commit 0c1e57098 (vendored by
llama-cpp-python 0.3.36):

- a few ggml ops with ggml's shapes, strides, views and sources (``ggml/src/ggml.c``) and
  ``ggml_build_forward_expand``'s depth-first order (``ggml_visit_parents_graph``);
- the graphs of the llama (``src/models/llama.cpp``) and Gemma 3 (``src/models/gemma3.cpp``)
  architectures with llama-graph.cpp's helpers: ``build_inp_embd``, ``build_qkv``,
  ``build_attn`` (KV cache or ISWA cache, flash attention on or off, the Hadamard rotation of
  quantized K/V caches), ``build_attn_mha``, ``build_ffn``, ``build_inp_out_ids``;
- ``ggml_gallocr_alloc_graph_impl`` and ``ggml_dyn_tallocr`` (alignment per buffer type: 32 B
  for the CPU, ``TENSOR_ALIGNMENT``; 128 B for CUDA).

Checked against llama.cpp's own logs on the buffers grid (tests/test_llamacpp_verify.py): the
bytes equal ``ggml_backend_sched_get_buffer_size`` for every context of both test models.
Architectures other than these two have no graph here (:func:`graph_supported`); kvcalc then
falls back to a model of the graph's peaks (``llamacpp.compute_buffer_estimate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

from ..ggml import BY_NAME

# ---- ggml tensors and ops -------------------------------------------------------------------

F32, F16, I32, I64 = "f32", "f16", "i32", "i64"
INPUT, OUTPUT = 1, 2
#: ggml_op_can_inplace (ggml-alloc.c): ops whose result may take its parent's memory
INPLACE_OPS = frozenset({"FILL", "SCALE", "DIAG_MASK_ZERO", "DIAG_MASK_INF", "ADD", "ADD_ID",
                         "ADD1", "SUB", "MUL", "DIV", "SQR", "SQRT", "LOG", "UNARY", "ROPE",
                         "ROPE_BACK", "SILU_BACK", "RMS_NORM", "RMS_NORM_BACK", "CLAMP",
                         "SOFT_MAX", "SOFT_MAX_BACK"})


def _block(type_: str) -> tuple[int, int]:
    t = BY_NAME[type_]
    return t.block, t.block_bytes


@dataclass(eq=False)
class Tensor:
    """A ggml tensor as the allocator sees it."""

    type: str
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    op: str = "NONE"
    src: tuple["Tensor | None", ...] = ()
    view_src: "Tensor | None" = None
    #: memory not from the compute buffer (weights, the KV cache, views of them)
    external: bool = False
    flags: int = 0
    name: str = ""

    @property
    def nbytes(self) -> int:
        """``ggml_nbytes``."""
        block, size = _block(self.type)
        if block == 1:
            n = size
            for i in range(4):
                n += (self.ne[i] - 1) * self.nb[i]
            return n
        n = self.ne[0] * self.nb[0] // block
        for i in range(1, 4):
            n += (self.ne[i] - 1) * self.nb[i]
        return n

    @property
    def nelements(self) -> int:
        return self.ne[0] * self.ne[1] * self.ne[2] * self.ne[3]

    def is_contiguous(self) -> bool:
        """``ggml_is_contiguous`` (``ggml_is_contiguous_n(t, 0)``)."""
        block, size = _block(self.type)
        nxt = size
        if self.ne[0] != block and self.nb[0] != nxt:
            return False
        nxt *= self.ne[0] // block
        for i in range(1, 4):
            if self.ne[i] != 1:
                if self.nb[i] != nxt:
                    return False
                nxt *= self.ne[i]
        return True


def _strides(type_: str, ne) -> tuple[int, int, int, int]:
    block, size = _block(type_)
    nb0 = size
    nb1 = nb0 * (ne[0] // block)
    return (nb0, nb1, nb1 * ne[1], nb1 * ne[1] * ne[2])


def _ne4(ne) -> tuple[int, int, int, int]:
    ne = tuple(int(x) for x in ne)
    return ne + (1,) * (4 - len(ne))  # type: ignore[return-value]


def new(type_: str, *ne: int, name: str = "", flags: int = 0, external: bool = False
        ) -> Tensor:
    n4 = _ne4(ne)
    return Tensor(type_, n4, _strides(type_, n4), name=name, flags=flags, external=external)


def _result(op: str, type_: str, ne, *src: Tensor | None, name: str = "") -> Tensor:
    n4 = _ne4(ne)
    return Tensor(type_, n4, _strides(type_, n4), op, tuple(src), name=name)


def _view(a: Tensor, op: str, ne, nb, name: str = "") -> Tensor:
    """``ggml_new_tensor_impl`` with ``view_src = a`` (the root of a view of a view)."""
    root = a.view_src if a.view_src is not None else a
    return Tensor(a.type, _ne4(ne), tuple(nb), op, (a,), root, a.external,  # type: ignore[arg-type]
                  name=name or a.name)


def dup(op: str, a: Tensor, *src: Tensor | None, name: str = "") -> Tensor:
    """``ggml_dup_tensor(a)`` as the result of ``op``: a's shape, contiguous."""
    return _result(op, a.type, a.ne, a, *src, name=name)


def mul_mat(a: Tensor, b: Tensor, name: str = "") -> Tensor:
    return _result("MUL_MAT", F32, (a.ne[1], b.ne[1], b.ne[2], b.ne[3]), a, b, name=name)


def get_rows(a: Tensor, b: Tensor, name: str = "") -> Tensor:
    t = I32 if a.type == I32 else F32
    return _result("GET_ROWS", t, (a.ne[0], b.ne[0], b.ne[1], b.ne[2]), a, b, name=name)


def reshape(a: Tensor, *ne: int) -> Tensor:
    n4 = _ne4(ne)
    return _view(a, "RESHAPE", n4, _strides(a.type, n4))


def view(a: Tensor, ne, nb_rest, offset: int = 0) -> Tensor:
    """``ggml_view_Nd``: ne (up to 4), nb1.. (nb0 = the type's size)."""
    n4 = _ne4(ne)
    nb = [_block(a.type)[1]] + list(nb_rest)
    while len(nb) < 4:
        nb.append(nb[-1] * n4[len(nb) - 1])
    return _view(a, "VIEW", n4, nb)


def permute(a: Tensor, *axes: int) -> Tensor:
    ne, nb = [0] * 4, [0] * 4
    for i, ax in enumerate(axes):
        ne[ax], nb[ax] = a.ne[i], a.nb[i]
    return _view(a, "PERMUTE", ne, nb)


def transpose(a: Tensor) -> Tensor:
    return _view(a, "TRANSPOSE", (a.ne[1], a.ne[0], a.ne[2], a.ne[3]),
                 (a.nb[1], a.nb[0], a.nb[2], a.nb[3]))


def cont(a: Tensor, *ne: int, name: str = "") -> Tensor:
    return _result("CONT", a.type, ne or a.ne, a, name=name)


def set_rows(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    t = _view(a, "SET_ROWS", a.ne, a.nb)
    t.src = (b, c, a)
    return t


def flash_attn_ext(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    return _result("FLASH_ATTN_EXT", F32, (v.ne[0], q.ne[2], q.ne[1], q.ne[3]), q, k, v, mask)


# ---- the graph: ggml_build_forward_expand ----------------------------------------------------

class Graph:
    """A ggml_cgraph: leafs and nodes in ``ggml_visit_parents_graph``'s order."""

    def __init__(self) -> None:
        self.leafs: list[Tensor] = []
        self.nodes: list[Tensor] = []
        self._seen: set[int] = set()

    def expand(self, t: Tensor) -> Tensor:
        stack = [(t, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                if id(node) in self._seen:
                    continue
                self._seen.add(id(node))
            if i < len(node.src):
                stack.append((node, i + 1))
                s = node.src[i]
                if s is not None and id(s) not in self._seen:
                    stack.append((s, 0))
                continue
            (self.leafs if node.op == "NONE" else self.nodes).append(node)
        return t


# ---- ggml-alloc: ggml_dyn_tallocr and ggml_gallocr ------------------------------------------

class _DynAllocator:
    """``ggml_dyn_tallocr`` with one chunk (the CPU and CUDA buffer types have no maximum)."""

    def __init__(self, alignment: int):
        self.alignment = alignment
        self.blocks: list[list[int]] = [[0, 1 << 62]]     # [offset, size], sorted by offset
        self.max_size = 0

    def _pad(self, size: int) -> int:
        a = self.alignment
        return (size + a - 1) // a * a

    def alloc(self, size: int) -> int:
        size = self._pad(size)
        best, best_size = -1, None
        for i in range(len(self.blocks) - 1):       # best fit besides the last block
            s = self.blocks[i][1]
            if s >= size and (best_size is None or s <= best_size):
                best, best_size = i, s
        if best < 0:
            best = len(self.blocks) - 1
        block = self.blocks[best]
        offset = block[0]
        block[0] += size
        block[1] -= size
        if block[1] == 0:
            del self.blocks[best]
        self.max_size = max(self.max_size, offset + size)
        return offset

    def free(self, offset: int, size: int) -> None:
        size = self._pad(size)
        bl = self.blocks
        for i, b in enumerate(bl):
            if b[0] + b[1] == offset:               # at the end of a free block
                b[1] += size
                if i < len(bl) - 1 and b[0] + b[1] == bl[i + 1][0]:
                    b[1] += bl[i + 1][1]
                    del bl[i + 1]
                return
            if offset + size == b[0]:               # at the start of one
                b[0] = offset
                b[1] += size
                if i > 0 and bl[i - 1][0] + bl[i - 1][1] == b[0]:
                    bl[i - 1][1] += b[1]
                    del bl[i]
                return
        pos = 0
        while pos < len(bl) and bl[pos][0] < offset:
            pos += 1
        bl.insert(pos, [offset, size])


class _Node:
    __slots__ = ("children", "views", "offset", "allocated")

    def __init__(self) -> None:
        self.children = 0
        self.views = 0
        self.offset = 0
        self.allocated = False


def _same_layout(a: Tensor, b: Tensor) -> bool:
    return a.type == b.type and a.ne == b.ne and a.nb == b.nb


def allocate(graph: Graph, alignment: int = 32) -> int:
    """The buffer ``ggml_gallocr_reserve_n`` makes for ``graph``: the highest offset reached
    (``ggml_gallocr_alloc_graph_impl``, one buffer type)."""
    hn: dict[int, _Node] = {}
    dyn = _DynAllocator(alignment)

    def h(t: Tensor) -> _Node:
        n = hn.get(id(t))
        if n is None:
            n = hn[id(t)] = _Node()
        return n

    def pad(x: int) -> int:
        return (x + alignment - 1) // alignment * alignment

    def alloc_node(t: Tensor) -> None:
        n = h(t)
        if t.external or n.allocated or t.view_src is not None:
            return
        n.allocated = True
        if t.op in INPLACE_OPS:
            for p in t.src:
                if p is None or not h(p).allocated:
                    continue
                if p.flags & OUTPUT or (p.view_src is not None and p.view_src.flags & OUTPUT):
                    continue
                if not _same_layout(t, p):
                    continue
                pn = h(p)
                if pn.children == 1 and pn.views == 0 and p.view_src is None:
                    n.offset = pn.offset
                    pn.allocated = False
                    ps, ts = pad(p.nbytes), pad(t.nbytes)
                    if ps > ts:
                        dyn.free(pn.offset + ts, ps - ts)
                    return
        n.offset = dyn.alloc(t.nbytes)

    def free_node(t: Tensor) -> None:
        if t.flags & OUTPUT:
            return
        n = h(t)
        dyn.free(n.offset, t.nbytes)
        n.allocated = False

    for leaf in graph.leafs:
        alloc_node(leaf)
    for node in graph.nodes:
        if node.view_src is not None:
            h(node.view_src).views += 1
        if node.flags & INPUT:
            alloc_node(node)
        for s in node.src:
            if s is None:
                continue
            h(s).children += 1
            if s.flags & INPUT:
                alloc_node(s)
    for node in graph.nodes:
        for s in node.src:
            if s is not None:
                alloc_node(s)
        alloc_node(node)
        for p in node.src:
            if p is None:
                continue
            pn = h(p)
            pn.children -= 1
            if pn.children == 0 and pn.views == 0:
                if p.view_src is not None:
                    vn = h(p.view_src)
                    vn.views -= 1
                    if vn.views == 0 and vn.children == 0 and vn.allocated:
                        free_node(p.view_src)
                elif pn.allocated:
                    free_node(p)
    return dyn.max_size


# ---- the model graphs (llama-graph.cpp, src/models/) ----------------------------------------

@dataclass(frozen=True)
class GraphModel:
    """What the graph needs from a model: the architecture and its sizes."""

    arch: str                      # "llama" or "gemma3"
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    #: per layer: True for sliding-window layers (the ISWA cache's)
    swa_layers: tuple[bool, ...] = ()
    final_logit_softcapping: float = 0.0


@dataclass(frozen=True)
class CacheShape:
    """One KV cache as the graph sees it: cells per stream, streams, K and V types."""

    cells: int
    n_stream: int
    type_k: str
    type_v: str


@dataclass(frozen=True)
class ReserveParams:
    """What ``sched_reserve`` builds the graph with."""

    n_ctx: int
    n_ubatch: int
    n_seq_max: int
    unified: bool
    flash_attn: bool
    base: CacheShape | None
    swa: CacheShape | None = None
    alignment: int = 32


@dataclass
class _AttnInput:
    k_idxs: Tensor
    v_idxs: Tensor
    mask: Tensor
    k_rot: Tensor | None
    v_rot: Tensor | None
    cache: CacheShape
    k_layers: dict[int, Tensor] = field(default_factory=dict)
    v_layers: dict[int, Tensor] = field(default_factory=dict)


def _rot(head_dim: int, quantized: bool, for_k: bool) -> Tensor | None:
    """``llama_kv_cache::build_input_k_rot`` / ``_v_rot``: a Hadamard matrix for a quantized
    cache type when the head size is a multiple of 64 (K: the largest power of two from 64
    dividing it; V: 64)."""
    if not quantized or head_dim % 64:
        return None
    n = 64
    if for_k:
        while head_dim % (n * 2) == 0:
            n *= 2
    return new(F32, n, n, flags=INPUT, name="attn_inp_k_rot" if for_k else "attn_inp_v_rot")


def _quantized(type_: str) -> bool:
    return _block(type_)[0] > 1


def _attn_input(m: GraphModel, p: ReserveParams, cache: CacheShape, n_tokens: int,
                n_seqs: int) -> _AttnInput:
    k_idxs = new(I64, n_tokens, flags=INPUT, name="attn_inp_k_idxs")
    v_rows = n_tokens if p.flash_attn else n_tokens * m.n_head_kv * m.head_dim
    v_idxs = new(I64, v_rows, flags=INPUT, name="attn_inp_v_idxs")
    n_stream = 1 if p.unified else n_seqs
    mask = new(F16 if p.flash_attn else F32, cache.cells, n_tokens // n_stream, 1, n_stream,
               flags=INPUT, name="attn_inp_kq_mask")
    return _AttnInput(k_idxs, v_idxs, mask, _rot(m.head_dim, _quantized(cache.type_k), True),
                      _rot(m.head_dim, _quantized(cache.type_v), False), cache)


def _hadamard(cur: Tensor, rot: Tensor) -> Tensor:
    """``llama_mul_mat_hadamard`` (src/llama-impl.h)."""
    n = rot.ne[0]
    res = (cont(cur, n, cur.nelements // n) if not cur.is_contiguous()
           else reshape(cur, n, cur.nelements // n))
    res = mul_mat(rot, res)
    return reshape(res, *cur.ne)


class _Builder:
    def __init__(self, m: GraphModel, p: ReserveParams, n_tokens: int, n_seqs: int,
                 n_outputs: int):
        self.m, self.p = m, p
        self.n_tokens, self.n_seqs, self.n_outputs = n_tokens, n_seqs, n_outputs
        self.gf = Graph()
        self.w: dict[str, Tensor] = {}

    def weight(self, name: str, *ne: int) -> Tensor:
        if name not in self.w:
            self.w[name] = new(F32, *ne, name=name, external=True)
        return self.w[name]

    def cache_tensor(self, inp: _AttnInput, il: int, kv: str) -> Tensor:
        store = inp.k_layers if kv == "k" else inp.v_layers
        if il not in store:
            c = inp.cache
            t = c.type_k if kv == "k" else c.type_v
            store[il] = new(t, self.m.n_head_kv * self.m.head_dim, c.cells, c.n_stream,
                            name=f"cache_{kv}_l{il}", external=True)
        return store[il]

    # llm_graph_context::build_inp_embd
    def inp_embd(self) -> Tensor:
        m, n = self.m, self.n_tokens
        tokens = new(I32, n, flags=INPUT, name="inp_tokens")
        embd = new(F32, m.n_embd, n, flags=INPUT, name="inp_embd")
        cur = get_rows(self.weight("token_embd.weight", m.n_embd, m.n_vocab), tokens,
                       name="embd")
        self.gf.expand(cur)          # ggml_build_forward_select: both inputs, then the token path
        self.gf.expand(embd)
        self.gf.expand(cur)
        return cur

    def norm(self, cur: Tensor, weight: str, dim: int) -> Tensor:
        cur = dup("RMS_NORM", cur, name="norm")
        return dup("MUL", cur, self.weight(weight, dim), name=weight)

    # llama_kv_cache::cpy_k / cpy_v / get_k / get_v and llm_graph_context::build_attn_mha
    def attn(self, inp: _AttnInput, q: Tensor, k: Tensor, v: Tensor, il: int,
             order: str) -> Tensor:
        m, p = self.m, self.p
        if inp.k_rot is not None:
            q = _hadamard(q, inp.k_rot)
            k = _hadamard(k, inp.k_rot)
        if inp.v_rot is not None:
            v = _hadamard(v, inp.v_rot)
        for t in ((q, v, k) if order == "qvk" else (q, k, v)):
            self.gf.expand(t)
        c = inp.cache
        n_embd_gqa = m.n_head_kv * m.head_dim
        kc = self.cache_tensor(inp, il, "k")
        vc = self.cache_tensor(inp, il, "v")
        # cpy_k
        k_cur = view(k, (n_embd_gqa, k.ne[2]), (k.nb[2],))
        kdst = reshape(kc, n_embd_gqa, c.cells * c.n_stream) if c.n_stream > 1 else kc
        self.gf.expand(set_rows(kdst, k_cur, inp.k_idxs))
        # cpy_v
        if p.flash_attn:
            v_cur = view(v, (n_embd_gqa, v.ne[2]), (v.nb[2],))
            vdst = reshape(vc, n_embd_gqa, c.cells * c.n_stream) if c.n_stream > 1 else vc
            self.gf.expand(set_rows(vdst, v_cur, inp.v_idxs))
        else:
            f32_row = n_embd_gqa * 4
            v_cur = (reshape(v, n_embd_gqa, v.ne[2]) if v.nb[2] == f32_row
                     else cont(v, n_embd_gqa, v.ne[2]))
            v_view = reshape(vc, 1, vc.nelements)
            v_cur = reshape(v_cur, 1, v_cur.nelements)
            self.gf.expand(set_rows(v_view, v_cur, inp.v_idxs))
        ns = c.n_stream
        kb, vb = _block(c.type_k), _block(c.type_v)

        def row(b, n):
            return n // b[0] * b[1]

        kview = view(kc, (m.head_dim, m.n_head_kv, c.cells, ns),
                     (row(kb, m.head_dim), row(kb, n_embd_gqa), row(kb, n_embd_gqa * c.cells)))
        if p.flash_attn:
            vview = view(vc, (m.head_dim, m.n_head_kv, c.cells, ns),
                         (row(vb, m.head_dim), row(vb, n_embd_gqa),
                          row(vb, n_embd_gqa * c.cells)))
        else:
            vview = view(vc, (c.cells, m.n_head_kv, m.head_dim, ns),
                         (row(vb, c.cells * m.head_dim), row(vb, c.cells),
                          row(vb, c.cells * n_embd_gqa)))
        cur = self.attn_mha(q, kview, vview, inp.mask)
        if inp.v_rot is not None:
            cur = _hadamard(cur, inp.v_rot)
        return cur

    def attn_mha(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        n_stream = k.ne[3]
        q = view(q, (q.ne[0], q.ne[1], q.ne[2] // n_stream, n_stream),
                 (q.nb[1], q.nb[2], q.nb[2] * (q.ne[2] // n_stream)))
        q = permute(q, 0, 2, 1, 3)
        k = permute(k, 0, 2, 1, 3)
        v = permute(v, 0, 2, 1, 3)
        if self.p.flash_attn:
            cur = flash_attn_ext(q, k, v, mask)
            cur = reshape(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])
        else:
            kq = mul_mat(k, q, name="kq")
            kq = dup("SOFT_MAX", kq, mask, name="kq_soft_max")
            kqv = mul_mat(v, kq, name="kqv")
            cur = permute(kqv, 0, 2, 1, 3)
            cur = cont(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3], name="kqv_out")
        self.gf.expand(cur)
        return cur

    def ffn(self, cur: Tensor, il: int) -> Tensor:
        m = self.m
        up = mul_mat(self.weight(f"blk.{il}.ffn_up", m.n_embd, m.n_ff), cur, name="ffn_up")
        gate = mul_mat(self.weight(f"blk.{il}.ffn_gate", m.n_embd, m.n_ff), cur,
                       name="ffn_gate")
        act = _result("GLU", gate.type, gate.ne, gate, up, name="ffn_glu")
        return mul_mat(self.weight(f"blk.{il}.ffn_down", m.n_ff, m.n_embd), act,
                       name="ffn_out")

    def qkv(self, cur: Tensor, il: int) -> tuple[Tensor, Tensor, Tensor]:
        m = self.m
        n = self.n_tokens
        q = mul_mat(self.weight(f"blk.{il}.attn_q", m.n_embd, m.n_head * m.head_dim), cur)
        k = mul_mat(self.weight(f"blk.{il}.attn_k", m.n_embd, m.n_head_kv * m.head_dim), cur)
        v = mul_mat(self.weight(f"blk.{il}.attn_v", m.n_embd, m.n_head_kv * m.head_dim), cur)
        return (reshape(q, m.head_dim, m.n_head, n), reshape(k, m.head_dim, m.n_head_kv, n),
                reshape(v, m.head_dim, m.n_head_kv, n))

    def output(self, cur: Tensor) -> None:
        m = self.m
        cur = self.norm(cur, "output_norm.weight", m.n_embd)
        cur.flags |= OUTPUT                      # res->t_embd
        cur = mul_mat(self.weight("output.weight", m.n_embd, m.n_vocab), cur,
                      name="result_output")
        if m.final_logit_softcapping:
            cur = dup("SCALE", cur)
            cur = dup("UNARY", cur)
            cur = dup("SCALE", cur)
        cur.flags |= OUTPUT                      # res->t_logits
        self.gf.expand(cur)

    def build(self) -> Graph:
        m, p = self.m, self.p
        inpL = self.inp_embd()
        if m.arch == "gemma3":
            inpL = dup("SCALE", inpL, name="inp_scaled")
        pos = new(I32, self.n_tokens, flags=INPUT, name="inp_pos")
        base = _attn_input(m, p, p.base, self.n_tokens, self.n_seqs) if p.base else None
        swa = _attn_input(m, p, p.swa, self.n_tokens, self.n_seqs) if p.swa else None
        out_ids = new(I32, self.n_outputs, flags=INPUT, name="out_ids")
        for il in range(m.n_layer):
            is_swa = bool(m.swa_layers and m.swa_layers[il]) and swa is not None
            inp = swa if is_swa else base
            assert inp is not None
            cur = self.norm(inpL, f"blk.{il}.attn_norm", m.n_embd)
            q, k, v = self.qkv(cur, il)
            if m.arch == "gemma3":
                q = self.norm(q, f"blk.{il}.attn_q_norm", m.head_dim)
                q = dup("ROPE", q, pos)
                k = self.norm(k, f"blk.{il}.attn_k_norm", m.head_dim)
                k = dup("ROPE", k, pos)
                q = dup("SCALE", q)
                order = "qkv" if swa is not None else "qvk"
            else:
                q = dup("ROPE", q, pos)
                k = dup("ROPE", k, pos)
                order = "qvk"
            cur = self.attn(inp, q, k, v, il, order)
            cur = mul_mat(self.weight(f"blk.{il}.attn_output", m.n_head * m.head_dim,
                                      m.n_embd), cur, name="attn_out")
            if il == m.n_layer - 1:
                cur = get_rows(cur, out_ids)
                inpL = get_rows(inpL, out_ids)
            if m.arch == "gemma3":
                cur = self.norm(cur, f"blk.{il}.post_attention_norm", m.n_embd)
                sa_out = dup("ADD", cur, inpL, name="sa_out")
                cur = self.norm(sa_out, f"blk.{il}.ffn_norm", m.n_embd)
                cur = self.ffn(cur, il)
                cur = self.norm(cur, f"blk.{il}.post_ffw_norm", m.n_embd)
                inpL = dup("ADD", cur, sa_out, name="l_out")
            else:
                ffn_inp = dup("ADD", cur, inpL, name="ffn_inp")
                cur = self.norm(ffn_inp, f"blk.{il}.ffn_norm", m.n_embd)
                cur = self.ffn(cur, il)
                inpL = dup("ADD", cur, ffn_inp, name="l_out")
        self.output(inpL)
        return self.gf


def build_graph(m: GraphModel, p: ReserveParams, n_tokens: int, n_seqs: int,
                n_outputs: int) -> Graph:
    """The graph ``llama_context::graph_reserve(n_tokens, n_seqs, n_outputs)`` builds."""
    if n_tokens % n_seqs:
        n_tokens = (n_tokens + n_seqs - 1) // n_seqs * n_seqs
    return _Builder(m, p, n_tokens, n_seqs, n_outputs).build()


@lru_cache(maxsize=512)
def reserve(m: GraphModel, p: ReserveParams) -> int:
    """The compute buffer ``sched_reserve`` leaves: the larger of the prompt-processing graph
    (``min(n_ctx, n_ubatch)`` tokens, as many outputs) and the token-generation graph (one
    token and one output per sequence), ``n_seq_max`` sequences."""
    n_tokens = min(p.n_ctx, p.n_ubatch)
    n_seqs = p.n_seq_max
    pp = allocate(build_graph(m, p, n_tokens, n_seqs, n_tokens), p.alignment)
    tg = allocate(build_graph(m, p, n_seqs, n_seqs, n_seqs), p.alignment)
    return max(pp, tg)


def graphs(m: GraphModel, p: ReserveParams) -> Iterable[Graph]:
    """The two graphs :func:`reserve` sizes (for inspection and tests)."""
    n_tokens = min(p.n_ctx, p.n_ubatch)
    yield build_graph(m, p, n_tokens, p.n_seq_max, n_tokens)
    yield build_graph(m, p, p.n_seq_max, p.n_seq_max, p.n_seq_max)
