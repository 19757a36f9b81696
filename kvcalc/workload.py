"""Workloads (sequence lengths) and how contiguous and paged allocation hold them.

A workload is a list of sequences, each ``prompt + output`` tokens long when it finishes (the
moment it holds the most KV). Three ways to give one:

- fixed: ``--prompt-len P --output-len G`` (every sequence P + G tokens);
- a distribution of the total length: ``--dist uniform|normal|lognormal --mean M --std S``
  (``--samples`` draws with Python's ``random``, seeded by ``--seed``, clipped to
  ``[1, max_len]``); uniform spans ``mean ± sqrt(3)·std``;
- a trace: JSONL lines ``{"prompt_len": 812, "output_len": 164}`` or a CSV with
  ``prompt_len,output_len`` columns.

Allocation (per GPU, with that GPU's share of the KV, see :func:`compare_allocators`):

- contiguous: every sequence reserves ``max_len`` token slots up front (HF ``StaticCache``,
  pre-paging servers): ``floor(budget / reserved)`` sequences. The reservation is counted in the
  same allocation unit as paged (whole blocks), and for windowed layers it is the most that
  layer can hold at any point of a sequence up to ``max_len`` (for a sliding window
  ``ceil((W-1)/B) + 1`` blocks), so the comparison isolates the reservation policy and paged
  is never below contiguous;
- paged: every sequence holds whole blocks of its actual length: ``budget / mean(bytes(n))``
  sequences on average (a number, not an integer).
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import fmean

from functools import lru_cache

from .errors import ConfigError, UsageError
from .layout import KEEP_ALL, KEEP_CHUNK, KEEP_NONE, LayerCache, Layout

DISTRIBUTIONS = ("uniform", "normal", "lognormal")
DEFAULT_SAMPLES = 2000


@dataclass(frozen=True)
class Workload:
    description: str
    lengths: tuple[int, ...]  # tokens per sequence (prompt + output)

    @property
    def mean_length(self) -> float:
        return fmean(self.lengths)


def fixed(prompt: int, output: int) -> Workload:
    return Workload(f"fixed: prompt {prompt:,} + output {output:,} tokens", (prompt + output,))


def sampled(kind: str, mean: float, std: float, max_len: int, samples: int = DEFAULT_SAMPLES,
            seed: int = 0) -> Workload:
    if kind not in DISTRIBUTIONS:
        raise UsageError(f"unknown distribution '{kind}': choose one of {', '.join(DISTRIBUTIONS)}")
    if mean <= 0 or std < 0:
        raise UsageError("--mean must be positive and --std not negative")
    if samples < 1:
        raise UsageError("--samples must be at least 1")
    rng = random.Random(seed)
    if kind == "uniform":
        half = math.sqrt(3) * std
        draw = lambda: rng.uniform(mean - half, mean + half)  # noqa: E731
    elif kind == "normal":
        draw = lambda: rng.gauss(mean, std)  # noqa: E731
    else:  # lognormal with the given mean and std of the length itself
        sigma2 = math.log(1 + (std / mean) ** 2)
        mu = math.log(mean) - sigma2 / 2
        draw = lambda: rng.lognormvariate(mu, math.sqrt(sigma2))  # noqa: E731
    lengths = tuple(min(max_len, max(1, round(draw()))) for _ in range(samples))
    return Workload(f"{kind}: mean {mean:,.0f}, std {std:,.0f} tokens, {samples:,} samples, "
                    f"seed {seed}", lengths)


def from_trace(path: str | Path, max_len: int) -> tuple[Workload, int]:
    """Read a JSONL or CSV trace; returns the workload and how many sequences were clipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    rows: list[tuple[int, int]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"prompt_len", "output_len"} <= set(reader.fieldnames):
            raise ConfigError(f"{path}:1: a CSV trace needs prompt_len and output_len columns")
        for line, row in enumerate(reader, start=2):
            rows.append(_lengths(path, line, row.get("prompt_len"), row.get("output_len")))
    else:
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{line}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{line}: expected an object with prompt_len, output_len")
            rows.append(_lengths(path, line, obj.get("prompt_len"), obj.get("output_len")))
    if not rows:
        raise ConfigError(f"trace {path} holds no sequences")
    clipped = sum(1 for p, o in rows if p + o > max_len)
    lengths = tuple(min(max_len, p + o) for p, o in rows)
    return Workload(f"trace {path.name}: {len(rows):,} sequences", lengths), clipped


def _lengths(path: Path, line: int, prompt, output) -> tuple[int, int]:
    try:
        p, o = int(prompt), int(output)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}:{line}: prompt_len and output_len must be integers") from None
    if p < 0 or o < 0 or p + o < 1:
        raise ConfigError(f"{path}:{line}: lengths must be non-negative and not both zero")
    return p, o


@dataclass(frozen=True)
class AllocatorResult:
    """One allocator holding a workload in a KV budget (per GPU)."""

    name: str
    max_sequences: float            # contiguous: an integer; paged: the mean-based number
    slots_reserved_per_sequence: float
    slots_used_per_sequence: float
    bytes_per_sequence: float       # allocated (reserved or whole blocks)
    token_bytes_per_sequence: float  # what the tokens' states need (token-granular)
    budget_bytes: int

    @property
    def allocated_bytes(self) -> float:
        return min(self.budget_bytes, self.max_sequences * self.bytes_per_sequence)

    @property
    def token_bytes(self) -> float:
        return self.max_sequences * self.token_bytes_per_sequence

    @property
    def utilization(self) -> float:
        """Share of the KV budget that holds real token states."""
        return self.token_bytes / self.budget_bytes if self.budget_bytes else 0.0

    @property
    def waste_bytes(self) -> float:
        """Allocated but holding no token: reservation waste (contiguous) or the unused tail of
        the last block (paged: internal fragmentation)."""
        return self.allocated_bytes - self.token_bytes

    @property
    def free_bytes(self) -> float:
        return self.budget_bytes - self.allocated_bytes


@lru_cache(maxsize=4096)
def peak_slots(layer: LayerCache, max_len: int) -> int:
    """Most token slots ``layer`` holds for one sequence at any length ``n <= max_len``.

    Full layers grow with ``n`` (the peak is at ``max_len``). Sliding and chunked layers free
    blocks as the sequence moves on, so the count is periodic in ``n`` with period ``B`` past
    the window: the peak lies within two blocks of the window (or chunk) edge, or at ``max_len``.
    """
    if layer.keep == KEEP_NONE:
        return 0
    if layer.keep == KEEP_ALL or not layer.window:
        return layer.slots_held(max_len)
    bs = layer.block_size or 1
    w = layer.window
    candidates = {max_len}
    if layer.keep == KEEP_CHUNK:
        # within a chunk the count grows, so each chunk peaks at its last token; chunk starts
        # repeat their offset within a block every bs chunks at most
        for k in range(min(max_len // w, bs) + 1):
            candidates.add(min(max_len, k * w + w - 1))
    else:
        # past the window the count is periodic in n with period bs
        candidates.update(range(max(1, w - 1 - 2 * bs), min(max_len, w + 2 * bs) + 1))
    return max(layer.slots_held(n) for n in candidates)


def reserved_bytes(layout: Layout, max_len: int) -> int:
    """Bytes a contiguous allocator reserves per sequence: every layer's peak for ``max_len``."""
    key = (id(layout), max_len)
    hit = _RESERVED_CACHE.get(key)
    if hit is not None and hit[0] is layout:
        return hit[1]
    value = _reserved(layout.layers, max_len)
    if len(_RESERVED_CACHE) > 4096:
        _RESERVED_CACHE.clear()
    _RESERVED_CACHE[key] = (layout, value)
    return value


_RESERVED_CACHE: dict[tuple[int, int], tuple[Layout, int]] = {}


@lru_cache(maxsize=1024)
def _reserved(layers: tuple[LayerCache, ...], max_len: int) -> int:
    counts: dict[LayerCache, int] = {}
    for layer in layers:
        key = replace(layer, index=0)
        counts[key] = counts.get(key, 0) + 1
    return sum(n * (peak_slots(layer, max_len) * layer.bytes_per_token + layer.fixed_bytes)
               for layer, n in counts.items())


def compare_allocators(paged: Layout, token: Layout, workload: Workload, max_len: int,
                       budget: int) -> tuple[AllocatorResult, AllocatorResult]:
    """Contiguous (reserve ``max_len``) versus paged (whole blocks of the actual length).

    ``paged`` is the engine layout (vLLM blocks); ``token`` the same model laid out token by
    token (block size 1), which gives both the contiguous reservation and the bytes the tokens'
    states need. Windows, states and MLA are honoured through ``Layout.bytes_per_sequence``.
    """
    lengths = workload.lengths
    used = fmean(token.bytes_per_sequence(n) for n in lengths)
    slots_used = fmean(lengths)
    block = paged.block_size or 1
    reserved = reserved_bytes(paged, max_len)
    contiguous = AllocatorResult("contiguous", budget // reserved if reserved else 0,
                                 -(-max_len // block) * block, slots_used, reserved, used, budget)
    paged_bytes = fmean(paged.bytes_per_sequence(n) for n in lengths)
    slots_paged = fmean(-(-n // block) * block for n in lengths)
    paged_result = AllocatorResult("paged", budget / paged_bytes if paged_bytes else 0.0,
                                   slots_paged, slots_used, paged_bytes, used, budget)
    return contiguous, paged_result
