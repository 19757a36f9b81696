"""The GPU catalog, --gpu parsing, and kvcalc gpus."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kvcalc.cli import cli
from kvcalc.errors import UsageError
from kvcalc.hardware import find_gpu, load_catalog, resolve_gpu
from kvcalc.units import GiB

ASKED_FOR = ("h100", "h100-pcie", "h100-nvl", "h200", "h20", "b200", "gb200", "a100-40gb", "a100",
             "a10g", "l4", "l40s", "t4", "v100-16gb", "v100-32gb", "rtx-3090", "rtx-4090",
             "rtx-5090", "rtx-6000-ada", "rtx-pro-6000", "mi300x", "mi325x")


def test_catalog_has_the_gpus_users_ask_for():
    gpus = load_catalog()
    assert len(gpus) >= 20
    for name in ASKED_FOR:
        assert find_gpu(name) is not None, name
    for g in gpus:
        assert g.memory_source and g.memory_bytes > 0, g.name
        assert g.memory_bandwidth_bytes_per_s, g.name


def test_names_and_aliases():
    assert find_gpu("h100").name == "h100-sxm"          # alias
    assert find_gpu("H100").name == "h100-sxm"          # case-insensitive
    assert find_gpu("a100").name == "a100-80gb"
    assert find_gpu("mi300x").name == "mi300x"          # name
    assert find_gpu("nope") is None


@pytest.mark.parametrize("name, low_gib, high_gib", [
    ("h100", 79.0, 79.3), ("a100-80gb", 79.0, 79.3), ("a100-40gb", 39.3, 39.5),
    ("h200", 139.5, 140.5), ("l40s", 44.3, 44.6), ("rtx-4090", 23.5, 23.7),
    ("mi300x", 191.9, 192.0),
])
def test_memory_is_what_the_runtime_reports(name, low_gib, high_gib):
    # engines.md A.2: torch.cuda.mem_get_info totals seen in vLLM logs, not the marketing GB
    assert low_gib <= find_gpu(name).memory_gib <= high_gib


def test_custom_sizes():
    assert resolve_gpu("48GiB").memory_bytes == 48 * GiB
    assert resolve_gpu("80GB").memory_bytes == 80 * 10**9
    assert resolve_gpu("24 GiB").memory_bytes == 24 * GiB


@pytest.mark.parametrize("text, message", [
    ("h10", "did you mean h100"), ("rtx4900", "did you mean"), ("0GiB", "must be positive"),
])
def test_bad_gpu_names(text, message):
    with pytest.raises(UsageError, match=message):
        resolve_gpu(text)


def test_gpus_command():
    runner = CliRunner()
    table = runner.invoke(cli, ["gpus"])
    assert table.exit_code == 0
    assert "h100-sxm" in table.stdout and "85,045,477,376" in table.stdout and "79.20" in table.stdout
    rows = json.loads(runner.invoke(cli, ["gpus", "-f", "json"]).stdout)
    assert len(rows) == len(load_catalog())
    h100 = next(r for r in rows if r["name"] == "h100-sxm")
    assert h100["memory_bytes"] == 85_045_477_376 and h100["memory_gib"] == 79.2
    assert h100["memory_bandwidth_bytes_per_s"] == 3_350_000_000_000
    csv = runner.invoke(cli, ["gpus", "-f", "csv"]).stdout
    assert csv.splitlines()[0].startswith("name,")
