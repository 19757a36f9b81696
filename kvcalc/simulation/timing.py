"""How long one engine step takes: a calibrated roofline (every figure that depends on it is
*modelled*, not measured, and names the calibration it used).

One step schedules ``T`` new tokens (prefill chunks and one token per decoding request); its
requests then hold ``kv`` tokens (their context, the tokens written this step included), and
its prefill chunks add ``extra`` query-key pairs beyond one per held token. Per GPU (tensor
parallel degree ``tp``: every figure is the GPU's shard; the GPUs work at once):

    step = overhead + c_mix [a prompt chunk in the step] + c_tok x T + c_seq x S
         + c_wmem x Wdense + c_wexp x Wexperts(T) + c_flop[dtype, gen] x Fgemm(T)
         + c_max x max(Wdense + Wexperts(T), Fgemm(T))                            (GEMMs)
         + c_kv x kv x KV bytes/token / bandwidth                                   (KV read)
         + c_attn x (kv + extra) x attention FLOPs per pair / bf16 peak         (attention)
         + c_arbw x ARbytes(T) / link bandwidth + c_arlat x all-reduces x link latency (TP)

and each request's time to first token (and end-to-end time) carries the frontend's latency,
``c_req + c_req_tok x prompt tokens`` (HTTP, tokenization, detokenization: not a step).

- ``Wdense + Wexperts(T)``: the weights the step reads / memory bandwidth: the dense weights,
  plus each MoE layer's routed experts that T tokens touch: with E experts, top-k routing and
  uniform routing the expected share is ``1 - (1 - k/E)^T`` (nearly all of them from a few
  dozen tokens on);
- ``Fgemm(T)``: ``2 x active parameters x T`` FLOPs at the GPU's dense peak for the weights'
  compute dtype (bf16, fp8, fp4: the GPU catalog; int4 weight-only, fp4 weights on a GPU
  without fp4 units (weight-only too) and fp16 run at the bf16 peak), with a coefficient per
  dtype (``c_flop``, ``c_flop8``, ``c_flop4``) and, for bf16 and fp8, per GPU generation
  (``c_flop_bw``, ``c_flop8_bw`` on Blackwell, whose peaks doubled Hopper's: the share of the
  peak that GEMMs reach is the generation's, not the model's; fp4 exists on Blackwell only;
  other generations, unmeasured, take Hopper's);
- ``c_mix``: a step that computes a prompt chunk runs outside the decode CUDA graphs (the
  engines capture decode-only batches);
- ``c_seq x S``: the host's work per request in the step (``S`` requests scheduled: building
  its inputs, sampling, detokenizing and streaming its token), which grows with the batch
  while the GPU's decode time barely does;
- attention FLOPs per (query, key) pair and layer: ``2 x heads x (d_k + d_v)`` (QK^T and PV);
  MLA (DeepSeek) as vLLM/FlashMLA run it, the latent absorbed:
  ``2 x heads x (2 x kv_lora_rank + rope_dim)``; heads split by tp;
- tensor parallelism: two all-reduces per layer (after attention, after the MLP) of
  ``T x hidden x 2 B`` each, a ring moving ``2 (tp - 1) / tp`` of it over each GPU's link
  (catalog: NVLink bandwidth per direction and latency).

The coefficients ``c_*`` (:class:`Calibration`) are fitted on an engine's measured serving
runs, for each configuration on the runs nearest it (:mod:`.local`; ``tools/fit_timing.py``
writes the runs and reports the accuracy, docs/simulation.md; :func:`calibrations` holds the
engine-wide fits, every run alike); ``roofline`` is the uncalibrated estimate (2 ms + weights
and KV read + FLOPs at the peak, no communication), used where no run was measured (llama.cpp).
``--step-time`` replaces the whole estimate with a constant. Memory figures depend on time only
through arrivals: with every request arriving at once, or a closed loop, time changes no memory
figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources

from ..arch import AttentionLayer, MLALayer
from ..errors import UsageError

#: per-step overhead of the uncalibrated roofline (scheduling, sampling, launches), seconds
DEFAULT_STEP_OVERHEAD_S = 0.002
#: FLOPs per active parameter per token (one multiply-add)
FLOPS_PER_PARAM_TOKEN = 2
#: all-reduces per decoder layer under tensor parallelism (Megatron-LM: after the attention
#: output projection and after the MLP down projection; Shoeybi et al. 2019, section 3)
ALLREDUCES_PER_LAYER = 2
#: bytes of one activation value exchanged by the all-reduce (bf16)
ACTIVATION_BYTES = 2
#: the fitted coefficients, written by tools/fit_timing.py
CALIBRATION_FILE = "calibration.json"
#: the weights dtypes whose GEMMs run at the fp8 / fp4 tensor-core peak (the rest: bf16)
FP8_WEIGHTS = frozenset({"fp8", "int8"})
FP4_WEIGHTS = frozenset({"nvfp4", "mxfp4"})


@dataclass(frozen=True)
class Calibration:
    """The coefficients of the step-time formula for one engine (module docstring)."""

    name: str
    overhead_s: float
    c_mix: float = 0.0          # seconds more for a step that computes a prompt chunk
    c_tok: float = 0.0          # seconds per scheduled token
    c_seq: float = 0.0          # seconds per scheduled request
    c_wmem: float = 0.0         # the dense weights' read
    c_wexp: float = 0.0         # the routed experts' read
    c_flop: float = 0.0         # GEMM FLOPs at the bf16 peak ...
    c_flop8: float = 0.0        # ... at the fp8 peak
    c_flop4: float = 0.0        # ... at the fp4 peak (Blackwell)
    c_flop_bw: float = 0.0      # GEMM FLOPs at the bf16 peak on Blackwell ...
    c_flop8_bw: float = 0.0     # ... at the fp8 peak on Blackwell
    c_max: float = 0.0
    c_kv: float = 0.0
    c_attn: float = 0.0
    c_arbw: float = 0.0
    c_arlat: float = 0.0
    #: per-request frontend latency (HTTP, tokenization, detokenization) added to the time to
    #: first token and end to end: seconds, and seconds per prompt token
    c_req: float = 0.0
    c_req_tok: float = 0.0
    #: where the figures come from (printed with every modelled time)
    source: str = ""

    @staticmethod
    def coefficient_names() -> tuple[str, ...]:
        return tuple(f.name for f in fields(Calibration) if f.name not in ("name", "source"))


#: the uncalibrated roofline: 2 ms + (weights + KV read) / bandwidth + FLOPs / peak
ROOFLINE = Calibration("roofline", DEFAULT_STEP_OVERHEAD_S, c_wmem=1.0, c_wexp=1.0,
                       c_flop=1.0, c_flop8=1.0, c_flop4=1.0, c_flop_bw=1.0, c_flop8_bw=1.0,
                       c_kv=1.0,
                       source="uncalibrated roofline")


@lru_cache(maxsize=1)
def calibrations() -> dict[str, Calibration]:
    """The fitted calibrations by engine name (``kvcalc/simulation/calibration.json``), and the
    uncalibrated ``roofline``."""
    raw = json.loads(resources.files("kvcalc.simulation").joinpath(CALIBRATION_FILE)
                     .read_text(encoding="utf-8"))
    out = {"roofline": ROOFLINE}
    for name, entry in raw["engines"].items():
        out[name] = Calibration(name=name, source=f"{raw['name']} ({name})",
                                **{k: float(entry["coefficients"][k])
                                   for k in Calibration.coefficient_names()})
    return out


def calibration(name: str) -> Calibration:
    known = calibrations()
    if name not in known:
        raise UsageError(f"unknown calibration '{name}': choose from {', '.join(known)}")
    return known[name]


@dataclass(frozen=True)
class ModelFigures:
    """What the step time needs of a model on one GPU (its tensor-parallel shard)."""

    dense_weight_bytes: float        # read every step
    expert_weight_bytes: float       # the routed experts, read as far as tokens touch them
    experts: int                     # routed experts per MoE layer (0: dense)
    top_k: int
    gemm_flops_per_token: float      # 2 x active parameters / tp
    kv_bytes_per_token: float        # per GPU
    attn_flops_per_pair: float       # per GPU, every attention layer
    allreduces: int                  # per step (0 without tensor parallelism)
    allreduce_bytes_per_token: float  # bytes over each GPU's link per token scheduled
    tp: int = 1


def model_figures(spec, params, weights_bytes: float, kv_bytes_per_token: float,
                  tp: int, stage: tuple[int, int, float] | None = None) -> ModelFigures:
    """:class:`ModelFigures` of ``spec`` (parameter count ``params``, ``weights_bytes`` on each
    GPU) split over ``tp`` GPUs. ``stage``: (start, end, share) of one pipeline stage holding
    layers ``start:end`` and ``weights_bytes`` (its own): its attention layers and all-reduces
    exactly, the routed experts of its layers (MoE layers taken as evenly spread), and
    ``share`` (its weights over the model's) of the GEMM FLOPs."""
    cfg = spec.config
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts")
                  or cfg.get("n_routed_experts") or 0)
    top_k = int(cfg.get("num_experts_per_tok") or cfg.get("experts_per_token") or 1)
    start, end, share = stage if stage is not None else (0, len(spec.layers), 1.0)
    per_param = weights_bytes / share / params.total if params.total and share else 0.0
    routed = 0.0
    if experts > top_k >= 1:
        # total - active = (E - k) x routed expert parameters / E
        routed = (params.total - params.active) * experts / (experts - top_k)
        routed *= (end - start) / len(spec.layers) if spec.layers else 1.0
    pairs = 0.0
    layers = 0
    for layer in spec.layers[start:end]:
        if isinstance(layer, MLALayer):
            pairs += 2 * layer.num_heads * (2 * layer.kv_lora_rank + layer.qk_rope_head_dim)
            layers += 1
        elif isinstance(layer, AttentionLayer):
            pairs += 2 * spec.num_attention_heads * (layer.head_dim_k + layer.head_dim_v)
            layers += 1
        else:
            layers += 1
    ring = 2 * (tp - 1) / tp if tp > 1 else 0.0
    return ModelFigures(
        dense_weight_bytes=weights_bytes - routed * per_param,
        expert_weight_bytes=routed * per_param, experts=experts if routed else 0, top_k=top_k,
        gemm_flops_per_token=FLOPS_PER_PARAM_TOKEN * params.active * share / tp,
        kv_bytes_per_token=kv_bytes_per_token, attn_flops_per_pair=pairs / tp,
        allreduces=ALLREDUCES_PER_LAYER * layers if tp > 1 else 0,
        allreduce_bytes_per_token=ALLREDUCES_PER_LAYER * layers * ring * spec.hidden_size
        * ACTIVATION_BYTES, tp=tp)


def gemm_peak(gpu, weights_dtype: str) -> tuple[float, str]:
    """(FLOP/s, dtype) of the GEMMs for ``weights_dtype`` on ``gpu``: the catalog's dense
    fp4 / fp8 peak where the GPU has one, else its bf16 peak. FP4 weights on a GPU without fp4
    tensor cores (Hopper, Ada, Ampere) run weight-only kernels that dequantize to 16 bits --
    vLLM's Marlin W4A16 FP4 path (``quantization/utils/marlin_utils_fp4.py``, SM 8.0 and up),
    the Triton MXFP4 MoE kernels gpt-oss runs on Hopper -- at the bf16 peak, as int4 does."""
    if weights_dtype in FP4_WEIGHTS and gpu.fp4_tflops:
        return gpu.fp4_tflops * 1e12, "fp4"
    if weights_dtype in FP8_WEIGHTS and gpu.fp8_tflops:
        return gpu.fp8_tflops * 1e12, "fp8"
    return (gpu.bf16_tflops or 0.0) * 1e12, "bf16"


#: the GPU generation with its own GEMM coefficients (``Calibration.c_flop_bw``, ...)
BLACKWELL = "blackwell"


def gemm_coefficient(cal: Calibration, gpu, dtype: str) -> float:
    """The coefficient of ``cal`` for GEMMs at the ``dtype`` peak (:func:`gemm_peak`) on
    ``gpu``'s generation."""
    if dtype == "fp4":
        return cal.c_flop4
    if gpu.architecture == BLACKWELL:
        return cal.c_flop8_bw if dtype == "fp8" else cal.c_flop_bw
    return cal.c_flop8 if dtype == "fp8" else cal.c_flop


@dataclass(frozen=True)
class StepTime:
    """The step-time model: ``duration(tokens, kv_tokens, extra_pairs)`` in seconds."""

    calibration: Calibration
    base_s: float = 0.0              # overhead + all-reduce latencies
    per_token_s: float = 0.0         # c_tok + the all-reduces' bandwidth term, per token
    per_seq_s: float = 0.0           # c_seq: per request scheduled
    w_dense_s: float = 0.0           # dense weights / bandwidth
    w_expert_s: float = 0.0          # routed experts / bandwidth
    miss: float = 1.0                # 1 - k/E: an expert's chance to be missed by one token
    flop_s: float = 0.0              # GEMM seconds per token at the peak
    kv_s: float = 0.0                # c_kv x KV read seconds per held token
    attn_s: float = 0.0              # c_attn x attention seconds per query-key pair
    c_wmem: float = 0.0
    c_wexp: float = 0.0
    c_flop: float = 0.0
    c_max: float = 0.0
    prefill_s: float = 0.0           # c_mix: a step with a prompt chunk
    peak_dtype: str = "bf16"
    bandwidth: float = 0.0
    fixed_s: float | None = None     # --step-time
    request_s: float = 0.0           # frontend latency per request ...
    request_token_s: float = 0.0     # ... and per prompt token

    def frontend(self, prompt: int) -> float:
        """The frontend's latency for a request of ``prompt`` tokens (added to its TTFT and
        end-to-end time; not a step)."""
        return self.request_s + self.request_token_s * prompt

    def duration(self, tokens: int, kv_tokens: int, extra_pairs: float = 0,
                 seqs: int = 0) -> float:
        """One step scheduling ``tokens`` new tokens whose requests hold ``kv_tokens``
        (``extra_pairs``: the prefill chunks' query-key pairs beyond one per held token;
        ``seqs``: the requests scheduled)."""
        if self.fixed_s is not None:
            return self.fixed_s
        wd = self.w_dense_s
        we = self.w_expert_s * (1.0 - self.miss ** tokens) if self.w_expert_s else 0.0
        w = wd + we
        f = self.flop_s * tokens
        d = (self.base_s + self.per_token_s * tokens + self.per_seq_s * seqs
             + self.c_wmem * wd + self.c_wexp * we
             + self.c_flop * f + self.c_max * (w if w > f else f) + self.kv_s * kv_tokens
             + self.attn_s * (kv_tokens + extra_pairs))
        return d + self.prefill_s if extra_pairs else d

    def decode_series(self, running: int, kv_tokens: int) -> tuple[float, float]:
        """(c0, c1): decode step j of ``running`` requests holding ``kv_tokens`` before step 0
        lasts ``c0 + c1 x j`` (each request reads its context plus the token it writes)."""
        if self.fixed_s is not None:
            return self.fixed_s, 0.0
        c0 = self.duration(running, kv_tokens + running, 0, running)
        return c0, (self.kv_s + self.attn_s) * running

    def describe(self) -> str:
        if self.fixed_s is not None:
            return f"fixed {self.fixed_s * 1e3:g} ms per step (--step-time)"
        cal = self.calibration
        if cal.name == "roofline":
            return (f"roofline (uncalibrated): {cal.overhead_s * 1e3:g} ms + (weights "
                    f"{self.w_dense_s * self.bandwidth / 2**30:.2f} GiB + KV read) / "
                    f"{self.bandwidth / 1e12:.2f} TB/s + FLOPs at the {self.peak_dtype} peak")
        return (f"calibrated step time, {cal.source}: {cal.overhead_s * 1e3:.2f} ms overhead + "
                f"weights, KV and attention at {self.bandwidth / 1e12:.2f} TB/s and the "
                f"{self.peak_dtype} peak + TP all-reduce")


def step_time_model(gpu, figures: ModelFigures | None, weights_dtype: str = "bf16",
                    cal: Calibration | str = "roofline", overhead_s: float | None = None,
                    fixed_s: float | None = None) -> StepTime:
    """The model for ``figures`` on ``gpu`` with calibration ``cal`` (``overhead_s`` replaces
    its per-step overhead), or a constant ``fixed_s``."""
    if isinstance(cal, str):
        cal = calibration(cal)
    if fixed_s is not None:
        if not fixed_s > 0 or fixed_s != fixed_s or fixed_s == float("inf"):
            raise UsageError(f"invalid --step-time {fixed_s}: must be a positive number of "
                             "seconds")
        return StepTime(cal, fixed_s=fixed_s)
    overhead = cal.overhead_s if overhead_s is None else overhead_s
    if not 0 <= overhead < float("inf"):
        raise UsageError(f"invalid --step-overhead {overhead}: must be a non-negative number")
    peak, dtype = gemm_peak(gpu, weights_dtype)
    if not gpu.memory_bandwidth_bytes_per_s or not peak or not gpu.bf16_tflops:
        raise UsageError(f"the GPU catalog has no bandwidth or bf16 peak for {gpu.name}: give "
                         "--step-time SECONDS")
    f = figures
    bw = float(gpu.memory_bandwidth_bytes_per_s)
    per_token = cal.c_tok
    base = overhead
    if f.allreduces and (cal.c_arbw or cal.c_arlat):
        if not gpu.interconnect_bandwidth_bytes_per_s:
            raise UsageError(f"the GPU catalog has no interconnect bandwidth for {gpu.name}: "
                             "give --tp 1 or --step-time SECONDS")
        per_token += (cal.c_arbw * f.allreduce_bytes_per_token
                      / gpu.interconnect_bandwidth_bytes_per_s)
        base += cal.c_arlat * f.allreduces * (gpu.interconnect_latency_s or 0.0)
    miss = 1.0 - f.top_k / f.experts if f.experts else 1.0
    return StepTime(cal, base_s=base, per_token_s=per_token, per_seq_s=cal.c_seq,
                    w_dense_s=f.dense_weight_bytes / bw,
                    w_expert_s=f.expert_weight_bytes / bw, miss=miss,
                    flop_s=f.gemm_flops_per_token / peak,
                    kv_s=cal.c_kv * f.kv_bytes_per_token / bw,
                    attn_s=cal.c_attn * f.attn_flops_per_pair / (gpu.bf16_tflops * 1e12),
                    c_wmem=cal.c_wmem, c_wexp=cal.c_wexp,
                    c_flop=gemm_coefficient(cal, gpu, dtype),
                    c_max=cal.c_max, prefill_s=cal.c_mix, peak_dtype=dtype,
                    bandwidth=bw, request_s=cal.c_req, request_token_s=cal.c_req_tok)


#: values per token one pipeline stage sends the next: vLLM's ``IntermediateTensors`` of the
#: decoder models carry the hidden states and the residual
#: (``make_empty_intermediate_tensors_factory(["hidden_states", "residual"], hidden_size)``,
#: vllm/model_executor/models/llama.py), in the activations' dtype (bf16)
PP_TENSORS_PER_TOKEN = 2


@dataclass(frozen=True)
class PipelineStepTime(StepTime):
    """A pipeline of ``stages`` stages: one simulated step is one round of the pipeline, in
    which every scheduled request moves one step through all the stages.

    The scheduled requests are split into ``m = min(stages, requests)`` micro-batches (vLLM
    keeps ``pp`` batches in flight, ``pp + 1`` with async scheduling, and a request is in one
    of them at a time); each stage computes a micro-batch in the time of the base model (the
    slowest stage's figures, :func:`pipeline_step_time`) on ``1/m`` of the step's tokens, held
    tokens and pairs, plus sending its activations to the next stage. A round lasts ``stages``
    such stage times: a full pipeline (m = stages) completes one micro-batch per stage time,
    and a request's token (its first one included) comes ``stages`` stage latencies after it
    was scheduled. The host's work per request (``c_seq``) is done once per round."""

    stages: int = 1
    send_s: float = 0.0              # activation transfer per token, between two stages
    send_base_s: float = 0.0         # link latency per transfer

    def duration(self, tokens: int, kv_tokens: int, extra_pairs: float = 0,
                 seqs: int = 0) -> float:
        if self.fixed_s is not None:
            return self.fixed_s
        p = self.stages
        m = p if seqs >= p else (seqs or 1)
        per = tokens / m
        stage = StepTime.duration(self, per, kv_tokens / m, extra_pairs / m)
        # the host schedules, samples and streams each request once per round
        return p * (stage + self.send_base_s + self.send_s * per) + self.per_seq_s * seqs

    def decode_series(self, running: int, kv_tokens: int) -> tuple[float, float]:
        if self.fixed_s is not None:
            return self.fixed_s, 0.0
        m = min(self.stages, running) or 1
        c0 = self.duration(running, kv_tokens + running, 0, running)
        return c0, self.stages / m * (self.kv_s + self.attn_s) * running

    def describe(self) -> str:
        text = StepTime.describe(self)
        if self.fixed_s is not None:
            return text
        return (f"{text}; pipeline of {self.stages} stages: a step is {self.stages} x the "
                f"slowest stage's time on one micro-batch"
                + (" + activation transfer" if self.send_s or self.send_base_s else ""))


def pipeline_step_time(base: StepTime, stage_models: list[StepTime], gpu,
                       hidden_size: int) -> PipelineStepTime:
    """The model of a pipeline whose stages run ``stage_models`` (each built on its stage's
    :class:`ModelFigures`): the slowest stage taken term by term (each term the largest over
    the stages -- an upper bound of every stage, equal to the slowest one when one stage is
    the largest in every term, as with vLLM's split: the stages differ by at most a layer and
    the first holds the embeddings, the last the LM head), the activations sent over the
    catalog's GPU link (:data:`PP_TENSORS_PER_TOKEN` bf16 vectors of ``hidden_size`` per token,
    plus its latency; nothing where the catalog has no link figures). ``base`` carries the
    calibration, the overhead and the constant step time."""
    if base.fixed_s is not None:
        return PipelineStepTime(base.calibration, fixed_s=base.fixed_s, stages=len(stage_models))
    top = {name: max(getattr(s, name) for s in stage_models)
           for name in ("base_s", "per_token_s", "per_seq_s", "w_dense_s", "w_expert_s",
                        "flop_s", "kv_s", "attn_s")}
    bw = gpu.interconnect_bandwidth_bytes_per_s
    send = PP_TENSORS_PER_TOKEN * hidden_size * ACTIVATION_BYTES / bw if bw else 0.0
    fields_ = {f.name: getattr(base, f.name) for f in fields(StepTime)}
    fields_.update(top)
    return PipelineStepTime(**fields_, stages=len(stage_models), send_s=send,
                            send_base_s=(gpu.interconnect_latency_s or 0.0) if bw else 0.0)
