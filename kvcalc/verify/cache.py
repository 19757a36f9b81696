"""Walk whatever ``past_key_values`` transformers returns and count its bytes.

Shapes handled (transformers ``src/transformers/cache_utils.py`` of each release):

* 4.45: a tuple of ``(key, value)`` tuples (GPTBigCode: one fused tensor per layer);
* 4.46-4.53: ``DynamicCache`` with ``key_cache`` / ``value_cache`` lists; Jamba/Qwen3-Next
  caches with ``conv_states`` and ``ssm_states`` / ``recurrent_states`` lists;
* 4.54+ and 5.x: layered caches, ``cache.layers[i]`` with ``.keys`` / ``.values`` (views for
  sliding layers), ``.indexer_keys`` (DSA), ``.conv_states`` / ``.recurrent_states`` dicts
  (linear attention and Mamba layers), ``._quantized_keys`` (quantised caches);
* ``EncoderDecoderCache``: its self-attention cache.

"Logical" bytes are ``numel x element_size`` of each tensor, as the model sees it; this is
what the ``hf`` layout predicts. "Held" bytes are the storages those tensors keep alive,
counted once each: they exceed the logical bytes for sliding layers (their keys are views
into a buffer of W tokens, or of the whole prompt right after a long prefill).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: attributes of a cache layer (or a list-based cache) holding per-token keys and values
KV_ATTRS = ("keys", "values", "indexer_keys", "_quantized_keys", "_quantized_values",
            "key_cache", "value_cache")
#: attributes holding fixed-size recurrent states
STATE_ATTRS = ("conv_states", "recurrent_states", "ssm_states")


@dataclass
class CacheBytes:
    """Bytes held by one cache object (batch included)."""

    kv_bytes: int = 0            # keys, values (and DSA indexer keys), logical
    state_bytes: int = 0         # conv + recurrent/SSM states, logical
    held_bytes: int | None = 0   # storages kept alive, each counted once (None on meta)
    layers: int = 0              # cache layers seen
    tensors: int = 0
    dtypes: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        return self.kv_bytes + self.state_bytes


def cache_bytes(pkv: Any) -> CacheBytes:
    """Count the bytes of ``past_key_values`` of any transformers version (None -> zeros)."""
    out = CacheBytes()
    if pkv is None:
        return out
    seen: set[int] = set()
    storages: dict[Any, int] = {}
    on_meta = [False]

    def add(t: Any, bucket: str) -> None:
        import torch

        if isinstance(t, torch.Tensor):
            if id(t) in seen:
                return
            seen.add(id(t))
            nbytes = t.numel() * t.element_size()
            if bucket == "kv":
                out.kv_bytes += nbytes
            else:
                out.state_bytes += nbytes
            out.tensors += 1
            if nbytes:
                out.dtypes.add(str(t.dtype).removeprefix("torch."))
            if t.device.type == "meta":
                on_meta[0] = True
            elif nbytes:
                storage = t.untyped_storage()
                storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0),
                                                   storage.nbytes())
        elif isinstance(t, dict):
            for v in t.values():
                add(v, bucket)
        elif isinstance(t, (list, tuple)):
            for v in t:
                add(v, bucket)

    def layer(obj: Any) -> None:
        out.layers += 1
        for attr in KV_ATTRS:
            add(getattr(obj, attr, None), "kv")
        for attr in STATE_ATTRS:
            add(getattr(obj, attr, None), "state")

    inner = getattr(pkv, "self_attention_cache", None)  # EncoderDecoderCache
    if inner is not None:
        pkv = inner
    layers = getattr(pkv, "layers", None)
    if isinstance(layers, (list, tuple)) and not isinstance(pkv, tuple):
        for obj in layers:
            layer(obj)
        # model-specific caches may keep extra state lists beside the layers
        for attr in STATE_ATTRS:
            add(getattr(pkv, attr, None), "state")
    elif isinstance(pkv, (list, tuple)):  # legacy tuples
        for entry in pkv:
            out.layers += 1
            add(entry, "kv")
    else:  # list-based Cache objects (<= 4.53, Jamba/Qwen3-Next caches up to 4.57)
        for attr in ("key_cache", "value_cache"):
            add(getattr(pkv, attr, None), "kv")
        for attr in STATE_ATTRS:
            add(getattr(pkv, attr, None), "state")
        keys = getattr(pkv, "key_cache", None)
        out.layers = len(keys) if isinstance(keys, (list, tuple)) else 0
    out.held_bytes = None if on_meta[0] else sum(storages.values())
    return out
