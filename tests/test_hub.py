"""`--model org/name[@revision]` against the loopback stand-in hub (tests/hubstub.py).

Never the real hub: the `hub` fixture points HF_ENDPOINT at 127.0.0.1, HF_HOME / XDG dirs at
tmp_path, and bounds the network at 2 s."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hubstub import GRANTED_TOKEN, UNGRANTED_TOKEN, hub, hub_server  # noqa: F401

from kvcalc import hub as kvhub
from kvcalc.cli import cli
from kvcalc.errors import ConfigError, HubError, ModelNotFoundError, UsageError
from kvcalc.sources import resolve

HF = Path(__file__).parent / "fixtures" / "hf-configs"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def estimate_json(model: str, *extra: str) -> dict:
    result = run("estimate", "--model", model, "--seq", "4096", "--format", "json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def figures(data: dict) -> tuple:
    return data["bytes_per_token"], data["bytes_per_sequence"], data["bytes_total"]


# ------------------------------------------------------------------ the "done when" checks

@pytest.mark.parametrize("repo_id", [
    "meta-llama/Llama-3.1-8B", "openai-community/gpt2", "deepseek-ai/DeepSeek-V3",
    "google/gemma-3-27b-it", "Qwen/Qwen3-Next-80B-A3B-Thinking", "openai/gpt-oss-120b",
])
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_hub_model_gives_the_local_file_figures(hub, repo_id, engine):
    local = estimate_json(str(HF / f"{repo_id.replace('/', '__')}.json"), "--engine", engine)
    remote = estimate_json(repo_id, "--engine", engine)
    assert figures(remote) == figures(local)
    assert remote["source"]["kind"] == "hub" and remote["source"]["hub_id"] == repo_id
    assert remote["source"]["ref"] == "main"
    assert len(remote["source"]["revision"]) == 40  # the commit sha used
    assert remote["source"]["revision"] == hub.repos[repo_id].refs["main"]
    # only config.json was asked for: no weights, no remote code (DeepSeek has auto_map)
    assert {r.path.rsplit("/", 1)[-1] for r in hub.log} == {"config.json"}


def test_table_says_source_and_commit(hub):
    result = run("estimate", "--model", "meta-llama/Llama-3.1-8B", "--seq", "4096")
    assert result.exit_code == 0, result.output
    commit = hub.repos["meta-llama/Llama-3.1-8B"].refs["main"]
    assert f"hub meta-llama/Llama-3.1-8B@main (commit {commit[:12]})" in result.stdout
    assert "536,870,912" in result.stdout


def test_second_run_offline_uses_the_cache_without_network(hub, monkeypatch, tmp_path):
    online = estimate_json("meta-llama/Llama-3.1-8B")
    assert not online["source"]["cached"]
    assert (tmp_path / "hf-home" / "hub" / "models--meta-llama--Llama-3.1-8B").is_dir()
    hub.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = estimate_json("meta-llama/Llama-3.1-8B")
    assert figures(offline) == figures(online)
    assert offline["source"]["revision"] == online["source"]["revision"]
    assert offline["source"]["cached"] is True
    assert hub.log == []  # not a single request


def test_offline_by_commit_sha(hub, monkeypatch):
    commit = estimate_json("Qwen/Qwen3-0.6B@v1")["source"]["revision"]
    hub.log.clear()
    assert estimate_json(f"Qwen/Qwen3-0.6B@{commit}")["layers"][0]["count"] == 2
    assert hub.log == []  # a cached commit needs no request, even online
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert estimate_json(f"Qwen/Qwen3-0.6B@{commit}")["layers"][0]["count"] == 2


def test_unreachable_hub_falls_back_to_the_cache_and_says_so(hub, monkeypatch):
    estimate_json("openai-community/gpt2")
    monkeypatch.setattr(hub.repos["openai-community/gpt2"], "status", 503)
    data = estimate_json("openai-community/gpt2")
    assert data["source"]["cached"] is True
    assert "HTTP 503; used the cached copy" in data["source"]["detail"]


# ------------------------------------------------------------------ revisions

def test_revision_at_and_option(hub):
    assert estimate_json("Qwen/Qwen3-0.6B")["layers"][0]["count"] == 28
    tagged = estimate_json("Qwen/Qwen3-0.6B@v1")
    assert tagged["layers"][0]["count"] == 2
    assert tagged["source"]["ref"] == "v1"
    assert tagged["source"]["revision"] == hub.repos["Qwen/Qwen3-0.6B"].refs["v1"]
    assert estimate_json("Qwen/Qwen3-0.6B", "--revision", "v1")["layers"][0]["count"] == 2


def test_conflicting_revisions(hub):
    result = run("estimate", "-m", "Qwen/Qwen3-0.6B@v1", "--revision", "main", "--seq", "1")
    assert result.exit_code == 2
    assert "names revision 'v1' but --revision says 'main'" in result.stderr


# ------------------------------------------------------------------ failures: one line each

FAILURES = [
    ("nobody/no-such-model", 1, "hub repository nobody/no-such-model not found: check the name"),
    ("stub/gated", 1, "stub/gated is a gated repository: request access at "),
    ("Qwen/Qwen3-0.6B@no-such-tag", 1, "revision 'no-such-tag' not found in Qwen/Qwen3-0.6B"),
    ("stub/no-config", 1, "stub/no-config@main has no config.json: is it a model repository"),
    ("stub/error500", 1, "the hub answered HTTP 500 for stub/error500@main and it is not in the "
                         "hub cache: try again later"),
    ("stub/broken-json", 1, "malformed JSON in config.json of stub/broken-json@"),
    ("stub/list-json", 1, "is a JSON list, not an object"),
    ("bad--name/x", 1, "'bad--name/x' is not a valid hub id"),
]


@pytest.mark.parametrize("model, code, message", FAILURES, ids=[f[0] for f in FAILURES])
def test_failures_are_one_line(hub, model, code, message):
    result = run("estimate", "--model", model, "--seq", "4096")
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_gated_with_and_without_access(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", UNGRANTED_TOKEN)
    result = run("estimate", "-m", "stub/gated", "--seq", "1")
    assert result.exit_code == 1
    assert "your token has no access yet: request it at" in result.stderr
    monkeypatch.setenv("HF_TOKEN", GRANTED_TOKEN)
    assert estimate_json("stub/gated")["source"]["hub_id"] == "stub/gated"
    assert hub.requests_for("stub/gated")[-1].authorization == f"Bearer {GRANTED_TOKEN}"


def test_token_saved_by_hf_auth_login_is_used(hub, tmp_path):
    from huggingface_hub import constants

    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text(GRANTED_TOKEN)  # what `hf auth login` writes
    assert estimate_json("stub/gated")["source"]["hub_id"] == "stub/gated"
    assert hub.requests_for("stub/gated")[-1].authorization == f"Bearer {GRANTED_TOKEN}"


def test_no_token_is_sent_without_one(hub):
    estimate_json("openai-community/gpt2")
    assert all(r.authorization is None for r in hub.log)


def test_offline_with_nothing_cached(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    result = run("estimate", "-m", "meta-llama/Llama-3.1-70B", "--seq", "1")
    assert time.monotonic() - start < 3  # no retries (~23 s without HF_HUB_OFFLINE handling)
    assert result.exit_code == 1
    assert "HF_HUB_OFFLINE is set and meta-llama/Llama-3.1-70B@main (config.json) is not in the " \
           "hub cache" in result.stderr
    assert hub.log == []


def test_timeout_is_bounded(hub, monkeypatch):
    monkeypatch.setenv("KVCALC_HUB_TIMEOUT", "1")
    start = time.monotonic()
    result = run("estimate", "-m", "stub/silent", "--seq", "1")
    elapsed = time.monotonic() - start
    assert result.exit_code == 1
    assert "did not answer within 1 s for stub/silent@main" in result.stderr
    assert "KVCALC_HUB_TIMEOUT" in result.stderr
    assert elapsed < 3.5, elapsed  # one bounded try, no retries (default bound: 5 s)


def test_a_stalled_download_is_bounded_too(hub, monkeypatch):
    monkeypatch.setenv("KVCALC_HUB_TIMEOUT", "0.5")
    start = time.monotonic()
    result = run("estimate", "-m", "stub/silent-get", "--seq", "1")
    elapsed = time.monotonic() - start
    assert result.exit_code == 1
    # the whole request (headers and body) is bounded by KVCALC_HUB_TIMEOUT (issue 12)
    assert "did not answer within 0.5 s for stub/silent-get@main" in result.stderr
    assert elapsed < 2.5, elapsed  # huggingface_hub alone: 6 tries + 5 s of sleeps


def test_connection_refused_is_one_line(hub, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    result = run("estimate", "-m", "openai-community/gpt2", "--seq", "1")
    assert result.exit_code == 1, result.output
    assert f"cannot reach the hub (http://127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_bad_timeout_setting(hub, monkeypatch, value):
    monkeypatch.setenv("KVCALC_HUB_TIMEOUT", value)
    with pytest.raises(UsageError, match="KVCALC_HUB_TIMEOUT"):
        kvhub.timeout_s()


# ------------------------------------------------------------------ library level

def test_resolve_returns_hub_provenance(hub, tmp_path):
    resolved = resolve("openai-community/gpt2")
    assert resolved.kind == "hub" and resolved.name == "gpt2"
    assert resolved.location.startswith(str(tmp_path / "hf-home" / "hub"))
    assert resolved.location.endswith("/config.json")
    assert resolved.config == json.loads((HF / "openai-community__gpt2.json").read_text())


def test_remote_code_config_is_only_read(hub):
    resolved = resolve("deepseek-ai/DeepSeek-V3")
    assert "auto_map" in resolved.config
    # one GET, checked before anything is written (issue 12)
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in hub.log] == [("GET", "config.json")]


def test_error_classes(hub, monkeypatch):
    with pytest.raises(ModelNotFoundError):
        resolve("nobody/nothing")
    with pytest.raises(HubError):
        resolve("stub/gated")
    with pytest.raises(ConfigError):
        resolve("stub/list-json")


def test_split_revision():
    assert kvhub.split_revision("a/b@v1", None) == ("a/b", "v1")
    assert kvhub.split_revision("a/b", "v2") == ("a/b", "v2")
    assert kvhub.split_revision("a/b@v1", "v1") == ("a/b", "v1")
    with pytest.raises(UsageError):
        kvhub.split_revision("a/b@", None)


def test_env_is_read_at_call_time(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    resolve("openai-community/gpt2")
    assert (tmp_path / "elsewhere" / "models--openai-community--gpt2").is_dir()


# ------------------------------------------------------------------ safetensors parameters

def test_safetensors_single_file(hub):
    total, by_dtype = kvhub.safetensors_parameters("openai-community/gpt2")
    assert by_dtype == {"F32": 50257 * 768 + 768}
    assert total == 50257 * 768 + 768


def test_safetensors_sharded_with_a_large_header(hub):
    info = kvhub.safetensors_info("meta-llama/Llama-3.1-8B")
    assert info.by_dtype == {"BF16": 2 * 128256 * 4096, "F32": 4096, "F8_E4M3": 7}
    assert info.total == 2 * 128256 * 4096 + 4096 + 7
    assert info.files == 2 and not info.cached
    assert info.commit == hub.repos["meta-llama/Llama-3.1-8B"].refs["main"]
    assert info.weight_bytes == 2 * 128256 * 4096 * 2 + 4096 * 4 + 7
    assert info.source.startswith("safetensors headers of meta-llama/Llama-3.1-8B@")
    ranges = [r.range for r in hub.log if r.path.endswith(".safetensors") and r.range]
    assert "bytes=0-100000" in ranges and any(r.startswith("bytes=8-") for r in ranges)
    # no weights downloaded: every safetensors request was ranged
    assert all(r.range for r in hub.log if r.method == "GET" and r.path.endswith(".safetensors"))


def test_safetensors_counts_are_remembered_for_offline_use(hub, monkeypatch):
    online = kvhub.safetensors_parameters("meta-llama/Llama-3.1-8B")
    hub.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert kvhub.safetensors_parameters("meta-llama/Llama-3.1-8B") == online
    assert kvhub.safetensors_info("meta-llama/Llama-3.1-8B").cached
    assert hub.log == []


@pytest.mark.parametrize("repo_id", ["Qwen/Qwen3-0.6B", "stub/gated", "nobody/nothing",
                                     "stub/error500"])
def test_safetensors_unavailable_is_none(hub, repo_id):
    assert kvhub.safetensors_parameters(repo_id) is None


def test_safetensors_strict_raises_one_line(hub):
    with pytest.raises(HubError, match="gated repository"):
        kvhub.safetensors_info("stub/gated", strict=True)


def test_safetensors_offline_without_cache_is_none(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert kvhub.safetensors_parameters("openai-community/gpt2") is None
    assert hub.log == []


def test_safetensors_skips_an_unreachable_hub(hub, monkeypatch):
    monkeypatch.setenv("KVCALC_HUB_TIMEOUT", "1")
    with pytest.raises(HubError):
        resolve("stub/silent")
    monkeypatch.setenv("KVCALC_HUB_TIMEOUT", "3")
    start = time.monotonic()
    assert kvhub.safetensors_parameters("openai-community/gpt2") is None
    assert time.monotonic() - start < 1.5  # no new wait for an endpoint that just failed
