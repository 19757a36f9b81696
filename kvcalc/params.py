"""Parameter counts from a config, and the bytes the weights take on the GPU.

The count is computed layer by layer from the same ModelSpec the KV figures use:

- embeddings ``vocab x hidden``; the LM head another ``vocab x hidden`` unless
  ``tie_word_embeddings``;
- attention: Q ``hidden x H x hd``, K and V ``hidden x kv x hd`` each, O ``H x hd x hidden``
  (+ biases where the family has them); MLA: ``q_a/q_b`` (or ``q_proj``), ``kv_a_proj_with_mqa``
  ``hidden x (kv_lora_rank + qk_rope)``, ``kv_b_proj`` ``kv_lora_rank x H x (qk_nope + v)``,
  their norms, and O ``H x v x hidden``;
- MLP: gated (SwiGLU: gate, up, down = ``3 x hidden x inter``) or plain (GPT-2, GPT-J,
  NeoX, Falcon, Phi, StarCoder 2, Nemotron-H: ``2 x hidden x inter``); MoE layers hold every
  routed expert, the shared experts and the router;
- Mamba / Mamba-2 / Gated DeltaNet mixers (their projections, conv, A, D, dt) and norms.

Checked against published totals in tests/test_params.py (Llama-2-7B 6,738,415,616 exact).
Weight bytes (``weight_bytes``): bf16/fp16 2 B, fp32 4 B; fp8 1 B + one fp32 scale per 128x128
block; int8 1 B + one fp16 scale per output channel (approximated as per 128 weights); int4
0.5 B + fp16 scale and zero per group of 128 (GPTQ/AWQ default) = 0.53125 B; mxfp4 (gpt-oss)
0.5 B + one e8m0 scale per 32 weights = 0.53125 B for the MLP/expert weights only, everything
else 16-bit; nvfp4 (NVIDIA's NVFP4 checkpoints) 0.5 B + one fp8 scale per 16 weights
= 0.5625 B. Quantized formats keep the embeddings and LM head in 16-bit, as GPTQ/AWQ/fp8
checkpoints do. ``auto`` reads ``quantization_config`` (fp8 -> fp8, mxfp4 -> mxfp4,
AWQ/GPTQ/4-bit -> int4), else the model's ``torch_dtype``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .arch import AttentionLayer, MLALayer, ModelSpec, StateLayer
from .errors import UsageError

PLAIN_MLP_TYPES = frozenset({"gpt2", "gptj", "gpt_neox", "falcon", "phi", "starcoder2",
                             "gpt_bigcode", "opt", "bloom", "nemotron_h", "RefinedWeb"})
QKV_BIAS_TYPES = frozenset({"qwen2", "qwen2_moe", "qwen2_vl"})
ALL_BIAS_TYPES = frozenset({"gpt2", "gptj", "gpt_neox", "phi", "starcoder2", "gpt_bigcode", "opt",
                            "bloom"})
#: LayerNorm (weight + bias) families, and how many norms one block has
LAYERNORM_TYPES = frozenset({"gpt2", "gptj", "gpt_neox", "falcon", "phi", "starcoder2",
                             "gpt_bigcode", "opt", "bloom"})
NORMS_PER_BLOCK = {"gptj": 1, "phi": 1, "gemma2": 4, "gemma3_text": 4, "nemotron_h": 1}
QK_NORM_TYPES = frozenset({"qwen3", "qwen3_moe", "qwen3_next", "gemma3_text", "olmo2"})
LEARNED_POSITION_TYPES = frozenset({"gpt2", "gpt_bigcode", "opt"})

#: bytes per weight (numerator/denominator) for each --weights-dtype, scales included
WEIGHT_DTYPES: dict[str, tuple[int, int, str]] = {
    "fp32": (4, 1, "4 B"),
    "bf16": (2, 1, "2 B"),
    "fp16": (2, 1, "2 B"),
    "fp8": (128 * 128 + 4, 128 * 128, "1 B + fp32 scale per 128x128 block"),
    "int8": (128 + 2, 128, "1 B + fp16 scale per 128 weights"),
    "int4": (64 + 4, 128, "0.5 B + fp16 scale and zero per group of 128"),
    "mxfp4": (16 + 1, 32, "MLP/experts 0.5 B + e8m0 scale per 32; the rest 16-bit"),
    "nvfp4": (8 + 1, 16, "0.5 B + fp8 scale per 16 (NVFP4)"),
}


@dataclass(frozen=True)
class ParamCount:
    total: int
    embedding: int          # input embeddings + untied LM head
    attention: int
    mlp: int
    other: int              # norms, state mixers
    active: int             # parameters used per token (MoE: routed top-k only)
    #: per decoder layer: (all parameters, of which MLP/MoE) — for pipeline-parallel stages
    layers: tuple[tuple[int, int], ...] = field(default=(), compare=False)
    #: the input embeddings (plus learned positions); the rest of ``embedding`` is the LM head
    input_embedding: int = 0
    final_norm: int = 0
    #: vocab x hidden: the LM head matrix (a second copy on the last stage when tied and pp > 1)
    head_matrix: int = 0

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def _get(cfg: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


@lru_cache(maxsize=64)
def count_parameters(spec: ModelSpec) -> ParamCount:
    cfg = dict(spec.config)
    mt = spec.model_type
    h = spec.hidden_size
    vocab = spec.vocab_size or 0
    tied = bool(_get(cfg, "tie_word_embeddings", default=False))
    embedding = vocab * h * (1 if tied else 2)
    attention = mlp = other = active_mlp = 0
    bias_qkv = mt in QKV_BIAS_TYPES or bool(cfg.get("attention_bias")) or mt in ALL_BIAS_TYPES
    bias_o = bool(cfg.get("attention_bias")) or mt in ALL_BIAS_TYPES
    norm = 2 * h if mt in LAYERNORM_TYPES else h  # LayerNorm has a bias
    norms = NORMS_PER_BLOCK.get(mt, 2)
    if mt == "falcon" and not cfg.get("new_decoder_architecture") and cfg.get("parallel_attn", True):
        norms = 1
    if mt in LEARNED_POSITION_TYPES:
        embedding += int(cfg.get("n_positions") or spec.max_position_embeddings or 0) * h
    input_embedding = embedding - (0 if tied else vocab * h)  # + learned positions
    if mt == "phi":  # the LM head has a bias
        embedding += vocab
    per_layer: list[tuple[int, int]] = []
    for i, layer in enumerate(spec.layers):
        before = attention + mlp + other
        before_mlp = mlp
        if layer.kind != "none" or mt != "nemotron-nas":
            other += norms * norm
        if isinstance(layer, AttentionLayer):
            heads = spec.num_attention_heads
            q, kv = heads * layer.head_dim_k, layer.kv_heads * layer.head_dim_k
            attention += h * (q + 2 * kv) + q * h
            attention += (q + 2 * kv if bias_qkv else 0) + (h if bias_o else 0)
            attention += 2 * layer.head_dim_k if mt in QK_NORM_TYPES else 0
            attention += heads if mt == "gpt_oss" else 0  # attention sinks
        elif isinstance(layer, MLALayer):
            attention += _mla_params(cfg, layer, h)
        elif isinstance(layer, StateLayer):
            other += _state_params(cfg, layer, h)
        total_mlp, active = _mlp_params(cfg, mt, h, i, layer)
        mlp += total_mlp
        active_mlp += active
        per_layer.append((attention + mlp + other - before, mlp - before_mlp))
    other += norm  # final norm
    total = embedding + attention + mlp + other
    active = total - mlp + active_mlp
    return ParamCount(total, embedding, attention, mlp, other, active, tuple(per_layer),
                      input_embedding, norm, vocab * h)


def stage_parameters(count: ParamCount, start: int, end: int, first: bool, last: bool,
                     pp: int) -> ParamCount:
    """The parameters one pipeline stage holds: its layers, the input embeddings on the first
    stage, the LM head and final norm on the last. With pp > 1 a tied LM head is a second copy
    on the last stage (vLLM builds the head there)."""
    layers = count.layers[start:end]
    body = sum(p for p, _ in layers)
    mlp = sum(m for _, m in layers)
    head = count.embedding - count.input_embedding
    if pp > 1 and head == 0:  # tied: the last stage needs its own copy of the matrix
        head = count.head_matrix
    embedding = (count.input_embedding if first else 0) + (head if last else 0)
    other = count.final_norm if last else 0
    total = body + embedding + other
    return ParamCount(total, embedding, 0, mlp, total - embedding - mlp, total)


def _mla_params(cfg: dict, layer: MLALayer, h: int) -> int:
    heads = layer.num_heads
    qk = layer.qk_nope_head_dim + layer.qk_rope_head_dim
    q_lora = cfg.get("q_lora_rank")
    q = h * q_lora + q_lora + q_lora * heads * qk if q_lora else h * heads * qk
    kv_a = h * (layer.kv_lora_rank + layer.qk_rope_head_dim) + layer.kv_lora_rank
    kv_b = layer.kv_lora_rank * heads * (layer.qk_nope_head_dim + layer.v_head_dim)
    o = heads * layer.v_head_dim * h
    extra = 0
    if layer.indexer_head_dim:  # DSA indexer: wq_b, wk, k_norm, weights_proj
        n = int(cfg.get("index_n_heads") or 0)
        d = layer.indexer_head_dim
        extra = (q_lora or h) * n * d + h * d + 2 * d + h * n
    return q + kv_a + kv_b + o + extra


def _state_params(cfg: dict, layer: StateLayer, h: int) -> int:
    if layer.mixer == "gated_deltanet":
        hv, dk, dv = layer.ssm_shape
        hk = int(cfg.get("linear_num_key_heads") or hv)
        in_proj = h * (2 * hk * dk + 2 * hv * dv) + h * 2 * hv
        return in_proj + layer.conv_dim * layer.conv_kernel + hv * dv * h + 2 * hv + dv
    if layer.mixer == "mamba2":
        heads, hd, n = layer.ssm_shape
        d_inner = heads * hd
        in_proj = h * (2 * d_inner + (layer.conv_dim - d_inner) + heads)
        return (in_proj + layer.conv_dim * (layer.conv_kernel + 1) + d_inner * h
                + 3 * heads + d_inner)
    d_inner, d_state = layer.ssm_shape
    dt_rank = int(cfg.get("mamba_dt_rank") or -(-h // 16))
    return (h * 2 * d_inner + d_inner * (layer.conv_kernel + 1) + d_inner * (dt_rank + 2 * d_state)
            + dt_rank * d_inner + d_inner + d_inner * d_state + d_inner + d_inner * h)


def _is_moe_layer(cfg: dict, mt: str, i: int, experts: int) -> bool:
    if experts <= 1:
        return False
    if mt in ("deepseek_v2", "deepseek_v3", "kimi_k2", "deepseek_v32"):
        return i >= int(cfg.get("first_k_dense_replace") or 0) and \
            i % int(cfg.get("moe_layer_freq") or 1) == 0
    if mt == "jamba":
        return i % int(cfg.get("expert_layer_period") or 2) == int(cfg.get("expert_layer_offset") or 1)
    if mt == "llama4_text":
        step = int(cfg.get("interleave_moe_layer_step") or 1)
        return (i + 1) % step == 0
    if i in (cfg.get("mlp_only_layers") or []):
        return False
    step = int(cfg.get("decoder_sparse_step") or 1)
    return (i + 1) % step == 0


def _mlp_params(cfg: dict, mt: str, h: int, i: int, layer) -> tuple[int, int]:
    """(all parameters, parameters active per token) of layer i's MLP/MoE block."""
    if mt == "nemotron_h":  # only 'E' (MoE) and '-' (MLP) blocks have an MLP
        pattern = str(cfg.get("hybrid_override_pattern") or "")
        block = pattern[i] if i < len(pattern) else "*"
        if block not in "E-":
            return 0, 0
        if block == "-":
            p = 2 * h * int(cfg["intermediate_size"])
            return p, p
    if mt == "nemotron-nas":
        blocks = cfg.get("block_configs") or []
        ffn = (blocks[i] or {}).get("ffn", {}) if i < len(blocks) else {}
        if ffn.get("no_op"):
            return 0, 0
        mult = ffn.get("ffn_mult")
        if ffn.get("replace_with_linear"):
            return h * h, h * h
        if mult:  # DeciLM: intermediate = round_up(int(2 * mult * h / 3), 256)
            inter = -(-int(2 * mult * h / 3) // 256) * 256
            return 3 * h * inter, 3 * h * inter
    gated = mt not in PLAIN_MLP_TYPES
    mats = 3 if gated else 2
    experts = int(_get(cfg, "num_local_experts", "num_experts", "n_routed_experts", default=0) or 0)
    if _is_moe_layer(cfg, mt, i, experts):
        inter = int(_get(cfg, "moe_intermediate_size", "intermediate_size"))
        top_k = int(_get(cfg, "num_experts_per_tok", "experts_per_token", default=1))
        per_expert = mats * h * inter
        if mt == "gpt_oss":  # biases on both expert projections
            per_expert += 2 * inter + h
        router = h * experts + (experts if mt == "gpt_oss" else 0)
        shared = 0
        if cfg.get("n_shared_experts"):
            shared_inter = int(_get(cfg, "moe_shared_expert_intermediate_size", default=inter))
            shared = int(cfg["n_shared_experts"]) * mats * h * shared_inter
        elif cfg.get("shared_expert_intermediate_size"):
            shared = 3 * h * int(cfg["shared_expert_intermediate_size"]) + h  # + gate
        elif mt == "llama4_text":
            shared = 3 * h * inter
        if str(cfg.get("topk_method", "")) == "noaux_tc":
            router += experts  # e_score_correction_bias
        total = experts * per_expert + router + shared
        return total, top_k * per_expert + router + shared
    if mt == "llama4_text" and cfg.get("intermediate_size_mlp"):
        inter = int(cfg["intermediate_size_mlp"])
    else:
        inter = _get(cfg, "intermediate_size", "n_inner", "ffn_hidden_size")
        inter = int(inter) if inter else 4 * h
    p = mats * h * inter
    if mt in ALL_BIAS_TYPES:
        p += inter + h
    return p, p


def weights_dtype_bytes(dtype: str) -> tuple[int, int, str]:
    try:
        return WEIGHT_DTYPES[dtype]
    except KeyError:
        raise UsageError(f"unknown weights dtype '{dtype}': choose one of "
                         f"{', '.join(WEIGHT_DTYPES)}") from None


def default_weights_dtype(spec: ModelSpec) -> str:
    """The dtype the checkpoint ships in: its quantization_config, else torch_dtype."""
    q = spec.config.get("quantization_config") or {}
    method = str(q.get("quant_method", "")).lower()
    if method in ("fp8", "fbgemm_fp8", "compressed-tensors") and q.get("fmt", "e4m3"):
        return "fp8"
    if method == "mxfp4":  # gpt-oss: MoE experts in MXFP4, attention/router/embeddings bf16
        return "mxfp4"
    if method in ("awq", "gptq", "bitsandbytes") or q.get("bits") == 4:
        return "int4"
    return spec.dtype


def weight_bytes(count: ParamCount, dtype: str) -> int:
    """Bytes the weights take; quantized formats keep embeddings and LM head in 16-bit."""
    num, den, _ = weights_dtype_bytes(dtype)
    if dtype in ("fp32", "bf16", "fp16"):
        return count.total * num // den
    if dtype == "mxfp4":  # OCP MX: only the MLP/expert weights are quantized
        return (count.total - count.mlp) * 2 + -(-count.mlp * num // den)
    return count.embedding * 2 + -(-count.non_embedding * num // den)
