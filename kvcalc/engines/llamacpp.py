"""llama.cpp (``llama-server``, ``llama-cli``, llama-cpp-python): the caches it allocates up front.

llama.cpp is a contiguous allocator: at start-up it creates K and V tensors for every cell of
every stream and never grows them. What it allocates depends on the model, the context size,
the slots and a handful of settings, by these rules (llama.cpp ``src/llama-context.cpp``
``llama_context::llama_context``, ``src/llama-kv-cache.cpp``, ``src/llama-kv-cache-iswa.cpp``,
``src/llama-model.cpp`` ``create_memory``; docs/llamacpp.md derives them with examples):

- ``n_ctx0`` = ``--ctx-size``, or the model's ``context_length`` when 0 (the default);
  ``n_batch = min(n_ctx0, --batch-size)``, ``n_ubatch = min(n_batch, --ubatch-size)``;
- ``n_ctx = pad(n_ctx0, 256)``; unified cache: ``n_ctx_seq = n_ctx``, one stream; otherwise
  ``n_ctx_seq = pad(n_ctx // n_seq_max, 256)``, ``n_ctx = n_ctx_seq * n_seq_max`` and one
  stream per slot (:func:`context_sizes`);
- models without sliding-window layers: one cache of ``n_ctx_seq`` cells per stream on every
  layer; with SWA layers (``llama_kv_cache_iswa``) a base cache for the full-attention layers
  (``n_ctx_seq`` cells) and an SWA cache of
  ``pad(min(n_ctx_seq, n_swa x (unified ? n_seq_max : 1) + n_ubatch), 256)`` cells, or
  ``n_ctx_seq`` with ``--swa-full`` (:func:`swa_cells`);
- per layer and stream a K tensor of ``cells`` rows of ``n_head_kv x head_dim_k`` values and a
  V tensor likewise (MLA: no V); a row of ``n`` values in a block type costs
  ``n / block x block bytes`` (:data:`GGML_TYPES`, ggml ``ggml-common.h``);
- a quantized V cache needs flash attention: with ``--flash-attn off`` llama.cpp refuses to
  create the context (:data:`QUANTIZED_V_REFUSAL`); ``auto`` turns it on. With flash attention
  a quantized K type's block must divide the head size.

Version bands (``--llamacpp-version YYYY.MM``, the month of the llama.cpp build): from Nov 2025
(ggml-org/llama.cpp#17046) the rules above; before (#16812, Oct 2025, and earlier) the context
was not padded to 256 and each stream's cache was padded to 256 cells with flash attention, 32
without (#7257).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from .. import arch
from ..arch import AttentionLayer, MLALayer, ModelSpec
from ..dtypes import KVDtype
from ..errors import UsageError
from ..units import cdiv
from ..budget import Budget
from . import Band, Engine, Setting, distribution_version, register
from .cache import KEEP_ALL, KEEP_NONE, KEEP_WINDOW, LayerCache, Layout, no_cache_formula

#: llama.cpp pads the context and the per-sequence context to 256 cells
#: (``GGML_PAD(cparams.n_ctx, 256)`` in llama_context, ggml-org/llama.cpp#17046)
CTX_PAD = 256
#: the SWA cache is padded to 256 cells too ("always padded to 256 for performance",
#: llama-kv-cache-iswa.cpp, ggml-org/llama.cpp#17037)
SWA_PAD = 256
#: before Nov 2025: each stream's cache padded to 256 cells with flash attention, 32 without
#: (``llama_kv_cache::get_padding``, ggml-org/llama.cpp#7257; removed by #16812)
OLD_PAD_FLASH_ATTN = 256
OLD_PAD_NO_FLASH_ATTN = 32
#: llama-server's defaults (``common_params``, common/common.h): -c 0 = the model's context,
#: -b 2048, -ub 512, --swa-full off, -fa auto, -ctk/-ctv f16; -np left on auto = 4 slots
#: with a unified cache (tools/server/server.cpp)
SERVER_BATCH = 2048
SERVER_UBATCH = 512
SERVER_AUTO_PARALLEL = 4
#: the error llama.cpp gives for a quantized V cache without flash attention
#: (``llama_init_from_model``, src/llama-context.cpp)
QUANTIZED_V_REFUSAL = "quantized V cache requires flash_attn to be enabled"
FLASH_ATTN_CHOICES = ("on", "off", "auto")
#: the month from which the rules above hold (ggml-org/llama.cpp#17046, 6 Nov 2025)
PAD_256_SINCE = (2025, 11)
DEFAULT_VERSION = "2026.10"
#: llama.cpp vendored by the llama-cpp-python releases kvcalc was checked against
VENDORED_BUILDS = {"0.3.36": "2026.10"}


@dataclass(frozen=True)
class GgmlType(KVDtype):
    """A ggml tensor type: ``block`` values stored in ``block_bytes`` bytes (ggml-common.h)."""

    block: int = 1
    block_bytes: int = 2
    #: ``enum ggml_type`` (ggml/include/ggml.h): what llama.cpp's C API takes for type_k/type_v
    ggml_id: int = 1

    def row_bytes(self, elements: int) -> int:
        """``ggml_row_size``: bytes of a row of ``elements`` values (a whole number of blocks)."""
        if elements % self.block:
            raise UsageError(f"cache type {self.name} stores blocks of {self.block} values: a row "
                             f"of {elements} values does not fit (llama.cpp refuses it)")
        return elements // self.block * self.block_bytes

    @property
    def quantized(self) -> bool:
        return self.block > 1

    @property
    def element_bytes(self) -> int:
        return max(1, self.block_bytes // self.block)


def _ggml(name: str, block: int, block_bytes: int, ggml_id: int) -> GgmlType:
    return GgmlType(name, block_bytes * 8 // block, "ggml", block, block_bytes, ggml_id)


#: the cache types llama-server accepts for -ctk / -ctv (common/arg.cpp ``kv_cache_types``)
#: with their block sizes (ggml/src/ggml-common.h: block_q8_0 = fp16 scale + 32 int8, ...)
GGML_TYPES: dict[str, GgmlType] = {t.name: t for t in (
    _ggml("f32", 1, 4, 0),
    _ggml("f16", 1, 2, 1),
    _ggml("bf16", 1, 2, 30),
    _ggml("q8_0", 32, 34, 8),      # fp16 scale + 32 x int8
    _ggml("q4_0", 32, 18, 2),      # fp16 scale + 16 bytes of nibbles
    _ggml("q4_1", 32, 20, 3),      # fp16 scale + fp16 min + 16 bytes
    _ggml("iq4_nl", 32, 18, 20),    # fp16 scale + 16 bytes (non-linear 4-bit)
    _ggml("q5_0", 32, 22, 6),      # fp16 scale + 4 bytes of high bits + 16 bytes
    _ggml("q5_1", 32, 24, 7),      # fp16 scale + fp16 min + 4 + 16 bytes
)}
CACHE_TYPE_CHOICES = tuple(GGML_TYPES)
#: kvcalc's --kv-dtype names for the llama.cpp types they mean
KV_DTYPE_TO_GGML = {"auto": "f16", "fp16": "f16", "fp32": "f32", "bf16": "bf16"}


def ggml_type(name: str) -> GgmlType:
    key = str(name).strip().lower()
    key = KV_DTYPE_TO_GGML.get(key, key)
    if key not in GGML_TYPES:
        raise UsageError(f"unknown llama.cpp cache type '{name}': choose one of "
                         f"{', '.join(CACHE_TYPE_CHOICES)}")
    return GGML_TYPES[key]


def pad(x: int, m: int) -> int:
    """``GGML_PAD(x, m)``: ``x`` rounded up to a multiple of ``m``."""
    return cdiv(x, m) * m


@dataclass(frozen=True)
class LlamaCppSettings:
    """A llama.cpp context's settings, under llama-server's option names (defaults: its own)."""

    ctx_size: int = 0                  # -c; 0 = the model's context_length
    parallel: int | None = None        # -np; None = auto (4 slots, unified cache)
    kv_unified: bool | None = None     # -kvu; None = llama-server's choice
    cache_type_k: str = "f16"          # -ctk
    cache_type_v: str = "f16"          # -ctv
    flash_attn: str = "auto"           # -fa on|off|auto
    swa_full: bool = False             # --swa-full
    batch_size: int = SERVER_BATCH     # -b
    ubatch_size: int = SERVER_UBATCH   # -ub
    version: str = DEFAULT_VERSION

    @property
    def n_seq_max(self) -> int:
        return SERVER_AUTO_PARALLEL if self.parallel is None else self.parallel

    @property
    def unified(self) -> bool:
        """llama-server: -np auto turns the unified cache on; an explicit -np keeps it off
        unless -kvu (tools/server/server.cpp)."""
        if self.kv_unified is not None:
            return self.kv_unified
        return self.parallel is None

    def validate(self) -> None:
        for flag, value, lo in (("--ctx-size", self.ctx_size, 0), ("--parallel", self.n_seq_max, 1),
                                ("--batch-size", self.batch_size, 1),
                                ("--ubatch-size", self.ubatch_size, 1)):
            if value < lo:
                raise UsageError(f"invalid {flag} {value}: must be at least {lo}")
        if self.flash_attn not in FLASH_ATTN_CHOICES:
            raise UsageError(f"invalid --flash-attn '{self.flash_attn}': choose on, off or auto")
        ggml_type(self.cache_type_k), ggml_type(self.cache_type_v)


@dataclass(frozen=True)
class ContextSizes:
    """What ``llama_context`` derives from the settings (its start-up log prints them)."""

    n_ctx: int
    n_ctx_seq: int
    n_seq_max: int
    n_stream: int
    n_batch: int
    n_ubatch: int
    unified: bool


def context_sizes(settings: LlamaCppSettings, context_length: int | None) -> ContextSizes:
    """n_ctx, n_ctx_seq, streams and batch sizes (``llama_context::llama_context``)."""
    n_ctx0 = settings.ctx_size or context_length
    if not n_ctx0:
        raise UsageError("the model names no context length: give --ctx-size")
    n_seq = settings.n_seq_max
    n_batch = min(n_ctx0, settings.batch_size)          # causal models: the unpadded n_ctx
    n_ubatch = min(n_batch, settings.ubatch_size)
    old = _old_band(settings.version)
    if old:
        n_ctx = n_ctx0
        n_ctx_seq = n_ctx if settings.unified else n_ctx // n_seq
    else:
        n_ctx = pad(n_ctx0, CTX_PAD)
        if settings.unified:
            n_ctx_seq = n_ctx
        else:
            n_ctx_seq = pad(n_ctx // n_seq, CTX_PAD)
            n_ctx = n_ctx_seq * n_seq
    if n_ctx_seq == 0:
        raise UsageError(f"--ctx-size {n_ctx0:,} over {n_seq} slots leaves no cells per slot "
                         "(llama.cpp: n_ctx_seq == 0)")
    return ContextSizes(n_ctx, n_ctx_seq, n_seq, 1 if settings.unified else n_seq, n_batch,
                        n_ubatch, settings.unified)


def _old_band(version: str) -> bool:
    return LLAMACPP.parse_version(version) < PAD_256_SINCE


def flash_attn_enabled(settings: LlamaCppSettings) -> bool:
    """auto turns flash attention on where the backend has it (CPU, CUDA, Metal, Vulkan)."""
    return settings.flash_attn != "off"


def refusal(settings: LlamaCppSettings, layout: Layout) -> str | None:
    """llama.cpp's reason for refusing these settings, None when it creates the context."""
    type_v = ggml_type(settings.cache_type_v)
    type_k = ggml_type(settings.cache_type_k)
    if type_v.quantized and settings.flash_attn == "off":
        return QUANTIZED_V_REFUSAL
    if type_k.quantized and flash_attn_enabled(settings):
        for layer in layout.spec.layers:
            dim = _head_dim_k(layer)
            if dim and dim % type_k.block:
                return (f"K cache type {type_k.name} with block size {type_k.block} does not "
                        f"divide n_embd_head_k={dim}")
    return None


def _head_dim_k(layer: arch.Layer) -> int:
    if isinstance(layer, AttentionLayer):
        return layer.head_dim_k
    if isinstance(layer, MLALayer):
        return layer.kv_lora_rank + layer.qk_rope_head_dim
    return 0


@dataclass(frozen=True)
class Cache:
    """One llama.cpp KV cache (``llama_kv_cache``): its cells per stream and tensor bytes."""

    cache: str              # "base" or "swa"
    cells_per_stream: int
    n_stream: int
    layers: int
    k_bytes: int
    v_bytes: int
    type_k: str
    type_v: str

    @property
    def total_bytes(self) -> int:
        return self.k_bytes + self.v_bytes

    def record(self) -> dict[str, Any]:
        return {"cache": self.cache, "cells_per_stream": self.cells_per_stream,
                "n_stream": self.n_stream, "layers": self.layers, "k_bytes": self.k_bytes,
                "v_bytes": self.v_bytes, "total_bytes": self.total_bytes}

    def log_line(self, n_seq_max: int) -> str:
        """The line llama.cpp logs for this cache (``llama_kv_cache``; MiB = 2^20, %.2f)."""
        mib = 1024 * 1024
        return (f"llama_kv_cache: size = {self.total_bytes / mib:7.2f} MiB "
                f"({self.cells_per_stream:6d} cells, {self.layers:3d} layers, "
                f"{n_seq_max:2d}/{self.n_stream} seqs), K ({self.type_k}): "
                f"{self.k_bytes / mib:7.2f} MiB, V ({self.type_v}): {self.v_bytes / mib:7.2f} MiB")


@dataclass(frozen=True)
class Allocation:
    """Everything llama.cpp allocates for the KV cache of one context."""

    settings: LlamaCppSettings
    sizes: ContextSizes
    flash_attn: bool
    caches: tuple[Cache, ...]
    layout: Layout
    notes: tuple[str, ...] = ()
    #: the engine's own object(s) in JSON beside "llamacpp" (Ollama's mapping)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def k_bytes(self) -> int:
        return sum(c.k_bytes for c in self.caches)

    @property
    def v_bytes(self) -> int:
        return sum(c.v_bytes for c in self.caches)

    @property
    def total_bytes(self) -> int:
        return self.k_bytes + self.v_bytes

    @property
    def bytes_per_slot(self) -> int:
        """Bytes per slot when each slot has its own stream; the whole cache when unified."""
        return self.total_bytes // self.sizes.n_stream

    def record(self) -> dict[str, Any]:
        s, z = self.settings, self.sizes
        return {
            "version": s.version, "band": self.layout.band,
            "n_ctx": z.n_ctx, "n_ctx_seq": z.n_ctx_seq, "n_seq_max": z.n_seq_max,
            "n_stream": z.n_stream, "kv_unified": z.unified, "n_batch": z.n_batch,
            "n_ubatch": z.n_ubatch, "flash_attn": self.flash_attn, "swa_full": s.swa_full,
            "cache_type_k": ggml_type(s.cache_type_k).name,
            "cache_type_v": ggml_type(s.cache_type_v).name,
            "caches": [c.record() for c in self.caches],
            "k_bytes": self.k_bytes, "v_bytes": self.v_bytes, "total_bytes": self.total_bytes,
            "log": self.log_lines(),
        }

    def log_lines(self) -> list[str]:
        return [c.log_line(self.sizes.n_seq_max) for c in self.caches]

    @property
    def warnings(self) -> tuple[str, ...]:
        """llama.cpp's warnings for this context (a context above the trained one)."""
        w = context_warning(self.layout.spec, self.sizes)
        return (w,) if w else ()

    def records(self) -> dict[str, Any]:
        """The JSON objects estimate and plan add: ``llamacpp`` and the engine's own."""
        return {"llamacpp": self.record(), **self.extra}


def swa_cells(sizes: ContextSizes, n_swa: int, swa_full: bool, cell_pad: int) -> int:
    """Cells per stream of the SWA cache (``llama_kv_cache_iswa``): the window of every sequence
    sharing the stream plus one micro-batch, padded; the base size with ``--swa-full``."""
    if swa_full:
        return sizes.n_ctx_seq
    per_stream = n_swa * (sizes.n_seq_max if sizes.unified else 1) + sizes.n_ubatch
    return pad(min(sizes.n_ctx_seq, per_stream), cell_pad)


def cache_groups(spec: ModelSpec) -> tuple[dict[str, list[arch.Layer]], int]:
    """The layers of the base cache (full attention, MLA) and of the SWA cache (sliding), and
    the window (``llama_kv_cache_iswa``'s filters; layers without a cache in neither)."""
    groups: dict[str, list[arch.Layer]] = {"base": [], "swa": []}
    window = 0
    for layer in spec.layers:
        if isinstance(layer, AttentionLayer) and layer.kind == arch.SLIDING:
            groups["swa"].append(layer)
            window = layer.window or window
        elif isinstance(layer, (AttentionLayer, MLALayer)):
            groups["base"].append(layer)
    return groups, window


def allocate(spec: ModelSpec, settings: LlamaCppSettings) -> Allocation:
    """The caches llama.cpp allocates for ``spec`` with ``settings`` (module doc), or the
    UsageError with llama.cpp's reason when it refuses them."""
    settings.validate()
    layout = llamacpp_layout(spec, settings.cache_type_k, settings.cache_type_v, settings.version)
    reason = refusal(settings, layout)
    if reason:
        raise UsageError(f"llama.cpp refuses these settings: {reason}"
                         + (" (use --flash-attn on or auto, or an f16 V cache)"
                            if reason == QUANTIZED_V_REFUSAL else ""))
    sizes = context_sizes(settings, spec.max_position_embeddings)
    fa = flash_attn_enabled(settings)
    old = _old_band(settings.version)
    cell_pad = 1 if not old else (OLD_PAD_FLASH_ATTN if fa else OLD_PAD_NO_FLASH_ATTN)
    base_cells = pad(sizes.n_ctx_seq, cell_pad)
    type_k, type_v = ggml_type(settings.cache_type_k), ggml_type(settings.cache_type_v)
    groups, window = cache_groups(spec)
    caches = []
    for name, layers in groups.items():
        if not layers:
            continue
        cells = base_cells if name == "base" else swa_cells(
            sizes, window, settings.swa_full, SWA_PAD if not old else cell_pad)
        k = v = 0
        for layer in layers:
            k_row, v_row = cell_rows(layer, type_k, type_v)
            k += k_row * cells * sizes.n_stream
            v += v_row * cells * sizes.n_stream
        caches.append(Cache(name, cells, sizes.n_stream, len(layers), k, v, type_k.name,
                            type_v.name))
    notes = [f"llama.cpp reserves every cell at start-up: {sizes.n_stream} stream(s) of "
             f"{sizes.n_ctx_seq:,} cells" + (" shared by all slots" if sizes.unified else
                                              ", one per slot")]
    if settings.ctx_size and sizes.n_ctx != settings.ctx_size:
        notes.append(f"--ctx-size {settings.ctx_size:,} becomes n_ctx {sizes.n_ctx:,} "
                     f"(padded to {CTX_PAD} cells" + ("" if sizes.unified else
                                                       f", {sizes.n_ctx_seq:,} per slot") + ")")
    if not settings.ctx_size:
        notes.append(f"--ctx-size 0: the model's context length "
                     f"{spec.max_position_embeddings:,} tokens")
    return Allocation(settings, sizes, fa, tuple(caches), layout, tuple(notes))


def cell_rows(layer: arch.Layer, type_k: GgmlType, type_v: GgmlType) -> tuple[int, int]:
    """K and V bytes of one cell of one layer: ``n_head_kv x head_dim`` values in each type
    (MLA: one K row of ``kv_lora_rank + rope`` values, no V)."""
    if isinstance(layer, MLALayer):
        return type_k.row_bytes(layer.kv_lora_rank + layer.qk_rope_head_dim), 0
    assert isinstance(layer, AttentionLayer)
    return (type_k.row_bytes(layer.kv_heads * layer.head_dim_k),
            type_v.row_bytes(layer.kv_heads * layer.head_dim_v))


@lru_cache(maxsize=256)
def llamacpp_layout(spec: ModelSpec, type_k: str = "f16", type_v: str = "f16",
                    version: str = DEFAULT_VERSION, engine: str = "llamacpp") -> Layout:
    """Bytes per token per layer in llama.cpp's cache types (token-granular; what a context
    allocates up front is :func:`allocate`)."""
    tk, tv = ggml_type(type_k), ggml_type(type_v)
    band = LLAMACPP.band(version)
    out = []
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, (AttentionLayer, MLALayer)):
            k, v = cell_rows(layer, tk, tv)
            if isinstance(layer, MLALayer):
                text = (f"latent (kv_lora_rank {layer.kv_lora_rank} + rope "
                        f"{layer.qk_rope_head_dim}) in {tk.name}, no V: {k} B")
            else:
                text = (f"{layer.kv_heads} kv heads x (K {layer.head_dim_k} in {tk.name} + V "
                        f"{layer.head_dim_v} in {tv.name}) = {k} + {v} B")
            if layer.kind == arch.SLIDING:
                out.append(LayerCache(i, layer.kind, k + v, KEEP_WINDOW, layer.window + 1,
                                      formula=text + f", window {layer.window:,}"))
            else:
                out.append(LayerCache(i, layer.kind, k + v, KEEP_ALL, formula=text))
        elif isinstance(layer, arch.StateLayer):
            raise UsageError(f"{spec.name} has recurrent layers: kvcalc's llama.cpp layout "
                             "covers attention caches only")
        else:
            out.append(LayerCache(i, layer.kind, 0, KEEP_NONE, formula=no_cache_formula(layer)))
    dtype = tk if tk == tv else replace(tk, name=f"{tk.name}/{tv.name}")
    return Layout(spec, engine, dtype, tuple(out), None, 1, version, band.name,
                  (f"llama.cpp cache types: K {tk.name}, V {tv.name}",))


BANDS = (
    Band("<2025.11", None, (2025, 10),
         ("the context is not padded to 256; each stream's cache is padded to 256 cells with "
          "flash attention, 32 without (modelled from the PRs, not checked against a build)",),
         ("ggml-org/llama.cpp#7257 (KV padding 32 when FA is off)",
          "ggml-org/llama.cpp#16812 (Oct 2025: KV cache size padding removed)")),
    Band(">=2025.11", (2025, 11), None,
         ("n_ctx and the per-sequence context padded to 256 cells; the SWA cache is "
          "n_swa x (unified ? slots : 1) + n_ubatch cells padded to 256",),
         ("ggml-org/llama.cpp#17046 (Nov 2025: pad the cache size to 256)",
          "ggml-org/llama.cpp src/llama-context.cpp, src/llama-kv-cache-iswa.cpp "
          "(commit 0c1e57098, vendored by llama-cpp-python 0.3.36)")),
)


class LlamaCpp(Engine):
    name = "llamacpp"
    aliases = ("llama.cpp", "llama-cpp", "llama-server")
    display_name = "llama.cpp"
    package = "llama-cpp-python"
    bands = BANDS
    newest_checked = DEFAULT_VERSION
    default_version = DEFAULT_VERSION
    version_flag = "--llamacpp-version"
    version_example = "2025.10"
    CHOICES = {"cache_type": CACHE_TYPE_CHOICES, "flash_attn": FLASH_ATTN_CHOICES}

    def server_settings(self, options: dict[str, Any]) -> "LlamaCppSettings":
        return server_settings(options)
    settings = (
        Setting("n_ctx", 0, "--ctx-size", "tokens over all slots; 0 = the model's context"),
        Setting("n_parallel", None, "--parallel", "slots; auto = 4 with a unified cache"),
        Setting("kv_unified", None, "--kv-unified/--no-kv-unified",
                "one stream shared by all slots; on with -np auto, off with an explicit -np"),
        Setting("type_k", "f16", "--cache-type-k", ", ".join(CACHE_TYPE_CHOICES)),
        Setting("type_v", "f16", "--cache-type-v", "quantized types need flash attention"),
        Setting("flash_attn", "auto", "--flash-attn", "on, off or auto"),
        Setting("swa_full", False, "--swa-full", "SWA layers keep the full context"),
        Setting("n_batch", SERVER_BATCH, "--batch-size", "logical batch"),
        Setting("n_ubatch", SERVER_UBATCH, "--ubatch-size", "micro-batch: sizes the SWA cache"),
    )

    def installed_version(self) -> str | None:
        """The llama.cpp build (YYYY.MM) vendored by the installed llama-cpp-python, when known."""
        installed = distribution_version(self.package)
        return VENDORED_BUILDS.get(installed) if installed else None

    def layout(self, spec, kv_dtype: str = "auto", *, version: str | None = None,
               block_size: int | None = None, tp: int = 1) -> Layout:
        if tp != 1:
            raise UsageError("the llama.cpp layout models one process: --tp needs --engine vllm")
        type_k, _, type_v = str(kv_dtype).partition("/")   # "q8_0/f16": K and V types
        return llamacpp_layout(spec, type_k, type_v or type_k, version or DEFAULT_VERSION)

    def allocation(self, spec, options: dict[str, Any], kv_dtype: str = "auto",
                   version: str | None = None) -> Allocation:
        return allocate(spec, server_settings(options, kv_dtype, version))

    def describe(self, layout: Layout) -> str:
        return (f"llama.cpp {layout.version} (band {layout.band}), contiguous cache reserved "
                f"at start-up")

    # -- kvcalc plan: the budget, the caches for llama-server's options, what else fits -------

    plans = True

    @property
    def plan_options(self) -> tuple[str, ...]:
        return tuple(f"--{k.replace('_', '-')}" for k in SERVER_OPTIONS + OFFLOAD_OPTIONS)

    def plan_block_size(self, spec, inp) -> int:
        return 1  # cells of one token

    def plan_kv_dtype(self, options: dict[str, Any]) -> str | None:
        k, v = options.get("cache_type_k"), options.get("cache_type_v")
        if not (k or v):
            return None
        return f"{k or 'f16'}/{v or 'f16'}"

    def plan_max_len(self, spec, options: dict[str, Any]) -> int | None:
        if not options.get("ctx_size"):
            return None
        return max(1, options["ctx_size"] // server_settings(options).n_seq_max)

    def plan_weights_dtype(self, spec, given: str) -> str:
        """--weights-dtype for llama.cpp: a llama.cpp file type (q4_k_m, q8_0, iq4_xs ...);
        auto = the GGUF file's own tensors, or Q4_K_M for a preset or config."""
        from ..gguf_weights import DEFAULT_FILE_TYPE, FILE_TYPES

        key = str(given or "auto").strip().lower()
        if key == "auto":   # an Ollama name's tag, else what people download
            return str((spec.config or {}).get("ollama_quantization") or DEFAULT_FILE_TYPE)
        key = {"fp16": "f16", "fp32": "f32"}.get(key, key)
        if key not in FILE_TYPES:
            raise UsageError(f"--weights-dtype {given} is not a llama.cpp file type: choose "
                             f"one of {', '.join(FILE_TYPES)}")
        return key

    def plan_budgets(self, spec, params, inp) -> list:
        return _plan_budgets(self, spec, inp)

    def plan_figures(self, spec, inp, layout, budgets):
        base = _server_options_for_plan(inp, spec)
        kv = "auto" if "/" in inp.kv_dtype else inp.kv_dtype

        def make_alloc(ctx: int | None = None) -> Allocation:
            return self.allocation(spec, base if ctx is None else {**base, "ctx_size": ctx},
                                   kv, None)

        return plan_figures_for(spec, inp, make_alloc,
                                {k: inp.option(k) for k in OFFLOAD_OPTIONS})


def server_settings(options: dict[str, Any], kv_dtype: str = "auto",
                    version: str | None = None) -> LlamaCppSettings:
    """llama-server's options (kvcalc's option names, None = not given) as settings."""
    default = KV_DTYPE_TO_GGML.get(kv_dtype, kv_dtype)
    given = {k: v for k, v in {
        "ctx_size": options.get("ctx_size"), "parallel": options.get("parallel"),
        "kv_unified": options.get("kv_unified"),
        "cache_type_k": options.get("cache_type_k") or default,
        "cache_type_v": options.get("cache_type_v") or default,
        "flash_attn": options.get("flash_attn"), "swa_full": options.get("swa_full"),
        "batch_size": options.get("batch_size"), "ubatch_size": options.get("ubatch_size"),
        "version": version}.items() if v is not None}
    return LlamaCppSettings(**given)


LLAMACPP = register(LlamaCpp())


# --------------------------------------------------------------------------------------------
# Plans: a memory budget, the slots and contexts that fit, per-slot versus unified


def model_weights(spec: ModelSpec, file_type: str | None = None):
    """The weights llama.cpp loads (:class:`kvcalc.gguf_weights.Weights`): every tensor of a
    GGUF file; for a preset or config, the tensors of a ``file_type`` GGUF (default
    :data:`~kvcalc.gguf_weights.DEFAULT_FILE_TYPE`, Q4_K_M) as llama-quantize writes them."""
    from ..gguf_weights import DEFAULT_FILE_TYPE, from_gguf_facts, quantize_spec

    gg = spec.config.get(arch.GGUF_CONFIG_KEY) if spec.config else None
    if isinstance(gg, dict):
        found = from_gguf_facts(gg, spec.num_layers)
        if found is not None:
            return found
    return quantize_spec(spec, file_type or DEFAULT_FILE_TYPE)


def model_weight_bytes(spec: ModelSpec, file_type: str | None = None) -> tuple[int, str]:
    """The bytes of :func:`model_weights` and where the figure came from."""
    w = model_weights(spec, file_type)
    return w.total_bytes, w.source


def context_warning(spec: ModelSpec, sizes: ContextSizes) -> str | None:
    """llama.cpp's warning for a per-sequence context above the trained one
    (``llama_context``: "n_ctx_seq (X) > n_ctx_train (Y) -- possible training context
    overflow")."""
    train = spec.max_position_embeddings
    if train and sizes.n_ctx_seq > train:
        return (f"n_ctx_seq ({sizes.n_ctx_seq}) > n_ctx_train ({train}) -- possible training "
                "context overflow (llama.cpp's warning: the model was trained on "
                f"{train:,} tokens)")
    return None


def fits(spec: ModelSpec, settings: LlamaCppSettings, budget: int) -> bool:
    """True when llama.cpp's caches for ``settings`` fit in ``budget`` bytes."""
    try:
        return allocate(spec, settings).total_bytes <= budget
    except UsageError:
        return False


def max_slots(spec: ModelSpec, settings: LlamaCppSettings, slot_ctx: int, budget: int,
              unified: bool, limit: int = 4096) -> int:
    """Most slots of ``slot_ctx`` tokens each whose caches fit in ``budget`` (``-c slot_ctx x
    slots -np slots``), per-slot streams or one unified stream."""
    from ..units import largest_satisfying

    def ok(n: int) -> bool:
        return fits(spec, replace(settings, ctx_size=slot_ctx * n, parallel=n,
                                  kv_unified=unified), budget)

    return largest_satisfying(ok, limit) if ok(1) else 0


def max_ctx_size(spec: ModelSpec, settings: LlamaCppSettings, budget: int,
                 limit: int = 1 << 24) -> int:
    """The largest ``--ctx-size`` (a multiple of 256) whose caches fit with ``settings``."""
    from ..units import largest_satisfying

    slots = settings.n_seq_max

    def ok(k: int) -> bool:
        return fits(spec, replace(settings, ctx_size=k * CTX_PAD * slots), budget)

    return largest_satisfying(ok, limit // (CTX_PAD * slots)) * CTX_PAD * slots if ok(1) else 0


def plan_capacity(spec: ModelSpec, settings: LlamaCppSettings, budget: int) -> dict[str, Any]:
    """What fits in a KV budget: the configured context, the most slots of its per-slot
    context (per-slot streams and unified), the largest context for its slots."""
    alloc = allocate(spec, settings)
    slot_ctx = alloc.sizes.n_ctx_seq if not alloc.sizes.unified else \
        max(1, alloc.sizes.n_ctx // alloc.sizes.n_seq_max)
    per_slot = replace(settings, kv_unified=False, parallel=settings.n_seq_max,
                       ctx_size=slot_ctx * settings.n_seq_max)
    unified = replace(per_slot, kv_unified=True)
    return {
        "kv_budget_bytes": budget,
        "fits": alloc.total_bytes <= budget,
        "kv_bytes": alloc.total_bytes,
        "slot_context": slot_ctx,
        "max_slots": {"per_slot": max_slots(spec, settings, slot_ctx, budget, False),
                      "unified": max_slots(spec, settings, slot_ctx, budget, True)},
        "max_ctx_size": max_ctx_size(spec, settings, budget),
        "per_slot_vs_unified_bytes": {"per_slot": allocate(spec, per_slot).total_bytes,
                                      "unified": allocate(spec, unified).total_bytes},
    }


#: the llama-server options kvcalc plan takes for --engine llamacpp (setting names as kvcalc's)
SERVER_OPTIONS = ("ctx_size", "parallel", "kv_unified", "cache_type_k", "cache_type_v",
                  "flash_attn", "swa_full", "batch_size", "ubatch_size")


#: llama.cpp's --fit defaults (common/common.h: fit_params on, fit_params_target 1024 MiB per
#: device, fit_params_min_ctx 4096; common/fit.cpp, ggml-org/llama.cpp#16653)
FIT_TARGET = 1024 * 1024 * 1024
FIT_MIN_CTX = 4096
#: the plan options of the offload (llama-server's names): -ngl, -ts, -sm, -nkvo, -ot
OFFLOAD_OPTIONS = ("n_gpu_layers", "tensor_split", "split_mode", "no_kv_offload",
                   "override_tensor", "mmproj")
SPLIT_MODES = ("layer", "row", "none")


def graph_model(spec: ModelSpec):
    """The model as :mod:`.llamacpp_graph` builds its graph, or None for an architecture
    whose graph kvcalc does not build (then :func:`compute_buffer_estimate`): llama.cpp's
    ``llama`` graph (Llama, Mistral, SmolLM: no biases, no sliding layers, no experts) and
    ``gemma3`` (ISWA cache when the model has sliding layers)."""
    from .llamacpp_graph import GraphModel

    cfg = spec.config or {}
    gg = cfg.get(arch.GGUF_CONFIG_KEY) if isinstance(cfg.get(arch.GGUF_CONFIG_KEY), dict) else {}
    name = str(gg.get("architecture") or spec.model_type or "").lower()
    family = ("gemma3" if name in ("gemma3", "gemma3_text") else
              "llama" if name in ("llama", "mistral") else None)
    layers = spec.layers
    if family is None or not layers or not all(isinstance(l, AttentionLayer) for l in layers):
        return None
    first = layers[0]
    if any((l.kv_heads, l.head_dim_k, l.head_dim_v) != (first.kv_heads, first.head_dim_k,
                                                          first.head_dim_k) for l in layers):
        return None
    sliding = tuple(l.kind == arch.SLIDING for l in layers)
    if family == "llama" and any(sliding):
        return None
    if any(cfg.get(k) for k in ("num_local_experts", "num_experts", "attention_bias",
                                "mlp_bias")):
        return None
    n_ff = cfg.get("intermediate_size")
    if not n_ff or not spec.vocab_size:
        return None
    return GraphModel(family, spec.num_layers, spec.hidden_size, spec.num_attention_heads,
                      first.kv_heads, first.head_dim_k, int(n_ff), int(spec.vocab_size),
                      sliding, float(cfg.get("final_logit_softcapping") or 0.0))


def compute_buffer_bytes(spec: ModelSpec, weights, alloc: Allocation) -> int:
    """The compute buffer llama.cpp reserves for its worst-case graph (``llama_context::
    sched_reserve``, its "compute buffer size" line): the model's graph built as llama.cpp
    builds it and placed by ggml-alloc's allocator (:mod:`.llamacpp_graph`), byte for byte
    on the architectures kvcalc builds (:func:`graph_model`); otherwise
    :func:`compute_buffer_estimate`."""
    from .llamacpp_graph import CacheShape, ReserveParams, reserve

    model = graph_model(spec)
    if model is None:
        return compute_buffer_estimate(spec, weights, alloc)
    z = alloc.sizes
    caches = {c.cache: CacheShape(c.cells_per_stream, c.n_stream, c.type_k, c.type_v)
              for c in alloc.caches}
    return reserve(model, ReserveParams(z.n_ctx, z.n_ubatch, z.n_seq_max, z.unified,
                                        alloc.flash_attn, caches.get("base"),
                                        caches.get("swa")))


def compute_buffer_exact(spec: ModelSpec) -> bool:
    """True when :func:`compute_buffer_bytes` builds the model's graph (not an estimate)."""
    return graph_model(spec) is not None


#: bytes per token of the int32 input the logits peak sits above (the estimate below)
COMPUTE_INPUT_BYTES_PER_TOKEN = 4


def compute_buffer_estimate(spec: ModelSpec, weights, alloc: Allocation) -> int:
    """An estimate of the compute buffer for architectures kvcalc builds no graph for: the
    larger of the graph's peaks (not ggml-alloc's placement):

    - the logits of ``n_ubatch`` outputs (``n_vocab x n_ubatch`` f32) with the normed and the
      final hidden state and one int32 input per token;
    - the attention of one layer: without flash attention the f32 ``KQ`` matrix of
      ``n_kv x n_ubatch x n_head`` and the f32 KQ masks of every cache (f16 with flash
      attention), with the Q rows;
    - the FFN's intermediate activations.

    On the two checked models it is short by up to 9 MiB where ggml-alloc leaves holes
    (docs/llamacpp.md)."""
    z = alloc.sizes
    n_ub = z.n_ubatch
    f32 = 4
    h = spec.hidden_size
    vocab = spec.vocab_size or 0
    heads = spec.num_attention_heads
    n_kv = max((c.cells_per_stream for c in alloc.caches), default=0)
    inter = int(spec.config.get("intermediate_size") or 4 * h) if spec.config else 4 * h
    hd = max((l.head_dim_v for l in spec.layers if isinstance(l, AttentionLayer)), default=0)
    logits = vocab * n_ub * f32 + 2 * h * n_ub * f32 + COMPUTE_INPUT_BYTES_PER_TOKEN * n_ub
    mask_bytes = 2 if alloc.flash_attn else f32
    masks = sum(c.cells_per_stream * n_ub * mask_bytes for c in alloc.caches)
    if alloc.flash_attn:
        attn = heads * hd * n_ub * f32 * 2 + masks
    else:
        attn = n_kv * n_ub * heads * f32 + heads * hd * n_ub * f32 + masks
    ffn = 2 * inter * n_ub * f32
    return max(logits, attn + h * n_ub * f32, ffn + h * n_ub * f32)


@dataclass(frozen=True)
class Projector:
    """A multimodal projector (``--mmproj FILE.gguf``): llama-server loads it beside the
    model (``mtmd_init_from_file``, tools/mtmd/) on the first GPU (``--mmproj-offload``, on by
    default), with its own compute buffer for the warm-up image (``clip.cpp``
    ``alloc_compute_meta``)."""

    path: str
    weights_bytes: int
    tensors: int
    compute_bytes: int
    n_patches: int

    def record(self) -> dict[str, Any]:
        return {"path": self.path, "weights_bytes": self.weights_bytes, "tensors": self.tensors,
                "compute_buffer_bytes": self.compute_bytes, "compute_buffer": "estimate",
                "n_patches": self.n_patches}

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.compute_bytes


def read_projector(path: str) -> Projector:
    """The projector's weights (every tensor of its GGUF, ``ggml_nbytes`` by type, exact) and
    an estimate of its compute buffer: the vision encoder on the warm-up image of
    ``clip.vision.image_size`` pixels, ``(image_size / patch_size)^2`` patches, at its peak --
    the larger of one FFN (the up projection and its activation, ``n_patches x n_ff`` f32
    each, with two hidden states) and one attention layer without flash attention (``n_head x
    n_patches^2`` f32 scores with Q, K, V and the output, ``n_patches x n_embd`` f32 each).
    Not a graph of clip.cpp (models with dynamic resolution warm up on other sizes)."""
    from ..gguf import read_header

    h = read_header(path)
    meta = h.metadata
    if not any(str(k).startswith("clip.") for k in meta):
        raise UsageError(f"--mmproj {path}: not a multimodal projector (no clip.* keys; "
                         f"general.architecture = {h.architecture or 'none'})")

    def key(name: str, default: int = 0) -> int:
        v = meta.get(f"clip.vision.{name}", default)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default

    size, patch = key("image_size"), key("patch_size")
    n_embd, n_ff, n_head = key("embedding_length"), key("feed_forward_length"), \
        key("attention.head_count", 1)
    n_patches = (size // patch) ** 2 if size and patch else 0
    f32 = 4
    ffn = 2 * n_patches * n_ff * f32 + 2 * n_patches * n_embd * f32
    attn = n_head * n_patches * n_patches * f32 + 4 * n_patches * n_embd * f32
    return Projector(str(path), h.tensor_bytes, h.tensor_count, max(ffn, attn), n_patches)


def layer_kv_bytes(spec: ModelSpec, alloc: Allocation) -> list[int]:
    """KV bytes of each layer (cells x streams x its K and V rows) for ``alloc``'s caches."""
    s = alloc.settings
    tk, tv = ggml_type(s.cache_type_k), ggml_type(s.cache_type_v)
    cells = {c.cache: c.cells_per_stream * c.n_stream for c in alloc.caches}
    out = []
    for layer in spec.layers:
        if isinstance(layer, AttentionLayer) and layer.kind == arch.SLIDING:
            k, v = cell_rows(layer, tk, tv)
            out.append((k + v) * cells.get("swa", 0))
        elif isinstance(layer, (AttentionLayer, MLALayer)):
            k, v = cell_rows(layer, tk, tv)
            out.append((k + v) * cells.get("base", 0))
        else:
            out.append(0)
    return out


def layer_devices(n_layer: int, ngl: int, split: tuple[float, ...]) -> list[int]:
    """The device of each layer and of the output layer (index ``n_layer``), -1 = CPU
    (``llama_model::load_tensors``: ``i_gpu_start = max(n_layer + 1 - ngl, 0)``, the last
    ``ngl`` layers counting the output go to the GPUs, split by ``upper_bound`` of the
    cumulative ``--tensor-split`` fractions)."""
    total = sum(split)
    cum, acc = [], 0.0
    for x in split:
        acc += x
        cum.append(acc / total)
    start = max(n_layer + 1 - ngl, 0)
    act = min(ngl, n_layer + 1)
    out = []
    for il in range(n_layer + 1):
        if il < start or il - start >= act:
            out.append(-1)
            continue
        frac = (il - start) / act
        out.append(min(next((i for i, c in enumerate(cum) if c > frac), len(cum) - 1),
                       len(cum) - 1))
    return out


@dataclass(frozen=True)
class Placement:
    """Where llama.cpp puts the weights, the KV cache and the compute buffers."""

    n_gpu_layers: int
    devices: tuple[dict[str, int], ...]     # per GPU: weights, kv, compute, total
    host: dict[str, int]                    # the CPU side (RAM)

    def fits(self, memory: int) -> bool:
        return all(d["total"] <= memory for d in self.devices)

    def record(self) -> dict[str, Any]:
        return {"n_gpu_layers": self.n_gpu_layers, "devices": [dict(d) for d in self.devices],
                "host": dict(self.host)}


def place(spec: ModelSpec, weights, alloc: Allocation, ngl: int, split: tuple[float, ...] = (1.0,),
          no_kv_offload: bool = False, override: tuple[str, ...] = (), split_mode: str = "layer",
          compute: int | None = None, mmproj: int = 0) -> Placement:
    """Weights, KV and compute buffer per device for ``-ngl ngl`` (module doc)."""
    import re

    n = spec.num_layers
    n_dev = len(split) if split_mode != "none" else 1
    devs = layer_devices(n, ngl, split if split_mode == "layer" else (1.0,))
    kv = layer_kv_bytes(spec, alloc)
    compute = compute_buffer_bytes(spec, weights, alloc) if compute is None else compute
    pats = [re.compile(p) for p in override]
    rows = [{"weights": 0, "kv": 0, "compute": 0} for _ in range(n_dev)]
    host = {"weights": 0, "kv": 0, "compute": 0}
    for t in weights.tensors:
        il = t.layer if t.layer is not None else (None if _input_tensor(t.name) else n)
        dev = -1 if il is None or any(p.search(t.name) for p in pats) else devs[min(il, n)]
        if dev < 0:
            host["weights"] += t.nbytes
        elif split_mode == "row" and n_dev > 1 and t.layer is not None and len(t.shape) >= 2:
            for i, frac in enumerate(_fractions(split)):   # -sm row: matrices split by rows
                rows[i]["weights"] += int(t.nbytes * frac)
        else:
            rows[dev]["weights"] += t.nbytes
    for il, b in enumerate(kv):
        dev = devs[il]
        if dev < 0 or no_kv_offload:
            host["kv"] += b
        else:
            rows[dev]["kv"] += b
    used = sorted({d for d in devs if d >= 0})
    for d in used:
        rows[d]["compute"] = compute
    if not used:
        host["compute"] = compute
    if mmproj and rows:
        rows[0]["mmproj"] = mmproj      # --mmproj-offload (default): on the first GPU
    for r in (*rows, host):
        r["total"] = r["weights"] + r["kv"] + r["compute"] + r.get("mmproj", 0)
    return Placement(ngl, tuple(rows), host)


def _fractions(split: tuple[float, ...]) -> list[float]:
    total = sum(split)
    return [x / total for x in split]


def _input_tensor(name: str) -> bool:
    return name.startswith(("token_embd.", "per_layer_token_embd.", "token_types.",
                            "position_embd."))


def parse_ngl(value: Any, n_layer: int) -> int | None:
    """-ngl N | all | auto (None: llama.cpp's --fit decides)."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    text = str(value).strip().lower()
    if text == "all":
        return n_layer + 1
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"invalid --n-gpu-layers '{value}': a number, 'all' or 'auto'") from None
    if n < 0:
        return n_layer + 1           # llama.cpp: a negative value is all (-1 in the C API)
    return min(n, n_layer + 1)


def parse_split(value: Any) -> tuple[float, ...]:
    """--tensor-split 3,1 (proportions per GPU)."""
    if value in (None, ""):
        return (1.0,)
    try:
        parts = tuple(float(x) for x in str(value).replace("/", ",").split(","))
    except ValueError:
        raise UsageError(f"invalid --tensor-split '{value}': proportions such as 3,1") from None
    if not parts or any(x < 0 for x in parts) or not sum(parts) > 0:
        raise UsageError(f"invalid --tensor-split '{value}': non-negative proportions, not all 0")
    return parts


@dataclass(frozen=True)
class LlamaCppPlanFigures:
    """What ``kvcalc plan --engine llamacpp`` prints: the weights, KV cache and compute buffer
    per device for the offload, whether they fit, the largest -ngl and -c that fit, llama.cpp's
    --fit choice, and the slots (plan.Plan's ``engine_figures``)."""

    alloc: Allocation | None
    capacity: dict[str, Any] | None
    total_bytes: int
    weights_bytes: int
    weights_source: str
    overhead_bytes: int
    error: str | None = None
    weights: Any = None
    placement: Placement | None = None
    offload: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    projector: Projector | None = None
    key = "llamacpp"

    @property
    def mmproj_bytes(self) -> int:
        """The projector's weights and compute buffer on the GPU (0 without --mmproj)."""
        return self.projector.total_bytes if self.projector else 0

    @property
    def gpu_weights(self) -> int:
        return self.placement.devices[0]["weights"] if self.placement else self.weights_bytes

    @property
    def compute_bytes(self) -> int:
        return self.placement.devices[0]["compute"] if self.placement else 0

    @property
    def kv_budget(self) -> int:
        return (self.total_bytes - self.gpu_weights - self.compute_bytes - self.mmproj_bytes
                - self.overhead_bytes)

    @property
    def gpu_kv(self) -> int:
        if self.placement:
            return self.placement.devices[0]["kv"]
        return self.alloc.total_bytes if self.alloc else 0

    @property
    def fits(self) -> bool:
        if self.error is not None or self.alloc is None:
            return False
        if self.placement:
            return self.placement.fits(self.total_bytes - self.overhead_bytes)
        return self.alloc.total_bytes <= self.kv_budget

    @property
    def shortfall_reason(self) -> str | None:
        """Which term does not fit (the first device that overflows)."""
        if self.error or self.fits or not self.placement:
            return self.error
        cap = self.total_bytes - self.overhead_bytes
        for i, d in enumerate(self.placement.devices):
            if d["total"] <= cap:
                continue
            where = f"GPU {i}" if len(self.placement.devices) > 1 else "the GPU"
            if d["weights"] > cap:
                return (f"the weights on {where} ({d['weights']:,} B, -ngl "
                        f"{self.placement.n_gpu_layers}) exceed its {cap:,} B; lower -ngl "
                        f"(largest that fits: {self.offload.get('max_ngl', 0)})")
            if d["weights"] + d["compute"] + d.get("mmproj", 0) > cap:
                return (f"weights ({d['weights']:,} B) + compute buffer ({d['compute']:,} B)"
                        + (f" + projector ({d['mmproj']:,} B)" if d.get("mmproj") else "")
                        + f" exceed {where}'s {cap:,} B; lower -ngl or --ubatch-size")
            return (f"the KV cache on {where} ({d['kv']:,} B) exceeds the "
                    f"{cap - d['weights'] - d['compute']:,} B left after the weights and the "
                    f"compute buffer; lower --ctx-size (largest at -ngl all: "
                    f"{self.offload.get('max_ctx_size_all_layers', 0):,}) or -ngl")
        return None

    @property
    def num_blocks(self) -> int:
        """Cells (a llama.cpp cache has blocks of one token)."""
        return self.alloc.sizes.n_ctx if self.alloc else 0

    @property
    def kv_cache_tokens(self) -> int:
        return self.num_blocks

    @property
    def max_concurrency(self) -> float:
        """Slots of the per-slot context that fit in the budget (as configured: per-slot
        streams or unified)."""
        if not self.capacity or not self.alloc:
            return 0.0
        return float(self.capacity["max_slots"]["unified" if self.alloc.sizes.unified
                                                else "per_slot"])

    def budget_rows(self) -> list[tuple[str, int]]:
        rows = [("total memory", self.total_bytes),
                (f"- weights on the GPU ({self.weights_source})", self.gpu_weights)]
        if self.placement:
            rows.append(("- compute buffer (llama.cpp's graph reserve)", self.compute_bytes))
        if self.projector:
            rows.append(("- projector (--mmproj: weights + compute estimate)",
                         self.mmproj_bytes))
        rows += [("- the rest (--overhead; default 0)", self.overhead_bytes),
                 ("= memory for the KV cache", self.kv_budget)]
        return rows

    def capacity_rows(self) -> list[tuple[str, str]]:
        if self.alloc is None:
            return [("llama.cpp refuses", self.error or "")]
        z, cap = self.alloc.sizes, self.capacity or {}
        rows = []
        if self.weights is not None:
            w = self.weights
            types = ", ".join(f"{k} {v}" for k, v in sorted(w.type_counts().items()))
            rows.append(("weights (all tensors)", f"{w.total_bytes:,} B, {w.params:,} params "
                         f"({types})"))
        if self.projector:
            pj = self.projector
            rows.append(("projector (--mmproj)", f"weights {pj.weights_bytes:,} B "
                         f"({pj.tensors} tensors) + compute buffer {pj.compute_bytes:,} B "
                         f"(estimate: {pj.n_patches:,} patches)"))
        rows += [("n_ctx / n_ctx_seq / streams", f"{z.n_ctx:,} / {z.n_ctx_seq:,} / {z.n_stream}"
                  + (" (unified)" if z.unified else "")),
                 ("KV cache llama.cpp allocates", f"{self.alloc.total_bytes:,} B")]
        if self.placement:
            p = self.placement
            rows.append(("-ngl (layers on the GPU, output counted)",
                         f"{p.n_gpu_layers} of {self.alloc.layout.spec.num_layers + 1}"
                         + (" (llama.cpp --fit)" if self.offload.get("fit") else "")))
            for i, d in enumerate(p.devices):
                if d.get("mmproj"):
                    rows.append((f"GPU {i}: weights + KV + compute + mmproj = total",
                                 f"{d['weights']:,} + {d['kv']:,} + {d['compute']:,} + "
                                 f"{d['mmproj']:,} = {d['total']:,} B"))
                    continue
                rows.append((f"GPU {i}: weights + KV + compute = total",
                             f"{d['weights']:,} + {d['kv']:,} + {d['compute']:,} = "
                             f"{d['total']:,} B"))
            h = p.host
            rows.append(("CPU (RAM): weights + KV + compute",
                         f"{h['weights']:,} + {h['kv']:,} + {h['compute']:,} = {h['total']:,} B"))
        rows.append(("fits", "yes" if self.fits else "no"))
        o = self.offload
        if o:
            rows.append((f"largest -ngl that fits at -c {o['ctx_size']:,}", f"{o['max_ngl']}"))
            rows.append(("largest -c at -ngl all (up to the trained context)",
                         f"{o['max_ctx_size_all_layers']:,}"))
            if o.get("fit"):
                rows.append(("llama.cpp --fit would choose", f"-c {o['fit']['ctx_size']:,} "
                             f"-ngl {o['fit']['n_gpu_layers']}"))
        if cap:
            rows += [(f"most slots of {cap['slot_context']:,} tokens (per-slot / unified)",
                      f"{cap['max_slots']['per_slot']:,} / {cap['max_slots']['unified']:,}"),
                     (f"largest --ctx-size for {z.n_seq_max} slot(s), KV budget only",
                      f"{cap['max_ctx_size']:,}")]
        return rows

    def log_lines(self) -> list[str]:
        return self.alloc.log_lines() if self.alloc else [self.error or ""]

    @property
    def notes(self) -> tuple[str, ...]:
        return (self.alloc.notes if self.alloc else ()) + self.warnings

    def record(self) -> dict[str, Any]:
        """The ``llamacpp`` object of ``kvcalc plan --format json`` (Ollama's mapping nested
        under ``ollama``)."""
        out = dict(self.alloc.record()) if self.alloc else {}
        if self.alloc:
            out.update(self.alloc.extra)
        out.update({"error": self.error, "kv_budget_bytes": self.kv_budget,
                    "weights_bytes": self.weights_bytes, "weights_source": self.weights_source,
                    "weights": self.weights.record() if self.weights is not None else None,
                    "compute_buffer_bytes": self.compute_bytes,
                    "placement": self.placement.record() if self.placement else None,
                    "mmproj": self.projector.record() if self.projector else None,
                    "offload": self.offload or None, "fits": self.fits,
                    "shortfall": self.shortfall_reason, "capacity": self.capacity})
        return out


def plan_figures_for(spec: ModelSpec, inp, make_alloc, options: dict[str, Any] | None = None
                     ) -> LlamaCppPlanFigures:
    """Figures for a plan: ``make_alloc(ctx_size=None)`` gives the Allocation (for another
    --ctx-size when given); ``options``: the offload options (-ngl, -ts, -sm, -nkvo, -ot)."""
    o = options or {}
    warnings: list[str] = []
    try:
        weights = model_weights(spec, None if inp.weights_dtype in (None, "auto")
                                else inp.weights_dtype)
    except UsageError as exc:
        weights, wsource = None, str(exc)
    if weights is not None:
        wbytes, wsource = weights.total_bytes, weights.source
    else:
        wbytes = 0
    if inp.weights is not None:
        weights, wbytes, wsource = None, inp.weights, "--weights-memory"
    elif weights is None:
        return LlamaCppPlanFigures(None, None, inp.gpu.memory_bytes, 0, "", 0, wsource)
    overhead = inp.overhead or 0
    total = inp.gpu.memory_bytes
    try:
        alloc = make_alloc(None)
    except UsageError as exc:
        return LlamaCppPlanFigures(None, None, total, wbytes, wsource, overhead, str(exc),
                                   weights)
    w = context_warning(spec, alloc.sizes)
    if w:
        warnings.append(w)
    if inp.kv_budget is not None or weights is None:   # the budget given: no placement
        budget = inp.kv_budget if inp.kv_budget is not None else total - wbytes - overhead
        cap = plan_capacity(spec, alloc.settings, max(0, budget)) if budget > 0 else None
        return LlamaCppPlanFigures(alloc, cap, total if inp.kv_budget is None else
                                   budget + wbytes + overhead, wbytes, wsource, overhead,
                                   weights=weights, warnings=tuple(warnings))
    n = spec.num_layers
    split = parse_split(o.get("tensor_split"))
    mode = o.get("split_mode") or "layer"
    if mode not in SPLIT_MODES:
        raise UsageError(f"invalid --split-mode '{mode}': choose layer, row or none")
    nkvo = bool(o.get("no_kv_offload"))
    ot = tuple(p for p in str(o.get("override_tensor") or "").split(",") if p)
    override = []
    for item in ot:
        pattern, _, buft = item.rpartition("=")
        if not pattern or buft.upper() != "CPU":
            raise UsageError(f"invalid --override-tensor '{item}': kvcalc models PATTERN=CPU "
                             "(e.g. 'exps=CPU': the MoE experts in RAM)")
        override.append(pattern)
    cap_mem = total - overhead
    compute = compute_buffer_bytes(spec, weights, alloc)
    projector = read_projector(str(o["mmproj"])) if o.get("mmproj") else None
    mm = projector.total_bytes if projector else 0

    def placed(a: Allocation, ngl: int) -> Placement:
        return place(spec, weights, a, ngl, split, nkvo, tuple(override), mode,
                     compute_buffer_bytes(spec, weights, a), mm)

    ngl_given = parse_ngl(o.get("n_gpu_layers"), n)
    all_layers = n + 1
    max_ngl = next((k for k in range(all_layers, -1, -1)
                    if placed(alloc, k).fits(cap_mem)), 0)
    train = spec.max_position_embeddings or alloc.sizes.n_ctx
    max_ctx = _largest_ctx(spec, make_alloc, lambda a: placed(a, all_layers).fits(cap_mem),
                           max(train * alloc.sizes.n_seq_max if not alloc.sizes.unified
                               else train, CTX_PAD))
    offload: dict[str, Any] = {"ctx_size": alloc.sizes.n_ctx, "max_ngl": max_ngl,
                               "max_ctx_size_all_layers": max_ctx, "n_layer": n,
                               "tensor_split": list(split), "split_mode": mode,
                               "no_kv_offload": nkvo, "override_tensor": override}
    chosen = ngl_given
    if ngl_given is None:                      # -ngl auto: llama.cpp's --fit
        fit = _fit(spec, make_alloc, alloc, placed, total, all_layers,
                   ctx_given=bool(alloc.settings.ctx_size))
        offload["fit"] = fit
        chosen = fit["n_gpu_layers"]
        if fit["ctx_size"] != alloc.sizes.n_ctx:
            alloc = make_alloc(fit["ctx_size"])
            warnings.append(f"llama.cpp --fit lowers the context to {fit['ctx_size']:,} "
                            f"tokens to leave {FIT_TARGET // 2**20} MiB free on the GPU "
                            "(give -c to keep yours, --fit off to refuse instead)")
    placement = placed(alloc, chosen)
    cap_bytes = (cap_mem - placement.devices[0]["weights"] - placement.devices[0]["compute"]
                 - mm)
    capacity = plan_capacity(spec, alloc.settings, max(0, cap_bytes)) if cap_bytes > 0 else None
    del compute
    return LlamaCppPlanFigures(alloc, capacity, total, wbytes, wsource, overhead, None, weights,
                               placement, offload, tuple(warnings), projector)


def _largest_ctx(spec, make_alloc, ok, limit: int) -> int:
    """The largest --ctx-size (a multiple of 256, at most ``limit``) whose placement fits."""
    from ..units import largest_satisfying

    def fits_at(k: int) -> bool:
        try:
            return ok(make_alloc(k * CTX_PAD))
        except UsageError:
            return False

    top = max(1, limit // CTX_PAD)
    return largest_satisfying(fits_at, top) * CTX_PAD if fits_at(1) else 0


def _fit(spec, make_alloc, alloc, placed, total: int, all_layers: int, ctx_given: bool
         ) -> dict[str, Any]:
    """llama.cpp's --fit (common/fit.cpp, on by default since ggml-org/llama.cpp#16653): keep
    1 GiB free per device; with -c not given, first lower the context (to at least 4,096),
    then offload fewer layers. Modelled: the first setting that fits, in that order."""
    target = total - FIT_TARGET
    if placed(alloc, all_layers).fits(target):
        return {"ctx_size": alloc.sizes.n_ctx, "n_gpu_layers": all_layers, "changed": False}
    ctx = alloc.sizes.n_ctx
    if not ctx_given and ctx > FIT_MIN_CTX:
        best = _largest_ctx(spec, make_alloc, lambda a: placed(a, all_layers).fits(target), ctx)
        if best >= FIT_MIN_CTX:
            return {"ctx_size": best, "n_gpu_layers": all_layers, "changed": True}
        ctx = FIT_MIN_CTX
        alloc = make_alloc(ctx)
    ngl = next((k for k in range(all_layers, -1, -1) if placed(alloc, k).fits(target)), 0)
    return {"ctx_size": ctx, "n_gpu_layers": ngl, "changed": True}


def _plan_budgets(engine, spec, inp) -> list:
    f = engine.plan_figures(spec, inp, None, None)
    return [Budget(f.total_bytes, 1.0, f.gpu_weights, 0, 0, 0,
                   f.overhead_bytes + f.compute_bytes, f.kv_budget,
                   "--kv-budget" if inp.kv_budget is not None else "llama.cpp")]


def _server_options_for_plan(inp, spec: ModelSpec | None = None) -> dict[str, Any]:
    """llama-server options of a plan. ``--ctx-size`` not given: 0 (the trained context, as
    llama-server and ``kvcalc estimate`` take it) unless --max-len names a shorter per-slot
    context, then --max-len per slot."""
    given = {k: inp.option(k) for k in SERVER_OPTIONS if inp.option(k) is not None}
    if "ctx_size" not in given:
        train = spec.max_position_embeddings if spec is not None else None
        slots = given.get("parallel") or SERVER_AUTO_PARALLEL
        given["ctx_size"] = 0 if train and inp.max_len >= train else inp.max_len * slots
    return given
