"""Ollama's own memory estimate and layer-offload decision, and the lines it logs.

Ported from ollama/ollama at the tags named below (docs/llamacpp.md, "Ollama's memory estimate");
each function names the file and function it follows. Three bands:

- **Ollama <= 0.12.10** (``llm/memory.go`` ``estimateGPULayers``, ``fs/ggml/ggml.go``
  ``GraphSize``): Ollama decides the layers itself. A GPU takes part when its free memory holds
  ``OLLAMA_GPU_OVERHEAD`` + the larger graph + the minimum reserve (457 MiB, ``MinimumMemory``)
  + two layers; it then holds the reserve + one layer as a buffer, the layers from the last one
  down while ``free > overhead + used + graph + layer``, the output layer last, and the full or
  partial graph. The ``offload`` log line prints the result (``memory.required.full`` ...).
  The llama runner only: architectures on Ollama's Go engine measure their layout instead.
- **Ollama 0.12.11 - 0.29** (``llm/server.go`` ``createLayout``, f560bd077): the same GraphSize
  figures in a new layout; not modelled here.
- **Ollama >= 0.30** (``llm/llama_server.go``, ``server/sched.go``): llama-server decides the
  layers (``-ngl`` auto: llama.cpp's ``--fit``); Ollama predicts ``file size + 2 x layers x
  kv_heads x (embedding / heads) x ctx x 2`` (``PredictServerVRAM``) only to pick num_batch
  (``automaticGenerationBatch``) and to evict other models, and logs the GPU's free memory less
  its reserve (``"gpu memory"``).

Every figure is an int of bytes; :func:`human_bytes2` prints them as Ollama does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

MIB = 1 << 20
GIB = 1 << 30

#: ml/device.go ``MinimumMemory`` (discover/types.go before 0.12): set aside per GPU for
#: context structures; 457 MiB on CUDA/ROCm, 512 MiB on Metal
MINIMUM_MEMORY = 457 * MIB
METAL_MINIMUM_MEMORY = 512 * MIB

#: the last release with llm/memory.go's estimateGPULayers (removed by f560bd077, v0.12.11)
MEMORY_GO_LAST = (0, 12, 10)
#: weights.total stopped counting the KV cache in v0.6.3 (f4f0992b6 "Fix debug logging for
#: memory estimates"); before it ``repeating`` was total - output
WEIGHTS_LOG_FIXED = (0, 6, 3)
#: ``msg="offload to cuda"`` became ``msg=offload library=cuda`` in v0.6.0
OFFLOAD_MSG_SINCE = (0, 6, 0)
#: MemoryEstimate.TensorSplit became []int in v0.11.5 (d5a0d8d90): ``layers.split=[33]``
SPLIT_INTS_SINCE = (0, 11, 5)
#: GPU libraries are named "CUDA"/"ROCm" from the runner-based discovery of v0.12.0
LIBRARY_UPPER_SINCE = (0, 12, 0)
#: llama-server since Ollama 0.30 (ollama/ollama#16031)
LLAMA_SERVER_SINCE = (0, 30, 0)

#: server/sched.go (>= 0.30): the automatic num_batch steps and what each adds to the predicted
#: VRAM (generationBatchSurcharge); 60% / 75% headroom for 2,048 / 1,024; 80% threshold
BATCH_DEFAULT = 512
BATCH_CONSTRAINED = 256
BATCH_MEDIUM = 1024
BATCH_LARGE = 2048
BATCH_SURCHARGE = {BATCH_LARGE: 2 * GIB, BATCH_MEDIUM: 768 * MIB}
BATCH_HEADROOM_PERCENT = {BATCH_LARGE: 60, BATCH_MEDIUM: 75}
FIT_THRESHOLD_PERCENT = 80
#: constrainedCUDAWithoutFlashAttention: a CUDA GPU of at most 8 GiB and more than 4,096 tokens
CONSTRAINED_GPU_BYTES = 8 * GIB
CONSTRAINED_CTX = 4096

#: fs/ggml/ggml.go kvCacheBytesPerElement
KV_BYTES_PER_ELEMENT = {"q8_0": 1.0, "q4_0": 0.5, "f32": 4.0}

#: GraphSize's architectures with their own graph formula (v0.12.10); kvcalc ports "llama" and
#: "qwen2"; the others fall back to GQA x KV / 6 in Ollama only when no case matches, so for
#: these kvcalc names the gap instead of guessing
GRAPH_CASES_NOT_PORTED = ("mllama", "gemma", "gemma2", "gemma3", "gemma3n", "command-r", "phi2",
                          "stablelm", "deepseek2", "chatglm", "gptoss", "gpt-oss")
#: Hugging Face model_type -> the GGUF architecture Ollama's converter writes
GGUF_ARCH = {"mistral": "llama", "llama": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3",
             "gemma2": "gemma2", "phi3": "phi3", "qwen3": "qwen3", "qwen3_moe": "qwen3moe",
             "gpt_oss": "gptoss", "mixtral": "llama", "deepseek_v3": "deepseek2",
             "deepseek_v2": "deepseek2"}


def human_bytes2(b: int) -> str:
    """format/bytes.go ``HumanBytes2``: binary units, one decimal."""
    if b >= GIB:
        return f"{b / GIB:.1f} GiB"
    if b >= MIB:
        return f"{b / MIB:.1f} MiB"
    if b >= 1024:
        return f"{b / 1024:.1f} KiB"
    return f"{b} B"


_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"0.12.10"`` -> (0, 12, 10); ``"0.5"`` -> (0, 5, 0)."""
    m = _VERSION.match(str(version))
    if not m:
        raise UsageError(f"invalid Ollama version '{version}': use MAJOR.MINOR, e.g. 0.30")
    return int(m[1]), int(m[2]), int(m[3] or 0)


def estimate_band(version: str) -> str:
    """Which of Ollama's memory rules a version follows: ``memory.go``, ``layout`` (not
    modelled) or ``llama-server``."""
    v = version_tuple(version)
    if v >= LLAMA_SERVER_SINCE:
        return "llama-server"
    if v <= MEMORY_GO_LAST:
        return "memory.go"
    return "layout"


def _quote(value: str) -> str:
    """log/slog's TextHandler: a value with a space, '=', '"' or nothing is quoted."""
    if value == "" or any(c in value for c in ' ="') or not value.isprintable():
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


# ---------------------------------------------------------------------------------------------
# The model as Ollama's GGUF reader sees it


def group_layers(weights) -> dict[str, int]:
    """fs/ggml/ggml.go ``Tensors.GroupLayers``, as bytes per group: ``blk.N`` and ``mm.N`` keep
    their number, every other tensor groups under its first name part (``output``,
    ``output_norm``, ``token_embd``, ``rope_freqs``)."""
    out: dict[str, int] = {}
    for t in weights.tensors:
        parts = t.name.split(".")
        if parts[0] in ("blk", "mm") and len(parts) > 2:
            key = f"{parts[0]}.{parts[1]}"
        else:
            key = parts[0]
        out[key] = out.get(key, 0) + t.nbytes
    return out


def gguf_architecture(spec) -> str:
    from ..arch import GGUF_CONFIG_KEY

    gg = (spec.config or {}).get(GGUF_CONFIG_KEY) or {}
    name = gg.get("architecture") if isinstance(gg, dict) else None
    return str(name or GGUF_ARCH.get(spec.model_type, spec.model_type))


@dataclass(frozen=True)
class ModelShape:
    """The GGUF keys GraphSize reads (``llm.KV()``), from a ModelSpec."""

    arch: str
    block_count: int
    embedding: int
    heads_max: int
    heads_kv_max: int
    heads_kv_min: int
    vocab: int
    layer_kv: tuple[tuple[int, int, int], ...]   # per block: (heads_kv, key_length, value_length)
    feed_forward: int

    @property
    def embedding_heads(self) -> int:
        """``EmbeddingHeadCountMax``: embedding_length / head_count (not the head size of every
        model: Gemma 3's is 256 where 640 / 4 = 160)."""
        return self.embedding // self.heads_max if self.heads_max else 0


def model_shape(spec) -> ModelShape:
    from ..arch import AttentionLayer

    kv = []
    for layer in spec.layers:
        if not isinstance(layer, AttentionLayer):
            raise UsageError("Ollama's memory estimate is modelled for attention layers only "
                             f"({spec.name} has {layer.kind} layers)")
        kv.append((layer.kv_heads, layer.head_dim_k, layer.head_dim_v))
    heads_kv = [h for h, _, _ in kv] or [1]
    ff = int((spec.config or {}).get("intermediate_size") or 0)
    return ModelShape(gguf_architecture(spec), len(kv), spec.hidden_size,
                      spec.num_attention_heads, max(heads_kv), min(heads_kv),
                      int(spec.vocab_size or 0), tuple(kv), ff)


def graph_size(shape: ModelShape, groups: dict[str, int], context: int, batch: int,
               num_parallel: int, kv_cache_type: str, gate_exps_bytes: int = 0
               ) -> tuple[list[int], int, int]:
    """fs/ggml/ggml.go ``GraphSize`` (v0.12.10): the KV bytes per layer and the compute graph
    Ollama expects with partial and with full offload. ``context`` is num_ctx per slot."""
    context *= num_parallel
    bpe = KV_BYTES_PER_ELEMENT.get(kv_cache_type, 2.0)
    kv = [int(float(context * (hk + hv) * h) * bpe) for h, hk, hv in shape.layer_kv]
    e, heads, heads_kv, vocab = shape.embedding, shape.heads_max, shape.heads_kv_max, shape.vocab
    eh = shape.embedding_heads
    partial = full = 0
    if shape.arch in ("llama", "llama4"):
        full = max(4 * batch * (1 + 4 * e + context * (1 + heads)), 4 * batch * (e + vocab))
        partial = 4 * batch * e + max(
            4 * batch * (1 + e + max(context, e)) + e * e * 9 // 16
            + 4 * context * (batch * heads + eh * heads_kv),
            4 * batch * (e + vocab) + e * vocab * 105 // 128)
        if gate_exps_bytes:   # "mixtral 8x22b": merged expert tensors
            ff = shape.feed_forward
            partial = max(3 * gate_exps_bytes + 4 * batch * (2 * ff + heads_kv + e + context
                                                             + eh * heads_kv),
                          4 * (context * batch * heads + context * eh * heads_kv + batch * 1024
                               + eh * heads_kv * batch))
    elif shape.arch == "qwen2":
        full = max(4 * batch * (e + vocab), 4 * batch * (1 + 2 * e + context + context * heads))
        partial = max(4 * batch * (e + vocab) + e * vocab * 105 // 128,
                      4 * (batch * (1 + 2 * e + context * (1 + heads)) + e * (1 + context)))
    elif shape.arch in GRAPH_CASES_NOT_PORTED:
        raise UsageError(f"Ollama's graph estimate for the {shape.arch} architecture "
                         "(fs/ggml/ggml.go GraphSize) is not modelled by kvcalc")
    return kv, partial, full


def graph_fallback(shape: ModelShape, kv_total: int, partial: int, full: int) -> tuple[int, int]:
    """estimateGPULayers: no formula for the architecture -> partial = GQA x KV / 6, full =
    partial."""
    if partial == 0:
        partial = (shape.heads_max // max(shape.heads_kv_min, 1)) * kv_total // 6
    if full == 0:
        full = partial
    return partial, full


# ---------------------------------------------------------------------------------------------
# Ollama <= 0.12.10: llm/memory.go estimateGPULayers


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as Ollama's discovery reports it: free memory, library, minimum reserve."""

    free: int
    library: str = "CUDA"

    @property
    def minimum(self) -> int:
        return METAL_MINIMUM_MEMORY if self.library == "Metal" else MINIMUM_MEMORY


@dataclass(frozen=True)
class MemoryEstimate:
    """llm/memory.go ``MemoryEstimate``: what ``estimateGPULayers`` decides and logs."""

    layers: int                  # layers.offload (output counted)
    layers_requested: int
    layers_model: int
    tensor_split: tuple[int, ...]
    available: tuple[int, ...]
    gpu_overhead: int
    vram_size: int               # memory.required.partial (0 when no layer fits)
    total_size: int              # memory.required.full
    kv: int
    allocations: tuple[int, ...]
    memory_weights: int          # repeating: the blocks (plus their KV before v0.6.3)
    memory_layer_output: int     # nonrepeating: output_norm + output (or tied token_embd)
    graph_full: int
    graph_partial: int
    graph: int                   # the graph charged: full when every layer is on the GPU
    library: str = "CUDA"
    projector_weights: int = 0
    kv_per_layer: tuple[int, ...] = field(default=(), repr=False)

    @property
    def fully_loaded(self) -> bool:
        return self.layers >= self.layers_model

    def weights_log(self, version: str) -> tuple[int, int, int]:
        """(weights.total, weights.repeating, weights.nonrepeating) as that version logs them."""
        if version_tuple(version) >= WEIGHTS_LOG_FIXED:
            return (self.memory_weights + self.memory_layer_output, self.memory_weights,
                    self.memory_layer_output)
        total = self.memory_weights + self.kv   # Σ(layer + its KV); repeating = total - output
        return total, max(0, total - self.memory_layer_output), self.memory_layer_output

    def log_line(self, version: str) -> str:
        """``slog.Info("offload", "", estimate)`` (llm/server.go; memory.go before 0.6)."""
        v = version_tuple(version)
        lib = self.library if v >= LIBRARY_UPPER_SINCE else self.library.lower()
        if v >= SPLIT_INTS_SINCE:
            split = "[" + " ".join(str(n) for n in self.tensor_split) + "]"
        else:
            split = ",".join(str(n) for n in self.tensor_split) if len(self.tensor_split) > 1 \
                else ""
        total, repeating, nonrepeating = self.weights_log(version)
        hb = human_bytes2
        head = (f"msg=offload library={lib}" if v >= OFFLOAD_MSG_SINCE
                else f'msg="offload to {lib}"')
        fields = [
            ("layers.requested", str(self.layers_requested)),
            ("layers.model", str(self.layers_model)),
            ("layers.offload", str(self.layers)),
            ("layers.split", split),
            ("memory.available", "[" + " ".join(hb(a) for a in self.available) + "]"),
            ("memory.gpu_overhead", hb(self.gpu_overhead)),
            ("memory.required.full", hb(self.total_size)),
            ("memory.required.partial", hb(self.vram_size)),
            ("memory.required.kv", hb(self.kv)),
            ("memory.required.allocations",
             "[" + " ".join(hb(a) for a in self.allocations) + "]"),
            ("memory.weights.total", hb(total)),
            ("memory.weights.repeating", hb(repeating)),
            ("memory.weights.nonrepeating", hb(nonrepeating)),
            ("memory.graph.full", hb(self.graph_full)),
            ("memory.graph.partial", hb(self.graph_partial)),
        ]
        if self.projector_weights:
            fields += [("projector.weights", hb(self.projector_weights)),
                       ("projector.graph", hb(0))]
        return head + " " + " ".join(f"{k}={_quote(val)}" for k, val in fields)

    def record(self, version: str) -> dict[str, Any]:
        total, repeating, nonrepeating = self.weights_log(version)
        return {"layers_requested": self.layers_requested, "layers_model": self.layers_model,
                "layers_offload": self.layers, "layers_split": list(self.tensor_split),
                "available_bytes": list(self.available),
                "gpu_overhead_bytes": self.gpu_overhead,
                "required_full_bytes": self.total_size,
                "required_partial_bytes": self.vram_size, "required_kv_bytes": self.kv,
                "required_allocations_bytes": list(self.allocations),
                "weights_total_bytes": total, "weights_repeating_bytes": repeating,
                "weights_nonrepeating_bytes": nonrepeating,
                "graph_full_bytes": self.graph_full, "graph_partial_bytes": self.graph_partial,
                "graph_bytes": self.graph, "projector_weights_bytes": self.projector_weights,
                "log_line": self.log_line(version)}


def estimate_gpu_layers(gpus: list[GpuDevice], shape: ModelShape, groups: dict[str, int],
                        num_ctx: int, num_batch: int, num_parallel: int, kv_cache_type: str = "",
                        num_gpu: int = -1, overhead: int = 0, projector_weights: int = 0,
                        gate_exps_bytes: int = 0) -> MemoryEstimate:
    """llm/memory.go ``estimateGPULayers`` (v0.12.10), line for line. ``num_ctx`` per slot;
    ``kv_cache_type`` as Ollama keeps it ('' = f16; a quantized type only with flash
    attention); ``num_gpu`` -1 = as many as fit; ``overhead`` = OLLAMA_GPU_OVERHEAD."""
    layer_size = groups.get("blk.0", 0)
    kv, partial, full = graph_size(shape, groups, num_ctx, min(num_ctx, num_batch),
                                   num_parallel, kv_cache_type, gate_exps_bytes)
    if kv:
        layer_size += kv[0]
    kv_total = sum(kv)
    partial, full = graph_fallback(shape, kv_total, partial, full)
    if gpus and gpus[0].library == "Metal":
        partial = full           # no partial-offload overhead on Metal
    elif len(gpus) > 1:
        full = partial           # several GPUs: always the partial graph
    output = groups.get("output_norm", 0) + (groups["output"] if "output" in groups
                                             else groups.get("token_embd", 0))
    graph_max = max(partial, full)
    n = len(gpus)
    split = [0] * n
    alloc = [0] * n
    with_space: list[int] = []
    for i, g in enumerate(gpus):
        gzo = projector_weights if not with_space else 0
        if g.free < overhead + gzo + graph_max + g.minimum + 2 * layer_size:
            continue                       # "gpu has too little memory to allocate any layers"
        with_space.append(i)
        alloc[i] += g.minimum + layer_size   # the graph waits until full vs. partial is known
    overflow = 0
    if with_space:
        alloc[with_space[0]] += projector_weights
    else:
        overflow += projector_weights
    layer_count = 0
    memory_weights = 0
    for i in range(shape.block_count - 1, -1, -1):
        blk = groups.get(f"blk.{i}")
        if blk is not None:
            layer_size = blk + kv[i]
            memory_weights += blk
        if num_gpu >= 0 and layer_count >= num_gpu:
            overflow += layer_size
            continue
        j = len(with_space)
        while j > 0:
            gi = with_space[i % j]
            used = alloc[gi] + graph_max
            if gpus[gi].free > overhead + used + layer_size:
                alloc[gi] += layer_size
                split[gi] += 1
                layer_count += 1
                break
            del with_space[i % j]
            j -= 1
        if not with_space:
            overflow += layer_size
    fully = layer_count >= shape.block_count
    if output > 0:
        if num_gpu < 0 or layer_count < num_gpu:
            for j in range(len(with_space), 0, -1):
                gi = with_space[layer_count % j]
                used = alloc[gi] + graph_max
                if gpus[gi].free > overhead + used + output:
                    alloc[gi] += output
                    split[gi] += 1
                    layer_count += 1
                    break
        if layer_count < shape.block_count + 1:
            fully = False
            overflow += output
    for i in range(n):
        if split[i] > 0:
            alloc[i] += full if fully else partial
    graph = full if fully else partial
    required_partial = sum(alloc)
    required_full = required_partial + overflow
    placed = bool(gpus) and layer_count > 0
    return MemoryEstimate(
        layers=layer_count if placed else 0, layers_requested=num_gpu,
        layers_model=shape.block_count + 1, tensor_split=tuple(split),
        available=tuple(g.free for g in gpus), gpu_overhead=overhead,
        vram_size=required_partial if placed else 0, total_size=required_full, kv=kv_total,
        allocations=tuple(alloc), memory_weights=memory_weights, memory_layer_output=output,
        graph_full=full, graph_partial=partial, graph=graph if placed else 0,
        library=gpus[0].library if gpus else "cpu", projector_weights=projector_weights,
        kv_per_layer=tuple(kv))


# ---------------------------------------------------------------------------------------------
# Ollama >= 0.30: llm/llama_server.go PredictServerVRAM, server/sched.go's num_batch


def predict_server_vram(file_bytes: int, shape: ModelShape, effective_ctx: int) -> int:
    """llm/llama_server.go ``PredictServerVRAM``: the file's size + ``2 x layers x
    head_count_kv (min) x (embedding / head_count) x ctx x 2`` (always f16, every layer full
    attention). ``effective_ctx`` = min(num_ctx, trained) x num_parallel."""
    kv_heads = shape.heads_kv_min or 1
    return file_bytes + 2 * shape.block_count * kv_heads * shape.embedding_heads \
        * effective_ctx * 2


def generation_batch_for_context(effective_ctx: int) -> int:
    if effective_ctx > 32768:
        return BATCH_LARGE
    if effective_ctx > 4096:
        return BATCH_MEDIUM
    return BATCH_DEFAULT


def generation_batch_surcharge(batch: int) -> int:
    if batch >= BATCH_LARGE:
        return BATCH_SURCHARGE[BATCH_LARGE]
    if batch >= BATCH_MEDIUM:
        return BATCH_SURCHARGE[BATCH_MEDIUM]
    return 0


def generation_batch_fits(batch: int, predicted: int, available: int) -> bool:
    """server/sched.go ``generationBatchFits``."""
    if predicted == 0 or available == 0:
        return True
    threshold = available * FIT_THRESHOLD_PERCENT // 100
    if predicted > threshold:
        return False
    for step in (BATCH_LARGE, BATCH_MEDIUM):
        if batch >= step:
            if predicted > available * BATCH_HEADROOM_PERCENT[step] // 100:
                return False
            break
    return generation_batch_surcharge(batch) <= threshold - predicted


def automatic_generation_batch(effective_ctx: int, predicted: int, available: int,
                               flash_attention_disabled: bool, cuda: bool = True,
                               gpu_memory: int = 0) -> int:
    """server/sched.go ``automaticGenerationBatch`` (>= 0.30): 512 / 1,024 / 2,048 by the
    context, lowered while the prediction leaves too little headroom; 512 (256 on a CUDA GPU
    of <= 8 GiB above 4,096 tokens) with flash attention off on CUDA."""
    if flash_attention_disabled and cuda:
        if effective_ctx > CONSTRAINED_CTX and 0 < gpu_memory <= CONSTRAINED_GPU_BYTES:
            return BATCH_CONSTRAINED
        return BATCH_DEFAULT
    batch = generation_batch_for_context(effective_ctx)
    while batch > BATCH_DEFAULT and not generation_batch_fits(batch, predicted, available):
        batch = BATCH_MEDIUM if batch > BATCH_MEDIUM else BATCH_DEFAULT
    return batch


def gpu_memory_line(free: int, overhead: int, library: str = "CUDA", gpu_id: str = "GPU-0"
                    ) -> tuple[str, int]:
    """server/sched.go's ``"gpu memory"`` line (>= 0.30) and its ``available`` = free -
    OLLAMA_GPU_OVERHEAD - minimum (0 when free is smaller)."""
    minimum = METAL_MINIMUM_MEMORY if library == "Metal" else MINIMUM_MEMORY
    available = free - overhead - minimum if free >= overhead + minimum else 0
    hb = human_bytes2
    line = (f'msg="gpu memory" id={gpu_id} library={library} available={_quote(hb(available))} '
            f'free={_quote(hb(free))} minimum={_quote(hb(minimum))} '
            f'overhead={_quote(hb(overhead))}')
    return line, available
