"""GPU specs: the catalog in ``presets/gpus/*.yaml`` and ad-hoc ``--gpu 48GiB`` cards.

``memory_bytes`` is the total the runtime reports (``torch.cuda.mem_get_info()`` /
``cudaMemGetInfo`` total, what vLLM multiplies by ``gpu_memory_utilization``), not the
marketing figure: an "80 GB" H100 reports 85,045,477,376 B = 79.20 GiB. Sources per card are
in the YAML files and presets/gpus/SOURCES.md.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, UsageError
from .sources import builtin_preset_dir, preset_documents, suggest
from .units import GiB, parse_bytes

_SIZE = re.compile(r"^\s*[0-9][0-9_.]*\s*[a-zA-Z]*\s*$")


class GpuSpec(BaseModel):
    """One GPU model as kvcalc plans with it (validated when the catalog is read)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    display_name: str
    aliases: tuple[str, ...] = ()
    vendor: str = "unknown"
    architecture: str = "unknown"
    #: CUDA compute capability "major.minor" (NVIDIA) or the gfx target (AMD): vLLM picks its
    #: attention backends, hence block sizes, by it (presets/gpus/SOURCES.md)
    compute_capability: str | None = None
    memory_bytes: int = Field(gt=0)
    #: the total ``nvidia-smi --query-gpu=memory.total`` prints, in MiB (larger than the runtime
    #: total: it includes the driver's reservation); SGLang sizes its automatic
    #: ``mem_fraction_static`` from it (``get_nvgpu_memory_capacity``)
    smi_memory_mib: int | None = Field(default=None, gt=0)
    smi_memory_source: str | None = None
    marketing_memory: str | None = None
    memory_bandwidth_bytes_per_s: int | None = Field(default=None, ge=0)
    bf16_tflops: float | None = None
    #: dense (not 2:4-sparse) tensor-core peaks for fp8 and fp4 GEMMs, TFLOP/s (None: the
    #: GPU has no such units or the vendor publishes no figure); the step-time model runs a
    #: model's GEMMs at the peak of its weights' dtype (kvcalc/simulation/timing.py)
    fp8_tflops: float | None = Field(default=None, gt=0)
    fp4_tflops: float | None = Field(default=None, gt=0)
    fp8: bool = False
    interconnect: str | None = None
    #: GPU-to-GPU link bandwidth per GPU and direction, bytes/s (NVLink: half the
    #: bidirectional figure spec sheets quote), and the latency of one small all-reduce over it
    #: in seconds: the tensor-parallel all-reduce term of the step time
    interconnect_bandwidth_bytes_per_s: int | None = Field(default=None, gt=0)
    interconnect_latency_s: float | None = Field(default=None, ge=0)
    peak_source: str | None = None
    interconnect_source: str | None = None
    memory_source: str | None = None
    spec_source: str | None = None

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB

    @property
    def cuda_capability(self) -> tuple[int, int] | None:
        """(major, minor) of an NVIDIA compute capability; None for AMD or an unknown card."""
        parts = (self.compute_capability or "").split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            return None
        return int(parts[0]), int(parts[1])

    @property
    def smi_mib(self) -> int:
        """The nvidia-smi total in MiB: the catalog's figure, else the runtime total in MiB
        (smaller by the driver's reservation, a few hundred MiB)."""
        return self.smi_memory_mib or self.memory_bytes // (1 << 20)


@lru_cache(maxsize=1)
def load_catalog() -> tuple[GpuSpec, ...]:
    """Every GPU in the built-in catalog, sorted by name."""
    out = []
    for path, data in preset_documents(builtin_preset_dir("gpus")):
        try:
            out.append(GpuSpec(**data))
        except (TypeError, ValidationError) as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(f"invalid GPU preset {path}: {first}") from None
    return tuple(out)


def find_gpu(name: str) -> GpuSpec | None:
    key = name.strip().lower()
    for gpu in load_catalog():
        if key == gpu.name or key in gpu.aliases:
            return gpu
    return None


def resolve_gpu(text: str) -> GpuSpec:
    """``--gpu``: a catalog name or alias (``h100``, ``a100-40gb``), or a memory size for a card
    that is not in the catalog (``48GiB``, ``24GB``: taken as the runtime-reported total)."""
    gpu = find_gpu(text)
    if gpu is not None:
        return gpu
    if _SIZE.match(text) and any(c.isdigit() for c in text):
        size = parse_bytes(text, "GPU memory")
        if size <= 0:
            raise UsageError(f"invalid GPU memory '{text}': must be positive")
        return GpuSpec(name=f"custom-{text.strip()}", display_name=f"custom GPU with {text.strip()}",
                       memory_bytes=size, memory_source="given on the command line")
    names = [g.name for g in load_catalog()] + [a for g in load_catalog() for a in g.aliases]
    raise UsageError(f"unknown GPU '{text}'" + suggest(text, names)
                     + " (kvcalc gpus lists them; or give a size such as 48GiB)")
