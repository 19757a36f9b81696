"""Hugging Face hub source: ``--model org/name[@revision]`` fetches ``config.json`` only.

``huggingface_hub`` is imported here only, and this module only for hub ids, so
``kvcalc estimate --model llama-7b`` never pays for it.

What it honours, read when a call is made (not when ``huggingface_hub`` was imported):

- ``HF_ENDPOINT`` (default https://huggingface.co), ``HF_HOME`` / ``HF_HUB_CACHE`` (the cache),
  ``HF_HUB_OFFLINE=1`` (cache only, no network at all);
- the token: ``HF_TOKEN``, else the one ``hf auth login`` saved (huggingface_hub's rules);
- ``KVCALC_HUB_TIMEOUT`` seconds (default 5): each request as a whole (connect, headers,
  body) is bounded by it, so a hub that drips its answer a byte at a time costs one timeout;
  nothing is retried.

The download is one GET made here (not huggingface_hub's downloader), so what the hub says is
checked before anything is written: the commit (``X-Repo-Commit``) must be 40 hex digits (and
the one asked for, when a commit was asked for), the ETag 40 or 64 hex digits (a git blob id
or a sha256, the hub's shapes), the revision a git ref name (no ``..``, no leading ``/``), the
body at most :data:`~kvcalc.files.MAX_CONFIG_BYTES`. The file is then stored in
huggingface_hub's cache layout (``blobs/<etag>``, ``snapshots/<commit>/<file>``,
``refs/<ref>``), written atomically, every path checked to stay inside the repository's cache
folder; nothing partial is left behind. Credentials in ``HF_ENDPOINT``
(``https://user:pass@host``) are used for requests and never printed or saved.

Every failure becomes one :class:`~kvcalc.errors.KvcalcError` line that says what to do.
Nothing downloaded is ever executed: a config with ``auto_map`` (remote code) is read as JSON.

Exact parameter counts come from the safetensors headers (HTTP range requests, no weights
downloaded): :func:`safetensors_parameters`.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (ConfigError, HubError, KvcalcError, LimitError, ModelNotFoundError,
                     UsageError)
from .provenance import ResolvedModel

#: seconds any single network wait may take (KVCALC_HUB_TIMEOUT overrides)
DEFAULT_TIMEOUT_S = 5.0
#: the longest bound KVCALC_HUB_TIMEOUT may set (an hour): "inf" or 1e308 would never end
MAX_TIMEOUT_S = 3600.0
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub.constants._is_true
_SHA = re.compile(r"^[0-9a-f]{40}$")
#: the hub's ETags: a git blob id (40 hex) or the sha256 of an LFS file (64 hex)
_ETAG = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
#: a branch, tag or commit as git names them (``git check-ref-format``, plus ``refs/pr/N``):
#: components of word characters, '.', '-', '+' separated by single '/', none starting with '.'
_REVISION = re.compile(r"^(?!/)(?!.*//)(?!.*/$)(?!.*\.\.)(?!.*(?:^|/)\.)(?!.*\.lock(?:/|$))"
                       r"[\w.+\-/]{1,255}$")

#: endpoints that failed at the network level in this process: later optional look-ups
#: (safetensors headers) skip them instead of waiting for another timeout
_UNREACHABLE: set[str] = set()
_LOCK = threading.Lock()


# --------------------------------------------------------------------------- settings

def timeout_s() -> float:
    """The network bound in seconds: ``KVCALC_HUB_TIMEOUT`` or 5."""
    raw = os.environ.get("KVCALC_HUB_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"KVCALC_HUB_TIMEOUT={raw!r} is not a number of seconds "
                         "(e.g. KVCALC_HUB_TIMEOUT=10)") from None
    if not 0 < value <= MAX_TIMEOUT_S:
        raise UsageError(f"KVCALC_HUB_TIMEOUT={raw!r} must be a number of seconds greater "
                         f"than 0 and at most {MAX_TIMEOUT_S:g} (docs/security.md)")
    return value


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub reads it."""
    raw = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return raw.strip().upper() in _TRUE


def _request_endpoint() -> str:
    """``HF_ENDPOINT`` as given, credentials included: for requests only, never for text."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def endpoint() -> str:
    """``HF_ENDPOINT`` without any ``user:password@``: what messages and presets may show."""
    return public_url(_request_endpoint())


def public_url(url: str) -> str:
    """``url`` with its userinfo (``user:password@``) removed."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a malformed endpoint: show nothing of what follows the scheme
        return url.split("://", 1)[0] + "://…" if "://" in url else "…"
    if "@" not in parts.netloc:
        return url
    return urlunsplit((parts.scheme, host + port, parts.path, parts.query, parts.fragment))


def check_revision(revision: str) -> str:
    """A revision of the hub's shape (branch, tag, commit, ``refs/pr/N``) or a UsageError:
    one with ``..``, a leading ``/`` or characters git refuses could name a path."""
    if not _REVISION.match(revision):
        raise UsageError(f"revision {revision!r} is not a branch, tag or commit name (letters, "
                         "digits, '.', '-', '_', '+' and single '/'; no '..')")
    return revision


def cache_dir() -> Path:
    """The hub cache huggingface_hub uses: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        home = os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def split_revision(model: str, revision: str | None = None) -> tuple[str, str | None]:
    """``'org/name@rev'`` -> ``('org/name', 'rev')``; ``--revision`` must agree with ``@rev``."""
    repo, sep, rev = model.partition("@")
    if not sep:
        return model, check_revision(revision) if revision else None
    if not rev:
        raise UsageError(f"'{model}' ends with '@' but names no revision")
    if revision and revision != rev:
        raise UsageError(f"'{model}' names revision {rev!r} but --revision says {revision!r}: "
                         "give one of them")
    return repo, check_revision(rev)


@contextmanager
def _hub_settings(limit: float) -> Iterator[Any]:
    """Import huggingface_hub and align the constants it froze at import time with the current
    environment (offline flag) and our bound (download timeout); restored afterwards. The
    endpoint and the cache folder are passed to every call instead.

    Telemetry is off for kvcalc's requests: with it on, huggingface_hub's user-agent code first
    fetches an "agent harnesses" list from the hub (up to 3 s more when the hub is unreachable),
    and kvcalc asks for config.json and safetensors headers only."""
    import huggingface_hub
    from huggingface_hub import constants

    names = ("HF_HUB_OFFLINE", "HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_DISABLE_TELEMETRY")
    saved = {n: getattr(constants, n) for n in names}
    constants.HF_HUB_OFFLINE = is_offline()
    constants.HF_HUB_DOWNLOAD_TIMEOUT = limit
    constants.HF_HUB_DISABLE_TELEMETRY = True
    try:
        yield huggingface_hub
    finally:
        for n, value in saved.items():
            setattr(constants, n, value)


def _quiet_tqdm() -> Any:
    """No progress bar for a config.json of a few kB."""
    try:
        from huggingface_hub.utils.tqdm import silent_tqdm
    except ImportError:
        return None
    return silent_tqdm


# --------------------------------------------------------------------------- downloads

@dataclass(frozen=True)
class HubFile:
    """A file from the hub cache and how we got it."""

    repo_id: str
    filename: str
    ref: str                      # what was asked for: branch, tag or commit
    path: Path                    # in the hub cache: .../snapshots/<commit>/<filename>
    commit: str | None
    cached: bool = False          # served from the cache without the hub's answer
    note: str | None = None       # why the cache was used (hub unreachable, 5xx...)


def download(repo_id: str, filename: str, revision: str | None = None) -> HubFile:
    """One file from the hub (through its cache); every failure is one line with the fix."""
    limit = timeout_s()
    ref = revision or DEFAULT_REVISION
    where = f"{repo_id}@{ref}"
    with _hub_settings(limit) as hf:
        from huggingface_hub import errors

        _validate(hf, repo_id)
        if is_offline():
            path = _from_cache(hf, repo_id, filename, ref)
            if path is None:
                raise HubError(
                    f"HF_HUB_OFFLINE is set and {where} ({filename}) is not in the hub cache "
                    f"({cache_dir()}): run once with the network (unset HF_HUB_OFFLINE) to cache "
                    "it, or pass a local config.json")
            return HubFile(repo_id, filename, ref, path, _commit_of(path), cached=True,
                           note="HF_HUB_OFFLINE")

        if _SHA.match(ref):  # a commit never changes: a cached snapshot needs no request
            path = _from_cache(hf, repo_id, filename, ref)
            if path is not None:
                return HubFile(repo_id, filename, ref, path, ref, cached=True)

        # 1. One GET, bounded as a whole, without retries: the hub's answer (or its silence)
        try:
            got = _fetch(hf, repo_id, filename, ref, limit)
        except errors.HfHubHTTPError as exc:
            problem = _http_problem(exc, repo_id, filename, ref)  # raises for 4xx
        except _Overdue:
            problem = f"the hub ({endpoint()}) did not answer within {limit:g} s"
            with _LOCK:
                _UNREACHABLE.add(endpoint())
        except KvcalcError:  # refused shapes and sizes: never covered by the cache
            raise
        except Exception as exc:  # noqa: BLE001 - network errors (httpx, ssl, proxy) vary
            problem = _network_problem(exc, limit)
            with _LOCK:
                _UNREACHABLE.add(endpoint())
        else:
            problem = None

        if problem is not None:  # 2a. no usable answer: the cache, or one line saying why not
            path = _from_cache(hf, repo_id, filename, ref)
            if path is None:
                raise HubError(f"{problem} for {where} and it is not in the hub cache: "
                               f"{_problem_fix(problem)}")
            return HubFile(repo_id, filename, ref, path, _commit_of(path), cached=True,
                           note=f"{problem}; used the cached copy")

        # 2b. the hub answered with checked shapes: store it in the cache layout
        body, commit, etag = got
        path = _store(repo_id, filename, ref, commit, etag, body)
        return HubFile(repo_id, filename, ref, path, commit)


def _fetch(hf: Any, repo_id: str, filename: str, ref: str, limit: float
           ) -> tuple[bytes, str, str]:
    """GET ``filename`` at ``ref``: ``(body, commit, etag)`` once every shape is checked.
    The whole request must finish within ``limit`` seconds (:class:`_Overdue` otherwise); a
    hub error answer raises huggingface_hub's typed error (``hf_raise_for_status``)."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    from .files import MAX_CONFIG_BYTES

    url = hf.hf_hub_url(repo_id, filename, revision=ref, endpoint=_request_endpoint())
    headers = build_hf_headers(library_name="kvcalc", library_version=_version())
    what = f"{filename} of {repo_id}@{ref}"

    def get() -> tuple[Any, bytes]:
        # huggingface_hub's HTTP client (proxies, CA bundle); redirects followed (a renamed
        # repository, a CDN), the token dropped by the client when the host changes
        with get_session().stream("GET", url, headers=headers, timeout=limit,
                                  follow_redirects=True) as response:
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_CONFIG_BYTES:
                    raise LimitError(f"the hub sent more than {MAX_CONFIG_BYTES:,} bytes for "
                                     f"{what}, the most kvcalc reads: refused")
                chunks.append(chunk)
        return response, b"".join(chunks)

    response, body = _within(limit, get)
    if response.status_code >= 400:
        hf_raise_for_status(response)
    answers = [*response.history, response]
    commit = next((r.headers.get("X-Repo-Commit") for r in answers
                   if r.headers.get("X-Repo-Commit")), None)
    etag = next((r.headers.get("X-Linked-Etag") or r.headers.get("ETag") for r in answers
                 if r.headers.get("X-Linked-Etag") or r.headers.get("ETag")), None)
    etag = etag.removeprefix("W/").strip('"') if etag else None
    if not commit or not _SHA.match(commit):
        raise HubError(f"the hub ({endpoint()}) answered {what} with commit "
                       f"{_shown(commit)}, not a 40-hex commit id: refused, nothing written")
    if _SHA.match(ref) and commit != ref:
        raise HubError(f"the hub ({endpoint()}) answered {what} from commit {commit[:12]}, not "
                       "the commit asked for: refused, nothing written")
    if not etag or not _ETAG.match(etag):
        raise HubError(f"the hub ({endpoint()}) answered {what} with ETag {_shown(etag)}, not "
                       "a 40- or 64-hex content id: refused, nothing written")
    return body, commit, etag


def _shown(value: str | None) -> str:
    if value is None:
        return "(none)"
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _store(repo_id: str, filename: str, ref: str, commit: str, etag: str, body: bytes) -> Path:
    """Write ``body`` into huggingface_hub's cache layout for ``repo_id`` and return the
    snapshot path. Atomic (temporary file + rename), every path checked to stay inside the
    repository's folder; a failure leaves nothing partial and is one line."""
    storage = cache_dir() / f"models--{repo_id.replace('/', '--')}"
    blob = storage / "blobs" / etag
    pointer = storage / "snapshots" / commit / filename
    ref_file = storage / "refs" / ref
    for target in (blob, pointer, ref_file):
        _inside(storage, target)
    try:
        _atomic_write(blob, body)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        if not pointer.exists():
            try:
                os.symlink(os.path.relpath(blob, pointer.parent), pointer)
            except OSError:  # no symlinks here (Windows without developer mode...)
                _atomic_write(pointer, body)
        if ref != commit:
            _atomic_write(ref_file, commit.encode())
    except OSError as exc:
        raise HubError(f"cannot store {repo_id}@{ref} {filename} in the hub cache "
                       f"{cache_dir()}: {exc.strerror or exc} (set HF_HOME to a writable "
                       "folder)") from None
    return pointer


def _inside(base: Path, path: Path) -> None:
    """Refuse a cache path that would leave ``base`` (defence in depth: shapes are checked)."""
    if not os.path.normpath(path).startswith(os.path.normpath(base) + os.sep):
        raise HubError(f"refused to write outside the hub cache: {path}")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _Overdue(Exception):
    pass


def _within(seconds: float, call: Any) -> Any:
    """Run ``call`` in a daemon thread and give up after ``seconds`` (the thread is left to
    finish or time out on its own; it only reads into memory, the caller writes)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=target, name="kvcalc-hub-download", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise _Overdue
    if "error" in box:
        raise box["error"]
    return box["value"]


def _version() -> str:
    from . import __version__

    return __version__


def _validate(hf: Any, repo_id: str) -> None:
    from huggingface_hub import errors

    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(repo_id)
    except errors.HFValidationError as exc:
        first = (str(exc).strip().splitlines() or [""])[0].rstrip(".")
        raise ModelNotFoundError(f"'{repo_id}' is not a valid hub id ({first}): use org/name, "
                                 "e.g. meta-llama/Llama-3.1-8B") from None


def _from_cache(hf: Any, repo_id: str, filename: str, ref: str) -> Path | None:
    from huggingface_hub import errors

    try:
        return Path(hf.hf_hub_download(repo_id, filename, revision=ref,
                                       cache_dir=str(cache_dir()), local_files_only=True))
    except (errors.LocalEntryNotFoundError, errors.EntryNotFoundError,
            errors.OfflineModeIsEnabled, FileNotFoundError):
        return None


def _status(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def _http_problem(exc: BaseException, repo_id: str, filename: str, ref: str) -> str:
    """A hub error answer: raise the one-line error for the 4xx ones; return the problem for the
    ones the cache may cover (5xx, 429)."""
    from huggingface_hub import errors

    web = f"{endpoint()}/{repo_id}"
    status = _status(exc)
    if isinstance(exc, errors.GatedRepoError):
        if status == 403:
            raise HubError(f"{repo_id} is a gated repository and your token has no access yet: "
                           f"request it at {web} (and wait for approval), or use another token "
                           "(HF_TOKEN)")
        raise HubError(f"{repo_id} is a gated repository: request access at {web}, then pass a "
                       "token (export HF_TOKEN=hf_... or run `hf auth login`)")
    if isinstance(exc, errors.RevisionNotFoundError):
        raise ModelNotFoundError(f"revision {ref!r} not found in {repo_id}: use a branch, tag or "
                                 f"commit that exists (see {web}/commits/main)")
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        raise _entry_missing(repo_id, filename, ref)
    if isinstance(exc, errors.RepositoryNotFoundError):
        raise ModelNotFoundError(
            f"hub repository {repo_id} not found: check the name (org/name, as on {endpoint()}); "
            "if it is private, pass a token (HF_TOKEN or `hf auth login`); "
            "`kvcalc models` lists the presets")
    if status == 401:
        raise HubError(f"the hub rejected the token for {repo_id} (HTTP 401): check or renew "
                       "HF_TOKEN / `hf auth login`, or unset it for public models")
    if status == 403:
        raise HubError(f"the hub refused access to {repo_id} (HTTP 403): check that your token "
                       "has read access")
    if status is not None and status < 500 and status != 429:
        raise HubError(f"the hub answered HTTP {status} for {repo_id}@{ref} {filename}")
    return f"the hub answered HTTP {status}" if status else "the hub answered an error"


def _entry_missing(repo_id: str, filename: str, ref: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{repo_id}@{ref} has no {filename}: is it a model repository with a transformers "
        "config (not GGUF-only, an adapter or a dataset)? Pass a local config.json instead")


def _network_problem(exc: BaseException, limit: float) -> str:
    names = " ".join(type(e).__name__ for e in _chain(exc)).lower()
    if "timeout" in names:
        return f"the hub ({endpoint()}) did not answer within {limit:g} s"
    return f"cannot reach the hub ({endpoint()}: {type(exc).__name__})"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _problem_fix(problem: str) -> str:
    if "did not answer" in problem:
        return ("check the network or HF_ENDPOINT, raise KVCALC_HUB_TIMEOUT, or pass a local "
                "config.json")
    if "answered HTTP" in problem or "answered an error" in problem:
        return "try again later, or pass a local config.json"
    return "check the network, proxy or HF_ENDPOINT, or pass a local config.json"


def _commit_of(path: Path) -> str | None:
    """The commit sha from a hub cache path: ``.../snapshots/<sha>/config.json``."""
    parts = path.parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts) and _SHA.match(parts[i + 1]):
            return parts[i + 1]
    return None


# --------------------------------------------------------------------------- config.json

def parse_config(data: bytes | str, what: str) -> dict[str, Any]:
    """config.json text -> dict, as plain JSON (``auto_map`` code is never looked at)."""
    from .files import parse_json

    try:
        config = parse_json(data, f"config.json of {what}")
    except ConfigError as exc:
        raise ConfigError(f"{exc}: the repository's file is broken; pass a corrected local "
                          "config.json") from None
    if not isinstance(config, Mapping):
        raise ConfigError(f"config.json of {what} is a JSON {type(config).__name__}, not an "
                          "object: it is not a transformers config; pass a local config.json")
    return dict(config)


def resolve_hub(model: str, revision: str | None = None) -> ResolvedModel:
    """``org/name[@revision]`` -> its config.json from the hub (or the hub cache)."""
    repo_id, rev = split_revision(model, revision)
    got = download(repo_id, "config.json", rev)
    config = parse_config(got.path.read_bytes(), f"{repo_id}@{got.commit or got.ref}")
    return ResolvedModel(repo_id.split("/")[-1].lower(), config, "hub", str(got.path),
                         hub_id=repo_id, revision=got.commit or got.ref,
                         description=repo_id, ref=got.ref, cached=got.cached, note=got.note)


# --------------------------------------------------------------------------- safetensors

#: bytes per element of the safetensors dtypes (safetensors format spec)
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4,
                           "BF16": 2, "F16": 2, "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
                           "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: parallel range requests for sharded checkpoints (DeepSeek-V3 has 163 shards)
SHARD_WORKERS = 8
#: most shards an index may name (DeepSeek-V3 has 163)
MAX_SHARDS = 10_000


@dataclass(frozen=True)
class SafetensorsInfo:
    """Exact parameter counts from a repository's safetensors headers."""

    hub_id: str
    commit: str | None
    total: int
    by_dtype: Mapping[str, int] = field(default_factory=dict)
    files: int = 1
    cached: bool = False          # read from kvcalc's cache of earlier look-ups

    @property
    def weight_bytes(self) -> int:
        """Bytes of the checkpoint's tensors (F4/packed dtypes not in the table count 1 B)."""
        return sum(n * SAFETENSORS_DTYPE_BYTES.get(d, 1) for d, n in self.by_dtype.items())

    @property
    def source(self) -> str:
        at = f"@{self.commit[:12]}" if self.commit else ""
        return f"safetensors headers of {self.hub_id}{at} ({self.files} file(s))"


def safetensors_parameters(hub_id: str, revision: str | None = None
                           ) -> tuple[int, dict[str, int]] | None:
    """``(total parameters, {safetensors dtype: parameters})`` read from the repository's
    safetensors headers (``model.safetensors`` or the shards of ``model.safetensors.index.json``),
    or ``None`` when they cannot be had: offline without an earlier look-up cached, hub
    unreachable, gated, not a safetensors repository. Never raises for hub problems; costs at
    most a few bounded requests. ``hub_id`` may carry ``@revision``."""
    info = safetensors_info(hub_id, revision)
    return None if info is None else (info.total, dict(info.by_dtype))


def safetensors_info(hub_id: str, revision: str | None = None, *, strict: bool = False
                     ) -> SafetensorsInfo | None:
    """Like :func:`safetensors_parameters` with the commit and file count; ``strict=True``
    raises the one-line :class:`HubError` instead of returning ``None``."""
    try:
        return _safetensors_info(hub_id, revision)
    except (HubError, ModelNotFoundError, ConfigError):
        if strict:
            raise
        return None


def _safetensors_info(hub_id: str, revision: str | None) -> SafetensorsInfo | None:
    repo_id, rev = split_revision(hub_id, revision)
    ref = rev or DEFAULT_REVISION
    limit = timeout_s()
    if is_offline() or endpoint() in _UNREACHABLE:
        commit = ref if _SHA.match(ref) else _cached_commit(repo_id, ref)
        hit = _read_counts(repo_id, commit) if commit else None
        if hit is None:
            raise HubError(f"no safetensors counts for {repo_id}@{ref} without the hub")
        return hit
    with _hub_settings(limit) as hf:
        from huggingface_hub import errors

        _validate(hf, repo_id)
        api = hf.HfApi(endpoint=_request_endpoint(), library_name="kvcalc",
                       library_version=_version())
        url = hf.hf_hub_url(repo_id, SINGLE_FILE, revision=ref, endpoint=_request_endpoint())
        try:
            meta = _within(limit, lambda: hf.get_hf_file_metadata(
                url, timeout=limit, endpoint=_request_endpoint(), retry_on_errors=False))
        except errors.RemoteEntryNotFoundError:
            meta = None
        except errors.HfHubHTTPError as exc:
            _http_problem(exc, repo_id, SINGLE_FILE, ref)
            raise HubError(f"the hub answered HTTP {_status(exc)} for {repo_id}") from None
        except Exception as exc:  # noqa: BLE001 - network errors
            with _LOCK:
                _UNREACHABLE.add(endpoint())
            raise HubError(_network_problem(exc, limit)) from None

        if meta is not None:
            commit = meta.commit_hash if _SHA.match(meta.commit_hash or "") else None
            hit = _read_counts(repo_id, commit)
            if hit is not None:
                return hit
            files = [SINGLE_FILE]
        else:
            index = download(repo_id, INDEX_FILE, ref)
            commit = index.commit
            hit = _read_counts(repo_id, commit)
            if hit is not None:
                return hit
            try:
                weight_map = json.loads(index.path.read_bytes()).get("weight_map") or {}
            except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
                raise ConfigError(f"{INDEX_FILE} of {repo_id} is not valid JSON") from None
            files = sorted(set(weight_map.values()))
            if not files:
                raise ConfigError(f"{INDEX_FILE} of {repo_id} has no weight_map")

        if len(files) > MAX_SHARDS:
            raise ConfigError(f"{INDEX_FILE} of {repo_id} names {len(files):,} files: at most "
                              f"{MAX_SHARDS:,}")
        rounds = 1 + len(files) // SHARD_WORKERS
        try:  # every header within the bound, as a whole
            counts = _within(rounds * limit, lambda: _parse_headers(
                api, repo_id, files, commit or ref, limit))
        except _Overdue:
            raise HubError(f"the hub ({endpoint()}) did not deliver the safetensors headers of "
                           f"{repo_id} within {rounds * limit:g} s") from None
    info = SafetensorsInfo(repo_id, commit, sum(counts.values()), counts, len(files))
    _write_counts(info)
    return info


def _parse_headers(api: Any, repo_id: str, files: list[str], rev: str, limit: float
                   ) -> dict[str, int]:
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub import errors

    def one(name: str) -> dict[str, int]:
        meta = api.parse_safetensors_file_metadata(repo_id, name, revision=rev, timeout=limit)
        return dict(meta.parameter_count)

    total: dict[str, int] = {}
    try:
        with ThreadPoolExecutor(max_workers=min(SHARD_WORKERS, len(files))) as pool:
            for counts in pool.map(one, files):
                for dtype, n in counts.items():
                    total[dtype] = total.get(dtype, 0) + n
    except errors.SafetensorsParsingError as exc:
        raise ConfigError(f"cannot read the safetensors header of {repo_id}: "
                          f"{str(exc).splitlines()[0]}") from None
    except errors.HfHubHTTPError as exc:
        raise HubError(f"the hub answered HTTP {_status(exc)} for a safetensors header of "
                       f"{repo_id}") from None
    except Exception as exc:  # noqa: BLE001 - network errors
        raise HubError(_network_problem(exc, limit)) from None
    return total


def _cached_commit(repo_id: str, ref: str) -> str | None:
    ref_file = cache_dir() / f"models--{repo_id.replace('/', '--')}" / "refs" / ref
    try:
        commit = ref_file.read_text().strip()
    except OSError:
        return None
    return commit if _SHA.match(commit) else None


def counts_cache_dir() -> Path:
    """kvcalc's own cache of safetensors look-ups (small JSON, keyed by commit):
    ``$XDG_CACHE_HOME/kvcalc/safetensors``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "kvcalc" / "safetensors"


def _counts_path(repo_id: str, commit: str) -> Path:
    return counts_cache_dir() / repo_id.replace("/", "--") / f"{commit}.json"


def _read_counts(repo_id: str, commit: str | None) -> SafetensorsInfo | None:
    if not commit or not _SHA.match(commit):
        return None
    try:
        data = json.loads(_counts_path(repo_id, commit).read_text())
        counts = {str(k): int(v) for k, v in data["by_dtype"].items()}
        return SafetensorsInfo(repo_id, commit, sum(counts.values()), counts,
                               int(data.get("files", 1)), cached=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_counts(info: SafetensorsInfo) -> None:
    """Best effort, atomic: a commit's headers never change, so this is a pure cache."""
    if not info.commit or not _SHA.match(info.commit):
        return
    path = _counts_path(info.hub_id, info.commit)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"hub_id": info.hub_id, "commit": info.commit,
                                   "files": info.files, "by_dtype": dict(info.by_dtype)}))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
