"""Resolve ``--model`` to a raw HF-style config dict plus where it came from.

Resolution order (first match wins):

1. a preset name or alias (case-insensitive): user preset folders first, then built-in presets;
2. a local path: a ``config.json`` (any ``.json`` file) or a directory holding one;
3. a Hugging Face hub id ``org/name[@revision]`` (config.json only, see :mod:`kvcalc.hub`).

Presets are YAML files with the hub config kept verbatim under ``config:`` so a preset, a local
config.json and a hub download all pass through the same :mod:`kvcalc.arch` adapter.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ConfigError, KvcalcError, ModelNotFoundError, UsageError, suggest
from .files import (MAX_CONFIG_BYTES, _parse_problem, decode_text, parse_json,  # noqa: F401
                    read_bounded)
from .provenance import ResolvedModel  # noqa: F401  (re-exported: kvcalc.sources.ResolvedModel)

PACKAGE_DIR = Path(__file__).resolve().parent
#: a Hugging Face hub id, org/name[@revision]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/]+)?$")
_HUB_ID = HUB_ID


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


class PresetWarning(UserWarning):
    """A user preset that kvcalc skipped (malformed, unreadable): the message names the file
    and why. The CLI prints it as one ``warning:`` line."""


def read_text_file(path: Path, what: str = "file", limit: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped), at most ``limit`` bytes;
    anything else is one ConfigError naming the file: unreadable, not a regular file (a FIFO,
    ``/dev/zero``, a directory), larger than the limit, not UTF-8 (:mod:`kvcalc.files`)."""
    return decode_text(read_bounded(path, what, limit), f"{what} {path}")


def parse_yaml(text: str, what: str) -> Any:
    """Safe YAML (no tags that build objects) without aliases: ``*name`` references are refused
    before anything is built, so an alias bomb ("billion laughs") costs nothing."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        events = yaml.parse(text, Loader=loader) if "*" in text else ()  # an alias needs '*'
        for event in events:
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(f"{what} uses a YAML alias ('*{event.anchor}'): kvcalc "
                                  "refuses aliases in presets; write the value out")
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{what}:{mark.line + 1}" if mark is not None else what
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML in {where}: {problem}") from None
    except (RecursionError, ValueError) as exc:  # nesting, 4,300+ digit numbers
        raise ConfigError(f"{what} cannot be read: {_parse_problem(exc)}") from None


def load_yaml_file(path: Path) -> Any:
    """Parse a YAML file (see :func:`parse_yaml`); errors name the file and line."""
    return parse_yaml(read_text_file(path), str(path))


def load_json_file(path: Path) -> Any:
    """Parse a JSON file; a syntax error becomes a ConfigError naming the file and line."""
    return parse_json(read_text_file(path), str(path))


#: preset keys that must be text when present
PRESET_TEXT_KEYS = ("name", "display_name", "hub_id", "source", "notes", "description")


#: the built-in presets of one folder compiled to JSON (``python tools/gen_presets.py``): one
#: small read instead of importing PyYAML and parsing every file on each command that names a
#: preset; used only while it lists exactly the folder's YAML files at their sizes
COMPILED_PRESETS = "_compiled.json"


def preset_documents(directory: Path, origin: str = "built-in") -> list[tuple[Path, Any]]:
    """``(path, parsed YAML)`` of every preset file in ``directory``, sorted by file name: from
    its :data:`COMPILED_PRESETS` for a built-in folder when that is current, else each file."""
    files = _preset_files(directory)
    if origin == "built-in":
        compiled = _compiled_documents(directory, files)
        if compiled is not None:
            return compiled
    return [(path, load_yaml_file(path)) for path in files]


def compile_presets(directory: Path) -> dict[str, Any]:
    """The :data:`COMPILED_PRESETS` document of ``directory``: each YAML file's size and data."""
    return {"generated_by": "tools/gen_presets.py",
            "files": {p.name: {"size": p.stat().st_size, "data": load_yaml_file(p)}
                      for p in _preset_files(directory)}}


def _compiled_documents(directory: Path, files: list[Path]) -> list[tuple[Path, Any]] | None:
    try:
        entries = parse_json((directory / COMPILED_PRESETS).read_text("utf-8"),
                             COMPILED_PRESETS)["files"]
        if sorted(entries) != [p.name for p in files] or any(
                entries[p.name]["size"] != p.stat().st_size for p in files):
            return None     # a preset added, removed or edited since: read the YAML
        return [(p, entries[p.name]["data"]) for p in files]
    except (OSError, KvcalcError, KeyError, TypeError):
        return None


def _load_preset(path: Path, origin: str, data: Any = None) -> Preset:
    if data is None:
        data = load_yaml_file(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("config"), Mapping):
        raise ConfigError(f"preset {path} has no 'config:' mapping (see docs/models.md)")
    for key in PRESET_TEXT_KEYS:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ConfigError(f"preset {path}: '{key}' must be text, got a "
                              f"{type(data[key]).__name__} (quote it)")
    aliases = data.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ConfigError(f"preset {path}: 'aliases' must be a list of names "
                          "(aliases: [name-a, name-b])")
    name = (data.get("name") or path.stem).lower()
    return Preset(name, path, origin, tuple(a.lower() for a in aliases), data)


def _preset_files(directory: Path) -> list[Path]:
    try:
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.iterdir()
                      if p.suffix in (".yaml", ".yml") and p.is_file())
    except OSError as exc:
        _skip(f"cannot list the folder {directory}: {exc.strerror or exc}")
        return []


def _skip(why: str) -> None:
    """Warn about a skipped user preset; ``why`` names the file or folder."""
    warnings.warn(f"skipped a user preset: {why}", PresetWarning, stacklevel=2)


def _try_load(path: Path, origin: str) -> Preset | None:
    """A user preset, or None (with a :class:`PresetWarning`) when it cannot be used: one bad
    file in a user folder never stops kvcalc. Built-in presets are part of kvcalc and raise."""
    if origin == "built-in":
        return _load_preset(path, origin)
    try:
        return _load_preset(path, origin)
    except KvcalcError as exc:
        _skip(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
        return None


@lru_cache(maxsize=None)
def _scan_dir(directory: str, origin: str) -> tuple[Preset, ...]:
    if origin == "built-in":
        return tuple(_load_preset(path, origin, data)
                     for path, data in preset_documents(Path(directory), origin))
    loaded = (_try_load(p, origin) for p in _preset_files(Path(directory)))
    return tuple(p for p in loaded if p is not None)


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
        if not PRESET_NAME.match(key):  # never a path: '../x' is not a preset name
            break
        if origin == "built-in":  # compiled: every built-in preset costs one JSON read
            break
        for suffix in (".yaml", ".yml"):
            path = directory / f"{key}{suffix}"
            if path.is_file():
                preset = _try_load(path, origin)
                if preset is not None:
                    return preset
    for preset in all_presets():
        if key == preset.name or key in preset.aliases:
            return preset
    # an alias of a built-in preset that a user preset hides leads to the user preset
    for preset in _scan_dir(str(builtin_preset_dir()), "built-in"):
        if key in preset.aliases:
            return find_preset(preset.name)
    return None


#: what ``kvcalc models add --as NAME`` accepts: a file name and a --model value at once
PRESET_NAME = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")


def user_preset_write_dir() -> Path:
    """Where new user presets go: the first ``$KVCALC_PRESETS`` folder, else the XDG one."""
    return user_preset_dirs()[0]


def check_preset_name(name: str) -> str:
    key = name.strip().lower()
    if not PRESET_NAME.match(key) or key.endswith((".yaml", ".yml", ".json")):
        raise UsageError(f"preset name {name!r} is not usable: use lowercase letters, digits, "
                         "'.', '-', '_' or '+' (e.g. --as llama-3.1-8b-custom)")
    return key


def save_user_preset(name: str, data: Mapping[str, Any], *, force: bool = False,
                     directory: Path | None = None) -> Path:
    """Write ``data`` as ``<directory>/<name>.yaml`` atomically and return the path.

    The YAML goes to a temporary file in the same folder (not ending in .yaml, so no scan ever
    reads it), is flushed and fsynced, then renamed into place: a crash, an error or Ctrl-C
    leaves either the old file or the new one, never half of one. Without ``force`` an existing
    preset file is never replaced (the final link is ``os.link``, which refuses to overwrite)."""
    import tempfile

    import yaml

    key = check_preset_name(name)
    folder = directory or user_preset_write_dir()
    target = folder / f"{key}.yaml"
    existing = [target.with_suffix(s) for s in (".yaml", ".yml") if target.with_suffix(s).exists()]
    if existing and not force:
        raise UsageError(f"user preset {existing[0]} already exists: pass --force to replace it, "
                         "or --as another name")
    text = yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, width=100)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the preset folder {folder}: "
                          f"{exc.strerror or exc}") from None
    tmp_name = None
    try:
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, prefix=f".{key}.",
                                         suffix=".tmp", delete=False) as tmp:
            tmp_name = tmp.name
            os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; presets are plain files
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        if force:
            os.replace(tmp_name, target)
        else:
            try:
                os.link(tmp_name, target)  # atomic and never clobbers
            except FileExistsError:
                raise UsageError(f"user preset {target} already exists: pass --force to replace "
                                 "it, or --as another name") from None
            except OSError:  # no hard links on this file system
                if target.exists():
                    raise UsageError(f"user preset {target} already exists: pass --force to "
                                     "replace it") from None
                os.replace(tmp_name, target)
        _fsync_dir(folder)
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:  # also on KeyboardInterrupt: no temporary file left behind
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
        _scan_dir.cache_clear()
    return target


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def preset_names() -> list[str]:
    names: list[str] = []
    for preset in all_presets():
        names.append(preset.name)
        names.extend(preset.aliases)
    return names


_SOURCE_COMMIT = re.compile(r"^hub \S+@([0-9a-f]{40})\b")


def _from_preset(preset: Preset, location: str | None = None) -> ResolvedModel:
    """A preset saved by ``kvcalc models add`` records its commit in ``source``."""
    commit = _SOURCE_COMMIT.match(str(preset.data.get("source") or ""))
    return ResolvedModel(preset.name, preset.data["config"], "preset",
                         location or str(preset.path), hub_id=preset.hub_id,
                         revision=commit[1] if commit else None,
                         description=preset.display_name, origin=preset.origin)


def resolve(model: str, revision: str | None = None) -> ResolvedModel:
    """Resolve ``--model`` (preset, path, or hub id) to a raw config.

    ``revision`` (``--revision``, or ``@rev`` after a hub id) applies to hub ids only: a preset
    or a local file is already pinned, so asking for a revision of one is an error that names
    the hub id to use instead."""
    if not model or not model.strip():
        raise ModelNotFoundError("--model is empty: name a preset, a config.json path or a hub id")
    base, _, at_rev = model.partition("@")
    preset = find_preset(model)
    if preset is None and at_rev:
        preset = find_preset(base)
    if preset is not None:
        _no_revision(f"preset '{preset.name}'", revision or at_rev or None, preset.hub_id)
        return _from_preset(preset)
    path = Path(model).expanduser()
    if path.exists():
        _no_revision(f"local file {model}", revision, None)
        return _from_path(path)
    if _HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        from . import hub  # imported only for hub ids

        return hub.resolve_hub(model, revision)
    from . import ollama_names

    if ollama_names.is_ollama_name(model):   # gemma3:4b, llama3.1:8b-instruct-q8_0
        return _from_ollama_name(model)
    looks_like_path = os.sep in model or model.endswith((".json", ".yaml", ".yml"))
    if looks_like_path:
        raise ModelNotFoundError(f"no such file or directory: {model}")
    raise ModelNotFoundError(
        f"unknown model '{model}': not a preset, a path or a hub id (org/name)"
        + suggest(model, preset_names())
        + " (kvcalc models lists the presets)"
    )


def _from_ollama_name(model: str) -> ResolvedModel:
    """An Ollama library name: its preset, with the tag's quantization under
    ``ollama_quantization`` in the config (the weights of --engine llamacpp / ollama)."""
    from .ollama_names import lookup

    entry, quant = lookup(model)
    preset = find_preset(entry.preset)
    if preset is None:
        raise ModelNotFoundError(f"Ollama model '{model}' maps to preset '{entry.preset}', "
                                 "which is not installed")
    found = _from_preset(preset)
    config = {**found.config, "ollama_quantization": quant, "ollama_name": model}
    return ResolvedModel(model, config, "preset", found.location, hub_id=found.hub_id,
                         revision=found.revision,
                         description=f"Ollama {model} = preset {preset.name}, {quant.upper()}",
                         origin=found.origin)


def _no_revision(what: str, revision: str | None, hub_id: str | None) -> None:
    if not revision:
        return
    fix = (f"use --model {hub_id}@{revision} to read that revision from the hub" if hub_id
           else "--revision applies to hub ids (org/name) only")
    raise UsageError(f"{what} is pinned and has no revision {revision!r}: {fix}")


def _from_path(path: Path) -> ResolvedModel:
    from . import gguf

    if path.is_dir():
        candidate = path / "config.json"
        if not candidate.is_file():
            found = gguf.find_gguf(path)
            if found is None:
                raise ModelNotFoundError(f"directory {path} holds no config.json and no .gguf file")
            candidate = found
        path = candidate
    if path.is_file() and gguf.is_gguf(path):  # GGUF header only (kvcalc/gguf.py)
        config = gguf.read_gguf_config(path)
        return ResolvedModel(path.stem, config, "file", str(path),
                             description=config[gguf.GGUF_CONFIG_KEY].get("name"))
    if path.suffix in (".yaml", ".yml"):
        return _from_preset(_load_preset(path, "file"), str(path))
    data = load_json_file(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path} does not hold a JSON object")
    name = path.parent.name if path.name == "config.json" else path.stem
    return ResolvedModel(name or str(path), data, "file", str(path))
