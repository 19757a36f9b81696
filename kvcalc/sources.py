"""Resolve ``--model`` to a raw HF-style config dict plus where it came from.

Resolution order (first match wins):

1. a preset name or alias (case-insensitive): user preset folders first, then built-in presets;
2. a local path: a ``config.json`` (any ``.json`` file) or a directory holding one;
3. a Hugging Face hub id ``org/name[@revision]`` (config.json only, see :mod:`kvcalc.hub`).

Presets are YAML files with the hub config kept verbatim under ``config:`` so a preset, a local
config.json and a hub download all pass through the same :mod:`kvcalc.arch` adapter.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelNotFoundError

PACKAGE_DIR = Path(__file__).resolve().parent
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/]+)?$")


@dataclass(frozen=True)
class ResolvedModel:
    """A raw config and its provenance."""

    name: str
    config: Mapping[str, Any] = field(repr=False)
    kind: str                     # "preset" | "file" | "hub"
    location: str                 # preset file, config path, or hub id
    hub_id: str | None = None
    revision: str | None = None
    description: str | None = None

    @property
    def provenance(self) -> str:
        if self.kind == "preset":
            return f"preset {self.name} ({self.location})"
        if self.kind == "hub":
            return f"hub {self.hub_id}@{self.revision or 'main'}"
        return f"file {self.location}"


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    origin: str                   # "built-in" or "user"
    aliases: tuple[str, ...]
    data: Mapping[str, Any] = field(repr=False)

    @property
    def hub_id(self) -> str | None:
        return self.data.get("hub_id")

    @property
    def display_name(self) -> str:
        return self.data.get("display_name") or self.name


def builtin_preset_dir(kind: str = "models") -> Path:
    """``kvcalc/presets/<kind>`` in a wheel, ``<checkout>/presets/<kind>`` in a source tree."""
    packaged = PACKAGE_DIR / "presets" / kind
    if packaged.is_dir():
        return packaged
    return PACKAGE_DIR.parent / "presets" / kind


def user_preset_dirs() -> list[Path]:
    """User preset folders, highest priority first: ``$KVCALC_PRESETS`` (os.pathsep-separated),
    then ``$XDG_CONFIG_HOME/kvcalc/presets`` (default ``~/.config/kvcalc/presets``)."""
    dirs = [Path(p).expanduser() for p in os.environ.get("KVCALC_PRESETS", "").split(os.pathsep) if p]
    dirs.append(user_config_dir() / "presets")
    return dirs


def user_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "kvcalc"


def load_yaml_file(path: Path) -> Any:
    """Parse a YAML file; a syntax error becomes a ConfigError naming the file and line."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML in {where}: {problem}") from None


def load_json_file(path: Path) -> Any:
    """Parse a JSON file; a syntax error becomes a ConfigError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"malformed JSON in {path}:{exc.lineno}: {exc.msg}") from None


def _load_preset(path: Path, origin: str) -> Preset:
    data = load_yaml_file(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("config"), Mapping):
        raise ConfigError(f"preset {path} has no 'config:' mapping (see docs/models.md)")
    name = str(data.get("name") or path.stem).lower()
    aliases = tuple(str(a).lower() for a in data.get("aliases") or ())
    return Preset(name, path, origin, aliases, data)


def _preset_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))


@lru_cache(maxsize=None)
def _scan_dir(directory: str, origin: str) -> tuple[Preset, ...]:
    return tuple(_load_preset(p, origin) for p in _preset_files(Path(directory)))


def all_presets() -> list[Preset]:
    """Every preset, user ones first; a user preset hides a built-in one of the same name."""
    seen: set[str] = set()
    out: list[Preset] = []
    sources = [(str(d), "user") for d in user_preset_dirs()]
    sources.append((str(builtin_preset_dir()), "built-in"))
    for directory, origin in sources:
        for preset in _scan_dir(directory, origin):
            if preset.name not in seen:
                seen.add(preset.name)
                out.append(preset)
    return out


def find_preset(name: str) -> Preset | None:
    """A preset by name or alias, case-insensitive. Tries ``<name>.yaml`` before scanning."""
    key = name.strip().lower()
    dirs = [(d, "user") for d in user_preset_dirs()] + [(builtin_preset_dir(), "built-in")]
    for directory, origin in dirs:  # fast path: the file is named after the preset
        for suffix in (".yaml", ".yml"):
            path = directory / f"{key}{suffix}"
            if path.is_file():
                return _load_preset(path, origin)
    for preset in all_presets():
        if key == preset.name or key in preset.aliases:
            return preset
    return None


def preset_names() -> list[str]:
    names: list[str] = []
    for preset in all_presets():
        names.append(preset.name)
        names.extend(preset.aliases)
    return names


def suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), choices, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def resolve(model: str, revision: str | None = None) -> ResolvedModel:
    """Resolve ``--model`` (preset, path, or hub id) to a raw config."""
    if not model or not model.strip():
        raise ModelNotFoundError("--model is empty: name a preset, a config.json path or a hub id")
    preset = find_preset(model)
    if preset is not None:
        return ResolvedModel(preset.name, preset.data["config"], "preset", str(preset.path),
                             hub_id=preset.hub_id, description=preset.display_name)
    path = Path(model).expanduser()
    if path.exists():
        return _from_path(path)
    if _HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        from . import hub  # imported only for hub ids

        return hub.resolve_hub(model, revision)
    looks_like_path = os.sep in model or model.endswith((".json", ".yaml", ".yml"))
    if looks_like_path:
        raise ModelNotFoundError(f"no such file or directory: {model}")
    raise ModelNotFoundError(
        f"unknown model '{model}': not a preset, a path or a hub id (org/name)"
        + suggest(model, preset_names())
        + " (kvcalc models lists the presets)"
    )


def _from_path(path: Path) -> ResolvedModel:
    if path.is_dir():
        candidate = path / "config.json"
        if not candidate.is_file():
            raise ModelNotFoundError(f"directory {path} holds no config.json")
        path = candidate
    if path.suffix in (".yaml", ".yml"):
        preset = _load_preset(path, "file")
        return ResolvedModel(preset.name, preset.data["config"], "preset", str(path),
                             hub_id=preset.hub_id, description=preset.display_name)
    data = load_json_file(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path} does not hold a JSON object")
    name = path.parent.name if path.name == "config.json" else path.stem
    return ResolvedModel(name or str(path), data, "file", str(path))
