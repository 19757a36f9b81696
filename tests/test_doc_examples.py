"""Every `$ kvcalc …` example in README.md and docs/ runs, ends the way the docs say, and
prints every output line the docs show after it (in order; ``...`` marks lines left out).

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


def examples() -> list[tuple[str, int, str, tuple[str, ...]]]:
    """(doc, line number, command, the output lines the doc shows after it)."""
    found: list[tuple[str, int, str, list[str]]] = []
    for doc in DOCS:
        in_console = False
        current: list[str] | None = None
        block = 0
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("```"):
                in_console = line.strip() in ("```console", "```bash", "```sh", "```shell")
                current = None
                block = n
                continue
            if not in_console:
                continue
            if line.startswith("$ "):
                current = None
                if line.startswith("$ kvcalc"):
                    current = []
                    found.append((f"{doc.name}:{block}", n, line[2:], current))
            elif current is not None:
                current.append(line)
    return [(d, n, c, tuple(out)) for d, n, c, out in found]


#: parts of the output that depend on the machine, not on kvcalc (the installed transformers)
MACHINE = [(re.compile(r"; installed here: [^)]*\)"), ")")]


def printed_lines(output: str) -> list[str]:
    """A command's output lines as the docs' shown lines are held to: the machine's parts
    (:data:`MACHINE`) replaced, trailing blanks dropped."""
    for pattern, repl in MACHINE:
        output = pattern.sub(repl, output)
    return [l.rstrip() for l in output.splitlines()]


def checks_nothing(shown_line: str) -> bool:
    """A shown line that stands for no output line: blank, ``...`` (lines left out) or a
    comment."""
    return not shown_line or shown_line == "..." or shown_line.startswith("#")


def shown_lines_missing(shown: tuple[str, ...], output: str) -> list[str]:
    """The output lines a doc shows that the command does not print, in order; ``...`` stands
    for lines left out. A doc that shows no output checks nothing."""
    lines = printed_lines(output)
    missing, at = [], 0
    for want in (l.rstrip() for l in shown):
        if checks_nothing(want):
            continue
        try:
            at = lines.index(want, at) + 1
        except ValueError:
            missing.append(want)
    return missing


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


def command_args(command: str) -> list[str]:
    """The arguments after ``kvcalc`` of a doc's command line: its comment, a pipe into another
    program (``| jq ...``: run kvcalc, not the other program), redirections and ``| head``
    dropped."""
    text = command.split(" #")[0]
    if re.search(r"\|\s*(?!head)\w", text):
        text = text.split("|")[0]
    text = re.split(r"\s[>|]\s?", text)[0]
    return shlex.split(text)[1:]


CASES = examples()


@pytest.fixture(scope="module")
def block_dirs(tmp_path_factory):
    """One scratch folder per code block: the examples of a block run in order in it, so a
    later line can read what an earlier one wrote (simulate --timeline, then plot it)."""
    made: dict[str, Path] = {}

    def get(block: str) -> Path:
        if block not in made:
            made[block] = tmp_path_factory.mktemp("example")
            _stand_ins(made[block])
        return made[block]

    return get


@pytest.mark.parametrize("block, line, command, shown", CASES,
                         ids=[f"{b.split(':')[0]}:{n}" for b, n, _, _ in CASES])
def test_example_runs(block, line, command, shown, block_dirs, monkeypatch):
    doc = block.split(":")[0]
    expected = 0
    m = EXIT.search(command)
    if m:
        expected = int(m.group(1) or m.group(2))
    args = command_args(command)
    reason = _skip_reason(args, command)
    if reason:
        pytest.skip(reason)
    folder = block_dirs(block)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KVCALC_PRESETS", str(folder / "user-presets"))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == expected, (
        f"{doc}:{line} `{command}` exited {result.exit_code}, the docs say {expected}:\n"
        f"{result.output[-1500:]}")
    missing = shown_lines_missing(shown, result.output)
    assert not missing, (f"{doc}:{line} `{command}` no longer prints {len(missing)} line(s) "
                         f"the docs show, e.g.:\n" + "\n".join(missing[:5]))
