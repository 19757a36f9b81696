"""A loopback stand-in for the Hugging Face hub, for tests (never the real hub).

A threaded ``http.server`` on 127.0.0.1:<free port> that answers like the hub does for what
huggingface_hub 2.4.0 asks (read in its ``file_download.py`` / ``utils/_http.py``):

- ``HEAD|GET /{org}/{name}/resolve/{revision}/{file}``: 200 with ``ETag`` (quoted), ``X-Repo-Commit``
  (40 hex), ``Content-Length``; ``Range: bytes=a-b`` gives 206 + ``Content-Range`` (safetensors
  headers are read that way);
- errors carry ``X-Error-Code`` as the hub's do: 404 ``RepoNotFound``, 404 ``RevisionNotFound``,
  404 ``EntryNotFound`` (with ``X-Repo-Commit``), 401/403 ``GatedRepo``; a 500; and repository
  ``stub/silent``, which accepts the connection and never answers (until the server stops), and
  ``stub/silent-get``, which answers HEAD but never GET.

A hostile part (issue 12), repositories under ``evil/``: ETags and commits that are paths
(``evil/etag-dotdot``, ``evil/etag-absolute``, ``evil/commit-dotdot``), a hub that drips its
headers a byte at a time (``evil/drip``), a config whose strings carry terminal escapes
(``evil/escapes``), one naming a hub kernel and remote code (``evil/kernel``), one larger
than kvcalc reads (``evil/huge``); and a UTF-8 byte-order mark (``evil/bom``).

Every ``tests/fixtures/hf-configs/org__name[.partial].json`` is served as ``org/name``'s
config.json at ``main``; a few extra repositories exercise the rest (see :func:`default_repos`).
Import the fixtures into a test module with ``from hubstub import hub, hub_server``.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "hf-configs"
GRANTED_TOKEN = "hf_stub_granted"        # opens stub/gated
UNGRANTED_TOKEN = "hf_stub_not_granted"  # a valid token without access to stub/gated
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


def sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


@dataclass
class Repo:
    """refs: branch/tag -> commit; files: commit -> {filename: bytes}."""

    refs: dict[str, str]
    files: dict[str, dict[str, bytes]]
    gated: bool = False
    status: int | None = None   # answer every request with this status (500...)
    silent: bool = False        # never answer
    silent_get: bool = False    # answer HEAD, never answer GET
    etag: str | None = None     # send this ETag header value instead of the real one
    commit: str | None = None   # send this X-Repo-Commit instead of the real one
    drip: float = 0.0           # seconds between bytes of the status line and headers

    @classmethod
    def simple(cls, name: str, files: dict[str, bytes], **kw) -> Repo:
        commit = sha(name + "@main")
        return cls({"main": commit}, {commit: files}, **kw)

    def commit_of(self, rev: str) -> str | None:
        if rev in self.refs:
            return self.refs[rev]
        return rev if rev in self.files else None


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]], pad: int = 0) -> bytes:
    """A safetensors file with the given header and no tensor data (only headers are read)."""
    sizes = {"F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "I64": 8, "U8": 1}
    header: dict = {"__metadata__": {"format": "pt"}}
    if pad:
        header["__metadata__"]["padding"] = "x" * pad
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(blob)) + blob


def default_repos() -> dict[str, Repo]:
    repos: dict[str, Repo] = {}
    for path in sorted(FIXTURES.glob("*.json")):
        org, _, name = path.name.removesuffix(".json").removesuffix(".partial").partition("__")
        repo_id = f"{org}/{name}"
        repos[repo_id] = Repo.simple(repo_id, {"config.json": path.read_bytes()})

    # gpt2: one model.safetensors (F32), 2 tensors
    gpt2 = repos["openai-community/gpt2"]
    gpt2.files[gpt2.refs["main"]]["model.safetensors"] = safetensors_bytes({
        "wte.weight": ("F32", [50257, 768]), "ln_f.bias": ("F32", [768])})

    # Llama-3.1-8B: sharded (index + 2 shards); the second header is > 100 kB (a second range)
    llama = repos["meta-llama/Llama-3.1-8B"]
    shards = {"model-00001-of-00002.safetensors": {"embed.weight": ("BF16", [128256, 4096]),
                                                  "norm.weight": ("F32", [4096])},
              "model-00002-of-00002.safetensors": {"lm_head.weight": ("BF16", [128256, 4096]),
                                                  "scale": ("F8_E4M3", [7])}}
    index = {"metadata": {"total_size": 0},
             "weight_map": {t: f for f, ts in shards.items() for t in ts}}
    files = llama.files[llama.refs["main"]]
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    for i, (fname, tensors) in enumerate(shards.items()):
        files[fname] = safetensors_bytes(tensors, pad=120_000 if i else 0)

    # Qwen3-0.6B: a tag v1 at an older commit whose config has 2 layers
    qwen = repos["Qwen/Qwen3-0.6B"]
    old = json.loads(qwen.files[qwen.refs["main"]]["config.json"])
    old["num_hidden_layers"] = 2
    old_commit = sha("Qwen/Qwen3-0.6B@v1")
    qwen.refs["v1"] = old_commit
    qwen.files[old_commit] = {"config.json": json.dumps(old, indent=2).encode()}

    small = (FIXTURES / "meta-llama__Llama-3.2-1B-Instruct.json").read_bytes()
    repos["stub/gated"] = Repo.simple("stub/gated", {"config.json": small}, gated=True)
    repos["stub/broken-json"] = Repo.simple("stub/broken-json",
                                            {"config.json": b'{"model_type": "llama",\n  oops'})
    repos["stub/list-json"] = Repo.simple("stub/list-json", {"config.json": b"[1, 2, 3]\n"})
    repos["stub/no-config"] = Repo.simple("stub/no-config", {"README.md": b"# weights only\n"})
    repos["stub/error500"] = Repo.simple("stub/error500", {"config.json": small}, status=500)
    repos["stub/silent"] = Repo.simple("stub/silent", {"config.json": small}, silent=True)
    repos["stub/silent-get"] = Repo.simple("stub/silent-get", {"config.json": small},
                                           silent_get=True)
    repos.update(hostile_repos(small))
    return repos


ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31m\x9b1m\u202e"


def hostile_repos(small: bytes) -> dict[str, Repo]:
    cfg = json.loads(small)
    evil = {
        "evil/etag-dotdot": dict(etag='"../../../../../../tmp/kvcalc-evil-etag"'),
        "evil/etag-absolute": dict(etag='"/tmp/kvcalc-evil-etag-abs"'),
        "evil/commit-dotdot": dict(commit="../../../../kvcalc-evil-commit"),
        "evil/drip": dict(drip=0.05),
    }
    repos = {name: Repo.simple(name, {"config.json": small}, **kw) for name, kw in evil.items()}
    escapes = {**cfg, "model_type": "llama" + ESCAPES, "torch_dtype": "bfloat16"}
    kernel = {**cfg, "attn_implementation": "kernels-community/flash-attn",
              "experts_implementation": "kernels-community/moe",
              "auto_map": {"AutoModelForCausalLM": "evil.modeling.Model"},
              "text_config": None}
    huge = {**cfg, "padding": "x" * (4 * 1024 * 1024)}
    for name, body in (("evil/escapes", json.dumps(escapes).encode()),
                       ("evil/kernel", json.dumps(kernel).encode()),
                       ("evil/huge", json.dumps(huge).encode()),
                       ("evil/bom", b"\xef\xbb\xbf" + small)):
        repos[name] = Repo.simple(name, {"config.json": body})
    return repos


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    range: str | None


@dataclass
class HubStub:
    repos: dict[str, Repo] = field(default_factory=default_repos)
    log: list[Request] = field(default_factory=list)

    def start(self) -> HubStub:
        stub = self
        self._stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                stub._answer(self, head=True)

            def do_GET(self):
                stub._answer(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def requests_for(self, repo_id: str) -> list[Request]:
        return [r for r in self.log if r.path.startswith(f"/{repo_id}/")]

    # -------------------------------------------------------------- answers
    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        self.log.append(Request(h.command, h.path, h.headers.get("Authorization"),
                                h.headers.get("Range")))
        m = _RESOLVE.match(h.path.split("?")[0])
        if not m:
            return _send(h, 404, head, {"X-Error-Code": "RepoNotFound",
                                         "X-Error-Message": "Repository not found"})
        repo = self.repos.get(m["repo"])
        if repo is None:
            return _send(h, 404, head, {"X-Error-Code": "RepoNotFound",
                                         "X-Error-Message": "Repository not found"})
        if repo.silent or (repo.silent_get and not head):
            self._stop.wait(60)  # accept, then never answer
            return None
        if repo.status:
            return _send(h, repo.status, head, {}, b"Internal Error")
        if repo.gated:
            auth = h.headers.get("Authorization") or ""
            if auth != f"Bearer {GRANTED_TOKEN}":
                status = 403 if auth == f"Bearer {UNGRANTED_TOKEN}" else 401
                return _send(h, status, head, {
                    "X-Error-Code": "GatedRepo",
                    "X-Error-Message": "Access to model stub/gated is restricted."})
        commit = repo.commit_of(m["rev"])
        if commit is None:
            return _send(h, 404, head, {"X-Error-Code": "RevisionNotFound",
                                         "X-Error-Message": "Invalid rev id"})
        body = repo.files[commit].get(m["file"])
        if body is None:
            return _send(h, 404, head, {"X-Error-Code": "EntryNotFound",
                                         "X-Error-Message": "Entry not found",
                                         "X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": repo.commit or commit,
                   "ETag": repo.etag or f'"{hashlib.sha256(body).hexdigest()}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if repo.drip:
            return self._drip(h, headers, body, repo.drip)
        rng = re.match(r"bytes=(\d+)-(\d*)$", (h.headers.get("Range") or "").strip())
        if rng and not head:
            start = int(rng[1])
            end = min(int(rng[2]) if rng[2] else len(body) - 1, len(body) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
            return _send(h, 206, head, headers, body[start:end + 1])
        return _send(h, 200, head, headers, body)


    def _drip(self, h: BaseHTTPRequestHandler, headers: dict[str, str], body: bytes,
              pause: float) -> None:
        """Status line and headers one byte at a time: every read is quick, the whole slow."""
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        try:
            for byte in head.encode():
                if self._stop.wait(pause):
                    return
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
            h.wfile.write(body)
        except OSError:  # the client gave up
            pass


def _send(h: BaseHTTPRequestHandler, status: int, head: bool, headers: dict[str, str],
          body: bytes = b"") -> None:
    if status >= 400 and not body:
        body = json.dumps({"error": headers.get("X-Error-Message", "error")}).encode()
        headers = {**headers, "Content-Type": "application/json"}
    h.send_response(status)
    for key, value in headers.items():
        h.send_header(key, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if not head:
        h.wfile.write(body)


# ------------------------------------------------------------------ pytest fixtures

@pytest.fixture(scope="session")
def hub_server():
    stub = HubStub().start()
    yield stub
    stub.stop()


@pytest.fixture
def hub(hub_server, tmp_path, monkeypatch):
    """The stand-in as HF_ENDPOINT, with a fresh hub cache, config and cache dirs, no token,
    online, and a 2 s network bound; yields the stub (its ``log`` is reset)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                "HF_HUB_CACHE", "KVCALC_PRESETS", "HF_HUB_ETAG_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("KVCALC_HUB_TIMEOUT", "2")
    from huggingface_hub import constants

    # huggingface_hub froze its token paths at import: keep a real login out of the tests
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "tokens"))
    from kvcalc import hub as kvhub

    kvhub._UNREACHABLE.clear()
    hub_server.log.clear()
    yield hub_server
    kvhub._UNREACHABLE.clear()
