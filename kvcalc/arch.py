"""Raw Hugging Face config dict -> :class:`ModelSpec`, a list of decoder layers with their KV kind.

This is the ONLY module that knows Hugging Face field names, their aliases and the per-family
quirks (see docs/formulas.md §1: the fields each transformers config class reads). Everything after it
(layouts, totals, plans) works on :class:`ModelSpec` alone.

Resolution rules, in order:

1. Nested configs (``text_config``, ``thinker_config.text_config``, ``llm_config``,
   ``language_config``) are unwrapped; the dtype may live at either level.
2. Keys the checkpoint omits but transformers fills from its config class defaults are filled
   from :data:`FAMILY_DEFAULTS` (transformers 5.23 classes) and each fill is reported.
3. Layer kinds: Nemotron-NAS ``block_configs``; Jamba ``attn_layer_period/offset``; Nemotron-H
   ``hybrid_override_pattern``; an explicit ``layer_types`` list; Qwen3-Next
   ``full_attention_interval``; MLA (``kv_lora_rank``); then windows: Qwen2's
   ``use_sliding_window``/``max_window_layers``, Gemma 2 alternation, ``sliding_window_pattern``
   (Gemma 3, Cohere 2, EXAONE 4), Gemma 3n, Llama 4 chunked local attention; otherwise one global
   ``sliding_window`` (Mistral v0.1, Phi-3) or ``attention_chunk_size``; otherwise full attention.
4. Gemma 3n's last ``num_kv_shared_layers`` layers reuse an earlier layer's KV (kind ``shared``).

No code from a model repository is ever executed: ``auto_map`` is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from .dtypes import normalise_dtype_name
from .errors import ConfigError, MissingFieldError

#: the key under which a GGUF model's facts travel in its raw config (kvcalc.gguf)
GGUF_CONFIG_KEY = "gguf"

# --------------------------------------------------------------------------------------------
# Layer kinds (the domain model of DESIGN.md §2)

FULL = "full"
SLIDING = "sliding"
CHUNKED = "chunked"
MLA = "mla"
STATE = "state"
SHARED = "shared"
NONE = "none"
KINDS = (FULL, SLIDING, CHUNKED, MLA, STATE, SHARED, NONE)


@dataclass(frozen=True)
class AttentionLayer:
    """Softmax attention that caches K and V per token per KV head (full, sliding or chunked)."""

    kind: str
    kv_heads: int
    head_dim_k: int
    head_dim_v: int
    #: tokens a sliding layer attends to (``sliding_window``) or the chunk size of chunked
    #: local attention (``attention_chunk_size``); None for full attention
    window: int | None = None
    #: heads that transformers actually caches, when it differs from ``kv_heads``
    #: (Falcon's new decoder architecture broadcast K/V to every query head before caching,
    #: transformers < 5.25)
    hf_kv_heads: int | None = None


@dataclass(frozen=True)
class MLALayer:
    """DeepSeek multi-head latent attention: a compressed latent plus a shared RoPE key."""

    num_heads: int
    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    #: DeepSeek-V3.2 sparse attention (DSA): the lightning indexer caches one key of
    #: ``index_head_dim`` values per token per layer as well; None for plain MLA
    indexer_head_dim: int | None = None
    kind: str = MLA


@dataclass(frozen=True)
class StateLayer:
    """A recurrent layer (Mamba, Mamba-2, Gated DeltaNet) with a fixed per-sequence state.

    The state is a causal-convolution buffer of ``conv_dim`` channels x ``conv_kernel`` columns
    plus a recurrent/SSM tensor of shape ``ssm_shape``. ``ssm_dtype`` is the dtype the config
    asks for (``mamba_ssm_cache_dtype``), None when the config leaves it to the runtime.
    ``heads`` is the number of state heads tensor parallelism splits.
    """

    mixer: str
    conv_dim: int
    conv_kernel: int
    ssm_shape: tuple[int, ...]
    heads: int
    ssm_dtype: str | None = None
    kind: str = STATE


@dataclass(frozen=True)
class SharedLayer:
    """Attention that reuses the KV cache of an earlier layer (Gemma 3n): stores nothing."""

    source: int
    attends_like: str = FULL  # the kind of the layer it reads from
    kind: str = SHARED


@dataclass(frozen=True)
class NoCacheLayer:
    """A layer with nothing to cache (MLP/MoE-only blocks, Nemotron-NAS ``no_op`` attention)."""

    reason: str
    kind: str = NONE


Layer = Union[AttentionLayer, MLALayer, StateLayer, SharedLayer, NoCacheLayer]


@dataclass(frozen=True)
class ModelSpec:
    """What kvcalc knows about a model's architecture, independent of any runtime."""

    name: str
    model_type: str
    layers: tuple[Layer, ...]
    dtype: str
    hidden_size: int
    num_attention_heads: int
    max_position_embeddings: int | None
    vocab_size: int | None
    #: the (unwrapped) text config with family defaults filled in; used for parameter counts
    config: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)
    #: defaults applied and assumptions made while reading the config, one sentence each
    notes: tuple[str, ...] = ()
    #: assumptions that deserve a warning (unknown model_type, guessed dtype...)
    warnings: tuple[str, ...] = ()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_mla(self) -> bool:
        return any(layer.kind == MLA for layer in self.layers)

    def count(self, kind: str) -> int:
        return sum(1 for layer in self.layers if layer.kind == kind)

    @property
    def kv_heads(self) -> int | None:
        """The KV-head count of the attention layers (the largest, for heterogeneous models)."""
        heads = [l.kv_heads for l in self.layers if isinstance(l, AttentionLayer)]
        return max(heads) if heads else None


# --------------------------------------------------------------------------------------------
# Field names and defaults

#: canonical name -> raw JSON names, first match wins (transformers ``attribute_map``s)
ALIASES: dict[str, tuple[str, ...]] = {
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head", "n_heads", "num_heads"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "max_position_embeddings": (
        "max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx",
    ),
}

#: keys that transformers' config classes fill when a checkpoint omits them (transformers 5.23;
#: read from ``CONFIG_MAPPING[model_type]()``). Only fields kvcalc reads are listed.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"vocab_size": 32000, "max_position_embeddings": 2048, "tie_word_embeddings": False},
    "mistral": {"vocab_size": 32000, "max_position_embeddings": 131072, "sliding_window": 4096,
                "tie_word_embeddings": False},
    "mixtral": {"vocab_size": 32000, "max_position_embeddings": 131072,
                "num_local_experts": 8, "num_experts_per_tok": 2, "tie_word_embeddings": False},
    "qwen2": {"use_sliding_window": False, "max_window_layers": 28, "vocab_size": 151936},
    "qwen2_moe": {"use_sliding_window": False, "max_window_layers": 28, "vocab_size": 151936},
    "qwen3": {"use_sliding_window": False, "max_window_layers": 28, "vocab_size": 151936},
    "qwen3_moe": {"use_sliding_window": False, "max_window_layers": 28, "vocab_size": 151936},
    "qwen3_next": {"full_attention_interval": 4, "head_dim": 256, "linear_conv_kernel_dim": 4,
                   "linear_key_head_dim": 128, "linear_value_head_dim": 128,
                   "linear_num_key_heads": 16, "linear_num_value_heads": 32},
    "gemma": {"head_dim": 256, "vocab_size": 256000, "tie_word_embeddings": True},
    "gemma2": {"head_dim": 256, "sliding_window": 4096, "vocab_size": 256000,
               "tie_word_embeddings": True},
    "gemma3_text": {"num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                    "sliding_window": 4096, "sliding_window_pattern": 6, "vocab_size": 262208,
                    "max_position_embeddings": 131072, "tie_word_embeddings": True},
    "gemma3n_text": {"num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256,
                     "sliding_window": 512, "num_kv_shared_layers": 15, "vocab_size": 262400,
                     "max_position_embeddings": 32768, "tie_word_embeddings": True},
    "llama4_text": {"head_dim": 128, "attention_chunk_size": 8192, "no_rope_layer_interval": 4,
                    "vocab_size": 202048, "max_position_embeddings": 131072},
    "gpt_oss": {"head_dim": 64, "sliding_window": 128, "vocab_size": 201088,
                "max_position_embeddings": 131072},
    "deepseek_v2": {"kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
                    "v_head_dim": 128, "vocab_size": 102400},
    "deepseek_v3": {"kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
                    "v_head_dim": 128, "vocab_size": 129280},
    "falcon": {"multi_query": True, "new_decoder_architecture": False, "vocab_size": 65024,
               "tie_word_embeddings": True},
    "gpt2": {"vocab_size": 50257, "max_position_embeddings": 1024, "tie_word_embeddings": True},
    "gpt_bigcode": {"multi_query": True, "vocab_size": 50257, "tie_word_embeddings": True},
    "gptj": {"vocab_size": 50400, "max_position_embeddings": 2048, "tie_word_embeddings": False},
    "gpt_neox": {"vocab_size": 50432, "max_position_embeddings": 2048,
                 "tie_word_embeddings": False},
    "jamba": {"attn_layer_period": 8, "attn_layer_offset": 4, "mamba_d_state": 16,
              "mamba_d_conv": 4, "mamba_expand": 2, "num_key_value_heads": 8},
    "nemotron_h": {"conv_kernel": 4, "mamba_ssm_cache_dtype": "float32"},
    "phi": {"vocab_size": 51200},
    "phi3": {"num_hidden_layers": 32, "num_attention_heads": 32, "hidden_size": 3072,
             "vocab_size": 32064},
    "olmo2": {"vocab_size": 50304},
    "starcoder2": {"vocab_size": 49152, "tie_word_embeddings": True},
    "cohere2": {"sliding_window_pattern": 4},
    "mamba": {"conv_kernel": 4, "state_size": 16, "expand": 2},
    "mamba2": {"conv_kernel": 4, "state_size": 128, "expand": 2, "n_groups": 8, "head_dim": 64},
}
#: config types that reuse another family's rules (remote-code or renamed types)
TYPE_EQUIVALENTS = {
    "kimi_k2": "deepseek_v3",
    "RefinedWeb": "falcon", "RefinedWebModel": "falcon",
    "deci": "nemotron-nas",
    "mistral3": "mistral",
}
#: families kvcalc models explicitly; anything else gets the generic rules and a warning
KNOWN_TYPES = frozenset(FAMILY_DEFAULTS) | frozenset(TYPE_EQUIVALENTS) | {
    "nemotron-nas", "deepseek_v32", "internlm2", "olmo", "cohere", "exaone4", "smollm3", "glm4_moe", "glm",
    "glm4", "ernie4_5", "granite", "qwen2_vl", "qwen2_5_vl_text", "baichuan", "bloom", "opt",
    "minicpm", "minicpm3", "stablelm", "persimmon", "gemma3", "gemma3n", "llama4", "phimoe",
}
_NESTED_TEXT_KEYS = ("text_config", "llm_config", "language_config", "decoder")
_PARENT_TO_TEXT_TYPE = {"gemma3": "gemma3_text", "gemma3n": "gemma3n_text",
                        "llama4": "llama4_text"}

_LAYER_TYPE_NAMES = {
    "full_attention": FULL, "attention": FULL, "global": FULL, "global_attention": FULL,
    "sliding_attention": SLIDING, "sliding_window": SLIDING, "local": SLIDING,
    "local_attention": SLIDING,
    "chunked_attention": CHUNKED,
    "linear_attention": STATE, "mamba": STATE, "mamba2": STATE, "conv": STATE,
    "moe": NONE, "mlp": NONE, "dense": NONE, "sparse": NONE,
}


# --------------------------------------------------------------------------------------------
# The validated edge: every field any family reads (here and in params.py), its range

#: most decoder layers a config may have (the largest published models have under 200)
MAX_LAYERS = 10_000
#: most attention, KV, state or expert heads / experts / groups
MAX_HEADS = 65_536
#: largest hidden size, head dim, intermediate size, rank or state size
MAX_DIM = 1 << 20
#: largest vocabulary
MAX_VOCAB = 1 << 24
#: largest context length, sliding window or chunk a config may name (2**40 tokens)
MAX_CONFIG_TOKENS = 1 << 40

_LAYER_COUNT = (1, MAX_LAYERS)
_HEADS = (1, MAX_HEADS)
_DIM = (1, MAX_DIM)
_DIM0 = (0, MAX_DIM)
_TOKENS = (1, MAX_CONFIG_TOKENS)
_COUNT0 = (0, MAX_HEADS)
_PERIOD = (1, MAX_LAYERS)
_INDEX0 = (0, MAX_LAYERS)

#: numeric config field -> (smallest, largest) allowed value, inclusive. A field that is present
#: (not null) must be an integer in its range: not a bool, a string, NaN, Infinity or a
#: fraction. Lists (per-layer ``intermediate_size``, ``mlp_only_layers``) are checked element
#: by element. docs/security.md lists these limits.
FIELD_RULES: dict[str, tuple[int, int]] = {
    **{k: _LAYER_COUNT for k in ALIASES["num_hidden_layers"]},
    **{k: _HEADS for k in ALIASES["num_attention_heads"]},
    **{k: _DIM for k in ALIASES["hidden_size"]},
    **{k: _TOKENS for k in ALIASES["max_position_embeddings"]},
    **{k: _HEADS for k in ("num_key_value_heads", "n_head_kv", "num_kv_heads",
                           "multi_query_group_num", "kv_n_heads", "n_heads_in_group",
                           "mamba_num_heads", "mamba_n_heads", "n_groups", "mamba_n_groups",
                           "linear_num_key_heads", "linear_num_value_heads", "index_n_heads")},
    **{k: _DIM for k in ("head_dim", "attention_head_dim", "kv_channels", "d_kv",
                         "hidden_size_per_head", "intermediate_size", "n_inner",
                         "ffn_hidden_size", "moe_intermediate_size", "intermediate_size_mlp",
                         "kv_lora_rank",
                         "v_head_dim", "index_head_dim", "mamba_d_state", "state_size",
                         "ssm_state_size", "mamba_d_conv", "conv_kernel",
                         "linear_conv_kernel_dim", "mamba_expand", "expand", "mamba_head_dim",
                         "mamba_d_head", "linear_key_head_dim", "linear_value_head_dim",
                         "mamba_dt_rank")},
    #: 0 = none (no shared expert, no query compression)
    **{k: _DIM0 for k in ("qk_rope_head_dim", "qk_nope_head_dim", "q_lora_rank",
                          "shared_expert_intermediate_size",
                          "moe_shared_expert_intermediate_size")},
    "vocab_size": (1, MAX_VOCAB),
    "index_topk": _TOKENS,
    #: 0 = none (as transformers reads a falsy window); a layer that slides needs at least 1
    **{k: (0, MAX_CONFIG_TOKENS) for k in ("sliding_window", "attention_chunk_size")},
    **{k: _PERIOD for k in ("sliding_window_pattern", "full_attention_interval",
                            "no_rope_layer_interval", "attn_layer_period", "expert_layer_period",
                            "moe_layer_freq", "interleave_moe_layer_step",
                            "decoder_sparse_step")},
    **{k: _INDEX0 for k in ("max_window_layers", "attn_layer_offset", "expert_layer_offset",
                            "num_kv_shared_layers", "first_k_dense_replace", "mlp_only_layers")},
    #: 0 = a dense model
    **{k: _COUNT0 for k in ("num_local_experts", "num_experts", "n_routed_experts",
                            "n_shared_experts", "num_experts_per_tok", "experts_per_token")},
}
#: fields that must be text, and fields that must be true/false, when present
TEXT_FIELDS = ("model_type", "torch_dtype", "dtype", "hybrid_override_pattern",
               "mamba_ssm_cache_dtype", "topk_method")
BOOL_FIELDS = ("use_sliding_window", "multi_query", "new_decoder_architecture",
               "tie_word_embeddings", "attention_bias", "parallel_attn")
#: the longest text field kvcalc accepts (a model_type, a dtype, a per-layer pattern)
MAX_TEXT = 4 * MAX_LAYERS
#: per-layer lists
LIST_FIELDS = ("layer_types", "no_rope_layers", "block_configs")
#: the non-numeric fields: (names, type, the rule as the error states it, most characters or
#: entries)
_SHAPE_RULES = ((TEXT_FIELDS, str, "text", MAX_TEXT),
                (BOOL_FIELDS, bool, "true or false", None),
                (LIST_FIELDS, list, "a list", MAX_LAYERS))


#: config fields that name code, a kernel or a hub repository for transformers to load
#: (remote code, hub kernels such as ``attn_implementation: kernels-community/...``,
#: quantisation kernels). kvcalc reads them as data at most and never passes them on:
#: :func:`without_code_fields` removes them before a config reaches transformers.
CODE_FIELDS = ("auto_map", "attn_implementation", "_attn_implementation",
               "experts_implementation", "_experts_implementation", "quantization_config",
               "kernel_config", "use_kernels", "custom_pipelines", "trust_remote_code")


def without_code_fields(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``cfg`` without :data:`CODE_FIELDS` at any level (``text_config`` and other
    sub-configs included), and the dotted names of what was removed."""
    dropped: list[str] = []

    def clean(node: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        out = {}
        for key, value in node.items():
            if key in CODE_FIELDS:
                dropped.append(prefix + key)
            elif isinstance(value, Mapping):
                out[key] = clean(value, f"{prefix}{key}.")
            else:
                out[key] = value
        return out

    return clean(cfg, ""), dropped


def checked_int(name: str, value: Any, where: str, lo: int = 0, hi: int | None = None) -> int:
    """``value`` as an int when it is an integer in ``[lo, hi]``; otherwise the ConfigError
    that names the field, its value and the rule. Integral floats (``4096.0``) are accepted."""
    rule = f"an integer from {lo:,} to {hi:,}" if hi is not None else f"an integer >= {lo:,}"
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if not bad and isinstance(value, float):
        bad = not math.isfinite(value) or value != int(value)
    if bad:
        raise ConfigError(f"field '{name}' of {where} is {_show(value)}: it must be {rule}")
    number = int(value)
    if number < lo or (hi is not None and number > hi):
        raise ConfigError(f"field '{name}' of {where} is {_show(number)}: it must be {rule}")
    return number


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_fields(cfg: Mapping[str, Any], where: str) -> None:
    """The edge: every field of :data:`FIELD_RULES`, :data:`TEXT_FIELDS` and
    :data:`BOOL_FIELDS` that ``cfg`` holds (not null) has the type and range its rule says."""
    for name, (lo, hi) in FIELD_RULES.items():
        value = cfg.get(name)
        if value is None:
            continue
        if isinstance(value, list) and name in ("intermediate_size", "mlp_only_layers"):
            if len(value) > MAX_LAYERS:
                raise ConfigError(f"field '{name}' of {where} lists {len(value):,} entries: "
                                  f"at most {MAX_LAYERS:,}")
            for i, item in enumerate(value):
                checked_int(f"{name}[{i}]", item, where, lo, hi)
        else:
            checked_int(name, value, where, lo, hi)
    for names, kind, rule, most in _SHAPE_RULES:
        for name in names:
            value = cfg.get(name)
            if value is None:
                continue
            if not isinstance(value, kind):
                raise ConfigError(f"field '{name}' of {where} is {_show(value)}: it must be "
                                  f"{rule}")
            if most is not None and len(value) > most:
                raise ConfigError(f"field '{name}' of {where} holds {len(value):,} "
                                  f"{'characters' if kind is str else 'entries'}: at most "
                                  f"{most:,}")


class _Reader:
    """Field access over one config dict with aliases, family defaults and a record of both."""

    def __init__(self, cfg: Mapping[str, Any], model_type: str, name: str):
        self.cfg = dict(cfg)
        self.model_type = model_type
        self.name = name
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.known = model_type in KNOWN_TYPES
        defaults = FAMILY_DEFAULTS.get(TYPE_EQUIVALENTS.get(model_type, model_type), {})
        for key, value in defaults.items():
            if self.cfg.get(key) is None and not self._has_alias(key):
                if key in self.cfg:  # present as null: transformers keeps None (e.g. head_dim)
                    continue
                self.cfg[key] = value
                self.notes.append(
                    f"config omits '{key}': using transformers' {model_type} default {value!r}"
                )
        if self.cfg.get("mamba_dt_rank") == "auto":  # transformers: ceil(hidden / 16)
            del self.cfg["mamba_dt_rank"]
        validate_fields(self.cfg, name)

    def _has_alias(self, key: str) -> bool:
        return any(self.cfg.get(k) is not None for k in ALIASES.get(key, ()))

    def get(self, key: str, default: Any = None) -> Any:
        for k in ALIASES.get(key, (key,)):
            value = self.cfg.get(k)
            if value is not None:
                return value
        return default

    def require(self, key: str, hint: str | None = None) -> Any:
        value = self.get(key)
        if value is None:
            raise MissingFieldError(key, self.name, hint)
        return value

    def integer(self, key: str, default: Any = None, required: bool = False) -> Any:
        value = self.require(key) if required else self.get(key, default)
        if value is None:
            return None
        lo, hi = FIELD_RULES.get(key, (0, None))
        return checked_int(key, value, self.name, lo, hi)

    def assume(self, text: str) -> None:
        """Record an assumption: a warning for unknown families, a note for known ones."""
        (self.notes if self.known else self.warnings).append(text)


def unwrap_text_config(raw: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The decoder's config for multimodal checkpoints, and the key it was found under."""
    if "thinker_config" in raw and isinstance(raw["thinker_config"], Mapping):
        inner = raw["thinker_config"].get("text_config")
        if isinstance(inner, Mapping):
            return dict(inner), "thinker_config.text_config"
    for key in _NESTED_TEXT_KEYS:
        inner = raw.get(key)
        if isinstance(inner, Mapping) and inner:
            return dict(inner), key
    return dict(raw), None


def build_spec(raw: Mapping[str, Any], name: str = "model") -> ModelSpec:
    """Read a raw HF config dict (a preset's ``config``, a config.json) into a ModelSpec."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"the config of {name} is not a JSON object")
    if GGUF_CONFIG_KEY in raw:  # read from a GGUF header: llama.cpp's rules (kvcalc/gguf.py)
        return build_gguf_spec(raw, name)
    text, nested_key = unwrap_text_config(raw)
    parent_type = raw.get("model_type")
    for value in (parent_type, text.get("model_type")):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"field 'model_type' of {name} is {_show(value)}: it must be text")
    model_type = text.get("model_type") or _PARENT_TO_TEXT_TYPE.get(parent_type, parent_type)
    if nested_key and not text.get("model_type") and model_type:
        text["model_type"] = model_type
    if not model_type:
        model_type = "unknown"
    family = TYPE_EQUIVALENTS.get(model_type, model_type)
    r = _Reader(text, model_type, name)
    if nested_key:
        r.notes.insert(0, f"read the decoder config from '{nested_key}'")
    if not r.known:
        r.warnings.append(
            f"unknown model_type '{model_type}': read with the generic Llama-style field names"
        )
    named_code = [k for k in CODE_FIELDS if k in raw or k in text]
    if named_code:
        r.notes.append(f"config names code to load ({', '.join(named_code)}): read as plain "
                       "JSON, never loaded or run")

    dtype = _model_dtype(r, raw)
    hidden = r.integer("hidden_size", required=True)
    layers = _layers(r, family)
    num_heads = r.integer("num_attention_heads") or 0
    _check_experts(r)
    return ModelSpec(
        name=name,
        model_type=model_type,
        layers=tuple(layers),
        dtype=dtype,
        hidden_size=hidden,
        num_attention_heads=num_heads,
        max_position_embeddings=r.integer("max_position_embeddings"),
        vocab_size=r.integer("vocab_size"),
        config=r.cfg,
        notes=tuple(r.notes),
        warnings=tuple(r.warnings),
    )


def _check_experts(r: _Reader) -> None:
    """Relations of the MoE fields params.py reads: top-k experts at most the experts."""
    experts = next((r.integer(k) for k in ("num_local_experts", "num_experts",
                                           "n_routed_experts") if r.cfg.get(k) is not None), None)
    top_k = next((r.integer(k) for k in ("num_experts_per_tok", "experts_per_token")
                  if r.cfg.get(k) is not None), None)
    if experts and top_k and top_k > experts:
        raise ConfigError(f"the config of {r.name} routes each token to {top_k} experts of "
                          f"{experts}: num_experts_per_tok must be at most the experts")


def _model_dtype(r: _Reader, raw: Mapping[str, Any]) -> str:
    for source in (r.cfg, raw):
        for key in ("dtype", "torch_dtype"):
            name = normalise_dtype_name(source.get(key))
            if name in ("fp32", "fp16", "bf16"):
                return name
    r.warnings.append("config names no torch_dtype: assuming bf16 for 'auto' (set --kv-dtype)")
    return "bf16"


# --------------------------------------------------------------------------------------------
# Attention geometry


def _kv_heads(r: _Reader, num_heads: int) -> int:
    """KV heads: GQA/MQA field names of every family (vLLM ``get_total_num_kv_heads``)."""
    cfg = r.cfg
    if r.model_type in ("falcon", "RefinedWeb", "RefinedWebModel") or "new_decoder_architecture" in cfg:
        if cfg.get("new_decoder_architecture"):
            return r.integer("num_kv_heads") or r.integer("n_head_kv") or num_heads
        if cfg.get("multi_query"):
            return 1
        return r.integer("num_kv_heads") or num_heads
    if cfg.get("multi_query") is True:  # GPTBigCode (StarCoder 1)
        return 1
    for key in ("n_head_kv", "num_kv_heads", "num_key_value_heads", "multi_query_group_num"):
        if cfg.get(key) is not None:
            return r.integer(key)
    attn_config = cfg.get("attn_config")
    if isinstance(attn_config, Mapping) and attn_config.get("kv_n_heads") is not None:
        return checked_int("attn_config.kv_n_heads", attn_config["kv_n_heads"], r.name,
                           *FIELD_RULES["kv_n_heads"])  # DBRX
    r.assume(f"no KV-head field: multi-head attention, kv heads = num_attention_heads = {num_heads}")
    return num_heads


def _head_dim(r: _Reader, num_heads: int) -> int:
    for key in ("head_dim", "attention_head_dim", "kv_channels", "d_kv", "hidden_size_per_head"):
        if r.cfg.get(key) is not None:
            return r.integer(key)
    hidden = r.integer("hidden_size", required=True)
    if hidden % num_heads:
        raise ConfigError(
            f"cannot derive head_dim for {r.name}: hidden_size {hidden} is not a multiple of "
            f"num_attention_heads {num_heads} and the config has no 'head_dim'"
        )
    r.assume(f"no head_dim field: head_dim = hidden_size / num_attention_heads = {hidden // num_heads}")
    return hidden // num_heads


def _attention(r: _Reader, kind: str = FULL, window: int | None = None,
               kv_heads: int | None = None) -> AttentionLayer:
    num_heads = r.integer("num_attention_heads", required=True)
    if kv_heads is None:
        kv_heads = _kv_heads(r, num_heads)
    hd = _head_dim(r, num_heads)
    if kv_heads < 1 or kv_heads > num_heads or num_heads % kv_heads:
        raise ConfigError(
            f"the config of {r.name} has {kv_heads} KV heads for {num_heads} attention heads: "
            "the KV heads must be at least 1, at most the attention heads, and divide them")
    hf_heads = None
    if r.cfg.get("new_decoder_architecture") and kv_heads != num_heads:
        hf_heads = num_heads  # transformers < 5.25: Falcon broadcasts K/V before caching
    return AttentionLayer(kind, kv_heads, hd, hd, window, hf_heads)


def _mla(r: _Reader) -> MLALayer:
    return MLALayer(
        num_heads=r.integer("num_attention_heads", required=True),
        kv_lora_rank=r.integer("kv_lora_rank", required=True),
        qk_rope_head_dim=r.integer("qk_rope_head_dim", required=True),
        qk_nope_head_dim=r.integer("qk_nope_head_dim", required=True),
        v_head_dim=r.integer("v_head_dim", required=True),
        indexer_head_dim=r.integer("index_head_dim") if r.cfg.get("index_topk") else None,
    )


# --------------------------------------------------------------------------------------------
# State layers


def _mamba_state(r: _Reader) -> StateLayer:
    """Mamba-1 (Jamba, Mamba): conv [d_inner, d_conv] + ssm [d_inner, d_state]."""
    hidden = r.integer("hidden_size", required=True)
    expand = r.get("mamba_expand", r.get("expand"))
    d_inner = r.integer("intermediate_size") if r.model_type == "mamba" else None
    if d_inner is None:
        if expand is None:
            raise MissingFieldError("mamba_expand", r.name)
        d_inner = int(expand * hidden)
    d_state = r.get("mamba_d_state", r.get("state_size"))
    d_conv = r.get("mamba_d_conv", r.get("conv_kernel"))
    if d_state is None:
        raise MissingFieldError("mamba_d_state", r.name)
    if d_conv is None:
        raise MissingFieldError("mamba_d_conv", r.name)
    return StateLayer("mamba", d_inner, int(d_conv), (d_inner, int(d_state)), heads=d_inner,
                      ssm_dtype=normalise_dtype_name(r.cfg.get("mamba_ssm_cache_dtype")))


def _mamba2_state(r: _Reader) -> StateLayer:
    """Mamba-2 (Nemotron-H, Mamba2): conv [H*P + 2*G*N, k] + ssm [H, P, N]."""
    heads = r.get("mamba_num_heads", r.get("mamba_n_heads", r.get("num_heads")))
    head_dim = r.get("mamba_head_dim", r.get("mamba_d_head",
                     r.get("head_dim") if r.model_type == "mamba2" else None))
    groups = r.get("n_groups", r.get("mamba_n_groups"))
    state = r.get("ssm_state_size", r.get("state_size", r.get("mamba_d_state")))
    kernel = r.get("conv_kernel", r.get("mamba_d_conv"))
    for key, value in (("mamba_num_heads", heads), ("mamba_head_dim", head_dim),
                       ("n_groups", groups), ("ssm_state_size", state), ("conv_kernel", kernel)):
        if value is None:
            raise MissingFieldError(key, r.name)
    heads, head_dim, groups, state, kernel = map(int, (heads, head_dim, groups, state, kernel))
    conv_dim = heads * head_dim + 2 * groups * state
    return StateLayer("mamba2", conv_dim, kernel, (heads, head_dim, state), heads=heads,
                      ssm_dtype=normalise_dtype_name(r.cfg.get("mamba_ssm_cache_dtype")))


def _gdn_state(r: _Reader) -> StateLayer:
    """Gated DeltaNet (Qwen3-Next): conv [2*Hk*dk + Hv*dv, k] + recurrent [Hv, dk, dv]."""
    hk = r.integer("linear_num_key_heads", required=True)
    hv = r.integer("linear_num_value_heads", required=True)
    dk = r.integer("linear_key_head_dim", required=True)
    dv = r.integer("linear_value_head_dim", required=True)
    kernel = r.integer("linear_conv_kernel_dim", required=True)
    return StateLayer("gated_deltanet", 2 * hk * dk + hv * dv, kernel, (hv, dk, dv), heads=hv)


def _state_layer(r: _Reader, family: str) -> StateLayer:
    """Pick the recurrent mixer from the config's fields, never guessing one."""
    cfg = r.cfg
    if family == "qwen3_next" or cfg.get("linear_num_value_heads") is not None:
        return _gdn_state(r)
    if (family in ("nemotron_h", "mamba2") or cfg.get("mamba_num_heads") is not None
            or cfg.get("mamba_n_heads") is not None):
        return _mamba2_state(r)
    if family in ("jamba", "mamba", "falcon_mamba") or cfg.get("mamba_expand") is not None:
        return _mamba_state(r)
    raise ConfigError(
        f"{r.name} ({r.model_type}) has recurrent/linear-attention layers whose state layout "
        "kvcalc does not know (supported: Mamba, Mamba-2, Gated DeltaNet)"
    )


# --------------------------------------------------------------------------------------------
# Layer kinds


def _layers(r: _Reader, family: str) -> list[Layer]:
    if family == "nemotron-nas" or isinstance(r.cfg.get("block_configs"), list):
        return _nas_layers(r)
    n = r.integer("num_hidden_layers", required=True)
    if n == 0:
        raise ConfigError(f"the config of {r.name} has num_hidden_layers = 0")
    kinds = _layer_kinds(r, family, n)
    layers: list[Layer] = []
    attention_cache: dict[str, Layer] = {}
    for kind in kinds:
        if kind == NONE:
            layers.append(NoCacheLayer("no attention or state in this block (MLP/MoE only)"))
        elif kind == STATE:
            if STATE not in attention_cache:
                attention_cache[STATE] = _state_layer(r, family)
            layers.append(attention_cache[STATE])
        elif kind == MLA:
            if MLA not in attention_cache:
                attention_cache[MLA] = _mla(r)
            layers.append(attention_cache[MLA])
        else:
            if kind not in attention_cache:
                window = None
                if kind == SLIDING:
                    window = _window(r, "sliding_window", "sliding")
                elif kind == CHUNKED:
                    window = _window(r, "attention_chunk_size", "chunked")
                attention_cache[kind] = _attention(r, kind, window)
            layers.append(attention_cache[kind])
    return _apply_kv_sharing(r, layers)


def _window(r: _Reader, key: str, kind: str) -> int:
    """The window (or chunk) of a layer the config says is ``kind``: present and at least 1."""
    window = r.integer(key)
    if window is None:
        raise MissingFieldError(key, r.name, f"layer_types lists {kind} layers")
    if window < 1:
        raise ConfigError(f"field '{key}' of {r.name} is {window}: {kind} layers need a window "
                          "of at least 1 token")
    return window


def _layer_kinds(r: _Reader, family: str, n: int) -> list[str]:
    cfg = r.cfg
    if family == "jamba" or (cfg.get("attn_layer_period") and family not in ("nemotron_h",)):
        period = r.integer("attn_layer_period", required=True)
        offset = r.integer("attn_layer_offset", required=True)
        if offset >= period or offset >= n:
            raise ConfigError(
                f"attn_layer_offset {offset} of {r.name} must be below attn_layer_period "
                f"{period} and num_hidden_layers {n}: otherwise no layer is attention")
        return [FULL if i % period == offset else STATE for i in range(n)]
    pattern = cfg.get("hybrid_override_pattern")
    if pattern:
        return _pattern_kinds(r, str(pattern), n)
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        return _listed_kinds(r, layer_types, n)
    if family == "qwen3_next":
        interval = r.integer("full_attention_interval", required=True)
        return [FULL if (i + 1) % interval == 0 else STATE for i in range(n)]
    if family in ("mamba", "mamba2", "falcon_mamba"):
        return [STATE] * n
    if cfg.get("kv_lora_rank") is not None:
        return [MLA] * n
    return _window_kinds(r, family, n)


def _pattern_kinds(r: _Reader, pattern: str, n: int) -> list[str]:
    """Nemotron-H ``hybrid_override_pattern``: M = Mamba-2, * = attention, - = MLP, E = MoE."""
    if len(pattern) != n:
        raise ConfigError(
            f"hybrid_override_pattern of {r.name} has {len(pattern)} entries for "
            f"num_hidden_layers = {n}"
        )
    table = {"M": STATE, "*": FULL, "-": NONE, "E": NONE}
    try:
        return [table[c] for c in pattern]
    except KeyError as exc:
        raise ConfigError(f"hybrid_override_pattern of {r.name} has unknown block {exc}") from None


def _listed_kinds(r: _Reader, layer_types: list[Any], n: int) -> list[str]:
    if len(layer_types) < n:
        raise ConfigError(
            f"layer_types of {r.name} lists {len(layer_types)} layers for num_hidden_layers = {n}"
        )
    kinds = []
    for t in layer_types[:n]:
        kind = _LAYER_TYPE_NAMES.get(str(t))
        if kind is None:
            raise ConfigError(f"layer_types of {r.name} has unsupported layer type '{t}'")
        kinds.append(kind)
    if r.cfg.get("kv_lora_rank") is not None:
        kinds = [MLA if k == FULL else k for k in kinds]
    return kinds


def _window_kinds(r: _Reader, family: str, n: int) -> list[str]:
    cfg = r.cfg
    window = r.integer("sliding_window")
    if "use_sliding_window" in cfg and not cfg.get("use_sliding_window"):
        if window:
            r.notes.append(
                f"use_sliding_window is false: sliding_window {window} is not applied (Qwen2 rule)"
            )
        window = None
    if window:
        if "use_sliding_window" in cfg:  # Qwen2 family: layers >= max_window_layers slide
            first = r.integer("max_window_layers", 0)
            return [SLIDING if i >= first else FULL for i in range(n)]
        if family == "gemma2":
            return [SLIDING if (i + 1) % 2 else FULL for i in range(n)]
        if family == "gemma3n_text":
            return [FULL if (i + 1) % 5 == 0 else SLIDING for i in range(n)]
        pattern = r.integer("sliding_window_pattern")
        if pattern:
            return [SLIDING if (i + 1) % pattern else FULL for i in range(n)]
        return [SLIDING] * n
    chunk = r.integer("attention_chunk_size")
    if chunk:
        no_rope = cfg.get("no_rope_layers")
        if isinstance(no_rope, list) and len(no_rope) >= n:
            return [CHUNKED if no_rope[i] else FULL for i in range(n)]
        interval = r.integer("no_rope_layer_interval")
        if family == "llama4_text" or interval:
            interval = interval or 4
            return [CHUNKED if (i + 1) % interval else FULL for i in range(n)]
        return [CHUNKED] * n
    return [FULL] * n


def _apply_kv_sharing(r: _Reader, layers: list[Layer]) -> list[Layer]:
    """Gemma 3n: the last ``num_kv_shared_layers`` layers read the KV of the last earlier layer
    of the same kind (transformers ``kv_sharing_modes``: 'reuse'), so they cache nothing."""
    shared = r.integer("num_kv_shared_layers", 0)
    if not shared:
        return layers
    n = len(layers)
    if shared >= n:
        raise ConfigError(f"num_kv_shared_layers {shared} of {r.name} is not below {n} layers")
    first_shared = n - shared
    out = list(layers[:first_shared])
    for i in range(first_shared, n):
        kind = layers[i].kind
        sources = [j for j in range(first_shared) if layers[j].kind == kind]
        if not sources:
            raise ConfigError(f"layer {i} of {r.name} shares the KV of an earlier {kind} layer "
                              f"(num_kv_shared_layers {shared}) but none comes before it")
        source = sources[-1]
        out.append(SharedLayer(source=source, attends_like=kind))
    return out


def _nas_layers(r: _Reader) -> list[Layer]:
    """Nemotron-NAS / DeciLM ``block_configs``: per-layer attention, GQA via n_heads_in_group."""
    blocks = r.cfg.get("block_configs")
    if not isinstance(blocks, list) or not blocks:
        raise MissingFieldError("block_configs", r.name)
    num_heads = r.integer("num_attention_heads", required=True)
    n = r.integer("num_hidden_layers")
    if n is not None and n != len(blocks):
        raise ConfigError(
            f"block_configs of {r.name} has {len(blocks)} entries for num_hidden_layers = {n}"
        )
    layers: list[Layer] = []
    for i, block in enumerate(blocks):
        block = block or {}
        attn = block.get("attention") or {} if isinstance(block, Mapping) else None
        ffn = block.get("ffn") or {} if isinstance(block, Mapping) else None
        if not isinstance(attn, Mapping) or not isinstance(ffn, Mapping):
            raise ConfigError(f"block_configs[{i}] of {r.name} must be an object with "
                              "'attention' and 'ffn' objects")
        mult = ffn.get("ffn_mult")
        if mult is not None and (isinstance(mult, bool) or not isinstance(mult, (int, float))
                                 or not math.isfinite(mult) or not 0 < mult <= 1000):
            raise ConfigError(f"field 'block_configs[{i}].ffn.ffn_mult' of {r.name} is "
                              f"{_show(mult)}: it must be a number above 0 and at most 1000")
        if attn.get("no_op") or attn.get("replace_with_linear"):
            why = "no_op" if attn.get("no_op") else "replace_with_linear"
            layers.append(NoCacheLayer(f"attention {why} in block_configs[{i}]"))
            continue
        group = attn.get("n_heads_in_group")
        if not group:
            raise MissingFieldError(f"block_configs[{i}].attention.n_heads_in_group", r.name)
        group = checked_int(f"block_configs[{i}].attention.n_heads_in_group", group, r.name,
                            *FIELD_RULES["n_heads_in_group"])
        if num_heads % group:
            raise ConfigError(
                f"block_configs[{i}] of {r.name}: n_heads_in_group {group} does not divide "
                f"num_attention_heads {num_heads}"
            )
        layers.append(_attention(r, FULL, kv_heads=num_heads // group))
    return layers


# --------------------------------------------------------------------------------------------
# Truncation (kvcalc verify --layers N)

_PER_LAYER_LISTS = ("layer_types", "block_configs", "no_rope_layers", "intermediate_size",
                    "activation_sparsity_pattern")


def truncate_config(raw: Mapping[str, Any], n: int) -> dict[str, Any]:
    """A copy of ``raw`` keeping only the first ``n`` decoder layers.

    Adjusts the layer count (whatever alias the config uses) and every per-layer list or pattern
    (``layer_types``, ``block_configs``, ``no_rope_layers``, per-layer ``intermediate_size``,
    ``hybrid_override_pattern``); Gemma 3n keeps the same layers shared. Nested ``text_config``
    is truncated in place. The prediction and the model are then built from the same result.
    """
    if n < 1:
        raise ConfigError(f"--layers must be at least 1, got {n}")
    out = dict(raw)
    text, key = unwrap_text_config(out)
    if key == "thinker_config.text_config":
        raise ConfigError("--layers is not supported for thinker/talker configs")
    total = None
    for alias in ALIASES["num_hidden_layers"]:
        if text.get(alias) is not None:
            total = int(text[alias])
            if n > total:
                raise ConfigError(f"--layers {n} exceeds the model's {total} layers")
            text[alias] = n
    if total is None:
        raise MissingFieldError("num_hidden_layers")
    for name in _PER_LAYER_LISTS:
        if isinstance(text.get(name), list):
            text[name] = text[name][:n]
    if isinstance(text.get("hybrid_override_pattern"), str):
        text["hybrid_override_pattern"] = text["hybrid_override_pattern"][:n]
    shared = text.get("num_kv_shared_layers")
    if shared:
        text["num_kv_shared_layers"] = max(0, int(shared) - (total - n))
    if key:
        out[key] = text
        return out
    return text


# --------------------------------------------------------------------------------------------
# GGUF configs: llama.cpp's layer rules
#
# A GGUF header is read by :mod:`kvcalc.gguf` (with :mod:`kvcalc.sources`) into a raw config:
# the shared fields under their Hugging Face names and the llama.cpp facts under
# GGUF_CONFIG_KEY. The rules below turn those facts into layers, as llama.cpp does
# (src/llama-model.cpp, src/llama-hparams.cpp, src/models/<arch>.cpp; the rules are listed in
# kvcalc/gguf.py's module docstring). Sources feed arch a dict; arch never imports them.

#: SWA period per architecture when the file has no ``sliding_window_pattern``
#: (``load_swa_pattern(ml, n)`` in src/models/<arch>.cpp): layer il is SWA iff il % n < n - 1
SWA_PATTERNS = {"gemma3": 6, "gemma2": 2, "cohere2": 4, "gpt-oss": 2, "exaone4": 4,
                "exaone-moe": 4}
#: architectures that use the sliding window only when the file gives one (gemma3: else full)
SWA_DEFAULT_WINDOW = {"gemma2": 4096}   # src/models/gemma2.cpp: n_swa = 4096 unless given
#: GGUF hyperparameter -> the config field whose rule (FIELD_RULES) bounds it: a GGUF
#: header is held to the limits a config.json is
GGUF_FIELDS = {
    "block_count": "num_hidden_layers", "embedding_length": "hidden_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    **{f"attention.{k}": "head_dim" for k in ("key_length", "value_length",
                                              "key_length_swa", "value_length_swa")},
    "attention.kv_lora_rank": "kv_lora_rank", "rope.dimension_count": "qk_rope_head_dim",
    "attention.shared_kv_layers": "num_kv_shared_layers",
    "context_length": "max_position_embeddings", "feed_forward_length": "intermediate_size",
}


def build_gguf_spec(raw: Mapping[str, Any], name: str):
    """The :class:`~kvcalc.ModelSpec` of a GGUF model, by llama.cpp's rules (module doc)."""
    facts = raw[GGUF_CONFIG_KEY]
    if not isinstance(facts, Mapping) or not isinstance(facts.get("hparams"), Mapping):
        raise ConfigError(f"the config of {name}: '{GGUF_CONFIG_KEY}' must be an object holding "
                          "'hparams'")
    h = facts["hparams"]
    a = str(facts.get("architecture", ""))
    where = f"{name} (GGUF, architecture '{a}')"
    validate_fields({k: v for k, v in raw.items() if k != GGUF_CONFIG_KEY}, where)
    notes: list[str] = [f"read from the GGUF header ({a}; {facts.get('tensor_count', 0):,} "
                        f"tensors, {facts.get('tensor_bytes', 0):,} bytes of weights)"]

    def integer(key: str, value: Any, lo: int = 0, hi: int | None = None) -> int:
        """``value`` held to the FIELD_RULES bound of the config field ``key`` stands for."""
        return checked_int(f"{a}.{key}", value, where, lo,
                                FIELD_RULES[GGUF_FIELDS[key]][1] if hi is None else hi)

    n = integer("block_count", h.get("block_count"), 1)
    if n > MAX_LAYERS:
        raise ConfigError(f"{where}: {n:,} layers (at most {MAX_LAYERS:,})")
    embd = integer("embedding_length", h.get("embedding_length"), 1)
    heads = per_layer(h.get("attention.head_count"), n, "attention.head_count", where)
    kv_heads = per_layer(h.get("attention.head_count_kv", h.get("attention.head_count")), n,
                         "attention.head_count_kv", where)
    heads = [integer("attention.head_count", x) for x in heads]
    kv_heads = [integer("attention.head_count_kv", x) for x in kv_heads]
    for il, (q, kv) in enumerate(zip(heads, kv_heads)):
        if kv > q or (kv and q % kv):
            raise ConfigError(f"{where}: layer {il} has {kv} KV heads for {q} attention heads: "
                              "the KV heads must be at most the attention heads and divide "
                              "them")
    head0 = next((x for x in heads if x), 0)
    default_dim = embd // head0 if head0 else 0
    hd_k = integer("attention.key_length", h.get("attention.key_length", default_dim))
    hd_v = integer("attention.value_length", h.get("attention.value_length", default_dim))
    hd_k_swa = integer("attention.key_length_swa", h.get("attention.key_length_swa", hd_k))
    hd_v_swa = integer("attention.value_length_swa", h.get("attention.value_length_swa", hd_v))
    if "attention.key_length" not in h:
        notes.append(f"no '{a}.attention.key_length': head size embedding_length / head_count "
                     f"= {embd} / {head0} = {default_dim}, as llama.cpp computes it")
    swa, window = swa_layers(a, h, n, where)
    if window:
        notes.append(f"sliding window {window:,} on {sum(swa)} of {n} layers "
                     f"({swa_rule_text(a, h)})")
    elif "attention.sliding_window" in h:
        notes.append(f"'{a}.attention.sliding_window' is ignored: llama.cpp runs '{a}' with "
                     "full attention on every layer")
    layers: list[Any] = []
    lora = h.get("attention.kv_lora_rank")
    for il in range(n):
        if lora:
            rope = integer("rope.dimension_count", h.get("rope.dimension_count"), 1)
            layers.append(MLALayer(heads[il] or head0, integer("attention.kv_lora_rank", lora, 1),
                                        rope, max(hd_k - rope, 0), hd_v))
        elif kv_heads[il] == 0:
            layers.append(NoCacheLayer("no KV heads in this layer (head_count_kv 0)"))
        elif swa[il]:
            layers.append(AttentionLayer(SLIDING, kv_heads[il], hd_k_swa, hd_v_swa,
                                              window))
        else:
            layers.append(AttentionLayer(FULL, kv_heads[il], hd_k, hd_v))
    shared = integer("attention.shared_kv_layers", h.get("attention.shared_kv_layers", 0),
                     hi=n - 1)
    if shared:
        layers = _share_kv(layers, shared, n)
        notes.append(f"the last {shared} layers reuse an earlier layer's cache "
                     f"('{a}.attention.shared_kv_layers')")
    ctx = h.get("context_length")
    return ModelSpec(
        name=name, model_type=str(raw.get("model_type") or a), layers=tuple(layers),
        dtype="fp16", hidden_size=embd, num_attention_heads=head0,
        max_position_embeddings=integer("context_length", ctx, 1) if ctx is not None else None,
        vocab_size=raw.get("vocab_size"), config=dict(raw), notes=tuple(notes))


def per_layer(value: Any, n: int, key: str, where: str) -> list[Any]:
    """A scalar repeated ``n`` times, or a per-layer array of exactly ``n`` values."""
    if isinstance(value, list):
        if len(value) != n:
            raise ConfigError(f"{where}: '{key}' lists {len(value)} values for {n} layers")
        return list(value)
    if value is None:
        raise ConfigError(f"{where}: '{key}' is missing")
    return [value] * n


def swa_layers(a: str, h: Mapping[str, Any], n: int, where: str) -> tuple[list[bool], int]:
    """Which of the ``n`` layers use the sliding window, and the window (0: none)."""
    if a not in SWA_PATTERNS and "attention.sliding_window_pattern" not in h:
        return [False] * n, 0
    window = h.get("attention.sliding_window", SWA_DEFAULT_WINDOW.get(a, 0))
    if not window:
        return [False] * n, 0
    pattern = h.get("attention.sliding_window_pattern", SWA_PATTERNS.get(a, 0))
    window = checked_int("attention.sliding_window", window, where, 1, MAX_CONFIG_TOKENS)
    if isinstance(pattern, list):
        flags = per_layer(pattern, n, "attention.sliding_window_pattern", where)
        bad = next((i for i, x in enumerate(flags) if x not in (True, False)), None)
        if bad is not None:   # True/False, 1/0 (a bool array or integers)
            raise ConfigError(f"{where}: 'attention.sliding_window_pattern[{bad}]' is "
                              f"{flags[bad]!r}: one true/false per layer expected")
        return [bool(x) for x in flags], window
    period = checked_int("attention.sliding_window_pattern", pattern, where, 0, n + 1)
    return [swa_by_period(il, period) for il in range(n)], window


def swa_by_period(il: int, period: int) -> bool:
    """``llama_hparams::set_swa_pattern(n)``: layer il is SWA iff ``il % n < n - 1``; a period
    of 0 makes every layer SWA (and 1 none)."""
    return period == 0 or il % period < period - 1


def swa_rule_text(a: str, h: Mapping[str, Any]) -> str:
    pattern = h.get("attention.sliding_window_pattern")
    if isinstance(pattern, list):
        return "the file's per-layer sliding_window_pattern"
    if pattern is not None:
        return f"the file's sliding_window_pattern {pattern}: layer il is SWA iff il % {pattern} < {int(pattern) - 1}"
    p = SWA_PATTERNS[a]
    return f"llama.cpp's rule for {a}: every {p}th layer is full attention"


def _share_kv(layers: list[Any], shared: int, n: int) -> list[Any]:
    """Layers from ``n - shared`` on read the cache of the last earlier layer of their kind."""
    first = max(n - shared, 0)
    out = list(layers)
    for il in range(first, n):
        kind = layers[il].kind
        source = max((j for j in range(first) if layers[j].kind == kind), default=None)
        if source is not None:
            out[il] = SharedLayer(source, kind)
    return out
