"""Measured serving runs to calibrate and check the step time against: AIConfigurator's
``silicon_sample.csv`` (NVIDIA, Apache-2.0; in the ``aiconfigurator-core`` 0.12.0 wheel on PyPI
at ``aiconfigurator_core/systems/silicon_sample.csv``).

Each row is one closed-loop benchmark (aiperf ``--concurrency C --num-requests 20C
--warmup-request-count 2C``, fixed prompt and output lengths, ``ignore_eos``) of one engine
(vLLM, SGLang, TensorRT-LLM) serving one model on one GPU type, with its measured mean time to
first token and time per output token. :func:`replay` runs the same benchmark through
``kvcalc simulate``'s scheduler and returns the modelled means.

**Which rows may be read.** Only rows whose ``int(sha256(id), 16) % 3`` is 0 (fitting) or 1
(validation) are ever loaded: :func:`split_of` is applied as each row is read and the rest are
dropped unseen; remainder 2 is kept for an independent check by others.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

#: the columns kept from silicon_sample.csv (the fixture holds these)
COLUMNS = ("id", "backend", "backend_version", "model_path", "system", "mode", "isl", "osl",
           "gemm_quant_mode", "moe_quant_mode", "batch_size", "tp_size", "pp_size",
           "attention_dp_size", "moe_tp_size", "moe_ep_size", "silicon_ttft_ms",
           "silicon_tpot_ms", "silicon_concurrency")
#: the split rule: remainder 0 fits, remainder 1 validates, remainder 2 is never read
FIT, VALIDATION, HELD_OUT = 0, 1, 2

#: Hugging Face ids of the runs -> kvcalc presets (quantized checkpoints of the same model)
MODEL_PRESETS = {
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "llama-3.1-8b",
    "meta-llama/Llama-3.1-70B": "llama-3.1-70b",
    "Qwen/Qwen3-32B": "qwen3-32b",
    "nvidia/Qwen3-32B-NVFP4": "qwen3-32b",
    "Qwen/Qwen3-235B-A22B-FP8": "qwen3-235b-a22b",
    "deepseek-ai/DeepSeek-R1": "deepseek-r1",
    "nvidia/DeepSeek-R1-NVFP4": "deepseek-r1",
    "deepseek-ai/DeepSeek-V3": "deepseek-v3",
    "openai/gpt-oss-120b": "gpt-oss-120b",
}
#: AIConfigurator's system names -> the GPU catalog
SYSTEMS = {"h100_sxm": "h100-sxm", "h200_sxm": "h200", "b200_sxm": "b200",
           "b300_sxm": "b300", "gb200": "gb200"}
#: gemm_quant_mode -> --weights-dtype ("" = the checkpoint's 16-bit weights)
WEIGHTS = {"": "bf16", "fp8": "fp8", "fp8_block": "fp8", "nvfp4": "nvfp4", "int4_wo": "int4"}
#: the engines' token budget per step (vLLM: its default for the GPU, kvcalc plan's;
#: TensorRT-LLM ``max_num_tokens``: 8192, its default; SGLang: :func:`sglang_chunk`) and
#: running-request cap (vLLM: max_num_seqs; the others: no cap below C)
ENGINE_BUDGET = {"vllm": None, "sglang": None, "trtllm": 8192}
#: the engines whose runs replay on their own simulator (its allocator's name): SGLang's and
#: TensorRT-LLM's schedulers (:mod:`.sglang`, :mod:`.trtllm`); the others on vLLM's.
#: Empty by default: the calibration is fitted on vLLM-scheduler replays of every
#: engine; ``tools/fit_timing.py --own-scheduler`` fills it with :data:`ENGINE_SCHEDULERS`
#: (an experiment, not yet validated against the published figures)
ENGINE_SCHEDULERS = {"sglang": "sglang-radix", "trtllm": "trtllm-paged"}
OWN_SCHEDULER: dict = {}
#: SGLang's ``--chunked-prefill-size`` default by GPU memory (python/sglang/srt/server_args.py,
#: ``_handle_gpu_memory_settings``): 8192 below 160 GiB (H100, H200), 16384 from there (B200,
#: B300, GB200); it is also the prefill batch's token budget (``PrefillAdder`` spends
#: ``rem_chunk_tokens`` on every request it adds, python/sglang/srt/managers/schedule_policy.py)
SGLANG_CHUNK_SMALL, SGLANG_CHUNK_LARGE = 8192, 16384
SGLANG_LARGE_GPU_MIB = 160 * 1024
#: aiperf's recipe: 20 x C measured requests after 2 x C warm-up requests
MEASURED_PER_SLOT, WARMUP_PER_SLOT = 20, 2
#: tensor-parallel degrees on one NVLink domain of 8 GPUs
MAX_TP = 8


#: the benchmark's concurrency, in ``silicon_data_source``
_CONCURRENCY = re.compile(r"silicon_concurrency=(\d+)")


def split_of(row_id: str) -> int:
    """``int(sha256(id), 16) % 3`` (0: fit, 1: validation, 2: held out, never read)."""
    return int(hashlib.sha256(row_id.encode("utf-8")).hexdigest(), 16) % 3


def read_rows(text: str) -> Iterator[dict]:
    """The rows of a silicon_sample CSV text whose split is FIT or VALIDATION (the others are
    dropped as they are read), with :data:`COLUMNS` only."""
    for row in csv.DictReader(io.StringIO(text)):
        if split_of(row["id"]) == HELD_OUT:
            continue
        if "silicon_data_source" in row:
            m = _CONCURRENCY.search(row["silicon_data_source"] or "")
            row["silicon_concurrency"] = m.group(1) if m else ""
        yield {k: row.get(k, "") for k in COLUMNS}


def load_rows(path: str | Path) -> list[dict]:
    """:func:`read_rows` of a CSV file (.gz read too)."""
    raw = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.decompress(raw)
    return list(read_rows(raw.decode("utf-8")))


@dataclass(frozen=True)
class Case:
    """One measured run, mapped onto kvcalc's inputs."""

    id: str
    split: int
    engine: str
    version: str
    preset: str
    family: str
    gpu: str
    weights_dtype: str
    tp: int
    concurrency: int
    isl: int
    osl: int
    ttft_s: float
    tpot_s: float


def family(preset: str) -> str:
    for prefix, name in (("llama", "Llama"), ("qwen3-235b", "Qwen3-MoE"), ("qwen3", "Qwen3"),
                         ("deepseek", "DeepSeek"), ("gpt-oss", "gpt-oss")):
        if preset.startswith(prefix):
            return name
    return preset


def to_case(row: dict) -> Case | str:
    """A :class:`Case`, or why the row is skipped (one line)."""
    if row["mode"] != "agg":
        return "disaggregated serving (prefill and decode workers)"
    preset = MODEL_PRESETS.get(row["model_path"])
    if preset is None:
        return "no kvcalc preset for the model"
    if row["system"] not in SYSTEMS:
        return "GPU not in the catalog"
    tp = int(row["tp_size"] or 1)
    if int(row["pp_size"] or 1) != 1:
        return "pipeline parallelism"
    if int(row["attention_dp_size"] or 1) > 1:
        return "data-parallel attention"
    if tp > MAX_TP:
        return "tensor parallelism beyond one 8-GPU NVLink domain"
    if row["silicon_concurrency"] and int(row["silicon_concurrency"]) != int(row["batch_size"]):
        return "benchmark concurrency differs from the batch size (unrecorded parallelism)"
    if row["gemm_quant_mode"] not in WEIGHTS:
        return "weights format not modelled"
    return Case(id=row["id"], split=split_of(row["id"]), engine=row["backend"],
                version=row["backend_version"] or "unknown", preset=preset,
                family=family(preset), gpu=SYSTEMS[row["system"]],
                weights_dtype=WEIGHTS[row["gemm_quant_mode"]], tp=tp,
                concurrency=int(row["batch_size"]), isl=int(row["isl"]), osl=int(row["osl"]),
                ttft_s=float(row["silicon_ttft_ms"]) / 1e3,
                tpot_s=float(row["silicon_tpot_ms"]) / 1e3)


def cases(rows: Iterable[dict]) -> tuple[list[Case], dict[str, int]]:
    """The rows that map onto kvcalc, and how many were skipped for each reason."""
    out, skipped = [], {}
    for row in rows:
        c = to_case(row)
        if isinstance(c, str):
            skipped[c] = skipped.get(c, 0) + 1
        else:
            out.append(c)
    return out, skipped


def replay(case: Case, calibration, transform=None) -> tuple[float, float]:
    """(mean TTFT, mean TPOT) in seconds that ``kvcalc simulate`` models for ``case``: a closed
    loop of ``case.concurrency`` requests, 2C warm-up then 20C measured, of fixed lengths, with
    the step-time ``calibration`` (a name or a :class:`.timing.Calibration`). Raises
    :class:`kvcalc.errors.UsageError` when kvcalc cannot simulate it (the plan does not fit).

    Each engine's runs replay on that engine's own scheduler and pool when
    :data:`OWN_SCHEDULER` names it (``kvcalc simulate --engine sglang|trtllm``: SGLang's
    ``PrefillAdder`` on the pool ``kvcalc plan --engine sglang`` sizes, requests sent with
    ``ignore_eos`` as the benchmark sends them; TensorRT-LLM's capacity scheduler on the blocks
    ``kvcalc plan --engine trtllm`` sizes, its LLM API defaults), else on vLLM's scheduler with
    the engine's batching approximated (:data:`ENGINE_BUDGET`, SGLang's prompts first)."""
    from ..hardware import resolve_gpu
    from ..planning import PlanInputs
    from . import Options, simulate
    from .requests import synthetic

    spec = _spec(case.preset)
    c = case.concurrency
    gpu = resolve_gpu(case.gpu)
    n = (MEASURED_PER_SLOT + WARMUP_PER_SLOT) * c
    plan = dict(gpu=gpu, tp=case.tp, max_len=case.isl + case.osl,
                weights_dtype=case.weights_dtype)
    if case.engine in OWN_SCHEDULER:
        plan.update(engine=case.engine)
        run = dict(allocators=(OWN_SCHEDULER[case.engine],), ignore_eos=True)
    else:
        budget = sglang_chunk(gpu) if case.engine == "sglang" else ENGINE_BUDGET[case.engine]
        plan.update(max_batched_tokens=budget,
                    max_num_seqs=None if case.engine == "vllm" else max(c, 1))
        run = dict(allocators=("paged",), prefill_first=case.engine == "sglang")
    res = simulate(spec, PlanInputs(**plan), lambda: synthetic(n, None, case.isl, case.osl),
                   Options(calibration=calibration, concurrency=c, warmup=WARMUP_PER_SLOT * c,
                           timing_transform=transform, **run))
    t = next(iter(res.runs.values())).totals
    return t.ttft.total / t.ttft.n, t.tpot.total / t.tpot.n


def sglang_chunk(gpu) -> int:
    """SGLang's default ``--chunked-prefill-size`` on ``gpu`` (:data:`SGLANG_CHUNK_SMALL`,
    :data:`SGLANG_CHUNK_LARGE`; SGLang reads the memory in MiB)."""
    mib = gpu.memory_bytes // 2**20
    return SGLANG_CHUNK_LARGE if mib >= SGLANG_LARGE_GPU_MIB else SGLANG_CHUNK_SMALL


_SPECS: dict = {}


def _spec(preset: str):
    if preset not in _SPECS:
        from ..model import load_spec

        _SPECS[preset] = load_spec(preset)[1]
    return _SPECS[preset]
