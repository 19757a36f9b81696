"""Ollama: its settings turned into the llama.cpp context it creates (docs/llamacpp.md).

Ollama >= 0.30 (ollama/ollama#16031) runs upstream ``llama-server`` (``llm/llama_server.go``):

- ``-c num_ctx x num_parallel -np num_parallel``: an explicit ``-np`` keeps the cache
  per slot (kv_unified off), so each slot gets ``pad(num_ctx, 256)`` cells in its own stream;
- ``--cache-type-k`` and ``--cache-type-v`` both ``OLLAMA_KV_CACHE_TYPE`` (f16, q8_0, q4_0;
  default f16); ``--flash-attn`` from ``OLLAMA_FLASH_ATTENTION`` (unset: auto);
- ``-b = -ub = num_batch``; when the request does not set it the scheduler picks 512 for
  ``num_ctx x np <= 4096``, 1,024 up to 32,768, else 2,048 (``server/sched.go``) -- it sizes
  the SWA cache; ``--swa-full`` is not passed (off);
- ``num_ctx`` defaults to ``OLLAMA_CONTEXT_LENGTH`` (4,096; 32,768 on GPUs with >= 23 GiB and
  262,144 with >= 47 GiB, ``server/routes.go``), capped at the model's context length;
  ``OLLAMA_NUM_PARALLEL`` defaults to 1.

Ollama < 0.30: the CGO runner (``llama/llama.go``) starts from llama.cpp's C defaults (swa_full
on, kv_unified off) with ``n_ctx = num_ctx x np``, ``n_batch = num_batch x np``, ``n_ubatch =
num_batch``, and drops a quantized cache type unless flash attention is on; the architectures
that Ollama's own Go engine ran (:data:`GO_ENGINE_ARCHS`, ``kvcache/causal.go``) keep one cache
shared by all slots: ``roundUp(np x num_ctx, 256)`` cells on full-attention layers and
``roundUp(np x (window + 1 if np > 1 else window) + num_batch, 256)`` on sliding ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from .. import arch
from ..errors import UsageError
from . import Band, Engine, Setting, register
from .cache import Layout
from . import ollama_memory as om
from .llamacpp import (LLAMACPP, Allocation, Cache, ContextSizes, LlamaCppPlanFigures,
                       LlamaCppSettings, allocate,
                       cache_groups, cell_rows, ggml_type, llamacpp_layout, pad)

#: OLLAMA_CONTEXT_LENGTH when unset and no GPU size is known (server/routes.go)
DEFAULT_NUM_CTX = 4096
DEFAULT_NUM_PARALLEL = 1
DEFAULT_KV_CACHE_TYPE = "f16"
#: the cache types Ollama accepts for OLLAMA_KV_CACHE_TYPE
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
#: the scheduler's num_batch by num_ctx x np (server/sched.go): (largest total, batch)
NUM_BATCH_STEPS = ((4096, 512), (32768, 1024))
NUM_BATCH_LARGE = 2048
#: num_batch before 0.30: api/types.go DefaultOptions (NumBatch: 512), no scheduler rule
CGO_NUM_BATCH = 512
#: llama-server since Ollama 0.30 (ollama/ollama#16031)
LLAMA_SERVER_SINCE = (0, 30)
#: the llama.cpp build month Ollama's pinned llama-server (LLAMA_CPP_VERSION b10488) follows
LLAMA_SERVER_BUILD = "2026.10"
#: the older CGO runner vendored llama.cpp before the Nov 2025 padding change
CGO_RUNNER_BUILD = "2025.10"
#: architectures Ollama < 0.30 ran on its own Go engine (``KV.OllamaEngineRequired()``)
GO_ENGINE_ARCHS = ("gemma3", "gemma3n", "gemma4", "qwen3", "qwen3moe", "llama4", "mllama",
                   "gpt-oss", "qwen25vl", "mistral3",
                   # the same families under their Hugging Face model_type (presets, config.json)
                   "gemma3_text", "gemma3n_text", "qwen3_moe", "llama4_text", "gpt_oss")
#: the Go engine's cache padding (kvcache/causal.go CachePadding)
GO_CACHE_PADDING = 256


#: OLLAMA_CONTEXT_LENGTH's default by GPU memory (server/routes.go): >= 47 GiB, >= 23 GiB
NUM_CTX_BY_VRAM = ((47 << 30, 262144), (23 << 30, 32768))


def default_num_ctx(gpu_bytes: int) -> int:
    """Ollama's num_ctx when neither the request nor OLLAMA_CONTEXT_LENGTH sets it."""
    return next((n for limit, n in NUM_CTX_BY_VRAM if gpu_bytes >= limit), DEFAULT_NUM_CTX)


def scheduler_num_batch(num_ctx: int, num_parallel: int) -> int:
    """The num_batch Ollama's scheduler picks when the request sets none (server/sched.go)."""
    total = num_ctx * num_parallel
    for limit, batch in NUM_BATCH_STEPS:
        if total <= limit:
            return batch
    return NUM_BATCH_LARGE


def ollama_flash_attn(value: bool | None) -> str:
    """OLLAMA_FLASH_ATTENTION: unset = auto; true = on; false = off."""
    return "auto" if value is None else ("on" if value else "off")


class Ollama(Engine):
    name = "ollama"
    display_name = "Ollama"
    package = ""
    CHOICES = {"kv_cache_type": KV_CACHE_TYPES}
    bands = (
        Band("<0.30", None, (0, 29),
             ("CGO runner: llama.cpp C defaults (swa_full on), n_batch = num_batch x np, a "
              "quantized cache type dropped without flash attention; gemma3, qwen3, gpt-oss, "
              "llama4 ... on Ollama's Go engine: one cache shared by the slots",),
             ("ollama/ollama llama/llama.go (NewContextParams), kvcache/causal.go",)),
        Band(">=0.30", (0, 30), None,
             ("llama-server with -c num_ctx x np -np np (a stream per slot), -b = -ub = "
              "num_batch, --cache-type-k/-v OLLAMA_KV_CACHE_TYPE",),
             ("ollama/ollama llm/llama_server.go, server/sched.go (ollama/ollama#16031)",)),
    )
    newest_checked = "0.33.0"
    default_version = "0.33"
    version_flag = "--ollama-version"
    version_example = "0.30"
    settings = (
        Setting("num_ctx", DEFAULT_NUM_CTX, "--num-ctx (OLLAMA_CONTEXT_LENGTH)",
                "tokens per request (per slot); capped at the model's context length"),
        Setting("num_parallel", DEFAULT_NUM_PARALLEL, "--num-parallel (OLLAMA_NUM_PARALLEL)",
                "requests served at once, each with num_ctx tokens"),
        Setting("kv_cache_type", DEFAULT_KV_CACHE_TYPE, "--kv-cache-type (OLLAMA_KV_CACHE_TYPE)",
                "f16, q8_0, q4_0 (K and V alike)"),
        Setting("flash_attention", None, "--flash-attention/--no-flash-attention "
                "(OLLAMA_FLASH_ATTENTION)", "unset = auto (>= 0.30)"),
        Setting("num_batch", None, "--num-batch",
                "unset = 512 / 1,024 / 2,048 by num_ctx x num_parallel"),
    )

    def installed_version(self) -> str | None:
        return None  # a server, not a Python distribution

    def layout(self, spec, kv_dtype: str = "auto", *, version: str | None = None,
               block_size: int | None = None, tp: int = 1) -> Layout:
        if tp != 1:
            raise UsageError("the Ollama layout models one process: --tp needs --engine vllm")
        band = self.band(version)
        layout = llamacpp_layout(spec, kv_dtype, kv_dtype, LLAMA_SERVER_BUILD, "ollama")
        return replace(layout, version=version or self.default_version, band=band.name)

    def allocation(self, spec, options: dict[str, Any], kv_dtype: str = "auto",
                   version: str | None = None) -> Allocation:
        return ollama_allocation(spec, options, kv_dtype, version or self.default_version)

    # -- kvcalc plan: as llama.cpp's, for the llama-server call Ollama makes ------------------

    plans = True
    plan_options = ("--num-ctx", "--num-parallel", "--kv-cache-type", "--flash-attention",
                    "--num-batch", "--num-gpu", "--mmproj", "--free-memory", "--gpu-overhead",
                    "--ollama-version")

    def plan_block_size(self, spec, inp) -> int:
        return 1

    def plan_kv_dtype(self, options: dict[str, Any]) -> str | None:
        return options.get("kv_cache_type")

    def plan_max_len(self, spec, options: dict[str, Any]) -> int | None:
        return options.get("num_ctx")

    def plan_budgets(self, spec, params, inp) -> list:
        from .llamacpp import _plan_budgets

        return _plan_budgets(self, spec, inp)

    def plan_figures(self, spec, inp, layout, budgets):
        return ollama_plan_figures(self, spec, inp)

    def plan_weights_dtype(self, spec, given: str) -> str:
        """As llama.cpp's: Ollama's library serves Q4_K_M unless the tag names another."""
        return LLAMACPP.plan_weights_dtype(spec, given)

    def describe(self, layout: Layout) -> str:
        return (f"Ollama {layout.version} (band {layout.band}): llama.cpp, a contiguous cache "
                f"reserved at start-up")


def ollama_settings(spec, options: dict[str, Any], kv_dtype: str = "auto") -> dict[str, Any]:
    """Ollama's settings with its defaults filled in (num_ctx capped at the model's)."""
    num_ctx = options.get("num_ctx") or DEFAULT_NUM_CTX
    notes = []
    if spec.max_position_embeddings and num_ctx > spec.max_position_embeddings:
        notes.append(f"num_ctx {num_ctx:,} capped at the model's context length "
                     f"{spec.max_position_embeddings:,}, as Ollama does")
        num_ctx = spec.max_position_embeddings
    np_ = options.get("num_parallel") or DEFAULT_NUM_PARALLEL
    kv = options.get("kv_cache_type") or (kv_dtype if kv_dtype != "auto" else
                                          DEFAULT_KV_CACHE_TYPE)
    kv = ggml_type(kv).name
    if kv not in KV_CACHE_TYPES:
        raise UsageError(f"Ollama's OLLAMA_KV_CACHE_TYPE takes {', '.join(KV_CACHE_TYPES)}, "
                         f"not {kv}")
    for flag, value in (("--num-ctx", num_ctx), ("--num-parallel", np_),
                        ("--num-batch", options.get("num_batch") or 1)):
        if value < 1:
            raise UsageError(f"invalid {flag} {value}: must be at least 1")
    batch = options.get("num_batch") or scheduler_num_batch(num_ctx, np_)
    if not options.get("num_batch") and options.get("_version") and \
            om.version_tuple(options["_version"]) < om.LLAMA_SERVER_SINCE:
        batch = CGO_NUM_BATCH     # api.DefaultOptions before the 0.30 scheduler rule
    return {"num_ctx": num_ctx, "num_parallel": np_, "kv_cache_type": kv,
            "flash_attention": options.get("flash_attention"), "num_batch": batch,
            "num_batch_from_scheduler": not options.get("num_batch"), "notes": notes}


def ollama_allocation(spec, options: dict[str, Any], kv_dtype: str, version: str) -> Allocation:
    o = ollama_settings(spec, {**options, "_version": version}, kv_dtype)
    ver = OLLAMA.parse_version(version)
    OLLAMA.band(version)
    if ver >= LLAMA_SERVER_SINCE:
        s = LlamaCppSettings(ctx_size=o["num_ctx"] * o["num_parallel"],
                             parallel=o["num_parallel"], kv_unified=None,
                             cache_type_k=o["kv_cache_type"], cache_type_v=o["kv_cache_type"],
                             flash_attn=ollama_flash_attn(o["flash_attention"]),
                             swa_full=False, batch_size=o["num_batch"],
                             ubatch_size=o["num_batch"], version=LLAMA_SERVER_BUILD)
        alloc = allocate(spec, s)
        args = (f"llama-server -c {s.ctx_size} -np {s.parallel} --cache-type-k {s.cache_type_k} "
                f"--cache-type-v {s.cache_type_v} --flash-attn {s.flash_attn} -b {s.batch_size} "
                f"-ub {s.ubatch_size}")
        runner = "llama-server"
    else:
        fa = bool(o["flash_attention"])
        kv = o["kv_cache_type"] if fa else "f16"
        if kv != o["kv_cache_type"]:
            o["notes"].append(f"Ollama < 0.30 drops OLLAMA_KV_CACHE_TYPE={o['kv_cache_type']} "
                              "without flash attention: f16")
        arch_name = str((spec.config.get(arch.GGUF_CONFIG_KEY) or {}).get("architecture")
                        or spec.model_type)
        if arch_name in GO_ENGINE_ARCHS:
            alloc = go_engine_allocation(spec, o, kv, version)
            args, runner = "(Ollama's Go engine, no llama.cpp context)", "ollama-engine"
        else:
            s = LlamaCppSettings(ctx_size=o["num_ctx"] * o["num_parallel"],
                                 parallel=o["num_parallel"], kv_unified=False,
                                 cache_type_k=kv, cache_type_v=kv,
                                 flash_attn="on" if fa else "off", swa_full=True,
                                 batch_size=o["num_batch"] * o["num_parallel"],
                                 ubatch_size=o["num_batch"], version=CGO_RUNNER_BUILD)
            alloc = allocate(spec, s)
            args, runner = "(CGO runner: llama_new_context_with_model)", "cgo-runner"
    extra = {"ollama": {
        "version": version, "runner": runner, "num_ctx": o["num_ctx"],
        "num_parallel": o["num_parallel"], "kv_cache_type": o["kv_cache_type"],
        "flash_attention": o["flash_attention"], "num_batch": o["num_batch"],
        "num_batch_from_scheduler": o["num_batch_from_scheduler"], "llama_server_args": args}}
    notes = tuple(o["notes"]) + (f"Ollama {version} runs: {args}",) + alloc.notes
    layout = Layout(alloc.layout.spec, "ollama", alloc.layout.kv_dtype, alloc.layout.layers,
                    None, 1, version, OLLAMA.band(version).name, alloc.layout.notes)
    return Allocation(alloc.settings, alloc.sizes, alloc.flash_attn, alloc.caches, layout,
                      notes, extra)


def go_engine_allocation(spec, o: dict[str, Any], kv: str, version: str) -> Allocation:
    """Ollama's Go engine (< 0.30, kvcache/causal.go): one cache shared by all slots."""
    np_, ctx, batch = o["num_parallel"], o["num_ctx"], o["num_batch"]
    t = ggml_type(kv)
    full_cells = pad(np_ * ctx, GO_CACHE_PADDING)
    groups, window = cache_groups(spec)
    swa = pad(np_ * (window + 1 if np_ > 1 else window) + batch, GO_CACHE_PADDING)
    caches = []
    for name, layers in groups.items():
        if layers:
            cells = full_cells if name == "base" else min(swa, full_cells)
            k = sum(cell_rows(l, t, t)[0] for l in layers) * cells
            v = sum(cell_rows(l, t, t)[1] for l in layers) * cells
            caches.append(Cache(name, cells, 1, len(layers), k, v, t.name, t.name))
    s = LlamaCppSettings(ctx_size=np_ * ctx, parallel=np_, kv_unified=True, cache_type_k=kv,
                         cache_type_v=kv, batch_size=batch, ubatch_size=batch,
                         version=CGO_RUNNER_BUILD)
    sizes = ContextSizes(full_cells, full_cells, np_, 1, batch, batch, True)
    layout = llamacpp_layout(spec, kv, kv, CGO_RUNNER_BUILD, "ollama")
    return Allocation(s, sizes, bool(o["flash_attention"]), tuple(caches), layout,
                      ("Ollama's Go engine: one cache shared by all slots",))


# -- Ollama's own memory figures in a plan (kvcalc/engines/ollama_memory.py) -----------------


@dataclass(frozen=True)
class OllamaPlanFigures(LlamaCppPlanFigures):
    """llama.cpp's figures for the context Ollama creates, plus Ollama's own estimate and
    layer decision and the lines Ollama logs (``ollama_memory`` in the JSON)."""

    ollama: dict[str, Any] = field(default_factory=dict)

    def capacity_rows(self) -> list[tuple[str, str]]:
        rows = super().capacity_rows()
        o = self.ollama
        if not o:
            return rows
        extra = [("Ollama's rules", o["rules"])]
        if o.get("layers_on_gpu") is not None:
            part = o["layers_on_gpu"] < o["layers_model"]
            extra.append(("Ollama runs with", f"{o['layers_on_gpu']} of {o['layers_model']} "
                          "layers on the GPU" + (" (partial offload: it boots, slower; the "
                                                 "rest on the CPU)" if part else "")))
        est = o.get("estimate")
        if est:
            extra += [
                ("Ollama's estimate: required full / partial",
                 f"{est['required_full_bytes']:,} B / {est['required_partial_bytes']:,} B"),
                ("Ollama's estimate: KV / graph full / graph partial",
                 f"{est['required_kv_bytes']:,} B / {est['graph_full_bytes']:,} B / "
                 f"{est['graph_partial_bytes']:,} B"),
                ("Ollama's estimate: weights repeating / nonrepeating",
                 f"{est['weights_repeating_bytes']:,} B / "
                 f"{est['weights_nonrepeating_bytes']:,} B")]
        if o.get("predicted_vram_bytes") is not None:
            extra.append(("Ollama's prediction (PredictServerVRAM)",
                          f"{o['predicted_vram_bytes']:,} B (file + f16 KV at "
                          f"{o['predicted_ctx']:,} tokens)"))
        if o.get("num_batch_rule"):
            extra.append(("num_batch (-b = -ub)", f"{o['num_batch']:,} ({o['num_batch_rule']})"))
        if o.get("gpu_available_bytes") is not None:
            extra.append(("GPU free - OLLAMA_GPU_OVERHEAD - minimum",
                          f"{o['gpu_free_bytes']:,} - {o['gpu_overhead_bytes']:,} - "
                          f"{om.MINIMUM_MEMORY:,} = {o['gpu_available_bytes']:,} B"))
        return rows + extra

    def log_lines(self) -> list[str]:
        return list(self.ollama.get("lines", ())) + super().log_lines()

    @property
    def notes(self) -> tuple[str, ...]:
        return super().notes + tuple(self.ollama.get("notes", ()))

    def record(self) -> dict[str, Any]:
        out = super().record()
        out["ollama_memory"] = self.ollama or None
        out["log"] = self.log_lines()        # the lines Ollama's log shows, in its order
        return out


def _offloaded_line(ngl: int, n_layer: int) -> str:
    """llama.cpp's load_tensors line (src/llama-model.cpp), which Ollama parses
    (llm/llama_server.go offloadedLayersRegex)."""
    return f"load_tensors: offloaded {min(ngl, n_layer + 1)}/{n_layer + 1} layers to GPU"


def ollama_plan_figures(engine, spec, inp) -> LlamaCppPlanFigures:
    """``kvcalc plan --engine ollama``: Ollama's settings and its own memory rules for the
    version (ollama_memory.estimate_band), then llama.cpp's placement of the layers Ollama (or,
    from 0.30, llama-server's --fit) puts on the GPU."""
    from .llamacpp import model_weights, plan_figures_for

    version = str(inp.option("ollama_version") or engine.default_version)
    engine.band(version)                    # an unreadable version: one clear line
    band = om.estimate_band(version)
    options = {k: inp.option(k) for k in ("num_ctx", "num_parallel", "kv_cache_type",
                                           "flash_attention", "num_batch")}
    free = int(inp.option("free_memory") or inp.gpu.memory_bytes)
    overhead = int(inp.option("gpu_overhead") or 0)
    info: dict[str, Any] = {"version": version, "band": band, "gpu_free_bytes": free,
                            "gpu_overhead_bytes": overhead, "lines": [], "notes": []}
    if not options["num_ctx"]:   # --max-len, else Ollama's default for this GPU
        train = spec.max_position_embeddings
        options["num_ctx"] = inp.max_len if not train or inp.max_len < train else \
            default_num_ctx(max(0, inp.gpu.memory_bytes - overhead))
    num_gpu = inp.option("num_gpu")
    try:
        weights = model_weights(spec, None if inp.weights_dtype in (None, "auto")
                                else inp.weights_dtype)
        shape = om.model_shape(spec)
    except UsageError as exc:
        weights, shape = None, None
        info["notes"].append(f"Ollama's memory estimate is not computed: {exc}")
    settings = ollama_settings(spec, {**options, "_version": version}, inp.kv_dtype)
    np_, ctx = settings["num_parallel"], settings["num_ctx"]
    ngl_for_placement = num_gpu
    if band == "llama-server":
        info["rules"] = ("Ollama >= 0.30: llama-server places the layers (-ngl auto = llama.cpp "
                         "--fit); Ollama predicts VRAM only to pick num_batch")
        fa_off = settings["flash_attention"] is False
        if weights is not None and shape is not None:
            eff = ctx * np_
            predicted = om.predict_server_vram(weights.total_bytes, shape, eff)
            info.update(predicted_vram_bytes=predicted, predicted_ctx=eff)
            if not options["num_batch"]:
                batch = om.automatic_generation_batch(eff, predicted, free, fa_off, True, free)
                options["num_batch"] = batch
                info["num_batch_rule"] = ("server/sched.go automaticGenerationBatch: "
                                          f"{om.generation_batch_for_context(eff):,} for "
                                          f"{eff:,} tokens" + (
                                              f", lowered: the prediction leaves too little "
                                              f"headroom in {free:,} B" if batch <
                                              om.generation_batch_for_context(eff) and not
                                              fa_off else "") +
                                          (", flash attention off on CUDA" if fa_off else ""))
                info["notes"].append(
                    f"Ollama predicts {predicted:,} B ({om.human_bytes2(predicted)}: the weights "
                    f"+ an f16 KV cache of {eff:,} tokens, PredictServerVRAM) and picks "
                    f"num_batch {batch}")
        line, available = om.gpu_memory_line(free, overhead)
        info["gpu_available_bytes"] = available
        info["lines"].append(line)
    elif band == "memory.go":
        info["rules"] = ("Ollama <= 0.12.10: llm/memory.go estimateGPULayers decides the layers "
                         "(--n-gpu-layers passed to the runner)")
        arch_name = om.gguf_architecture(spec)
        if arch_name in GO_ENGINE_ARCHS or spec.model_type in GO_ENGINE_ARCHS:
            info["notes"].append(f"{arch_name} runs on Ollama's Go engine, which measures its "
                                 "layout instead of llm/memory.go's estimate: not modelled")
        elif weights is not None and shape is not None:
            fa = bool(settings["flash_attention"])
            kvct = settings["kv_cache_type"] if fa and settings["kv_cache_type"] != "f16" else ""
            groups = om.group_layers(weights)
            gate = sum(t.nbytes for t in weights.tensors
                       if t.name == "blk.0.ffn_gate_exps.weight")
            try:
                est = om.estimate_gpu_layers(
                    [om.GpuDevice(free)], shape, groups, ctx, settings["num_batch"], np_, kvct,
                    -1 if num_gpu is None else int(num_gpu), overhead, gate_exps_bytes=gate)
            except UsageError as exc:
                info["notes"].append(str(exc))
            else:
                info["estimate"] = est.record(version)
                info["lines"].append(est.log_line(version))
                if num_gpu is None:
                    ngl_for_placement = est.layers
                ngl_arg = est.layers if num_gpu is None else int(num_gpu)
                info["lines"].append(
                    f'msg="starting llama server" cmd="ollama_llama_server --ctx-size '
                    f'{ctx * np_} --batch-size {min(settings["num_batch"], ctx)}'
                    + (f' --n-gpu-layers {ngl_arg}' if ngl_arg > 0 else '')
                    + f' --parallel {np_}"')
                if est.layers == 0:
                    info["notes"].append("no layer fits Ollama's estimate: it runs on the CPU "
                                         "(\"insufficient VRAM to load any model layers\")")
    else:
        info["rules"] = ("Ollama 0.12.11 - 0.29: llm/server.go createLayout (Ollama's memory "
                         "layout for both engines): not modelled; llama.cpp's placement shown")

    def make_alloc(c: int | None = None):
        o = options if c is None else {**options, "num_ctx": max(1, c // np_)}
        return engine.allocation(spec, o, inp.kv_dtype, version)

    base = plan_figures_for(spec, inp, make_alloc,
                            {"n_gpu_layers": ngl_for_placement, "mmproj": inp.option("mmproj")})
    if base.placement is not None:
        ngl = base.placement.n_gpu_layers
        info["layers_on_gpu"] = ngl
        info["layers_model"] = spec.num_layers + 1
        if band != "memory.go":
            info["lines"].append(_offloaded_line(ngl, spec.num_layers))
    if base.alloc is not None:
        info["num_batch"] = base.alloc.settings.batch_size if band == "llama-server" else \
            settings["num_batch"]
        args = base.alloc.extra.get("ollama", {}).get("llama_server_args", "")
        if band == "llama-server" and args:
            info["lines"].insert(len(info["lines"]) - (1 if base.placement else 0),
                                 f'msg="starting llama-server" cmd="{args}"')
    return OllamaPlanFigures(**{f.name: getattr(base, f.name) for f in fields(base)},
                             ollama=info)


OLLAMA = register(Ollama())
assert LLAMACPP  # the llama.cpp engine is registered first
