"""The meta-device check: transformers' own cache shapes for any config, with no memory.

The model is built on PyTorch's ``meta`` device (no weights, no initialisation) from the same
config ``estimate`` reads, one forward of ``seq`` tokens fills its cache (``use_cache=True``,
``logits_to_keep=1``), and the cache's tensors — meta tensors with exact shapes and dtypes — are
summed. The result is compared to ``estimate --engine hf`` for the installed transformers
version. (transformers >= 5.0; 4.x fails on meta tensors.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..arch import build_spec
from ..errors import KvcalcError
from ..layout import build_layout
from .build import build_random
from .cache import cache_bytes


@dataclass(frozen=True)
class MetaResult:
    model: str
    seq: int
    dtype: str
    predicted_bytes: int
    measured_bytes: int | None
    error: str | None = None

    @property
    def match(self) -> bool | None:
        if self.measured_bytes is None:
            return None
        return self.measured_bytes == self.predicted_bytes


def meta_forward_bytes(model: Any, seq: int) -> int:
    """Cache bytes after one forward of ``seq`` tokens on the meta device."""
    import torch

    ids = torch.zeros((1, seq), dtype=torch.long, device="meta")
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return cache_bytes(out.past_key_values).total


def check_lengths(raw: Mapping[str, Any], name: str) -> list[int]:
    """A length inside every window and one beyond the largest window (or 10,000)."""
    spec = build_spec(raw, name)
    windows = [l.window for l in spec.layers if getattr(l, "window", None)]
    inside = max(2, min(windows) // 2) if windows else 1000
    beyond = max(windows) + 100 if windows else 10_000
    return sorted({inside, beyond})


def meta_check(raw: Mapping[str, Any], name: str, seqs: list[int],
               dtype: str | None = None) -> list[MetaResult]:
    """Build ``raw`` on meta once and compare its cache with the hf prediction at each length."""
    import transformers

    built = build_random(raw, device="meta", dtype=dtype, name=name)
    spec = build_spec(raw, name)
    layout = build_layout(spec, "hf", built.dtype, hf_version=transformers.__version__)
    out = []
    for seq in seqs:
        try:
            measured = meta_forward_bytes(built.model, seq)
            out.append(MetaResult(name, seq, built.dtype, layout.bytes_per_sequence(seq), measured))
        except Exception as exc:  # noqa: BLE001 - report, never hide
            out.append(MetaResult(name, seq, built.dtype, layout.bytes_per_sequence(seq), None,
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"))
    return out


def safe_meta_check(raw: Mapping[str, Any], name: str, seqs: list[int] | None = None,
                    dtype: str | None = None) -> list[MetaResult]:
    """As :func:`meta_check`, but a model transformers cannot build is reported, not raised."""
    try:
        return meta_check(raw, name, seqs or check_lengths(raw, name), dtype)
    except KvcalcError as exc:
        return [MetaResult(name, 0, dtype or "?", 0, None, str(exc))]
    except Exception as exc:  # noqa: BLE001
        return [MetaResult(name, 0, dtype or "?", 0, None,
                           f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")]
