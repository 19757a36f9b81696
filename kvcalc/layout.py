"""Moved to :mod:`kvcalc.engines` (issue 11). This shim keeps ``from kvcalc.layout import
build_layout`` working for callers not yet updated (kvcalc/verify/meta.py); new code imports
``kvcalc.engines.build_layout`` (``version=`` instead of ``hf_version=``)."""

from __future__ import annotations

from .engines import build_layout as _build_layout
from .engines.cache import Layout


def build_layout(spec, engine: str = "hf", kv_dtype: str = "auto", *,
                 block_size: int | None = None, tp: int = 1,
                 hf_version: str | None = None) -> Layout:
    """:func:`kvcalc.engines.build_layout` under its old keyword (``hf_version``)."""
    return _build_layout(spec, engine, kv_dtype, block_size=block_size, tp=tp,
                         version=hf_version)
