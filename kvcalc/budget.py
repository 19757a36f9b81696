"""Budget primitives every engine uses: the per-GPU budget record, pipeline stages, weight bytes
per stage and the activation-peak estimate. Below the engines (docs/planning.md "The budget").

An engine turns these into its own KV budget (vLLM: :func:`kvcalc.engines.vllm.vllm_budgets`;
SGLang, TensorRT-LLM, llama.cpp: their modules); ``kvcalc.planning`` only orchestrates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .arch import ModelSpec
from .errors import UsageError
from .params import ParamCount, stage_parameters, weight_bytes
from .units import cdiv

ACTIVATION_BYTES = 2                       # bf16/fp16 activations
#: sampler dummy run per (row, vocab entry): fp32 logits + fp32 probs + sorted fp32 logits +
#: int64 sort indices (top-k/top-p), vLLM v1 ``_dummy_sampler_run``
SAMPLER_BYTES_PER_LOGIT = 4 + 4 + 4 + 8

#: how a budget was sized: total x utilization minus what was profiled ("estimate"), vLLM
#: 0.34's extensible KV cache measured after warm-up ("extensible"), or given ("--kv-budget")
ESTIMATE, EXTENSIBLE, GIVEN = "computed", "extensible", "--kv-budget"


@dataclass(frozen=True)
class Budget:
    """The KV budget of one GPU of one pipeline stage, term by term (bytes)."""

    total_bytes: int
    utilization: float
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    cuda_graph_bytes: int
    overhead_bytes: int        # activations + non-torch + CUDA graphs (or --overhead)
    kv_bytes: int
    source: str                # "computed", "extensible" or "--kv-budget"
    #: vLLM >= 0.34 extensible KV cache: the margin kept free after warm-up,
    #: max(1 GiB, 0.75 x transient peak) (0 for other budgets)
    margin_bytes: int = 0

    @property
    def requested_bytes(self) -> int:
        return requested_memory(self.total_bytes, self.utilization)


def requested_memory(total: int, utilization: float) -> int:
    """The memory an engine may use: ``ceil(total x utilization)`` (vLLM ``request_memory``,
    vllm/v1/worker/utils.py)."""
    return math.ceil(total * utilization)


def pp_partition(num_layers: int, pp: int) -> list[tuple[int, int]]:
    """``get_pp_indices`` (vLLM; SGLang and TensorRT-LLM split the same way): equal stages, the
    remainder added from the second-to-last stage backwards. Returns (start, end) per stage."""
    if pp < 1 or pp > num_layers:
        raise UsageError(f"invalid pipeline-parallel size {pp} for {num_layers} layers")
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    out, start = [], 0
    for n in parts:
        out.append((start, start + n))
        start += n
    return out


def activation_bytes(spec: ModelSpec, params: ParamCount, tokens: int, num_seqs: int,
                     tp: int) -> int:
    """Peak activations of the engine's profile run over ``tokens`` (documented estimate):
    ``tokens x (4 x hidden + 3 x intermediate x top_k / tp) x 2 B`` plus the sampler's dummy run
    over ``min(num_seqs, tokens)`` rows of the vocabulary (:data:`SAMPLER_BYTES_PER_LOGIT`)."""
    cfg = spec.config
    inter = int(cfg.get("moe_intermediate_size") or cfg.get("intermediate_size")
                or cfg.get("n_inner") or 4 * spec.hidden_size) if not isinstance(
                    cfg.get("intermediate_size"), list) else int(max(cfg["intermediate_size"]))
    top_k = int(cfg.get("num_experts_per_tok") or 1) if cfg.get("moe_intermediate_size") else 1
    per_token = 4 * spec.hidden_size + 3 * inter * top_k // tp
    logits = min(num_seqs, tokens) * (spec.vocab_size or 0) * SAMPLER_BYTES_PER_LOGIT
    return tokens * per_token * ACTIVATION_BYTES + logits


def stage_weight_bytes(spec: ModelSpec, params: ParamCount, dtype: str, tp: int,
                       stages: list[tuple[int, int]]) -> list[int]:
    """Weight bytes per GPU for each pipeline stage: its own layers' parameters (exact, layer by
    layer), the embeddings on the first stage and the LM head on the last, x the weights dtype,
    sharded over ``tp``."""
    if len(stages) == 1:
        return [cdiv(weight_bytes(params, dtype), tp)]
    out = []
    for i, (start, end) in enumerate(stages):
        stage = stage_parameters(params, start, end, i == 0, i == len(stages) - 1, len(stages))
        out.append(cdiv(weight_bytes(stage, dtype), tp))
    return out
