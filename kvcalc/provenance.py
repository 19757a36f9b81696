"""What ``--model`` resolved to: a raw config and where it came from (:class:`ResolvedModel`).

Produced by :mod:`kvcalc.sources` (presets, local files, Ollama names) and :mod:`kvcalc.hub`
(hub ids); read by the API and the reports. Its own module so that neither source imports the
other's module for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ResolvedModel:
    """A raw config and its provenance."""

    name: str
    config: Mapping[str, Any] = field(repr=False)
    kind: str                     # "preset" | "file" | "hub" | "config" (a dict, Python API)
    location: str                 # preset file, config path, or the hub cache file read
    hub_id: str | None = None
    revision: str | None = None   # hub: the commit sha the config came from
    description: str | None = None
    ref: str | None = None        # hub: the branch, tag or commit asked for (default main)
    cached: bool = False          # hub: read from the hub cache without the hub's answer
    note: str | None = None       # hub: why the cache was used
    origin: str | None = None     # preset: "built-in" or "user"

    @property
    def provenance(self) -> str:
        """One line for humans: which source, and which revision or file."""
        if self.kind == "preset":
            text = {"built-in": "built-in preset", "user": f"user preset {self.location}"}.get(
                self.origin or "", f"preset file {self.location}")
            if self.hub_id:
                text += f", hub id {self.hub_id}"
                text += f"@{self.revision[:12]}" if self.revision else ""
            return text
        if self.kind == "hub":
            ref = self.ref or "main"
            text = f"hub {self.hub_id}@{ref}"
            if self.revision and self.revision != ref:
                text += f" (commit {self.revision[:12]})"
            if self.note:
                text += f", cached copy: {self.note}"
            return text
        if self.kind == "config":
            return "config dict given in Python"
        return f"file {self.location}"
