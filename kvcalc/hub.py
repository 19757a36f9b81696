"""Hugging Face hub source: ``--model org/name[@revision]`` fetches config.json only."""

from __future__ import annotations

from .errors import ModelNotFoundError
from .sources import ResolvedModel


def resolve_hub(model: str, revision: str | None = None) -> ResolvedModel:
    raise ModelNotFoundError(f"'{model}' looks like a hub id, but hub support is not built yet")
