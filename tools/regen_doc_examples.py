"""Bring the output the docs show under their `$ kvcalc ...` examples up to date with what the
commands print now (after a new step-time calibration, say), from real runs.

    python tools/regen_doc_examples.py            # list the examples whose shown lines changed
    python tools/regen_doc_examples.py --write    # ... and rewrite those lines in place

Each example runs as ``tests/test_doc_examples.py`` runs it (same scratch folders, stand-in
files and skips). A shown line the command no longer prints is replaced by the first line
printed after the previous matched one that has the same shape -- the same text once every run
of digits, separators and decimal points is masked and the column padding ignored -- so a
changed figure is updated (a ``Label   text`` line whose words changed is matched by its
label) and everything else the doc shows (``...`` elisions, comments, the lines' order)
stays. A line with no such counterpart is reported and left for a person: the prose around an
example, which cites its figures, is never touched and must be read again.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: a figure: digits with their thousands separators and decimal point
FIGURE = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _examples_module():
    spec = importlib.util.spec_from_file_location(
        "doc_examples", ROOT / "tests" / "test_doc_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shape(line: str) -> str:
    """``line`` with every figure masked and every run of blanks or of dashes made one (a
    table's columns widen and narrow with its figures)."""
    return re.sub(r"-{2,}", "-", re.sub(r"\s+", " ", FIGURE.sub("#", line))).strip()


def label(line: str) -> str | None:
    """The label of a ``Label   text`` line (what precedes its first run of two or more
    blanks: ``Step time``, ``Engine``), or None."""
    m = re.match(r"\s*(\S.*?)\s{2,}\S", line)
    return m.group(1) if m else None


def renewed(shown: list[str], output: str, ex) -> tuple[list[str], list[str]]:
    """(the shown lines brought up to date, those that could not be), the lines held to the
    output as ``ex`` (tests/test_doc_examples.py) holds them."""
    lines = ex.printed_lines(output)
    out, lost, at = [], [], 0
    for want in shown:
        w = want.rstrip()
        if ex.checks_nothing(w):
            out.append(want)
            continue
        if w in lines[at:]:
            at = lines.index(w, at) + 1
            out.append(want)
            continue
        s = shape(w)
        match = next((i for i in range(at, len(lines)) if shape(lines[i]) == s), None)
        if match is None and label(w):
            # a labelled line whose words changed (a new calibration's Step time line)
            match = next((i for i in range(at, len(lines)) if label(lines[i]) == label(w)),
                         None)
        if match is None:
            lost.append(w)
            out.append(want)
            continue
        out.append(lines[match])
        at = match + 1
    return out, lost


def run(args: list[str], folder: Path, cli, runner) -> str:
    """What ``kvcalc ARGS`` prints, run in ``folder``."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        return runner.invoke(cli, args).output
    finally:
        os.chdir(here)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the changed lines in place")
    a = ap.parse_args(argv)
    from click.testing import CliRunner

    from kvcalc.cli import cli

    ex = _examples_module()
    os.environ["HF_HUB_OFFLINE"] = "1"
    scratch = Path(tempfile.mkdtemp(prefix="kvcalc-docs-"))
    folders: dict[str, Path] = {}
    edits: dict[Path, dict[int, str]] = {}
    problems = 0
    docs = {d.name: d for d in ex.DOCS}
    for block, line, command, shown in ex.CASES:
        args = ex.command_args(command)
        if ex._skip_reason(args, command):
            continue
        if block not in folders:
            folders[block] = scratch / f"b{len(folders)}"
            folders[block].mkdir()
            ex._stand_ins(folders[block])
        os.environ["KVCALC_PRESETS"] = str(folders[block] / "user-presets")
        output = run(args, folders[block], cli, CliRunner())
        new, lost = renewed(list(shown), output, ex)
        doc = docs[block.split(":")[0]]
        changed = [(i, n) for i, (o, n) in enumerate(zip(shown, new)) if o != n]
        if changed:
            print(f"{doc.name}:{line} `{command[:70]}`: {len(changed)} line(s) updated")
            for i, n in changed:
                edits.setdefault(doc, {})[line + 1 + i] = n
        for w in lost:
            problems += 1
            print(f"{doc.name}:{line} `{command[:70]}`: no counterpart for: {w[:100]}")
    if a.write:
        for doc, lines in edits.items():
            text = doc.read_text(encoding="utf-8").split("\n")
            for n, new_line in lines.items():
                text[n - 1] = new_line
            doc.write_text("\n".join(text), encoding="utf-8")
    print(f"{sum(len(v) for v in edits.values())} line(s) to update in {len(edits)} file(s); "
          f"{problems} line(s) need a person")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
