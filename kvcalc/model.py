"""--model -> (provenance, ModelSpec): the one way in for every command."""

from __future__ import annotations

from .arch import ModelSpec, build_spec
from .sources import ResolvedModel, resolve


def load_spec(model: str, revision: str | None = None) -> tuple[ResolvedModel, ModelSpec]:
    resolved = resolve(model, revision)
    return resolved, build_spec(resolved.config, resolved.name)
