"""``kvcalc verify --engine llamacpp``: create llama.cpp contexts on the CPU through
llama-cpp-python and compare what llama.cpp allocates with :func:`kvcalc.engines.llamacpp.allocate`.

For each setting (context size, slots, unified or per-slot streams, cache types, flash
attention, swa_full, batch sizes) one context is created with llama.cpp's C API
(``llama_context_default_params`` + ``llama_init_from_model``: the only way to set
``n_seq_max`` and ``kv_unified``) and measured three ways:

1. **llama.cpp's own report**: the log lines it writes for every cache it allocates
   (``llama_kv_cache: size = X MiB (C cells, L layers, S/N seqs), K (type): A MiB, V (type): B
   MiB``), captured through ``llama_log_set`` (the C logger; nothing goes through Python's
   stderr). Cells, layers, slots and streams are integers and must equal the prediction; the
   MiB figures (bytes / 2^20, printed ``%.2f``) must equal the prediction formatted the same way.
2. **bytes per cell, to the byte**: ``llama_state_get_size()`` after decoding ``n1`` and then
   ``n2`` tokens into sequence 0 (both inside every window). The state serialises each cell as
   its position, sequence count and sequence id (12 bytes) followed by the cell's K and V rows
   on every layer of its cache, so the growth per token is
   ``sum over caches of (12 + sum over the cache's layers of (K row + V row))``; the output
   buffer (one token's logits) is the same size at both points and cancels.
3. the process's **resident memory** growth while the context is created (the KV buffers are
   zero-filled, so it grows by about their size): reported as context, not compared.

Together 1 and 2 give the bytes of every cache exactly: cells x streams (integers from the log)
x the bytes of a cell (from the state), split into K and V by the log's figures.

Beside the KV cache, every context's **compute buffer** (``sched_reserve: CPU compute buffer
size = X MiB``, and the 4-decimal figure llama.cpp logs at debug level when the context is
freed, ``~llama_context: CPU compute buffer size is X MiB``) is compared with
:func:`kvcalc.engines.llamacpp.compute_buffer_bytes` (``compute_buffer`` in each result: equal
when kvcalc's bytes print as both logged MiB figures), and once per model the **model buffers**
(``load_tensors: CPU_Mapped model buffer size``, ``CPU_REPACK model buffer size``) with
:func:`kvcalc.gguf_weights.cpu_model_buffers`, and ``llama_model_size()`` (every tensor's
bytes, exact) with the GGUF table's sum.
Refused settings (a quantized V cache with flash attention off) must be refused by llama.cpp too,
with the reason kvcalc gives.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..engines.llamacpp import (QUANTIZED_V_REFUSAL, Allocation, LlamaCppSettings, allocate,
                                compute_buffer_bytes, ggml_type, model_weights)
from ..errors import KvcalcError, UsageError

#: bytes the state adds per cell besides the K/V rows: position (int32), number of sequences
#: (uint32) and the one sequence id (int32) (``llama_kv_cache::state_write_meta``)
STATE_CELL_META_BYTES = 12
#: tokens decoded before the two state readings (both below the smallest window, 512)
STATE_TOKENS = (8, 24)
LOG_LINE = re.compile(
    r"llama_kv_cache: size = +(?P<total>[\d.]+) MiB \( *(?P<cells>\d+) cells, +(?P<layers>\d+) "
    r"layers, +(?P<seqs>\d+)/(?P<streams>\d+) seqs\), K \((?P<tk>\w+)\): +(?P<k>[\d.]+) MiB, "
    r"V \((?P<tv>\w+)\): +(?P<v>[\d.]+) MiB")
MIB = 1024 * 1024
COMPUTE_LINE = re.compile(r"(?P<buft>\S+) compute buffer size = +(?P<mib>[\d.]+) MiB")
COMPUTE_DEBUG_LINE = re.compile(r"(?P<buft>\S+) compute buffer size is +(?P<mib>[\d.]+) MiB")
MODEL_BUFFER_LINE = re.compile(r"(?P<buft>\S+) model buffer size = +(?P<mib>[\d.]+) MiB")
#: the grid ``--grid`` runs (and CI runs on both test models): every rule of the layout
GRID_CTX = (512, 1000, 4096)
GRID_TYPES = (("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_1"), ("f16", "q5_1"),
              ("bf16", "iq4_nl"))


def require_llama_cpp():
    """The llama_cpp module, or one clear line on how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise KvcalcError("kvcalc verify --engine llamacpp needs llama-cpp-python (it compiles "
                          "llama.cpp, ~11 min on 2 cores): pip install llama-cpp-python gguf"
                          ) from None
    return llama_cpp


class _Runtime:
    """One loaded model and the captured llama.cpp log."""

    def __init__(self, path: str, threads: int = 1):
        self.lib = require_llama_cpp()
        self.lines: list[tuple[int, str]] = []
        self._partial = ""

        def _log(level, text, _user):  # called from C for every log fragment
            self._partial += (text or b"").decode("utf-8", "replace")
            while "\n" in self._partial:
                line, self._partial = self._partial.split("\n", 1)
                self.lines.append((level, line))

        self._callback = self.lib.llama_log_callback(_log)  # kept alive while the model lives
        self.lib.llama_log_set(self._callback, ctypes.c_void_p(0))
        self.lib.llama_backend_init()
        mparams = self.lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = self.lib.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise KvcalcError(f"llama.cpp could not load {path}: "
                              + (self._errors() or "see its log"))
        self.load_lines = [t for _, t in self.lines]
        self.threads = threads
        self.vocab = self.lib.llama_model_get_vocab(self.model)
        self.n_vocab = self.lib.llama_vocab_n_tokens(self.vocab)

    def _errors(self) -> str:
        return "; ".join(t.split(": ", 1)[-1] for lvl, t in self.lines
                         if lvl == self.lib.GGML_LOG_LEVEL_ERROR) if hasattr(
            self.lib, "GGML_LOG_LEVEL_ERROR") else ""

    def context_params(self, s: LlamaCppSettings):
        p = self.lib.llama_context_default_params()
        p.n_ctx = s.ctx_size
        p.n_batch = s.batch_size
        p.n_ubatch = s.ubatch_size
        p.n_seq_max = s.n_seq_max
        p.kv_unified = s.unified
        p.swa_full = s.swa_full
        p.flash_attn_type = {"on": self.lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                             "off": self.lib.LLAMA_FLASH_ATTN_TYPE_DISABLED,
                             "auto": self.lib.LLAMA_FLASH_ATTN_TYPE_AUTO}[s.flash_attn]
        p.type_k = ggml_type(s.cache_type_k).ggml_id
        p.type_v = ggml_type(s.cache_type_v).ggml_id
        p.n_threads = p.n_threads_batch = self.threads
        p.no_perf = True
        return p

    def decode(self, ctx, start: int, count: int) -> None:
        tokens = (self.lib.llama_token * count)(*[(start + i) % self.n_vocab or 1
                                                   for i in range(count)])
        batch = self.lib.llama_batch_get_one(tokens, count)
        rc = self.lib.llama_decode(ctx, batch)
        if rc != 0:
            raise KvcalcError(f"llama_decode returned {rc}")

    def model_buffers(self) -> dict[str, str]:
        """The model buffers llama.cpp logged at load: buffer name -> MiB as printed."""
        return {m.group("buft"): m.group("mib") for t in self.load_lines
                if (m := MODEL_BUFFER_LINE.search(t))}

    def close(self) -> None:
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None


def _rss() -> int:
    """Resident memory of this process, bytes (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


@dataclass
class CaseResult:
    """One setting: kvcalc's prediction, llama.cpp's report and the verdict."""

    settings: dict[str, Any]
    passed: bool
    refused_by_kvcalc: str | None = None
    refused_by_llamacpp: str | None = None
    predicted: dict[str, Any] | None = None
    measured: dict[str, Any] | None = None
    mismatches: list[str] = field(default_factory=list)
    #: llama.cpp's compute buffer against kvcalc's (``compute_buffer_bytes``); not part of
    #: ``passed`` (the KV cache's verdict): ``matches`` says whether they print alike
    compute_buffer: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        return asdict(self)


def run_case(rt: _Runtime, spec, s: LlamaCppSettings, weights=None) -> CaseResult:
    """Create one context with ``s``, compare it with the prediction (module doc)."""
    settings = {k: v for k, v in asdict(s).items() if k != "version"}
    settings["parallel"], settings["kv_unified"] = s.n_seq_max, s.unified
    try:
        alloc: Allocation | None = allocate(spec, s)
        kvcalc_reason = None
    except UsageError as exc:
        alloc, kvcalc_reason = None, str(exc)
    rt.lines.clear()
    rss0 = _rss()
    ctx = rt.lib.llama_init_from_model(rt.model, rt.context_params(s))
    if not ctx:
        reason = "; ".join(t.split(": ", 1)[-1].strip() for lvl, t in rt.lines
                           if lvl == 4 or "requires" in t or "does not" in t) or "refused"
        ok = kvcalc_reason is not None and (QUANTIZED_V_REFUSAL in reason) == (
            QUANTIZED_V_REFUSAL in kvcalc_reason)
        return CaseResult(settings, ok, kvcalc_reason, reason,
                          mismatches=[] if ok else [f"llama.cpp refused: {reason}"])
    try:
        rss1 = _rss()
        if alloc is None:
            return CaseResult(settings, False, kvcalc_reason, None,
                              mismatches=["kvcalc refused settings llama.cpp accepts"])
        logged = [dict(m.groupdict(), line=m.group(0)) for _, t in rt.lines
                  if (m := LOG_LINE.search(t))]
        n1, n2 = STATE_TOKENS
        rt.decode(ctx, 100, n1)
        s1 = rt.lib.llama_state_get_size(ctx)
        rt.decode(ctx, 100 + n1, n2 - n1)
        s2 = rt.lib.llama_state_get_size(ctx)
        per_cell = (s2 - s1) // (n2 - n1)
        result = _compare(settings, alloc, logged, per_cell, rss1 - rss0)
    finally:
        n_before = len(rt.lines)
        rt.lib.llama_free(ctx)
    compute = [m.group("mib") for _, t in rt.lines[:n_before] if (m := COMPUTE_LINE.search(t))]
    fine = [m.group("mib") for _, t in rt.lines[n_before:]
            if (m := COMPUTE_DEBUG_LINE.search(t))]
    predicted = compute_buffer_bytes(spec, weights if weights is not None
                                     else model_weights(spec), alloc)
    result.compute_buffer = compare_compute_buffer(predicted, compute, fine)
    return result


def compare_compute_buffer(predicted: int, logged: list[str], fine: list[str]) -> dict[str, Any]:
    """kvcalc's compute buffer against llama.cpp's lines (one CPU buffer): equal when the
    bytes print as the logged ``%.2f`` MiB and, where llama.cpp logged it (debug level, when
    the context is freed), as the ``%.4f`` MiB figure (about 100 bytes apart)."""
    out: dict[str, Any] = {"predicted_bytes": predicted,
                           "predicted_mib": f"{predicted / MIB:.2f}",
                           "predicted_mib_4": f"{predicted / MIB:.4f}",
                           "logged_mib": logged[0] if len(logged) == 1 else None,
                           "logged_mib_4": fine[0] if len(fine) == 1 else None}
    out["matches"] = (out["logged_mib"] == out["predicted_mib"] and
                      out["logged_mib_4"] in (None, out["predicted_mib_4"]))
    out["difference_bytes"] = (round(float(out["logged_mib_4"]) * MIB) - predicted
                               if out["logged_mib_4"] else None)
    return out


def compare_model_buffers(rt: _Runtime, weights) -> dict[str, Any]:
    """The model buffers llama.cpp logged at load against :func:`cpu_model_buffers`, and
    ``llama_model_size()`` (the sum of every tensor's bytes) against the GGUF table's."""
    from ..gguf_weights import cpu_model_buffers

    logged = rt.model_buffers()
    predicted = cpu_model_buffers(weights)
    size = int(rt.lib.llama_model_size(rt.model))
    return {"logged_mib": logged, "predicted_bytes": predicted,
            "predicted_mib": {k: f"{v / MIB:.2f}" for k, v in predicted.items()},
            "matches": logged == {k: f"{v / MIB:.2f}" for k, v in predicted.items()},
            "llama_model_size": size, "weights_bytes": weights.total_bytes,
            "model_size_matches": size == weights.total_bytes}


def predicted_state_bytes_per_token(alloc: Allocation) -> int:
    """What the state grows by per decoded token: every cache's cell metadata and rows."""
    per_layer_rows = sum(c.total_bytes // (c.cells_per_stream * c.n_stream) for c in alloc.caches)
    return len(alloc.caches) * STATE_CELL_META_BYTES + per_layer_rows


def _compare(settings, alloc: Allocation, logged: list[dict], per_cell: int,
             rss_growth: int) -> CaseResult:
    mismatches = []
    caches = []
    if len(logged) != len(alloc.caches):
        mismatches.append(f"llama.cpp logged {len(logged)} caches, kvcalc predicts "
                          f"{len(alloc.caches)}")
    meta = len(logged) * STATE_CELL_META_BYTES
    cell_bytes = per_cell - meta  # K + V rows of one cell on every layer of every cache
    predicted_cell_bytes = predicted_state_bytes_per_token(alloc) - len(alloc.caches) * \
        STATE_CELL_META_BYTES
    if cell_bytes != predicted_cell_bytes:
        mismatches.append(f"state grows by {per_cell:,} B per token, kvcalc predicts "
                          f"{predicted_state_bytes_per_token(alloc):,}")
    for cache, log in zip(alloc.caches, logged):
        got = {"cells_per_stream": int(log["cells"]), "layers": int(log["layers"]),
               "n_seq_max": int(log["seqs"]), "n_stream": int(log["streams"]),
               "type_k": log["tk"], "type_v": log["tv"]}
        want = {"cells_per_stream": cache.cells_per_stream, "layers": cache.layers,
                "n_seq_max": alloc.sizes.n_seq_max, "n_stream": cache.n_stream,
                "type_k": cache.type_k, "type_v": cache.type_v}
        for key in got:
            if got[key] != want[key]:
                mismatches.append(f"{cache.cache} cache: {key} {got[key]} logged, "
                                  f"{want[key]} predicted")
        if cache.log_line(alloc.sizes.n_seq_max) != log["line"]:
            mismatches.append(f"{cache.cache} cache: llama.cpp logged '{log['line']}', kvcalc "
                              f"prints '{cache.log_line(alloc.sizes.n_seq_max)}'")
        for key, value in (("k", cache.k_bytes), ("v", cache.v_bytes),
                           ("total", cache.total_bytes)):
            if f"{value / MIB:.2f}" != log[key]:
                mismatches.append(f"{cache.cache} cache: {key.upper()} {log[key]} MiB logged, "
                                  f"{value / MIB:.2f} MiB predicted ({value:,} B)")
        caches.append({"cache": cache.cache, **got, "k_mib": log["k"], "v_mib": log["v"],
                       "total_mib": log["total"]})
    _measured_bytes(caches, cell_bytes, [c.k_bytes // (c.cells_per_stream * c.n_stream
                                                       * c.layers) for c in alloc.caches])
    measured = {"caches": caches, "state_bytes_per_token": per_cell,
                "total_bytes": (sum(c["total_bytes"] for c in caches)
                                if all(c["total_bytes"] is not None for c in caches) else None),
                "rss_growth_bytes": rss_growth}
    predicted = {"caches": [c.record() for c in alloc.caches],
                 "state_bytes_per_token": predicted_state_bytes_per_token(alloc),
                 "total_bytes": alloc.total_bytes, "n_ctx": alloc.sizes.n_ctx,
                 "n_ctx_seq": alloc.sizes.n_ctx_seq, "log": alloc.log_lines()}
    if measured["total_bytes"] != alloc.total_bytes:
        mismatches.append(f"total {measured['total_bytes']} B measured, "
                          f"{alloc.total_bytes:,} predicted")
    return CaseResult(settings, not mismatches, None, None, predicted, measured, mismatches)


def _measured_bytes(caches: list[dict], cell_bytes: int, predicted_k_rows: list[int]) -> None:
    """Bytes of each logged cache from llama.cpp's integers (cells, streams, layers) and the
    measured bytes of one cell: with every layer's rows alike (both test models), a layer's
    K + V row is ``cell_bytes / layers``. The split into K and V comes from the logged MiB
    figures: the K rows whose bytes print as the logged K and V MiB. On small caches several
    splits print alike (2 decimals of a MiB); then ``k_v_split`` says how many, and the
    predicted split is taken when it is among them."""
    layers = sum(c["layers"] for c in caches)
    uniform = layers and cell_bytes % layers == 0
    for c, predicted_k in zip(caches, predicted_k_rows):
        if not uniform:
            c.update(k_bytes=None, v_bytes=None, total_bytes=None, k_v_split=None)
            continue
        row = cell_bytes // layers
        slots = c["cells_per_stream"] * c["n_stream"] * c["layers"]
        fits = [k for k in range(row + 1)
                if f"{slots * k / MIB:.2f}" == c["k_mib"]
                and f"{slots * (row - k) / MIB:.2f}" == c["v_mib"]]
        if not fits:
            c.update(k_bytes=None, v_bytes=None, total_bytes=slots * row, k_v_split=0)
            continue
        k_row = predicted_k if predicted_k in fits else fits[0]
        c.update(k_bytes=slots * k_row, v_bytes=slots * (row - k_row), total_bytes=slots * row,
                 k_v_split=len(fits))


def grid(spec, ubatches=(64, 512)) -> list[LlamaCppSettings]:
    """The settings ``--grid`` checks: context sizes x cache types x slots x unified x
    swa_full x micro-batch (SWA models only) x flash attention (on, and off for an f16 V)."""
    has_swa = any(getattr(l, "kind", "") == "sliding" for l in spec.layers)
    out = []
    for ctx in GRID_CTX:
        for tk, tv in GRID_TYPES:
            for slots, unified in ((1, False), (3, False), (3, True)):
                for swa_full in ((False, True) if has_swa else (False,)):
                    for ub in (ubatches if has_swa else ubatches[-1:]):
                        out.append(LlamaCppSettings(ctx_size=ctx, parallel=slots,
                                                    kv_unified=unified, cache_type_k=tk,
                                                    cache_type_v=tv, flash_attn="on",
                                                    swa_full=swa_full, batch_size=512,
                                                    ubatch_size=ub))
    # flash attention off: an f16 V cache is accepted; a quantized one is refused
    out.append(LlamaCppSettings(ctx_size=1000, parallel=2, cache_type_k="q8_0",
                                cache_type_v="f16", flash_attn="off", batch_size=512))
    out.append(LlamaCppSettings(ctx_size=1000, parallel=2, cache_type_k="f16",
                                cache_type_v="q8_0", flash_attn="off", batch_size=512))
    return out


#: the buffers grid (CI, both test models): -c 0 (the trained context), 512 and 4,096 x
#: (-b, -ub) x flash attention x slots, f16 and a quantized cache per flash-attention setting
BUFFER_GRID_CTX = (0, 512, 4096)
BUFFER_GRID_BATCH = ((512, 128), (512, 512), (2048, 1024))
BUFFER_GRID_SLOTS = ((1, False), (3, False), (3, True))
BUFFER_GRID_TYPES = {"on": (("f16", "f16"), ("q8_0", "q8_0")),
                     "off": (("f16", "f16"), ("q8_0", "f16"))}


def buffer_grid() -> list[LlamaCppSettings]:
    """The settings whose compute buffers (and KV caches) the buffers grid compares."""
    return [LlamaCppSettings(ctx_size=ctx, parallel=np_, kv_unified=uni, cache_type_k=tk,
                             cache_type_v=tv, flash_attn=fa, batch_size=b, ubatch_size=ub)
            for ctx in BUFFER_GRID_CTX for b, ub in BUFFER_GRID_BATCH for fa in ("on", "off")
            for np_, uni in BUFFER_GRID_SLOTS for tk, tv in BUFFER_GRID_TYPES[fa]]


def case_id(s: LlamaCppSettings) -> str:
    """A short name for a setting: c4096-b512-ub128-faoff-np3u-q8_0-f16."""
    return (f"c{s.ctx_size}-b{s.batch_size}-ub{s.ubatch_size}-fa{s.flash_attn}-np{s.n_seq_max}"
            f"{'u' if s.unified else ''}-{s.cache_type_k}-{s.cache_type_v}")


def verify_llamacpp(weights: str, settings: list[LlamaCppSettings], threads: int = 1,
                    progress=None) -> dict[str, Any]:
    """Run every setting against ``weights`` (a GGUF file); the verify report."""
    from ..model import load_spec

    resolved, spec = load_spec(weights)
    tensors = model_weights(spec)
    rt = _Runtime(str(weights), threads)
    try:
        buffers = compare_model_buffers(rt, tensors)
        results = []
        for i, s in enumerate(settings):
            results.append(run_case(rt, spec, replace(s), tensors))
            if progress:
                progress(i + 1, len(settings), results[-1])
    finally:
        rt.close()
    lib_version = getattr(rt.lib, "__version__", None)
    passed = bool(results) and all(r.passed for r in results)
    return {"engine": "llamacpp", "weights": str(weights), "model": resolved.name,
            "llama_cpp_python": lib_version, "checks": len(results),
            "passed_checks": sum(r.passed for r in results), "passed": passed,
            "model_buffers": buffers,
            "compute_buffer_checks": sum(r.compute_buffer is not None for r in results),
            "compute_buffer_matches": sum(bool(r.compute_buffer and r.compute_buffer["matches"])
                                          for r in results),
            "results": [r.record() for r in results]}
