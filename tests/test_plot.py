"""`kvcalc plot`: images of the right size without a display, data equal to estimate/plan's
figures, and one-line errors (bad kind, bad --out, missing or malformed reports, no matplotlib)."""

from __future__ import annotations

import csv
import io
import json
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvcalc import __version__
from kvcalc.cli import cli
from kvcalc.model import load_spec
from kvcalc.plot import (WorkloadOptions, ModelInput, check_out, concurrency_chart, load_report,
                         log_points, memory_chart, timing_chart, waste_chart)
from kvcalc.errors import ConfigError, UsageError
from kvcalc.hardware import resolve_gpu

FIXTURES = Path(__file__).parent / "fixtures"
REPORT = FIXTURES / "verify-report.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"



@pytest.fixture
def mpl():
    """Image tests need matplotlib (the optional extra); data and error tests do not."""
    return pytest.importorskip("matplotlib")


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def one_line_error(result) -> str:
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    return lines[0]


def model(name: str) -> ModelInput:
    resolved, spec = load_spec(name)
    return ModelInput(resolved.name, spec)


def csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


# ---------------------------------------------------------------------------------- images

IMAGE_CASES = {
    "memory": ["memory", "-m", "llama-7b", "-m", "llama-3.1-8b", "--gpu", "h100",
               "--max-len", "8k"],
    "concurrency": ["concurrency", "-m", "llama-3.1-8b", "--gpu", "h100", "--max-len", "8k",
                    "--dist", "lognormal", "--mean", "900", "--std", "700", "--samples", "200"],
    "waste": ["waste", "-m", "llama-3.1-8b", "--gpu", "h100", "--max-len", "2k,8k",
              "--dist", "lognormal", "--mean", "500", "--std", "400", "--samples", "200"],
    "timing": ["timing", "--from", str(REPORT)],
}


@pytest.mark.parametrize("kind", list(IMAGE_CASES))
def test_each_kind_writes_a_png_of_the_expected_size_without_a_display(kind, tmp_path,
                                                                       monkeypatch, mpl):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("MPLBACKEND", "TkAgg")        # a GUI backend asked for: Agg still used
    out = tmp_path / f"{kind}.png"
    result = run("plot", *IMAGE_CASES[kind], "--out", str(out))
    assert result.exit_code == 0, result.output
    assert png_size(out) == (1000, 600)          # 10 x 6 in at 100 dpi
    assert f"wrote {out}" in result.stdout
    assert mpl.get_backend().lower() == "agg"


@pytest.mark.parametrize("kind", list(IMAGE_CASES))
def test_each_kind_writes_an_svg_with_title_units_and_version(kind, tmp_path, mpl):
    out = tmp_path / f"{kind}.svg"
    result = run("plot", *IMAGE_CASES[kind], "--out", str(out))
    assert result.exit_code == 0, result.output
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    assert (root.get("width"), root.get("height")) == ("720pt", "432pt")
    text = out.read_text()
    assert f"kvcalc {__version__}" in text                     # title: version
    assert ("llama-2-7b" if kind == "timing" else "llama-3.1-8b") in text   # title: model
    assert "H100" in text                                       # title: GPU
    assert ("bf16" in text)                                     # title: dtype
    if kind in ("memory", "waste"):
        assert "GiB = 2^30" in text                             # axis unit


def test_size_and_dpi_set_the_pixels(tmp_path, mpl):
    out = tmp_path / "m.png"
    result = run("plot", "timing", "--from", str(REPORT), "--size", "8x5", "--dpi", "80",
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    assert png_size(out) == (640, 400)


# ---------------------------------------------------------------- data = estimate / plan


def test_memory_series_equal_estimate_figures():
    chart = memory_chart([model("llama-7b"), model("gemma-3-27b")], engines=["hf", "vllm"],
                         kv_dtypes=["auto", "fp8"], batch=4, max_len=32768)
    rows = [r for r in chart.rows if r["series"] == "kv_cache"]
    by_key = {(r["model"], r["engine"], r["kv_dtype"], r["seq"]): r["bytes"] for r in rows}
    for name in ("llama-7b", "gemma-3-27b"):
        for engine in ("hf", "vllm"):
            for dtype in ("auto", "fp8"):
                result = run("estimate", "-m", name, "--seq", "1k,4k,32k", "--batch", "4",
                             "--engine", engine, "--kv-dtype", dtype, "--format", "json")
                assert result.exit_code == 0, result.output
                for rec in json.loads(result.stdout):
                    key = (rec["model"], engine, rec["kv_dtype"], rec["seq"])
                    assert by_key[key] == rec["bytes_total"], key


def test_memory_x_axis_runs_from_1k_to_each_models_context_length():
    chart = memory_chart([model("llama-7b"), model("llama-3.1-8b")], engines=["hf"],
                         kv_dtypes=["auto"])
    seqs = {m: [r["seq"] for r in chart.rows if r["model"] == m] for m in
            ("llama-2-7b", "llama-3.1-8b")}
    assert min(seqs["llama-2-7b"]) == 1024 and max(seqs["llama-2-7b"]) == 4096
    assert min(seqs["llama-3.1-8b"]) == 1024 and max(seqs["llama-3.1-8b"]) == 131072
    assert seqs["llama-3.1-8b"] == sorted(seqs["llama-3.1-8b"])


def test_sliding_window_plateau_is_in_the_data():
    # Mistral 7B v0.1: every layer slides over 4,096 tokens; hf keeps W - 1 = 4,095
    chart = memory_chart([model("mistral-7b-v0.1")], engines=["hf"], kv_dtypes=["auto"],
                         max_len=32768)
    pts = {r["seq"]: r["bytes"] for r in chart.rows}
    assert 4095 in pts and 4096 in pts                      # the corner is an exact point
    assert pts[4095] == pts[4096] == pts[32768] == 4095 * 131072
    assert pts[1024] == 1024 * 131072
    # hybrid (Gemma 3: 5 sliding layers per full one) keeps growing, but slower past W
    chart = memory_chart([model("gemma-3-27b")], engines=["hf"], kv_dtypes=["auto"],
                         min_len=512, max_len=16384)
    pts = {r["seq"]: r["bytes"] for r in chart.rows}
    assert 1023 in pts and 1024 in pts                      # W - 1 of the sliding layers
    per_token_early = (pts[1023] - pts[512]) / (1023 - 512)
    per_token_late = (pts[16384] - pts[8192]) / 8192
    assert per_token_early == 507_904                       # every layer caching
    assert per_token_late < per_token_early / 4             # only the full layers grow


def test_memory_budget_line_is_plans_kv_budget():
    chart = memory_chart([model("llama-7b"), model("llama-3.1-8b")], engines=["hf"],
                         kv_dtypes=["auto"], gpus=[resolve_gpu("h100"), resolve_gpu("48GiB")])
    budgets = {(r["model"], r["gpu"]): r["bytes"] for r in chart.rows if r["series"] == "kv_budget"}
    assert len(budgets) == 4
    for name in ("llama-7b", "llama-3.1-8b"):
        for gpu in ("h100", "48GiB"):
            result = run("plan", "-m", name, "--gpu", gpu, "--format", "json")
            assert result.exit_code == 0, result.output
            data = json.loads(result.stdout)
            assert budgets[(data["model"], data["gpu"])] == data["budget"]["kv_bytes"]


def test_memory_csv_from_the_cli_matches_the_data_function():
    result = run("plot", "memory", "-m", "llama-7b", "--gpu", "h100", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = csv_rows(result.stdout)
    assert list(rows[0]) == ["series", "model", "engine", "kv_dtype", "block_size", "tp", "gpu",
                             "batch", "seq", "bytes", "gib"]
    cache = {int(r["seq"]): int(r["bytes"]) for r in rows if r["series"] == "kv_cache"}
    assert cache[4096] == 2_147_483_648                      # estimate's README figure
    assert [r for r in rows if r["series"] == "kv_budget"][0]["bytes"] == "67931398144"


def test_concurrency_series_equal_plan_figures():
    wl = WorkloadOptions(dist="lognormal", mean=900, std=700, samples=300)
    chart = concurrency_chart([model("llama-3.1-8b")], gpus=[resolve_gpu("h100")],
                              kv_dtypes=["auto"], workload=wl, max_len=8192)
    rows = {r["max_len"]: r for r in chart.rows}
    assert min(rows) == 1024 and max(rows) == 8192
    for n in (1024, 2048, 8192):
        result = run("plan", "-m", "llama-3.1-8b", "--gpu", "h100", "--max-len", str(n),
                     "--dist", "lognormal", "--mean", "900", "--std", "700", "--samples", "300",
                     "--format", "json")
        assert result.exit_code == 0, result.output
        p = json.loads(result.stdout)
        r = rows[n]
        assert r["contiguous"] == p["max_concurrency"]["contiguous"]
        assert round(r["paged"], 2) == p["max_concurrency"]["paged"]
        assert round(r["vllm_max_concurrency"], 2) == p["vllm"]["max_concurrency"]
        assert r["kv_budget_bytes"] == p["budget"]["kv_bytes"]
        assert r["workload"] == p["workload"]["description"]
    # the picture: paged holds the actual lengths, contiguous reserves --max-len
    assert rows[8192]["paged"] > 5 * rows[8192]["contiguous"]


def test_concurrency_default_workload_is_plans():
    chart = concurrency_chart([model("llama-7b")], gpus=[resolve_gpu("h100")],
                              kv_dtypes=["auto"])
    last = chart.rows[-1]
    assert last["max_len"] == 4096
    result = run("plan", "-m", "llama-7b", "--gpu", "h100", "--max-len", "4096",
                 "--format", "json")
    p = json.loads(result.stdout)
    assert (last["contiguous"], round(last["paged"], 2)) == (31, 31.63)
    assert last["contiguous"] == p["max_concurrency"]["contiguous"]
    assert round(last["paged"], 2) == p["max_concurrency"]["paged"]


def test_concurrency_marks_where_one_request_no_longer_fits():
    chart = concurrency_chart([model("llama-3.1-8b")], gpus=[resolve_gpu("24GiB")],
                              kv_dtypes=["auto"], max_len=131072, min_len=16384)
    bad = [r for r in chart.rows if not r["fits"]]
    assert bad and all(r["estimated_max_model_len"] for r in bad)
    assert chart.rows[0]["fits"] and not chart.rows[-1]["fits"]
    result = run("plan", "-m", "llama-3.1-8b", "--gpu", "24GiB", "--max-len", "128k",
                 "--format", "json")
    assert result.exit_code != 0
    p = json.loads(result.stdout)
    assert bad[-1]["estimated_max_model_len"] == p["does_not_fit"]["estimated_max_model_len"]


def test_waste_bars_equal_plan_allocator_figures():
    wl = WorkloadOptions(dist="lognormal", mean=500, std=400, samples=400)
    chart = waste_chart([model("llama-3.1-8b")], gpus=[resolve_gpu("h100")], kv_dtypes=["auto"],
                        max_lens=[2048, 8192], workload=wl)
    assert len(chart.rows) == 4
    for n in (2048, 8192):
        result = run("plan", "-m", "llama-3.1-8b", "--gpu", "h100", "--max-len", str(n),
                     "--dist", "lognormal", "--mean", "500", "--std", "400", "--samples", "400",
                     "--format", "json")
        p = json.loads(result.stdout)
        for r in (r for r in chart.rows if r["max_len"] == n):
            a = p["workload"]["allocators"][r["allocator"]]
            waste = r["reservation_waste_bytes"] + r["internal_fragmentation_bytes"]
            assert waste == a["waste_bytes"]
            assert r["free_bytes"] == a["free_bytes"]
            assert round(r["memory_utilization"], 4) == a["memory_utilization"]
            assert round(r["max_sequences"], 2) == a["max_sequences_per_replica"]
            assert r["budget_bytes"] == p["budget"]["kv_bytes"]
            # the bar's parts add up to the KV budget (within float truncation)
            parts = r["token_bytes"] + waste + r["free_bytes"]
            assert abs(parts - r["budget_bytes"]) <= 3
    contiguous = [r for r in chart.rows if r["allocator"] == "contiguous"]
    paged = [r for r in chart.rows if r["allocator"] == "paged"]
    assert all(r["internal_fragmentation_bytes"] == 0 for r in contiguous)
    assert all(r["reservation_waste_bytes"] == 0 for r in paged)
    # (vLLM 0.34's blocks of 64 leave up to 63 slots of the last block empty: 94% here)
    assert 0.2 <= contiguous[0]["memory_utilization"] <= 0.4 < 0.9 < paged[0]["memory_utilization"]


def test_timing_rows_are_the_reports_runs():
    report = json.loads(REPORT.read_text())
    chart = timing_chart([REPORT])
    got = {(r["use_cache"], r["new_tokens"]): (r["seconds_mean"], r["seconds_std"])
           for r in chart.rows}
    want = {(r["use_cache"], r["new_tokens"]): (r["seconds_mean"], r["seconds_std"])
            for r in report["runs"]}
    assert got == want
    assert "llama-2-7b" in chart.title and "NVIDIA H100 80GB HBM3" in chart.subtitle
    assert "bf16" in chart.subtitle and f"kvcalc {__version__}" in chart.subtitle


def test_timing_reads_a_report_verify_writes(tmp_path):
    # the shape run_verify returns (extra keys, null timings for an interrupted run)
    report = json.loads(REPORT.read_text())
    report["runs"][1]["seconds_mean"] = None
    report["runs"][0]["cache_held_bytes"] = 1
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    assert len(timing_chart([path]).rows) == 7


def test_data_formats_to_stdout_and_file(tmp_path):
    result = run("plot", "timing", "--from", str(REPORT), "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "timing" and data["kvcalc_version"] == __version__
    assert len(data["rows"]) == 8
    out = tmp_path / "data.csv"
    result = run("plot", "timing", "--from", str(REPORT), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert len(csv_rows(out.read_text())) == 8


def test_titles_name_models_layout_dtype_gpu_and_version():
    chart = memory_chart([model("llama-7b"), model("llama-3.1-8b")], engines=["hf"],
                         kv_dtypes=["auto"], gpus=[resolve_gpu("h100")], max_len=8192)
    text = chart.title + chart.subtitle
    for part in ("llama-2-7b", "llama-3.1-8b", "DynamicCache", "fp16", "bf16", "H100",
                 f"kvcalc {__version__}"):
        assert part in text
    assert "GiB = 2^30" in chart.ylabel


def test_log_points():
    assert log_points(1024, 4096, 2) == [1024, 1448, 2048, 2896, 4096]
    assert log_points(1024, 1024, 4) == [1024]
    assert log_points(1000, 1500, 1) == [1000, 1500]


# ------------------------------------------------------------------------------ bad input


def test_unknown_kind_is_one_line_with_a_suggestion():
    line = one_line_error(run("plot", "memroy", "-m", "llama-7b"))
    assert "unknown plot kind 'memroy'" in line and "did you mean 'memory'" in line


@pytest.mark.parametrize("out, message", [
    ("chart.jpg", "unsupported --out extension '.jpg'"),
    ("chart", "unsupported --out extension 'chart'"),
])
def test_bad_out_extension_is_one_line(out, message, tmp_path):
    line = one_line_error(run("plot", "memory", "-m", "llama-7b", "--out", str(tmp_path / out)))
    assert message in line


def test_missing_out_and_mismatched_format_are_one_line(tmp_path):
    assert "give --out FILE.png" in one_line_error(run("plot", "memory", "-m", "llama-7b"))
    line = one_line_error(run("plot", "memory", "-m", "llama-7b", "--format", "csv",
                              "--out", str(tmp_path / "x.png")))
    assert "--format csv writes the data" in line
    line = one_line_error(run("plot", "memory", "-m", "llama-7b", "--format", "svg",
                              "--out", str(tmp_path / "x.png")))
    assert "does not match" in line


def test_missing_report_is_one_line(tmp_path):
    line = one_line_error(run("plot", "timing", "--from", str(tmp_path / "nope.json"),
                              "--out", str(tmp_path / "t.png")))
    assert "no such file" in line


@pytest.mark.parametrize("content, message", [
    ("{not json", "not JSON"),
    ("[]", "expected a JSON object"),
    ('{"model": "m", "device": "cpu", "dtype": "fp32"}', "missing 'runs'"),
    ('{"model": "m", "device": "cpu", "dtype": "fp32", "runs": []}', "non-empty list"),
    ('{"model": "m", "device": "cpu", "dtype": "fp32", "runs": [{"use_cache": true}]}',
     "lacks 'new_tokens'"),
    ('{"model": "m", "device": "cpu", "dtype": "fp32", "runs": [{"use_cache": 1, '
     '"new_tokens": 1, "seconds_mean": 1, "seconds_std": 0}]}', "use_cache must be"),
    ('{"model": "m", "device": "cpu", "dtype": "fp32", "runs": [{"use_cache": true, '
     '"new_tokens": 0, "seconds_mean": 1, "seconds_std": 0}]}', "positive integer"),
    ('{"model": "m", "device": "cpu", "dtype": "fp32", "runs": [{"use_cache": true, '
     '"new_tokens": 2, "seconds_mean": "fast", "seconds_std": 0}]}', "non-negative number"),
])
def test_malformed_report_is_one_line(content, message, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(content)
    line = one_line_error(run("plot", "timing", "--from", str(path), "--out",
                              str(tmp_path / "t.png")))
    assert message in line and "bad.json" in line
    with pytest.raises(ConfigError):
        load_report(path)


def test_bad_workload_and_model_are_one_line(tmp_path):
    out = str(tmp_path / "c.png")
    line = one_line_error(run("plot", "concurrency", "-m", "llama-7b", "--dist", "lognormal",
                              "--out", out))
    assert "--dist needs --mean and --std" in line
    line = one_line_error(run("plot", "concurrency", "-m", "llama-7b", "--dist", "normal",
                              "--mean", "9", "--std", "1", "--prompt-len", "10", "--out", out))
    assert "give one workload" in line
    line = one_line_error(run("plot", "waste", "-m", "llama-7b", "--trace",
                              str(tmp_path / "none.jsonl"), "--out", out))
    assert "no such file" in line
    line = one_line_error(run("plot", "memory", "-m", "no-such-model-xyz", "--out", out))
    assert "no-such-model-xyz" in line
    line = one_line_error(run("plot", "memory", "-m", "llama-7b", "--gpu", "h1000", "--out", out))
    assert "unknown GPU 'h1000'" in line
    line = one_line_error(run("plot", "memory", "-m", "llama-7b", "--tp", "2", "--out", out))
    assert "--tp needs --engine vllm" in line
    line = one_line_error(run("plot", "memory", "-m", "llama-7b", "--min-len", "8k",
                              "--max-len", "2k", "--out", out))
    assert "--min-len 8,192 exceeds --max-len 2,048" in line


def test_check_out():
    assert check_out("a.png", None) == "png"
    assert check_out("a.SVG", None) == "svg"
    assert check_out("a.csv", None) == "csv"
    assert check_out(None, "csv") == "csv"
    assert check_out(None, "json") == "json"
    with pytest.raises(UsageError):
        check_out("a.pdf", None)
    with pytest.raises(UsageError):
        check_out(None, "png")


# ------------------------------------------------------------------- matplotlib missing


def test_missing_matplotlib_is_one_line_with_the_install_command(monkeypatch, tmp_path):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib -> ImportError
    out = tmp_path / "t.png"
    line = one_line_error(run("plot", "timing", "--from", str(REPORT), "--out", str(out)))
    assert "pip install 'kvcalc[plot]'" in line
    assert not out.exists()
    # the data needs no matplotlib
    result = run("plot", "timing", "--from", str(REPORT), "--format", "csv")
    assert result.exit_code == 0 and len(csv_rows(result.stdout)) == 8


def test_estimate_plan_and_plot_data_never_import_matplotlib():
    code = ("import sys\n"
            "import kvcalc.cli.estimate, kvcalc.cli.plan, kvcalc.cli.plot, kvcalc.plot\n"
            "from click.testing import CliRunner\nfrom kvcalc.cli import cli\n"
            "for args in (['estimate', '-m', 'llama-7b'], ['plan', '-m', 'llama-7b'],\n"
            "             ['plot', 'memory', '-m', 'llama-7b', '--format', 'csv']):\n"
            "    assert CliRunner().invoke(cli, args).exit_code == 0, args\n"
            "assert 'matplotlib' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_chart_with_nothing_to_draw_is_one_error_not_an_empty_image(tmp_path):
    # Qwen3-Next-80B in bf16 does not fit an H100: no KV budget, so nothing fits
    out = tmp_path / "c.png"
    result = run("plot", "concurrency", "-m", "qwen3-next", "--gpu", "h100", "--max-len", "4k",
                 "--out", str(out))
    assert result.exit_code != 0 and not out.exists()
    assert "error: nothing to plot: not one request fits" in result.output
    result = run("plot", "waste", "-m", "qwen3-next", "--gpu", "h100", "--max-len", "4k",
                 "--prompt-len", "100", "--out", str(out))
    assert result.exit_code != 0 and not out.exists()
    assert "error: nothing to plot: the model leaves no KV budget" in result.output
    # the data is still there: plan gives its allocators max(0, budget)
    result = run("plot", "waste", "-m", "qwen3-next", "--gpu", "h100", "--max-len", "4k",
                 "--prompt-len", "100", "--format", "csv")
    assert result.exit_code == 0
    assert all(int(r["budget_bytes"]) == 0 for r in csv_rows(result.stdout))


# ------------------------------------------------------------------ texts that do not collide

CROWDED = ["concurrency", "-m", "llama-3.1-8b", "-m", "qwen2.5-7b", "--gpu", "h100", "--gpu",
           "a100-40gb", "--gpu", "l4", "--max-len", "128k"]


@pytest.mark.parametrize("case, size", [*((kind, "6x4") for kind in IMAGE_CASES),
                                        ("crowded", "6x4"), ("crowded", "10x6")])
def test_tick_labels_legends_and_titles_never_print_over_each_other(case, size, tmp_path,
                                                                     monkeypatch, mpl):
    """Every chart kind at a small size, and a crowded chart (6 series, 10 legend entries) at
    the default size and a small one: no two tick labels of an axis overlap, nor a tick label an axis label,
    the title or a legend, and nothing runs off the figure (kvcalc.plot.text_collisions)."""
    import kvcalc.plot as plot

    found = []
    render = plot.render

    def checked(chart, size=plot.DEFAULT_SIZE_IN, dpi=plot.DEFAULT_DPI):
        fig = render(chart, size, dpi)
        found.append(plot.text_collisions(fig))
        return fig

    monkeypatch.setattr(plot, "render", checked)
    args = CROWDED if case == "crowded" else IMAGE_CASES[case]
    out = tmp_path / "chart.png"
    result = run("plot", *args, "--out", str(out), "--size", size)
    assert result.exit_code == 0, result.output
    assert found == [[]]
    width, height = png_size(out)
    assert width == int(size.split("x")[0]) * 100     # the width asked for, always
    assert height >= int(size.split("x")[1]) * 100    # a crowded figure grows taller


def test_the_collision_check_sees_overlaps(mpl):
    """The check itself: two tick labels drawn on top of each other are reported."""
    import matplotlib.pyplot as plt

    import kvcalc.plot as plot

    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    try:
        ax.set_xticks([0, 0.001], ["a long tick label", "another long one"])
        assert ("a long tick label", "another long one") in plot.text_collisions(fig)
        plot._thin_tick_labels(fig, ax)                  # what render does about it
        assert plot.text_collisions(fig) == []
    finally:
        plt.close(fig)
