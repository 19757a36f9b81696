"""kvcalc check (issue 25): launch commands as people paste them -> the engine's start-up
lines (matching real logs), its refusals with its own messages, verified suggestions, exits."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import kvcalc
from kvcalc.cli import cli
from kvcalc.launch import CommandError, read
from kvcalc.units import GiB
from test_gguf import write_gguf

SMOLLM2 = {"block_count": 30, "embedding_length": 576, "attention.head_count": 9,
           "attention.head_count_kv": 3, "context_length": 8192}


def run(*args):
    return CliRunner().invoke(cli, ["check", *args])


def check(command, **kw):
    return kvcalc.check(command, **kw).to_dict()


# ------------------------------------------------------------------ real start-up logs


def test_vllm_log_from_a_real_start_up():
    """The Llama-3.1-8B log of tests/test_plan.py (51.63 GiB available, 131,072 tokens):
    'GPU KV cache size: 422,944 tokens, Maximum concurrency ... 3.23x' (vLLM 0.33, blocks
    of 16), here as the command with --kv-cache-memory-bytes in the 0.33 image."""
    d = check(f"docker run --gpus all vllm/vllm-openai:v0.33.0 --model meta-llama/Llama-3.1-8B "
              f"--max-model-len 131072 --kv-cache-memory-bytes {int(51.63 * GiB)}")
    assert d["boots"] and d["engine"] == "vllm" and d["engine_version"] == "0.33.0"
    assert d["lines"] == ["GPU KV cache size: 422,944 tokens, Maximum concurrency for "
                          "131,072 tokens per request: 3.23x"]


def test_sglang_log_of_issue_16526():
    """sgl-project/sglang#16526: Qwen3-32B, tp 2, page 128, mem fraction 0.8:
    '#tokens: 143104, K size: 8.74 GB, V size: 8.74 GB'."""
    d = check("python -m sglang.launch_server --model-path Qwen/Qwen3-32B --tp-size 2 "
              "--page-size 128 --mem-fraction-static 0.8 --max-total-tokens 143104 "
              "--host 0.0.0.0 --port 30000")
    assert d["boots"]
    assert "#tokens: 143104, K size: 8.74 GB, V size: 8.74 GB" in d["lines"][0]
    assert d["lines"][1].startswith("max_total_num_tokens=143104, ")
    assert d["ignored_flags"] == ["--host", "--port"]


def test_llamacpp_log_of_smollm2(tmp_path):
    """llama.cpp 0c1e57098's own line for SmolLM2-135M at -c 4096 -np 1 (tests/test_llamacpp)."""
    gguf = write_gguf(tmp_path / "smollm2.gguf", "llama", SMOLLM2)
    d = check(["llama-server", "-m", str(gguf), "-c", "4096", "-np", "1", "-ngl", "99"])
    assert d["boots"]
    assert d["lines"] == ["llama_kv_cache: size =   90.00 MiB (  4096 cells,  30 layers,  "
                          "1/1 seqs), K (f16):   45.00 MiB, V (f16):   45.00 MiB"]
    assert d["honoured_flags"][-1]["kvcalc"] == {"n_gpu_layers": "99"}


def test_llamacpp_out_of_memory_in_its_own_words_and_the_offload_that_boots():
    """-ngl 99 at -c 262144 on a 24 GB card: the 32 GiB KV cache cannot be allocated (the
    weights load first, then the context's KV buffer fails: llama.cpp's lines); left to
    --fit (no -ngl), llama.cpp keeps layers on the CPU and boots."""
    d = check("llama-server -m llama-3.1-8b -c 262144 -ngl 99", gpu="rtx-4090")
    assert not d["boots"]
    assert d["refusals"] == [{"engine": "llama.cpp", "check": "gpu_memory", "message":
                              "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 32768.00 "
                              "MiB on device 0: cudaMalloc failed: out of memory; "
                              "llama_init_from_model: failed to initialize the context: failed "
                              "to allocate buffer for kv cache"}]
    changes = [s["change"] for s in d["suggestions"]]
    assert "-ngl 21" in changes and all(s["verified"] for s in d["suggestions"])
    fit = check("llama-server -m llama-3.1-8b -c 262144", gpu="rtx-4090")
    assert fit["boots"]
    assert any("--fit (on by default) puts 20 of 33 layers on the GPU" in n for n in fit["notes"])
    off = check("llama-server -m llama-3.1-8b -c 262144 --fit off", gpu="rtx-4090")
    assert not off["boots"] and off["refusals"][0]["check"] == "gpu_memory"


def test_llamacpp_weights_that_do_not_load_and_experts_on_the_cpu():
    big = check("llama-server -m llama-3.1-70b -c 4096 -ngl 99", gpu="rtx-4090")
    assert big["refusals"][0]["message"] == ("llama_model_load: error loading model: unable to "
                                              "allocate CUDA0 buffer")
    moe = check("llama-server -m qwen3-30b-a3b --cpu-moe -ngl 99 -c 32768", gpu="rtx-4090")
    assert moe["boots"]
    assert moe["plan"]["llamacpp"]["offload"]["override_tensor"] == [r"\.ffn_(up|down|gate)_exps"]
    assert moe["plan"]["llamacpp"]["placement"]["host"]["weights"] > 15 * GiB
    two = check("llama-server -m qwen3-30b-a3b --n-cpu-moe 2 -ngl 99 -c 32768", gpu="rtx-4090")
    assert two["plan"]["llamacpp"]["offload"]["override_tensor"] == [
        r"blk\.0\.ffn_(up|down|gate)_exps", r"blk\.1\.ffn_(up|down|gate)_exps"]
    other = check("llama-server -m llama-3.1-8b -c 8192 -ot ffn=CUDA1", gpu="rtx-4090")
    assert other["not_modelled_flags"] == [{"flag": "-ot", "reason": "tensors placed on "
                                            "another GPU (kvcalc models PATTERN=CPU)"}]


def test_trtllm_and_ollama_lines():
    t = check("trtllm-serve meta-llama/Llama-3.1-8B --max_seq_len 8192 --port 8001")
    # docs/engines.md 3.10: Llama-3.1-8B on one H100 at 8k, the plan's figures
    assert t["lines"][1] == ("[MemUsageChange] Allocated 56.48 GiB for max tokens in paged KV "
                             "cache (462688).")
    o = check("OLLAMA_NUM_PARALLEL=4 OLLAMA_KV_CACHE_TYPE=q8_0 OLLAMA_HOST=0.0.0.0 "
              "ollama run gemma3:4b")
    assert o["resolved_model"] == "gemma3-4b" or o["resolved_model"] == "gemma-3-4b"
    kv_lines = [line for line in o["lines"] if line.startswith("llama_kv_cache: size =")]
    assert kv_lines and all("4/4 seqs" in line and "K (q8_0)" in line for line in kv_lines)
    assert o["lines"][0].startswith('msg="gpu memory"')     # Ollama's own lines first
    assert o["ignored_flags"] == ["OLLAMA_HOST=0.0.0.0"]


# ------------------------------------------------------------------ one refusal per check


def test_vllm_mamba_blocks_refusal_in_check_and_plan():
    cmd = "vllm serve nemotron-3-nano-30b --max-model-len 32768 --max-num-seqs 2048"
    d = check(cmd)
    assert not d["boots"]
    (r,) = d["refusals"]
    assert r["check"] == "mamba_cache_blocks"
    assert r["message"].startswith("max_num_seqs (2048) exceeds available Mamba cache blocks (")
    assert "Please lower max_num_seqs to at most" in r["message"]
    assert d["suggestions"][0]["change"].startswith("--max-num-seqs ")
    assert "--enforce-eager" in [s["change"] for s in d["suggestions"]]
    plan = CliRunner().invoke(cli, ["plan", "-m", "nemotron-3-nano-30b", "--max-len", "32768",
                                    "--max-num-seqs", "2048", "-f", "json"])
    assert plan.exit_code == 3
    assert json.loads(plan.output)["does_not_fit"]["reason"] == r["message"]
    assert check(cmd + " --enforce-eager")["boots"]


def test_vllm_kv_memory_refusal_and_verified_smallest_change():
    d = check("vllm serve llama-3.1-8b --max-model-len 131072 --gpu-memory-utilization 0.3")
    assert [r["check"] for r in d["refusals"]] == ["kv_cache_memory"]
    assert d["refusals"][0]["message"].startswith("To serve at least one request with the "
                                                  "model's max seq len (131072)")
    first = d["suggestions"][0]
    est = d["plan"]["does_not_fit"]["estimated_max_model_len"]
    assert first["change"] == f"--max-model-len {est}" and first["verified"]
    again = check(f"vllm serve llama-3.1-8b --max-model-len {est} "
                  "--gpu-memory-utilization 0.3")
    assert again["boots"] and again["lines"] == first["lines"]


def test_vllm_tp_max_len_dtype_and_argument_refusals():
    tp = check("vllm serve qwen3-8b -tp 3")
    assert tp["refusals"] == [{"engine": "vLLM", "check": "tensor_parallel", "message":
                               "Total number of attention heads (32) must be divisible by "
                               "tensor parallel size (3)."}]
    assert tp["suggestions"][0]["change"] == "--tensor-parallel-size 2"
    long = check("vllm serve qwen3-8b --max-model-len 65536")
    assert long["refusals"][0]["message"].startswith(
        "User-specified max_model_len (65536) is greater than the derived max_model_len "
        "(max_position_embeddings=40960.0 or model_max_length=None in model's config.json).")
    assert check("VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 vllm serve qwen3-8b --max-model-len 65536")[
        "boots"]
    bad = check("vllm serve qwen3-8b --kv-cache-dtype fp9")
    assert bad["refusals"][0]["message"].startswith("Invalid kv_cache_dtype: 'fp9'. Valid")
    unknown = check("vllm serve qwen3-8b --max_model_len 8192 --frobnicate 3")
    assert unknown["refusals"][0]["message"] == ("vllm serve: error: unrecognized arguments: "
                                                 "--frobnicate 3")
    assert unknown["honoured_flags"][0]["kvcalc"] == {"max_len": 8192}


def test_llamacpp_quantized_v_needs_flash_attention(tmp_path):
    gguf = write_gguf(tmp_path / "smollm2.gguf", "llama", SMOLLM2)
    d = check(["llama-server", "-m", str(gguf), "-c", "4096", "-ctv", "q8_0", "-fa", "off"])
    assert d["refusals"][0]["message"] == "quantized V cache requires flash_attn to be enabled"
    assert d["suggestions"][0]["change"] == "-fa on"
    bad = check(["llama-server", "-m", str(gguf), "--frobnicate"])
    assert bad["refusals"][0]["message"] == "error: invalid argument: --frobnicate"


def test_sglang_and_gpu_count_refusals():
    s = check("python -m sglang.launch_server --model-path llama-3.1-70b")
    assert s["refusals"][0]["message"].startswith("Loaded weights leave no GPU memory for the "
                                                  "KV cache")
    assert any(x["change"].startswith("--tp-size") for x in s["suggestions"])
    g = check("docker run --gpus 2 vllm/vllm-openai:latest --model llama-3.1-8b -tp 4")
    assert g["refusals"][0]["check"] == "gpu_count"


# ------------------------------------------------------------------ exits and the CLI


def test_exit_statuses_and_unreadable_commands():
    ok = run("--", "vllm", "serve", "llama-3.1-8b", "--max-model-len", "8192")
    assert ok.exit_code == 0, ok.output
    assert "GPU KV cache size:" in ok.output
    refused = run("--", "vllm", "serve", "qwen3-8b", "-tp", "3")
    assert refused.exit_code == 3
    for cmd, token in ((["foo", "bar"], "'foo'"), (["vllm", "serve", "m", "--max-model-len"],
                                                     "'--max-model-len'"),
                       (["docker", "run", "nginx"], "'nginx'")):
        out = run("--", *cmd)
        assert out.exit_code == 2 and token in out.output and len(out.output.splitlines()) == 1
    with pytest.raises(CommandError):
        read("ollama serve")
    js = json.loads(run("-f", "json", "--", "vllm serve llama-3.1-8b").output)
    for key in ("boots", "lines", "refusals", "ignored_flags", "suggestions", "plan"):
        assert key in js


def test_target_concurrency_suggestions_reach_it():
    d = check("vllm serve llama-3.1-8b --max-model-len 131072", target_concurrency=8)
    assert d["boots"] and not d["reaches_target"]
    assert d["suggestions"] and all(s["concurrency"] >= 8 for s in d["suggestions"])


def test_trtllm_refuses_in_its_executor_creator_words():
    """NVIDIA/TensorRT-LLM#5872: 'Executor creation failed due to insufficient GPU memory. The
    following component could not be created: KV cache' (the model loaded, no pool); a model
    too large for the card fails one component earlier, at 'Model'."""
    kv = check("trtllm-serve Qwen/Qwen3-32B --max_seq_len 8192", gpu="62GiB")
    assert not kv["boots"]
    assert kv["refusals"] == [{"engine": "TensorRT-LLM", "check": "kv_cache_memory", "message":
                               "Executor creation failed due to insufficient GPU memory. The "
                               "following component could not be created: KV cache (free GPU "
                               "memory before the attempt: 0.00 GiB)"}]
    assert check("trtllm-serve Qwen/Qwen3-32B --max_seq_len 8192", gpu="64GiB")["boots"]
    big = check("trtllm-serve meta-llama/Llama-3.1-70B --max_seq_len 8192", gpu="l4")
    assert big["refusals"][0]["message"].startswith(
        "Executor creation failed due to insufficient GPU memory. The following component could "
        "not be created: Model (free GPU memory before the attempt: ")
