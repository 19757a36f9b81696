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
    """A length inside every window and one beyond the largest window; one length (1,000) for
    models without windows, whose cache is the same per token at any length."""
    spec = build_spec(raw, name)
    windows = [l.window for l in spec.layers if getattr(l, "window", None)]
    if spec.count("state"):
        # transformers' CPU fallback scans recurrent layers token by token (Jamba: ~13 ms per
        # token on meta); the state is length-independent, so two short lengths tell the fixed
        # state from the per-token attention layers
        return [8, 24]
    if not windows:
        return [1000]
    return sorted({max(2, min(windows) // 2), max(windows) + 100})


def meta_check(raw: Mapping[str, Any], name: str, seqs: list[int],
               dtype: str | None = None) -> list[MetaResult]:
    """Build ``raw`` on meta once and compare its cache with the hf prediction at each length."""
    import transformers

    spec = build_spec(raw, name)
    # a config that names no dtype is built in the dtype kvcalc assumes for it (bf16), not in
    # transformers' fp32 default, so both sides describe the same model
    built = build_random(raw, device="meta", dtype=dtype or spec.dtype, name=name)
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


def check_many(targets: list[tuple[str, dict, list[int] | None, str | None]], jobs: int = 1):
    """Run :func:`safe_meta_check` for many configs, in ``jobs`` processes; yields each
    target's results as it finishes (order not kept)."""
    if jobs <= 1 or len(targets) <= 1:
        for name, raw, seqs, dtype in targets:
            yield safe_meta_check(raw, name, seqs, dtype)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("fork")
    # longest first (cost ~ layers x forwards), so the workers finish together
    targets = sorted(targets, key=_expected_cost, reverse=True)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(safe_meta_check, raw, name, seqs, dtype)
                   for name, raw, seqs, dtype in targets]
        for fut in as_completed(futures):
            yield fut.result()


def _expected_cost(target: tuple[str, dict, list[int] | None, str | None]) -> int:
    """Rough cost of checking one target: every op of every layer runs a Python shape
    function on meta, once per forward (state layers scan token by token)."""
    name, raw, seqs, _ = target
    try:
        spec = build_spec(raw, name)
        forwards = len(seqs or check_lengths(raw, name))
        return len(spec.layers) * forwards * (3 if spec.count("state") else 1)
    except Exception:  # noqa: BLE001 - unbuildable targets are cheap
        return 0
