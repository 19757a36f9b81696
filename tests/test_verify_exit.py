"""Every exit status `kvcalc verify` documents (docs/cli.md, docs/verification.md): 0 passed,
4 not a pass (a mismatch, or nothing could be checked), 130 interrupted, 2 a bad option value,
1 an error (the weights would not fit in memory...). Issue 12: a verdict nobody can trust is
worse than none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from kvcalc.cli import cli  # noqa: E402

TINY = Path(__file__).parent / "fixtures" / "tiny-configs"
LLAMA = str(TINY / "llama-gqa.json")
QUICK = ("--device", "cpu", "--prompt-len", "4", "--new-tokens", "1,3", "--repeats", "1",
         "--no-without-cache", "--threads", "1")


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_exit_0_when_passed():
    result = run("verify", "-m", LLAMA, *QUICK, "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"] is True


@pytest.mark.parametrize("option, value", [
    ("--layers", "0"), ("--layers", "-3"), ("--cache-tolerance", "-1"),
    ("--cache-tolerance", "nan"), ("--slope-tolerance", "inf"), ("--repeats", "0"),
    ("--jobs", "0"), ("--threads", "0"),
])
def test_exit_2_for_bad_numbers(option, value):
    result = run("verify", "-m", LLAMA, "--device", "cpu", option, value)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and option in result.stderr


def test_exit_4_when_the_cache_differs(monkeypatch):
    from kvcalc.verify import run as verify_run

    real = verify_run.build_layout

    class Off:
        def __init__(self, layout):
            self.layout = layout

        def bytes_per_sequence(self, n):
            return self.layout.bytes_per_sequence(n) + 2

    monkeypatch.setattr(verify_run, "build_layout", lambda *a, **k: Off(real(*a, **k)))
    result = run("verify", "-m", LLAMA, *QUICK, "-f", "json")
    assert result.exit_code == 4, result.output
    assert json.loads(result.stdout)["passed"] is False


def test_exit_4_when_nothing_could_be_checked(tmp_path):
    cfg = json.loads(Path(LLAMA).read_text())
    cfg["model_type"] = "totally_unknown_arch"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    result = run("verify", "-m", str(path), "--device", "meta", "--seq", "8", "-f", "json")
    assert result.exit_code == 4, result.output
    summary = json.loads(result.stdout)
    assert summary["checked"] == 0 and summary["passed"] is False
    assert "error: no check could be made" in result.stderr


@pytest.mark.parametrize("after_runs", [0, 1])
def test_exit_130_on_ctrl_c(monkeypatch, after_runs):
    from kvcalc.verify import run as verify_run

    real = verify_run.measure

    def interrupted(model, **kwargs):
        runs = real(model, **{**kwargs, "new_tokens": kwargs["new_tokens"][:1]}) \
            if after_runs else []
        exc = KeyboardInterrupt()
        exc.partial = runs
        raise exc

    monkeypatch.setattr(verify_run, "measure", interrupted)
    result = run("verify", "-m", LLAMA, *QUICK)
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output


def test_exit_1_when_the_weights_would_not_fit(monkeypatch):
    from kvcalc.verify import run as verify_run

    monkeypatch.setattr(verify_run, "available_memory", lambda: 1000)
    built = []
    monkeypatch.setattr(verify_run, "build_random", lambda *a, **k: built.append(1))
    result = run("verify", "-m", LLAMA, *QUICK)
    assert result.exit_code == 1, result.output
    line = result.stderr.strip()
    assert "fp32 weights" in line and "available" in line and "--layers" in line
    assert built == []  # refused before building anything


def test_ctrl_c_during_a_parallel_meta_check_exits_130_promptly():
    import os
    import signal
    import subprocess
    import sys
    import time

    def default_sigint():  # a shell's background job inherits SIGINT ignored: undo that
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "kvcalc", "verify", "--device", "meta",
                             "--all", "--jobs", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=default_sigint)
    # wait until the worker processes exist (verify installs its Ctrl-C handler before it
    # starts them; a loaded machine may take longer than usual to import), then let them work:
    # checks are queued (--all takes far longer than this)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _has_children(proc.pid):
        time.sleep(0.1)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole process group
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-500:]
    assert time.monotonic() - sent < 10  # not after every queued check
    assert "interrupted" in err.decode()



def _has_children(pid: int) -> bool:
    """Whether process ``pid`` has started child processes (Linux /proc; True without it, so
    the caller's fixed wait applies)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return bool(children.read().split())
    except OSError:
        return True
