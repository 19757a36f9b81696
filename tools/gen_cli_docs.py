"""Regenerate the reference part of docs/cli.md from the commands' --help texts.

Usage: python tools/gen_cli_docs.py [--check]
With --check, exit 1 when docs/cli.md is out of date (tests/test_docs.py runs this check).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"
BEGIN = "<!-- BEGIN GENERATED HELP: python tools/gen_cli_docs.py -->"
END = "<!-- END GENERATED HELP -->"


def _walk(cmd: click.Command, path: list[str]):
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None:
                yield from _walk(sub, path + [name])


def generated() -> str:
    from kvcalc.cli import cli

    runner = CliRunner()
    parts = [BEGIN, ""]
    for path, _ in _walk(cli, []):
        result = runner.invoke(cli, path + ["--help"], prog_name="kvcalc")
        title = " ".join(["kvcalc"] + path)
        parts += [f"### `{title}`", "", "```text", result.output.rstrip(), "```", ""]
    parts.append(END)
    return "\n".join(parts)


def main() -> int:
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + generated() + text[end:]
    if "--check" in sys.argv:
        if new != text:
            print("docs/cli.md is out of date: run python tools/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
