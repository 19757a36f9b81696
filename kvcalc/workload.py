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
- paged: every sequence holds whole blocks of its actual length: ``budget / mean(peak(n))``
  sequences on average (a number, not an integer), where ``peak(n)`` is the most a sequence
  that grows to ``n`` tokens holds at any point of its life (the final length for full layers;
  for windowed layers a sequence may hold one block more while it passes a block edge than at
  its last token, and a chunked layer's chunk empties at each chunk boundary). A sequence must
  have its peak available to finish, so both allocators are compared at their peaks.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from statistics import fmean

from .errors import ConfigError, UsageError
from .units import MAX_TOKENS
from .layout import KEEP_ALL, KEEP_CHUNK, KEEP_NONE, LayerCache, Layout

DISTRIBUTIONS = ("uniform", "normal", "lognormal")
DEFAULT_SAMPLES = 2000
#: the most sequences a workload may hold (``--samples``, rows of a trace): docs/security.md
MAX_SEQUENCES = 1_000_000
#: the most bytes a trace may hold (after decompression of a ``.gz``), read as a stream
MAX_TRACE_BYTES = 512 * 1024 * 1024
#: the largest time a trace row may give (``arrival_s`` in seconds; Mooncake's ``timestamp``
#: in milliseconds): past 10^13 a run's modelled times lose their precision
MAX_TRACE_TIME = 1e13


def trace_lines(path: str | Path):
    """The lines of a trace file (``.gz`` decompressed), streamed through kvcalc's bounded
    reader: a regular file only, at most :data:`MAX_TRACE_BYTES` (docs/security.md)."""
    from .files import text_lines

    return text_lines(path, "trace", MAX_TRACE_BYTES)


def check_count(path: str | Path, n: int) -> None:
    """Refuse a trace while streaming it, as soon as it holds more than
    :data:`MAX_SEQUENCES` rows."""
    if n > MAX_SEQUENCES:
        raise ConfigError(f"trace {path} holds more than {MAX_SEQUENCES:,} requests: at most "
                          f"{MAX_SEQUENCES:,} (sample it)")


def check_length_distribution(mean, std, mean_name: str = "--mean",
                              std_name: str = "--std") -> None:
    """A length distribution's mean (1 to 2**40 tokens) and standard deviation (0 to 2**40):
    finite numbers in range, so no draw overflows (docs/security.md)."""
    for name, value, lo in ((mean_name, mean, 1), (std_name, std, 0)):
        ok = (not isinstance(value, bool) and isinstance(value, (int, float))
              and math.isfinite(value) and lo <= value <= MAX_TOKENS)
        if not ok:
            raise UsageError(f"invalid {name} {value!r}: must be a number of tokens from {lo} "
                             f"to {MAX_TOKENS:,} (docs/security.md)")


@dataclass(frozen=True)
class Workload:
    description: str
    lengths: tuple[int, ...]  # tokens per sequence (prompt + output)

    @property
    def mean_length(self) -> float:
        return fmean(self.lengths)


def fixed(prompt: int, output: int) -> Workload:
    return Workload(f"fixed: prompt {prompt:,} + output {output:,} tokens", (prompt + output,))


def choose_workload(max_len: int, prompt_len: int | None = None, output_len: int | None = None,
                    dist: str | None = None, mean: float | None = None, std: float | None = None,
                    samples: int = DEFAULT_SAMPLES, seed: int = 0,
                    trace: str | Path | None = None) -> tuple[Workload, list[str]]:
    """The workload ``kvcalc plan`` sizes for, from at most one of: a fixed prompt/output
    length, a distribution of total lengths, or a trace; none gives every request at
    ``max_len``. Returns the workload and its warnings (trace rows clipped to ``max_len``)."""
    given = sum(x is not None for x in (prompt_len or output_len or None, dist, trace))
    if given > 1:
        raise UsageError("give one workload: --prompt-len/--output-len, --dist, or --trace")
    if trace:
        workload, clipped = from_trace(trace, max_len)
        return workload, ([f"{clipped:,} sequences of the trace exceed --max-len {max_len:,}: "
                           "clipped"] if clipped else [])
    if dist:
        if mean is None or std is None:
            raise UsageError("--dist needs --mean and --std (tokens)")
        return sampled(dist, mean, std, max_len, samples, seed), []
    if prompt_len is not None or output_len is not None:
        p, o = prompt_len or 0, output_len or 0
        if p + o > max_len:
            raise UsageError(f"--prompt-len + --output-len = {p + o:,} exceeds --max-len "
                             f"{max_len:,}")
        return fixed(p, o), []
    return Workload(f"every request at --max-len ({max_len:,} tokens)", (max_len,)), []


def lognormal_params(mean: float, std: float) -> tuple[float, float]:
    """(mu, sigma) of the lognormal distribution whose own mean and standard deviation are
    ``mean`` and ``std``: sigma^2 = ln(1 + (std/mean)^2), mu = ln(mean) - sigma^2 / 2."""
    sigma2 = math.log(1 + (std / mean) ** 2)
    return math.log(mean) - sigma2 / 2, math.sqrt(sigma2)


def sampled(kind: str, mean: float, std: float, max_len: int, samples: int = DEFAULT_SAMPLES,
            seed: int = 0) -> Workload:
    if kind not in DISTRIBUTIONS:
        raise UsageError(f"unknown distribution '{kind}': choose one of {', '.join(DISTRIBUTIONS)}")
    check_length_distribution(mean, std)
    if samples < 1 or samples > MAX_SEQUENCES:
        raise UsageError(f"--samples must be from 1 to {MAX_SEQUENCES:,}, got {samples:,}")
    rng = random.Random(seed)
    if kind == "uniform":
        half = math.sqrt(3) * std
        draw = lambda: rng.uniform(mean - half, mean + half)  # noqa: E731
    elif kind == "normal":
        draw = lambda: rng.gauss(mean, std)  # noqa: E731
    else:  # lognormal with the given mean and std of the length itself
        mu, sigma = lognormal_params(mean, std)
        draw = lambda: rng.lognormvariate(mu, sigma)  # noqa: E731
    lengths = tuple(min(max_len, max(1, round(draw()))) for _ in range(samples))
    return Workload(f"{kind}: mean {mean:,.0f}, std {std:,.0f} tokens, {samples:,} samples, "
                    f"seed {seed}", lengths)


def from_trace(path: str | Path, max_len: int) -> tuple[Workload, int]:
    """Read a JSONL or CSV trace (``.gz`` allowed), streamed and bounded (:func:`trace_lines`,
    :func:`check_count`); returns the workload and how many sequences were clipped."""
    path = Path(path)
    lines = trace_lines(path)
    name = path.with_suffix("") if path.suffix.lower() == ".gz" else path
    rows: list[tuple[int, int]] = []
    if name.suffix.lower() == ".csv":
        reader = csv.DictReader(lines)
        if not reader.fieldnames or not {"prompt_len", "output_len"} <= set(reader.fieldnames):
            raise ConfigError(f"{path}:1: a CSV trace needs prompt_len and output_len columns")
        for line, row in enumerate(reader, start=2):
            check_count(path, len(rows) + 1)
            rows.append(_lengths(path, line, row.get("prompt_len"), row.get("output_len"),
                                 text=True))
    else:
        for line, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            check_count(path, len(rows) + 1)
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{line}: invalid JSON ({exc.msg})") from None
            except (RecursionError, ValueError) as exc:   # nesting, 4,300+ digit numbers
                raise ConfigError(f"{path}:{line}: cannot be read ({type(exc).__name__})") \
                    from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{line}: expected an object with prompt_len, output_len")
            rows.append(_lengths(path, line, obj.get("prompt_len"), obj.get("output_len")))
    if not rows:
        raise ConfigError(f"trace {path} holds no sequences")
    clipped = sum(1 for p, o in rows if p + o > max_len)
    lengths = tuple(min(max_len, p + o) for p, o in rows)
    return Workload(f"trace {path.name}: {len(rows):,} sequences", lengths), clipped


def _lengths(path: Path, line: int, prompt, output, text: bool = False) -> tuple[int, int]:
    """Exact lengths of one trace row; ``text``: CSV cells (digits), else JSON numbers."""
    p, o = _token_count(prompt, text), _token_count(output, text)
    if p is None or o is None:
        raise ConfigError(f"{path}:{line}: prompt_len and output_len must be whole numbers of "
                          f"tokens, got {prompt!r} and {output!r}")
    if p > MAX_TOKENS or o > MAX_TOKENS:
        raise ConfigError(f"{path}:{line}: lengths must be at most {MAX_TOKENS:,} tokens")
    if p < 0 or o < 0 or p + o < 1:
        raise ConfigError(f"{path}:{line}: lengths must be non-negative and not both zero")
    return p, o


def _token_count(value, text: bool) -> int | None:
    """An exact integer from a trace cell: an int (not a bool), an integral float, or digits
    when ``text`` (CSV); None for anything else (``1.9``, ``true``, ``"12abc"``, NaN)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value == int(value) else None
    if text and isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,19}\s*", value):
        return int(value)
    return None


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


@lru_cache(maxsize=8192)
def peak_slots(layer: LayerCache, max_len: int) -> int:
    """Most token slots ``layer`` holds for one sequence at any length ``n <= max_len``.

    Full layers grow with ``n`` (the peak is at ``max_len``). Sliding layers grow block by block
    up to ``n = W - 1`` and from there repeat with period ``B`` (one block more enters as one
    leaves), so the peak lies within one block past ``W - 1``. Chunked layers repeat with period
    ``lcm(C, B)``; within a chunk the count grows, so each chunk peaks at its last token.
    (tests/test_plan_workload.py checks this against the brute-force maximum.)
    """
    if layer.keep == KEEP_NONE:
        return 0
    if layer.keep == KEEP_ALL or not layer.window:
        return layer.slots_held(max_len)
    bs = layer.block_size or 1
    w = layer.window
    if layer.keep == KEEP_CHUNK:
        period = math.lcm(w, bs)
        n = min(max_len, period)
        candidates = {n}
        candidates.update(min(n, k * w + w - 1) for k in range(n // w + 1))
        return max(layer.slots_held(m) for m in candidates)
    if max_len <= w - 1:
        return layer.slots_held(max_len)
    return max(layer.slots_held(m) for m in range(w - 1, min(max_len, w - 2 + bs) + 1))


def distinct(layout: Layout) -> tuple[tuple[LayerCache, int], ...]:
    """The layout's layers with identical ones collapsed (index aside), memoised per layout."""
    key = id(layout)
    hit = _DISTINCT_CACHE.get(key)
    if hit is not None and hit[0] is layout:
        return hit[1]
    counts: dict[LayerCache, int] = {}
    for layer in layout.layers:
        k = replace(layer, index=0)
        counts[k] = counts.get(k, 0) + 1
    value = tuple(counts.items())
    if len(_DISTINCT_CACHE) > 1024:
        _DISTINCT_CACHE.clear()
    _DISTINCT_CACHE[key] = (layout, value)
    return value


_DISTINCT_CACHE: dict[int, tuple[Layout, tuple[tuple[LayerCache, int], ...]]] = {}


def peak_bytes(layout: Layout, n: int) -> int:
    """Most bytes one sequence holds while it grows to ``n`` tokens: every layer at its own
    peak (:func:`peak_slots`) plus fixed states. Equals ``layout.bytes_per_sequence(n)`` for
    models without windows."""
    total = 0
    for layer, count in distinct(layout):
        if layer.keep == KEEP_NONE:
            slots = 0
        elif layer.keep == KEEP_ALL or not layer.window:
            slots = layer.slots_held(n)
        else:
            slots = peak_slots(layer, n)
        total += count * (slots * layer.bytes_per_token + layer.fixed_bytes)
    return total


def reserved_bytes(layout: Layout, max_len: int) -> int:
    """Bytes a contiguous allocator reserves per sequence: every layer's peak for ``max_len``."""
    return peak_bytes(layout, max_len)


def compare_allocators(paged: Layout, token: Layout, workload: Workload, max_len: int,
                       budget: int) -> tuple[AllocatorResult, AllocatorResult]:
    """Contiguous (reserve ``max_len``) versus paged (whole blocks of the actual length).

    ``paged`` is the engine layout (vLLM blocks); ``token`` the same model laid out token by
    token (block size 1), which gives the bytes the tokens' states need. Both are taken at each
    sequence's peak (:func:`peak_bytes`), so windows, chunks, states and MLA are honoured and
    the same moment is compared.
    """
    lengths = workload.lengths
    distinct = sorted(set(lengths))
    weights = {n: 0 for n in distinct}
    for n in lengths:
        weights[n] += 1
    count = len(lengths)

    def mean(fn) -> float:
        return math.fsum(weights[n] * fn(n) for n in distinct) / count

    used = mean(lambda n: peak_bytes(token, n))
    slots_used = fmean(lengths)
    block = paged.block_size or 1
    reserved = reserved_bytes(paged, max_len)
    contiguous = AllocatorResult("contiguous", budget // reserved if reserved else 0,
                                 -(-max_len // block) * block, slots_used, reserved, used, budget)
    paged_bytes = mean(lambda n: peak_bytes(paged, n))
    slots_paged = mean(lambda n: -(-n // block) * block)
    paged_result = AllocatorResult("paged", budget / paged_bytes if paged_bytes else 0.0,
                                   slots_paged, slots_used, paged_bytes, used, budget)
    return contiguous, paged_result
