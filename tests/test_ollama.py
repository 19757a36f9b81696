"""Ollama's own memory estimate, layer decision and log lines (kvcalc/engines/ollama_memory.py,
docs/llamacpp.md "Ollama's memory estimate"). Two vectors are real Ollama logs quoted in public
reports; the others are hand-checked against Ollama's formulas (figures in the comments)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kvcalc import api
from kvcalc.cli import cli as main
from kvcalc.engines import ollama_memory as om
from kvcalc.engines.llamacpp import model_weights

GIB = 1 << 30
MIB = 1 << 20


def _model(name: str, ftype: str):
    spec = api.resolve(name).spec
    return om.model_shape(spec), om.group_layers(model_weights(spec, ftype))


def test_human_bytes2_as_ollama_formats():
    # format/bytes.go HumanBytes2
    assert om.human_bytes2(0) == "0 B"
    assert om.human_bytes2(457 * MIB) == "457.0 MiB"
    assert om.human_bytes2(710_385_664) == "677.5 MiB"
    assert om.human_bytes2(24_975_835_136) == "23.3 GiB"
    assert om.human_bytes2(1536) == "1.5 KiB"


def test_real_log_ollama_0_5_4_llama31_8b_q4_k_m_rtx4090_full_offload():
    """A public Ollama 0.5.4 log (MagicWand18/Securetag-AI-Agent, runpod-deploy/logcompleto.md,
    2025-12-01): llama3.1:8b (Q4_K_M, 292 tensors:
    f32 66, q4_K 193, q6_K 33), one RTX 4090 with available=24975835136, parallel=4,
    --ctx-size 8192 --batch-size 512, source=memory.go:356."""
    shape, groups = _model("llama-3.1-8b", "q4_k_m")
    est = om.estimate_gpu_layers([om.GpuDevice(24_975_835_136, "cuda")], shape, groups,
                                 num_ctx=2048, num_batch=512, num_parallel=4)
    assert est.log_line("0.5.4") == (
        'msg="offload to cuda" layers.requested=-1 layers.model=33 layers.offload=33 '
        'layers.split="" memory.available="[23.3 GiB]" memory.gpu_overhead="0 B" '
        'memory.required.full="6.5 GiB" memory.required.partial="6.5 GiB" '
        'memory.required.kv="1.0 GiB" memory.required.allocations="[6.5 GiB]" '
        'memory.weights.total="4.9 GiB" memory.weights.repeating="4.5 GiB" '
        'memory.weights.nonrepeating="411.0 MiB" memory.graph.full="560.0 MiB" '
        'memory.graph.partial="677.5 MiB"')
    # GraphSize "llama": full = max(4 b (1 + 4 e + c (1 + h)), 4 b (e + vocab))
    #   = 4*512*(1 + 16384 + 8192*33) = 587,204,608
    assert est.graph_full == 4 * 512 * (1 + 4 * 4096 + 8192 * 33) == 587_204_608
    # partial = 4 b e + max(4 b (1 + e + max(c, e)) + e^2 9/16 + 4 c (b h + eh hkv),
    #                       4 b (e + vocab) + e vocab 105/128) = 8,388,608 + 701,997,056
    assert est.graph_partial == 4 * 512 * 4096 + 4 * 512 * (4096 + 128256) \
        + 4096 * 128256 * 105 // 128 == 710_385_664
    assert est.kv == 8192 * 32 * 2 * 8 * 128 * 2 == GIB
    # full = minimum + buffer (blk.0 + its KV) + every layer and its KV + output + full graph
    layers = sum(groups[f"blk.{i}"] for i in range(32))
    assert est.total_size == (457 * MIB + groups["blk.0"] + GIB // 32 + layers + GIB
                              + groups["output"] + groups["output_norm"] + 587_204_608)
    assert est.total_size == est.vram_size == 6_930_032_640


def test_real_log_issue_9181_llama70b_q8_0_four_gpus_partial_offload():
    """ollama/ollama#9181 (2025-02-18): a 70B Llama at Q8_0 on four GPUs of 22.0 GiB free,
    num_ctx 64000: 44 of 81 layers, 11 per GPU (the 0.6.0 - 0.6.2 log format)."""
    shape, groups = _model("llama-3.1-70b", "q8_0")
    est = om.estimate_gpu_layers([om.GpuDevice(22 * GIB, "cuda")] * 4, shape, groups,
                                 num_ctx=64000, num_batch=512, num_parallel=1)
    assert est.log_line("0.6.0") == (
        'msg=offload library=cuda layers.requested=-1 layers.model=81 layers.offload=44 '
        'layers.split=11,11,11,11 memory.available="[22.0 GiB 22.0 GiB 22.0 GiB 22.0 GiB]" '
        'memory.gpu_overhead="0 B" memory.required.full="127.4 GiB" '
        'memory.required.partial="87.1 GiB" memory.required.kv="19.5 GiB" '
        'memory.required.allocations="[21.8 GiB 21.8 GiB 21.8 GiB 21.8 GiB]" '
        'memory.weights.total="87.3 GiB" memory.weights.repeating="86.2 GiB" '
        'memory.weights.nonrepeating="1.0 GiB" memory.graph.full="8.2 GiB" '
        'memory.graph.partial="8.2 GiB"')
    assert est.layers == 44 and est.tensor_split == (11, 11, 11, 11)
    # several GPUs: the full graph is the partial one (8,853,129,216 B)
    assert est.graph_full == est.graph_partial == 8_853_129_216
    assert est.kv == 64000 * 80 * 2 * 8 * 128 * 2


def test_memory_go_partial_offload_with_gpu_overhead_0_12_10():
    """Hand-checked: Ollama 0.12.10, llama3.1:8b, 4 x 32,768 tokens, OLLAMA_GPU_OVERHEAD=1 GiB,
    a 4090 reporting 25,386,352,640 B free: 20 of 33 layers."""
    shape, groups = _model("llama-3.1-8b", "q4_k_m")
    free = 25_386_352_640
    est = om.estimate_gpu_layers([om.GpuDevice(free)], shape, groups, 32768, 512, 4,
                                 overhead=GIB)
    c = 131072
    partial = 4 * 512 * 4096 + 4 * 512 * (1 + 4096 + c) + 4096 * 4096 * 9 // 16 \
        + 4 * c * (512 * 32 + 128 * 8)
    assert est.graph_partial == partial == 9_421_457_408
    assert est.graph_full == 4 * 512 * (1 + 4 * 4096 + c * 33) == 8_891_926_528
    assert est.layers == 20 and est.tensor_split == (20,)
    # each layer costs its weights + 512 MiB of KV; the last 20 blocks, then no room for more
    kv_layer = c * 2 * 8 * 128 * 2
    used = 457 * MIB + groups["blk.0"] + kv_layer + sum(
        groups[f"blk.{i}"] + kv_layer for i in range(12, 32)) + partial
    assert est.vram_size == used
    nxt = groups["blk.11"] + kv_layer
    assert free - GIB - (used - partial) - max(partial, est.graph_full) <= nxt   # blk.11 misses
    line = est.log_line("0.12.10")
    assert line.startswith("msg=offload library=CUDA layers.requested=-1 layers.model=33 "
                           "layers.offload=20 layers.split=[20] ")
    assert 'memory.gpu_overhead="1.0 GiB"' in line and 'memory.graph.partial="8.8 GiB"' in line
    assert 'memory.weights.total="4.3 GiB" memory.weights.repeating="3.9 GiB"' in line


def test_no_gpu_room_means_cpu_not_refusal():
    shape, groups = _model("llama-3.1-8b", "q4_k_m")
    est = om.estimate_gpu_layers([om.GpuDevice(GIB)], shape, groups, 8192, 512, 1)
    assert est.layers == 0 and est.vram_size == 0 and est.total_size > 0
    assert "layers.offload=0" in est.log_line("0.12.10")
    assert 'memory.required.partial="0 B"' in est.log_line("0.12.10")


def test_predict_server_vram_and_automatic_batch_0_33():
    # llm/llama_server.go PredictServerVRAM: file + 2 x layers x kv_heads x (e / heads) x ctx x 2
    shape, _ = _model("llama-3.1-8b", "q4_k_m")
    assert om.predict_server_vram(4_912_898_304, shape, 262144) == \
        4_912_898_304 + 2 * 32 * 8 * 128 * 262144 * 2 == 39_272_636_672
    free = 25_386_352_640
    # 2 x 32k: 2,048 fits (13.5e9 <= 60% of free; 2 GiB surcharge within the 80% threshold)
    assert om.automatic_generation_batch(65536, 13_502_832_896, free, False) == 2048
    # 4 x 64k: the prediction is above 80% of free -> 1,024 -> 512
    assert om.automatic_generation_batch(262144, 39_272_636_672, free, False) == 512
    # flash attention off on CUDA: 512; 256 on a GPU of <= 8 GiB above 4,096 tokens
    assert om.automatic_generation_batch(65536, 1, free, True, True, free) == 512
    assert om.automatic_generation_batch(8192, 1, 8 * GIB, True, True, 8 * GIB) == 256
    line, available = om.gpu_memory_line(free, 0)
    assert available == free - 457 * MIB == 24_907_153_408
    assert line == ('msg="gpu memory" id=GPU-0 library=CUDA available="23.2 GiB" '
                    'free="23.6 GiB" minimum="457.0 MiB" overhead="0 B"')


def _plan(*args):
    r = CliRunner().invoke(main, ["plan", "--engine", "ollama", "--gpu", "rtx-4090",
                                  "--format", "json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_plan_full_offload_llama31_8b_default_context_0_33():
    # 24 GB card: num_ctx 32,768 by default; the whole model on the GPU
    rec = _plan("-m", "llama3.1:8b")["llamacpp"]
    o = rec["ollama_memory"]
    assert o["band"] == "llama-server" and o["layers_on_gpu"] == o["layers_model"] == 33
    assert o["num_batch"] == 1024    # 32,768 tokens -> 1,024; prediction 9,207,865,600 fits
    assert o["predicted_vram_bytes"] == 4_912_898_304 + 2 * 32 * 8 * 128 * 32768 * 2
    assert rec["log"][:3] == [
        'msg="gpu memory" id=GPU-0 library=CUDA available="23.2 GiB" free="23.6 GiB" '
        'minimum="457.0 MiB" overhead="0 B"',
        'msg="starting llama-server" cmd="llama-server -c 32768 -np 1 --cache-type-k f16 '
        '--cache-type-v f16 --flash-attn auto -b 1024 -ub 1024"',
        "load_tensors: offloaded 33/33 layers to GPU"]


def test_plan_partial_offload_gemma3_27b_boots_0_33():
    out = _plan("-m", "gemma3:27b", "--num-ctx", "65536", "--num-parallel", "2")
    rec = out["llamacpp"]
    o = rec["ollama_memory"]
    assert out["fits"] is True and rec["fits"] is True
    assert o["layers_on_gpu"] == 53 and o["layers_model"] == 63
    assert o["num_batch"] == 512     # predicted 103.9e9 B > 80% of the GPU: 2,048 -> 512
    assert "load_tensors: offloaded 53/63 layers to GPU" in rec["log"]


def test_plan_memory_go_band_decides_layers():
    out = _plan("-m", "llama3.1:8b", "--num-ctx", "32768", "--num-parallel", "4",
                "--ollama-version", "0.12.10", "--gpu-overhead", "1GiB")
    rec = out["llamacpp"]
    assert rec["ollama_memory"]["estimate"]["layers_offload"] == 20
    assert rec["placement"]["n_gpu_layers"] == 20     # llama.cpp places what Ollama decided
    assert rec["log"][0].startswith("msg=offload library=CUDA")
    assert rec["log"][1] == ('msg="starting llama server" cmd="ollama_llama_server --ctx-size '
                             '131072 --batch-size 512 --n-gpu-layers 20 --parallel 4"')


def test_check_partial_offload_boots_and_says_how_many_layers():
    r = api.check("OLLAMA_NUM_PARALLEL=2 OLLAMA_CONTEXT_LENGTH=65536 ollama run gemma3:27b",
                      gpu="rtx-4090")
    c = r.to_dict()
    assert c["boots"] is True and c["refusals"] == []
    assert "load_tensors: offloaded 53/63 layers to GPU" in c["lines"]
    assert any(n.startswith("53 of 63 layers on the GPU: Ollama offloads the rest")
               for n in c["notes"])


def test_check_reads_gpu_overhead_and_image_release():
    r = api.check("docker run -e KVCALC_MODEL=llama3.1:8b -e OLLAMA_NUM_PARALLEL=4 "
                      "-e OLLAMA_CONTEXT_LENGTH=32768 -e OLLAMA_GPU_OVERHEAD=1073741824 "
                      "ollama/ollama:0.12.10", gpu="rtx-4090")
    c = r.to_dict()
    assert c["boots"] is True
    assert c["lines"][0].startswith("msg=offload library=CUDA layers.requested=-1 "
                                    "layers.model=33 layers.offload=20 layers.split=[20]")
    assert 'memory.gpu_overhead="1.0 GiB"' in c["lines"][0]


def test_check_still_refuses_what_llama_cpp_refuses():
    r = api.check("OLLAMA_FLASH_ATTENTION=0 OLLAMA_KV_CACHE_TYPE=q8_0 ollama run llama3.1:8b",
                      gpu="rtx-4090")
    c = r.to_dict()
    assert c["boots"] is False
    assert [x["check"] for x in c["refusals"]] == ["cache_types"]


@pytest.mark.parametrize("bad", ["0.x", "abc"])
def test_bad_ollama_version_is_one_line(bad):
    r = CliRunner().invoke(main, ["plan", "--engine", "ollama", "-m", "llama3.1:8b", "--gpu",
                                  "rtx-4090", "--ollama-version", bad])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "version" in r.output.lower()


def test_a_gpu_overhead_of_zero_is_ollamas_default_not_an_error():
    """OLLAMA_GPU_OVERHEAD=0 is the default: --gpu-overhead 0 plans like no overhead; sizes may
    be 0, a negative one is refused in one line."""
    from click.testing import CliRunner

    from kvcalc.cli import cli

    zero = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--engine", "ollama",
                                    "--gpu-overhead", "0", "-f", "json"])
    none = CliRunner().invoke(cli, ["plan", "-m", "llama-3.1-8b", "--engine", "ollama",
                                    "-f", "json"])
    assert zero.exit_code == none.exit_code == 0
    assert json.loads(zero.output)["llamacpp"] == json.loads(none.output)["llamacpp"]


def test_the_ollama_image_runs_what_follows_it_at_the_release_its_tag_names():
    """ollama/ollama's entry point is `ollama` with `serve` as its command: `docker run
    ollama/ollama:0.12.10 run llama3.1:8b` runs `ollama run llama3.1:8b` of 0.12.10, and the
    check, its lines and the plan behind it say 0.12.10."""
    from kvcalc import check

    d = check("docker run --gpus all -e OLLAMA_NUM_PARALLEL=2 ollama/ollama:0.12.10 run "
              "llama3.1:8b", gpu="rtx-4090").to_dict()
    assert d["program"] == "ollama run" and d["engine_version"] == "0.12.10"
    assert d["plan"]["version_band"] == "<0.30"
    assert d["lines"][0].startswith("msg=offload library=CUDA")
    bare = CliRunner().invoke(main, ["check", "--", "docker", "run", "ollama/ollama"])
    assert bare.exit_code == 2 and "'ollama serve'" in bare.output
