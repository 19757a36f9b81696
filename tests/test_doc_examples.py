"""Every `$ kvcalc …` example in README.md and docs/ runs, and ends the way the docs say.

An example ends with exit status 0 unless its line says otherwise with a comment such as
``# exits 3`` (or ``(exit 3`` in the comment). Examples that need what a test machine does not
have, or that other tests run already, are skipped with the reason, never silently: a GPU
(``--device cuda``), the Hugging Face hub (an ``org/name`` model or ``models add``), a
placeholder (``<TAB>``), the every-preset meta check and real CPU generation. A pipeline into
another program runs the kvcalc part. Files an example names that a user would bring (a config.json, a trace,
a verify report, a GGUF file) are stood in for by repository fixtures in a scratch folder.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvcalc.cli import cli

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXIT = re.compile(r"#.*?\bexits?\s+(\d+)|\(exit (\d+)")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
#: run the meta check of every preset elsewhere (tests/test_meta_check.py), not twice
SLOW = ("--all",)


def examples() -> list[tuple[str, int, str]]:
    found = []
    for doc in DOCS:
        in_console = False
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("```"):
                in_console = line.strip() in ("```console", "```bash", "```sh", "```shell")
                continue
            if in_console and line.startswith("$ kvcalc"):
                found.append((doc.name, n, line[2:]))
    return found


def _stand_ins(tmp: Path) -> dict[str, Path]:
    """Files the docs' examples name, stood in for by fixtures."""
    (tmp / "tests").symlink_to(ROOT / "tests")       # examples that name repository fixtures
    llama = FIX / "hf-configs" / "meta-llama__Llama-3.1-8B.json"
    (tmp / "Llama-3.1-8B").mkdir()
    shutil.copy(llama, tmp / "Llama-3.1-8B" / "config.json")
    shutil.copy(llama, tmp / "config.json")
    report = FIX / "verify-report.json"
    if report.exists():
        shutil.copy(report, tmp / "report.json")
    traces = sorted((FIX / "traces").glob("*.jsonl")) if (FIX / "traces").exists() else []
    if traces:
        shutil.copy(traces[0], tmp / "requests.jsonl")
    return {}


def _skip_reason(args: list[str], raw: str) -> str | None:
    if "<TAB>" in raw:
        return "a placeholder for a key press"
    if "cuda" in args or "--device" in args and args[args.index("--device") + 1] == "auto":
        return "needs an NVIDIA GPU"
    if any(a in SLOW for a in args):
        return "the every-preset meta check runs in tests/test_meta_check.py"
    if args[:1] == ["verify"] and "cpu" in args:
        return "real generation on the CPU (minutes): tests/test_verify.py runs the same tiny models"
    if args[:2] == ["models", "add"]:
        return "needs the Hugging Face hub"
    for flag in ("-m", "--model", "--weights"):
        if flag in args:
            value = args[args.index(flag) + 1]
            if HUB_ID.match(value) and not Path(value).suffix in (".json", ".yaml", ".gguf"):
                return "needs the Hugging Face hub"
            if value.endswith(".gguf"):
                return "needs a GGUF file (tests/test_verify_gguf.py, slow)"
    return None


CASES = examples()


@pytest.mark.parametrize("doc, line, command", CASES,
                         ids=[f"{d}:{n}" for d, n, _ in CASES])
def test_example_runs(doc, line, command, tmp_path, monkeypatch):
    expected = 0
    m = EXIT.search(command)
    if m:
        expected = int(m.group(1) or m.group(2))
    text = command.split(" #")[0]
    if re.search(r"\|\s*(?!head)\w", text):
        text = text.split("|")[0]           # `| jq ...`: run kvcalc, not the other program
    text = re.split(r"\s[>|]\s?", text)[0]  # redirections and `| head`
    args = shlex.split(text)[1:]            # drop "kvcalc"
    reason = _skip_reason(args, command)
    if reason:
        pytest.skip(reason)
    _stand_ins(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KVCALC_PRESETS", str(tmp_path / "user-presets"))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == expected, (
        f"{doc}:{line} `{command}` exited {result.exit_code}, the docs say {expected}:\n"
        f"{result.output[-1500:]}")
