"""Docs that cannot drift: docs/cli.md's reference is regenerated from --help, and nothing in
README.md or docs/ points outside the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: paths that exist only on the machines kvcalc was developed on
OUTSIDE = re.compile(r"\.\./shared|/work/|shared/(?:hf-configs|reference|traces)|"
                     r"reference/(?:engines|transformers|field)\.md")


def test_cli_reference_is_generated_from_help():
    result = subprocess.run([sys.executable, "tools/gen_cli_docs.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or result.stdout


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_path_outside_the_repository(doc):
    text = doc.read_text(encoding="utf-8")
    hits = [line.strip() for line in text.splitlines() if OUTSIDE.search(line)]
    assert not hits, f"{doc.name} points outside the repository: {hits[:3]}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    text = doc.read_text(encoding="utf-8")
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        if not (doc.parent / target).exists():
            missing.append(target)
    assert not missing, f"{doc.name} links to missing files: {missing}"
