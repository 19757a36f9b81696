"""The shape between modules (DESIGN.md section 5, README "Code layout"): the import-linter
contracts in pyproject.toml hold, no module of kvcalc imports itself back through others, the
engine registry knows its engines without importing them, and a command imports only the
engine it uses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_registry_cards_match_the_engines_themselves():
    """Each card (read without importing an engine) says what the engine's class says."""
    from kvcalc.engines import CARDS, engines

    by_name = {e.name: e for e in engines()}
    assert [c.name for c in CARDS] == [e.name for e in engines()][:len(CARDS)]
    for card in CARDS:
        engine = by_name[card.name]
        assert type(engine).__module__ == card.module
        assert card.aliases == engine.aliases
        assert card.display_name == engine.display_name
        assert card.plans == engine.plans
        assert card.version_flag == engine.version_flag
        assert card.default_version == engine.default_version
        assert card.bands == tuple(b.name for b in engine.bands)


def _modules_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps("
                          "sorted(m for m in sys.modules if m.startswith(('kvcalc', 'matplotlib',"
                          " 'torch', 'transformers', 'pydantic', 'yaml', 'tabulate',"
                          " 'importlib.metadata')))))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.splitlines()[-1])


def test_an_estimate_imports_only_the_engine_it_uses():
    mods = _modules_after("import kvcalc\nkvcalc.estimate('llama-7b', seq=4096)\n"
                          "kvcalc.estimate('llama-7b', seq=4096, engine='vllm')")
    engines = {m for m in mods if m.startswith("kvcalc.engines.")}
    assert engines == {"kvcalc.engines.cache", "kvcalc.engines.transformers",
                       "kvcalc.engines.vllm"}
    assert not any(m.startswith(("matplotlib", "torch", "transformers", "pydantic"))
                   for m in mods)


def test_the_estimate_command_imports_no_other_engine():
    mods = _modules_after("from click.testing import CliRunner\nfrom kvcalc.cli import cli\n"
                          "r = CliRunner().invoke(cli, ['estimate', '--model', 'llama-7b'])\n"
                          "assert r.exit_code == 0, r.output")
    assert {m for m in mods if m.startswith("kvcalc.engines.")} == {
        "kvcalc.engines.cache", "kvcalc.engines.transformers"}
    assert not any(m.startswith(("kvcalc.planning", "kvcalc.simulation", "kvcalc.plot",
                                 "kvcalc.verify")) for m in mods)
    # the cold start (benchmarks/estimate_startup.py): a built-in preset comes from its compiled
    # JSON, the table is drawn by kvcalc.render, the installed version read without metadata
    assert not any(m.startswith(("yaml", "tabulate", "importlib.metadata")) for m in mods)


def test_no_import_loops_in_kvcalc():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("kvcalc", cache_dir=None)
    loops = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(imported, module):
                loops.append(f"{module} -> {imported}")
    # a package importing its own submodules is not a loop of the layering (kvcalc itself
    # imports nothing of its own eagerly)
    assert loops == []


def test_import_linter_contracts_hold():
    pytest.importorskip("importlinter")
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([exe, "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
