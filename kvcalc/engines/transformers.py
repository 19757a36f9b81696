"""transformers ``generate()`` with its default ``DynamicCache`` (token-granular): the ``hf`` engine.

After a prompt of p tokens and g generated tokens the cache holds p + g - 1 tokens. Version
bands (``--hf-version``; docs/engines.md §2):

* ``>= 5.25`` (default 5.25, checked): as 5.18-5.24, and Falcon's new decoder architecture
  (Falcon-40B/180B) caches its KV heads, no longer every query head;
* ``5.18 - 5.24``: as 5.15-5.17, and the DeepSeek Sparse Attention models
  (MLA with a lightning indexer: DeepSeek-V3.2, GLM-5) cache the latent too;
* ``5.15 - 5.17``: sliding/chunked layers keep ``W - 1``
  tokens, MLA caches the latent ``kv_lora_rank + qk_rope_head_dim`` per layer;
* ``4.56 - 5.14``: windows capped the same way, MLA caches decompressed per-head K
  (``qk_nope + qk_rope``) and V (``v_head_dim``);
* ``< 4.56``: no window capping in DynamicCache (every layer keeps every token), MLA
  decompressed, Gemma 3n's shared layers still store their own copy.

Recurrent states: conv buffer of ``conv_kernel`` columns in the model dtype plus the
SSM/recurrent state in fp32. Falcon's new decoder architecture caches all query heads before 5.25.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from .. import arch
from ..arch import AttentionLayer, MLALayer, ModelSpec, StateLayer
from ..dtypes import DTYPES, KVDtype, resolve_kv_dtype
from ..errors import UsageError
from . import Band, Engine, Setting, register
from .cache import (KEEP_ALL, KEEP_CHUNK, KEEP_NONE, KEEP_WINDOW, LayerCache, Layout,
                    attention_bytes_per_token, attention_formula, element_text,
                    mla_expanded_bytes_per_token, mla_latent_bytes_per_token, mla_latent_formula,
                    no_cache_formula, state_bytes, state_formula,
                    require_at_least_one)

HF_DEFAULT_VERSION = "5.25"      # the transformers release the hf layout models by default
HF_NEWEST_CHECKED = "5.25.0"     # the newest release checked (kvcalc verify --device meta --all)
HF_WINDOW_CAP_SINCE = (4, 56)    # DynamicSlidingWindowLayer appears (transformers #40039 era)
HF_MLA_LATENT_SINCE = (5, 15)    # transformers #47761: DeepSeek caches the compressed latent
#: DeepSeek Sparse Attention (MLA + lightning indexer: deepseek_v32, glm_moe_dsa) kept caching
#: the decompressed K and V until 5.17 ("Sparse-attention models cache the expanded K/V" TODO
#: in modeling_deepseek_v32.py); 5.18 caches the latent (PR #48761). Measured with the meta
#: check: DeepSeek-V3.2 at 1,000 tokens holds 5,012,736,000 B on 5.17.0, 85,888,000 B on 5.18.0
HF_DSA_LATENT_SINCE = (5, 18)
#: Falcon's new decoder architecture (``new_decoder_architecture``: Falcon-40B/180B) broadcast K
#: and V to every query head before caching them until 5.24 (``_split_heads`` +
#: ``torch.broadcast_to`` in modeling_falcon.py); 5.25 moved Falcon onto the shared attention
#: interface (``repeat_kv`` after the cache), so the cache holds the KV heads. Measured with the
#: meta check: Falcon-40B at 1,000 tokens holds 1,966,080,000 B on 5.24.0, 122,880,000 B on 5.25.0
HF_FALCON_KV_HEADS_SINCE = (5, 25)
#: transformers keeps Mamba/GDN recurrent (SSM) states in fp32 even in a bf16 model (measured
#: on 5.23, transformers.md §2.3); the conv buffer follows the model dtype
HF_RECURRENT_STATE_BYTES = 4

BANDS = (
    Band("<4.56", None, (4, 55),
         ("DynamicCache keeps every token in sliding/chunked layers (the window is applied by "
          "the attention mask only)",
          "MLA cached as decompressed per-head K (qk_nope + qk_rope) and V (v_head_dim)",
          "KV-sharing layers (Gemma 3n) store their own copy"),
         ("huggingface/transformers src/transformers/cache_utils.py (DynamicCache before "
          "DynamicSlidingWindowLayer, PR #40039)",)),
    Band("4.56-5.14", (4, 56), (5, 14),
         ("sliding/chunked layers keep W - 1 tokens (DynamicSlidingWindowLayer)",
          "MLA cached as decompressed per-head K and V"),
         ("huggingface/transformers src/transformers/cache_utils.py "
          "(DynamicSlidingWindowLayer)",)),
    Band("5.15-5.17", (5, 15), (5, 17),
         ("MLA caches the compressed latent kv_lora_rank + qk_rope_head_dim per layer "
          "(transformers PR #47761)",
          "DeepSeek Sparse Attention models (MLA with an indexer: DeepSeek-V3.2, GLM-5) still "
          "cache decompressed per-head K and V, plus the indexer keys"),
         ("huggingface/transformers src/transformers/models/deepseek_v3/modeling_deepseek_v3.py "
          "(PR #47761)",
          "huggingface/transformers src/transformers/models/deepseek_v32/modeling_deepseek_v32.py "
          "(v5.17.0: 'Sparse-attention models cache the expanded K/V')")),
    Band("5.18-5.24", (5, 18), (5, 24),
         ("MLA caches the compressed latent, DeepSeek Sparse Attention models included "
          "(+ the indexer keys)",
          "Falcon's new decoder architecture caches every query head (K/V broadcast before "
          "the cache)"),
         ("huggingface/transformers src/transformers/models/deepseek_v32/modeling_deepseek_v32.py "
          "(v5.18.0; PR #48761)",
          "huggingface/transformers src/transformers/models/falcon/modeling_falcon.py "
          "(v5.24.0: FalconAttention._split_heads, torch.broadcast_to)")),
    Band(">=5.25", (5, 25), None,
         ("Falcon's new decoder architecture caches its KV heads (shared attention interface, "
          "repeat_kv after the cache)",),
         ("huggingface/transformers src/transformers/models/falcon/modeling_falcon.py "
          "(v5.25.0: eager_attention_forward with repeat_kv)",)),
)


class Transformers(Engine):
    name = "hf"
    aliases = ("transformers",)
    display_name = "transformers"
    package = "transformers"
    bands = BANDS
    newest_checked = HF_NEWEST_CHECKED
    default_version = HF_DEFAULT_VERSION
    version_flag = "--hf-version"
    version_example = "4.57"
    settings = (
        Setting("cache_implementation", "dynamic", None,
                "generate()'s default DynamicCache (token-granular, no pre-allocation)"),
        Setting("version", HF_DEFAULT_VERSION, "--hf-version",
                "the transformers release whose cache layout is modelled"),
    )

    def layout(self, spec, kv_dtype: str = "auto", *, version: str | None = None,
               block_size: int | None = None, tp: int = 1) -> Layout:
        require_at_least_one(tensor_parallel_size=tp)
        if tp != 1:
            raise UsageError("the hf layout models one process: tensor parallelism needs "
                             "--engine vllm")
        return hf_layout(spec, kv_dtype, version or HF_DEFAULT_VERSION)

    def describe(self, layout: Layout) -> str:
        installed = self.installed_version()
        return (f"transformers {layout.version or HF_DEFAULT_VERSION} DynamicCache (band "
                f"{layout.band}; checked against {self.newest_checked}"
                + (f"; installed here: {installed})" if installed else ")"))


@lru_cache(maxsize=256)
def hf_layout(spec: ModelSpec, kv_dtype: str, version: str) -> Layout:
    """The ``DynamicCache`` layout of ``spec`` in transformers ``version``."""
    dtype = resolve_kv_dtype(kv_dtype, spec.dtype)
    ver = TRANSFORMERS.parse_version(version)
    band = TRANSFORMERS.band(version)
    capped = ver >= HF_WINDOW_CAP_SINCE
    latent = ver >= HF_MLA_LATENT_SINCE
    dsa_latent = ver >= HF_DSA_LATENT_SINCE
    notes = [f"transformers {version} DynamicCache: a prompt of p tokens plus g generated "
             f"tokens leaves p + g - 1 tokens in the cache"]
    if dtype.kind != "float":
        notes.append(f"{dtype.name} KV in transformers means QuantizedCache "
                     f"(cache_implementation='quantized'); states stay in floating point")
    out: list[LayerCache] = []
    memo: dict[int, LayerCache] = {}
    for i, layer in enumerate(spec.layers):
        if id(layer) not in memo:
            memo[id(layer)] = _hf_layer(i, layer, dtype, spec, capped,
                                        dsa_latent if _is_dsa(layer) else latent, ver)
        out.append(replace(memo[id(layer)], index=i))
    if not capped and any(l.kind in (arch.SLIDING, arch.CHUNKED) for l in spec.layers):
        notes.append("transformers < 4.56: DynamicCache keeps every token in sliding layers")
    if spec.is_mla:
        dsa = any(_is_dsa(l) for l in spec.layers)
        if dsa and latent and not dsa_latent:
            notes.append("DeepSeek Sparse Attention cached as decompressed per-head K and V "
                         "(transformers 5.15-5.17)")
        else:
            notes.append("MLA cached as the compressed latent" if latent else
                         "MLA cached as decompressed per-head K and V (transformers < 5.15)")
    return Layout(spec, "hf", dtype, tuple(out), None, 1, version, band.name, tuple(notes))


def _is_dsa(layer: arch.Layer) -> bool:
    """An MLA layer with a lightning indexer (DeepSeek Sparse Attention)."""
    return isinstance(layer, MLALayer) and bool(layer.indexer_head_dim)


def hf_indexer_bytes_per_token(layer: MLALayer, dtype: KVDtype) -> int:
    """DeepSeek-V3.2 lightning-indexer keys: transformers keeps ``index_head_dim`` values in
    the cache dtype (``DynamicIndexedLayer``)."""
    return dtype.row_bytes(layer.indexer_head_dim) if layer.indexer_head_dim else 0


def _float_bytes(dtype: KVDtype, model_dtype: str) -> int:
    """Bytes per element for tensors that stay in floating point (states): the KV dtype when it
    is a float type, otherwise the model's dtype."""
    return dtype.element_bytes if dtype.kind == "float" else DTYPES[model_dtype].element_bytes


def _hf_layer(i: int, layer: arch.Layer, dtype: KVDtype, spec: ModelSpec, capped: bool,
              latent: bool, ver: tuple[int, int]) -> LayerCache:
    if isinstance(layer, AttentionLayer):
        expanded = bool(layer.hf_kv_heads) and ver < HF_FALCON_KV_HEADS_SINCE
        heads = layer.hf_kv_heads if expanded else layer.kv_heads
        bpt = attention_bytes_per_token(heads, layer.head_dim_k, layer.head_dim_v, dtype)
        keep = {arch.FULL: KEEP_ALL, arch.SLIDING: KEEP_WINDOW, arch.CHUNKED: KEEP_CHUNK}[layer.kind]
        text = attention_formula(heads, layer, dtype)
        if expanded:
            text += (" (transformers < 5.25 caches every query head for Falcon's new "
                     "architecture)")
        if layer.window:
            text += (f", at most W - 1 = {layer.window - 1:,} tokens" if capped
                     else f", uncapped (window {layer.window:,} applied by the mask only)")
        return LayerCache(i, layer.kind, bpt, keep, layer.window, capped=capped, formula=text)
    if isinstance(layer, MLALayer):
        if latent:
            bpt, text = mla_latent_bytes_per_token(layer, dtype), mla_latent_formula(layer, dtype)
        else:
            bpt = mla_expanded_bytes_per_token(layer, dtype)
            text = (f"{layer.num_heads} heads x (K {layer.qk_nope_head_dim} + "
                    f"{layer.qk_rope_head_dim} + V {layer.v_head_dim}) x {element_text(dtype)} "
                    f"(decompressed"
                    + (", transformers < 5.18)" if _is_dsa(layer) else ", transformers < 5.15)"))
        extra = hf_indexer_bytes_per_token(layer, dtype)
        if extra:
            text += f" + indexer key {layer.indexer_head_dim} x {element_text(dtype)}"
        return LayerCache(i, layer.kind, bpt + extra, formula=text)
    if isinstance(layer, StateLayer):
        conv_b = _float_bytes(dtype, spec.dtype)
        fixed = state_bytes(layer, layer.conv_kernel, conv_b, HF_RECURRENT_STATE_BYTES)
        text = state_formula(layer, layer.conv_kernel, conv_b, HF_RECURRENT_STATE_BYTES)
        return LayerCache(i, layer.kind, 0, KEEP_NONE, fixed_bytes=fixed, formula=text)
    if isinstance(layer, arch.SharedLayer) and ver < HF_WINDOW_CAP_SINCE:
        # before 4.56 the dynamic cache stored a full copy for KV-sharing layers too
        src = spec.layers[layer.source]
        assert isinstance(src, AttentionLayer)
        bpt = attention_bytes_per_token(src.kv_heads, src.head_dim_k, src.head_dim_v, dtype)
        return LayerCache(i, layer.kind, bpt, KEEP_ALL,
                          formula=attention_formula(src.kv_heads, src, dtype)
                          + " (transformers < 4.56 stores a copy for KV-sharing layers)")
    return LayerCache(i, layer.kind, 0, KEEP_NONE, formula=no_cache_formula(layer))


TRANSFORMERS = register(Transformers())
