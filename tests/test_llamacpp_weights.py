"""llama.cpp as its users run it (issue 26): weights tensor by tensor (GGUF files and
llama-quantize's mix for presets), GPU layer offload, -c 0, Ollama's names."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kvcalc.cli import cli
from kvcalc.engines.llamacpp import LlamaCppSettings, allocate, layer_devices
from kvcalc.ggml import BY_NAME
from kvcalc.gguf_weights import quantize_spec
from kvcalc.model import load_spec


def spec(name):
    return load_spec(name)[1]


def test_ggml_block_sizes_are_ggml_commons():
    # ggml/src/ggml-common.h static_asserts
    assert (BY_NAME["q4_k"].block, BY_NAME["q4_k"].block_bytes) == (256, 144)
    assert (BY_NAME["q6_k"].block, BY_NAME["q6_k"].block_bytes) == (256, 210)
    assert (BY_NAME["q5_k"].block, BY_NAME["q5_k"].block_bytes) == (256, 176)
    assert (BY_NAME["q8_0"].block, BY_NAME["q8_0"].block_bytes) == (32, 34)
    assert (BY_NAME["iq4_xs"].block, BY_NAME["iq4_xs"].block_bytes) == (256, 136)
    assert BY_NAME["q2_0"].ggml_id == 42 and BY_NAME["q2_0"].block_bytes == 18


def test_q4_k_m_mix_matches_llama_cpps_loader_lines():
    # a Llama 3.2 3B Q4_K_M file as llama.cpp's loader lists it (rjmalagon/ollama-linux-amd-apu
    # #19): "type f32: 58 tensors, type q4_K: 168 tensors, type q6_K: 29 tensors"
    w = quantize_spec(spec("llama-3.2-3b"), "q4_k_m")
    assert w.type_counts() == {"f32": 58, "q4_k": 168, "q6_k": 29}
    assert w.tied and w.total_bytes == 2_011_539_712
    # Llama 3.1 8B Q4_K_M: "type f32: 66, q4_K: 193, q6_K: 33", "4.58 GiB (4.89 BPW)"
    w = quantize_spec(spec("llama-3.1-8b"), "q4_k_m")
    assert w.type_counts() == {"f32": 66, "q4_k": 193, "q6_k": 33}
    assert w.total_bytes == 4_912_898_304 and round(w.total_bytes / 2**30, 2) == 4.58
    assert round(w.total_bytes * 8 / w.params, 2) == 4.89
    # the layers use_more_bits picks keep attn_v and ffn_down at q6_k: 0-3, 28-31 and every 3rd
    down = [t.ggml_type for t in w.tensors if t.name.endswith("ffn_down.weight")]
    assert [i for i, t in enumerate(down) if t == "q6_k"] == [0, 1, 2, 3, 6, 9, 12, 15, 18,
                                                              21, 24, 27, 28, 29, 30, 31]


def test_other_file_types_and_fallbacks():
    s = spec("llama-3.1-8b")
    q8 = quantize_spec(s, "q8_0")
    assert q8.type_counts() == {"f32": 66, "q8_0": 226}
    f16 = quantize_spec(s, "f16")
    assert f16.total_bytes == 2 * (f16.params - sum(t.elements for t in f16.tensors
                                                      if t.ggml_type == "f32")) + \
        4 * sum(t.elements for t in f16.tensors if t.ggml_type == "f32")
    assert quantize_spec(s, "q5_k_m").total_bytes > quantize_spec(s, "q4_k_m").total_bytes > \
        quantize_spec(s, "iq4_xs").total_bytes


def test_gemma3_270m_mix_is_the_pypi_files_tensor_for_tensor():
    from test_gguf import gemma3_path, smollm2_path

    try:
        files = {"q4_k_m": gemma3_path(), "q4_1": smollm2_path()}
    except Exception as exc:   # the GGUF packages are installed in .llamacpp-venv (CI)
        pytest.skip(str(exc))
    from kvcalc.engines.llamacpp import model_weights

    for ftype, path in files.items():
        s = spec(str(path))
        real = {t.name: (t.ggml_type, t.nbytes) for t in model_weights(s).tensors}
        mine = {t.name: (t.ggml_type, t.nbytes) for t in quantize_spec(s, ftype).tensors}
        assert real == mine
    g = spec(str(files["q4_k_m"]))
    assert model_weights(g).total_bytes == 246_587_904
    sm = model_weights(spec(str(files["q4_1"])))
    assert sm.params == 134_515_008 and sm.tied


def test_tied_embeddings_counted_once_in_plan():
    result = CliRunner().invoke(cli, ["plan", "-m", "llama-3.2-3b", "--engine", "llamacpp",
                                      "--gpu", "rtx-4090", "-f", "json"])
    d = json.loads(result.stdout)
    assert d["llamacpp"]["weights"]["params"] == 3_212_749_888   # + 64 rope_freqs
    assert d["llamacpp"]["weights"]["tied_embeddings"] is True


def test_layer_devices_follow_load_tensors():
    # i_gpu_start = n_layer + 1 - ngl: -ngl 1 puts only the output layer on the GPU
    assert layer_devices(4, 1, (1.0,)) == [-1, -1, -1, -1, 0]
    assert layer_devices(4, 5, (1.0,)) == [0, 0, 0, 0, 0]
    assert layer_devices(4, 0, (1.0,)) == [-1] * 5
    # two GPUs 1:1: upper_bound of (il - start) / act in [0.5, 1.0]
    assert layer_devices(4, 5, (1.0, 1.0)) == [0, 0, 0, 1, 1]


def test_done_when_plan_llama_8b_q4_k_m_on_a_4090():
    result = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--engine", "llamacpp",
                                      "--weights-dtype", "q4_k_m", "--gpu", "rtx-4090",
                                      "--ctx-size", "32768", "-f", "json"])
    assert result.exit_code == 0, result.output
    a = json.loads(result.stdout)["llamacpp"]
    assert a["weights"]["total_bytes"] == 4_912_898_304 and a["total_bytes"] == 32768 * 131072
    gpu = a["placement"]["devices"][0]
    host = a["placement"]["host"]
    # the token embeddings stay on the CPU (llama.cpp: "input layer ... always on the CPU")
    assert host["weights"] == 128256 * 4096 // 256 * 144 == 295_501_824
    assert gpu["weights"] + host["weights"] == a["weights"]["total_bytes"]
    assert gpu["kv"] == 4_294_967_296 and gpu["compute"] > 0
    assert gpu["total"] == gpu["weights"] + gpu["kv"] + gpu["compute"]
    assert a["offload"]["max_ngl"] == 33
    assert a["offload"]["max_ctx_size_all_layers"] == 131072     # capped at the trained context


def test_offload_on_an_8gb_card_and_what_does_not_fit():
    result = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--engine", "llamacpp",
                                      "--gpu", "8GiB", "--ctx-size", "65536", "-ngl", "all",
                                      "-f", "json"])
    assert result.exit_code == 3
    d = json.loads(result.stdout)
    a = d["llamacpp"]
    assert not a["fits"] and "KV cache" in a["shortfall"]
    ngl = a["offload"]["max_ngl"]
    assert 0 < ngl < 33
    result = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--engine", "llamacpp",
                                      "--gpu", "8GiB", "--ctx-size", "65536", "-ngl", str(ngl),
                                      "-f", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["llamacpp"]["fits"]
    # the KV cache in RAM (-nkvo) and the experts on the CPU (-ot exps=CPU)
    result = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--engine", "llamacpp",
                                      "--gpu", "8GiB", "--ctx-size", "65536", "-ngl", "all",
                                      "--no-kv-offload", "-f", "json"])
    p = json.loads(result.stdout)["llamacpp"]["placement"]
    assert p["devices"][0]["kv"] == 0 and p["host"]["kv"] == 65536 * 131072
    result = CliRunner().invoke(cli, ["plan", "-m", "qwen3-30b-a3b", "--engine", "llamacpp",
                                      "--gpu", "8GiB", "--ctx-size", "8192", "-ngl", "all",
                                      "-ot", "exps=CPU", "-f", "json"])
    p = json.loads(result.stdout)["llamacpp"]["placement"]
    assert p["host"]["weights"] > 10 * p["devices"][0]["weights"]


def test_ctx_size_0_is_the_trained_context_and_over_it_warns():
    result = CliRunner().invoke(cli, ["estimate", "-m", "llama-3.1-8b", "--engine", "llamacpp",
                                      "--ctx-size", "0", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["llamacpp"]["n_ctx"] == 131072
    result = CliRunner().invoke(cli, ["estimate", "-m", "llama-3.1-8b", "--engine", "llamacpp",
                                      "--ctx-size", "200k"])
    assert "n_ctx_seq (204800) > n_ctx_train (131072)" in result.output
    # one answer: no --seq 4096 table beside the allocation
    assert "per sequence" not in result.stdout and "allocates at start-up" in result.stdout


def test_plan_and_estimate_default_context_agree():
    e = CliRunner().invoke(cli, ["estimate", "-m", "qwen2.5-7b", "--engine", "llamacpp",
                                 "-f", "json"])
    p = CliRunner().invoke(cli, ["plan", "-m", "qwen2.5-7b", "--engine", "llamacpp",
                                 "--gpu", "h100", "-f", "json"])
    assert json.loads(e.stdout)["llamacpp"]["n_ctx"] == 131072
    assert json.loads(p.stdout)["llamacpp"]["n_ctx"] == 131072


@pytest.mark.parametrize("name,preset,quant", [
    ("gemma3:4b", "gemma-3-4b", "q4_k_m"), ("llama3.1:8b-instruct-q8_0", "llama-3.1-8b", "q8_0"),
    ("qwen2.5:7b-instruct-q4_K_M", "qwen2.5-7b-instruct", "q4_k_m"),
    ("deepseek-r1:7b", "qwen2.5-7b", "q4_k_m"), ("llama3.1", "llama-3.1-8b", "q4_k_m"),
])
def test_ollama_names_resolve(name, preset, quant):
    from kvcalc.ollama_names import lookup

    entry, q = lookup(name)
    assert (entry.preset, q) == (preset, quant)
    result = CliRunner().invoke(cli, ["plan", "-m", name, "--engine", "ollama", "--gpu",
                                      "rtx-4090", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["llamacpp"]["weights"]["file_type"] == quant


def test_ollama_unknown_name_is_one_line_and_models_lists_them():
    result = CliRunner().invoke(cli, ["estimate", "-m", "qwen2.5:14b"])
    assert result.exit_code != 0 and "unknown Ollama model 'qwen2.5:14b'" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["models", "--ollama", "-f", "json"])
    rows = json.loads(result.stdout)
    assert {"ollama": "gemma3:4b", "preset": "gemma-3-4b", "quantization": "q4_k_m",
            "note": ""} in rows


def test_ollama_default_num_ctx_by_vram():
    for gpu, n_ctx in (("rtx-4090", 32768), ("8GiB", 4096), ("h100", 131072)):
        result = CliRunner().invoke(cli, ["plan", "-m", "llama3.1:8b", "--engine", "ollama",
                                          "--gpu", gpu, "-f", "json"])
        assert json.loads(result.stdout)["llamacpp"]["n_ctx_seq"] == n_ctx, gpu


def test_bad_offload_options_are_one_line():
    for args, msg in ((["-ngl", "x"], "invalid --n-gpu-layers"),
                      (["--tensor-split", "a,b"], "invalid --tensor-split"),
                      (["-ot", "exps=CUDA0"], "PATTERN=CPU"),
                      (["--weights-dtype", "fp8"], "not a llama.cpp file type")):
        result = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--engine", "llamacpp",
                                          "--gpu", "rtx-4090", *args])
        assert result.exit_code == 2 and msg in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_allocation_unchanged_by_weights():
    s = spec("llama-3.1-8b")
    assert allocate(s, LlamaCppSettings(ctx_size=8192)).total_bytes == 8192 * 131072
