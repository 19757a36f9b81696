"""Hugging Face hub source: ``--model org/name[@revision]`` fetches ``config.json`` only.

Uses ``huggingface_hub`` (imported only for hub ids) with its cache, token (``HF_TOKEN`` or
``hf auth login``), ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT``. Network waits are bounded by
``KVCALC_HUB_TIMEOUT`` seconds (default 5) and not retried. Every failure becomes one line that
says what to do. Nothing downloaded is ever executed: a config with ``auto_map`` (remote code)
is read as plain JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigError, KvcalcError, ModelNotFoundError
from .sources import ResolvedModel

DEFAULT_TIMEOUT_S = 5.0


class HubError(KvcalcError):
    """The hub could not give us the config (offline, gated, timeout, server error)."""


def timeout_s() -> float:
    raw = os.environ.get("KVCALC_HUB_TIMEOUT")
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise HubError(f"KVCALC_HUB_TIMEOUT={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise HubError("KVCALC_HUB_TIMEOUT must be positive")
    return value


def split_revision(model: str, revision: str | None) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'); --revision wins over nothing, conflicts are errors."""
    if "@" in model:
        repo, rev = model.split("@", 1)
        if revision and revision != rev:
            raise ModelNotFoundError(f"{model} names revision {rev!r} but --revision says "
                                     f"{revision!r}")
        return repo, rev
    return model, revision


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(repo_id: str, filename: str, revision: str | None) -> Path:
    """One file from the hub (or its cache), every failure turned into a one-line error."""
    import huggingface_hub
    from huggingface_hub import constants, errors

    limit = timeout_s()
    constants.HF_HUB_DOWNLOAD_TIMEOUT = limit  # read at import time by huggingface_hub
    where = f"{repo_id}@{revision or 'main'}"
    try:
        path = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision,
                                               etag_timeout=limit)
    except errors.GatedRepoError:
        raise HubError(
            f"{repo_id} is a gated repository: request access at "
            f"https://huggingface.co/{repo_id}, then pass a token (export HF_TOKEN=... or run "
            "`hf auth login`)") from None
    except errors.RevisionNotFoundError:
        raise ModelNotFoundError(f"revision {revision!r} not found in {repo_id}: check the "
                                 "branch, tag or commit") from None
    except errors.EntryNotFoundError:
        raise ModelNotFoundError(f"{where} has no {filename}: is it a model repository?") from None
    except errors.RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"hub repository {repo_id} not found (or private: log in with `hf auth login` or "
            "set HF_TOKEN); check the name, or use a preset (kvcalc models)") from None
    except errors.OfflineModeIsEnabled:
        raise HubError(_offline_message(where, filename)) from None
    except errors.LocalEntryNotFoundError as exc:
        if _offline():
            raise HubError(_offline_message(where, filename)) from None
        raise HubError(_network_message(where, exc, limit)) from None
    except errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise HubError(f"the hub answered {status or 'an error'} for {where}/{filename}: "
                       "try again later, or use a local config.json") from None
    except (OSError, ValueError) as exc:  # invalid repo ids, cache permission errors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HubError(f"cannot fetch {where}/{filename}: {first}") from None
    return Path(path)


def _offline_message(where: str, filename: str) -> str:
    return (f"HF_HUB_OFFLINE is set and {where}/{filename} is not in the local cache: run once "
            "online, unset HF_HUB_OFFLINE, or pass a local config.json")


def _network_message(where: str, exc: BaseException, limit: float) -> str:
    cause = exc.__cause__ or exc.__context__
    text = f"{type(cause).__name__}" if cause else "no answer"
    if cause is not None and "timeout" in type(cause).__name__.lower():
        return (f"the hub did not answer within {limit:g} s for {where} "
                f"(KVCALC_HUB_TIMEOUT raises the limit; HF_ENDPOINT={_endpoint()})")
    return (f"cannot reach the hub for {where} ({text}; HF_ENDPOINT={_endpoint()}) and it is not "
            "cached: check the network, or set HF_HUB_OFFLINE=1 to use the cache only")


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _commit_of(path: Path) -> str | None:
    """The commit sha from a hub cache path: .../snapshots/<sha>/config.json."""
    parts = path.parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def resolve_hub(model: str, revision: str | None = None) -> ResolvedModel:
    repo_id, rev = split_revision(model, revision)
    path = download(repo_id, "config.json", rev)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config.json of {repo_id} is not valid JSON (line {exc.lineno}: "
                          f"{exc.msg})") from None
    if not isinstance(config, Mapping):
        raise ConfigError(f"config.json of {repo_id} is not a JSON object")
    name = repo_id.split("/")[-1].lower()
    return ResolvedModel(name, config, "hub", repo_id, hub_id=repo_id,
                         revision=_commit_of(path) or rev, description=repo_id)


#: bytes per parameter for safetensors dtypes
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
                           "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors_parameters(repo_id: str, revision: str | None = None
                           ) -> tuple[int, dict[str, int]] | None:
    """Exact parameter counts per dtype from the repository's safetensors headers (read with
    HTTP range requests, no weights downloaded); None when offline or unavailable."""
    if _offline():
        return None
    try:
        from huggingface_hub import HfApi, constants

        constants.HF_HUB_DOWNLOAD_TIMEOUT = timeout_s()
        meta = HfApi().get_safetensors_metadata(repo_id, revision=revision)
    except Exception:  # noqa: BLE001 - optional refinement: fall back to the config count
        return None
    counts = dict(meta.parameter_count)
    return sum(counts.values()), counts


def safetensors_weight_bytes(counts: dict[str, int]) -> int:
    return sum(n * SAFETENSORS_DTYPE_BYTES.get(dtype, 2) for dtype, n in counts.items())
