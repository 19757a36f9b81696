"""Requests over time: traces (Azure 2023, Mooncake FAST'25, kvcalc's JSONL/CSV with an
optional ``arrival_s``), the built-in traces shipped in the package, and synthetic arrivals.

A request is an :class:`Arrival`: arrival time (seconds since the start), prompt tokens,
output tokens and, when the trace has them, Mooncake's prefix hash ids (one per
:data:`MOONCAKE_HASH_BLOCK` prompt tokens; equal ids = the same prefix up to that block).

Row validation (whole numbers, bounds, not both zero) is :func:`kvcalc.workload._lengths`, the
one trace-row check ``kvcalc plan --trace`` uses too.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import random
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import ConfigError, UsageError
from ..workload import (MAX_SEQUENCES, MAX_TRACE_TIME, _lengths, check_count, lognormal_params,
                        sampled, trace_lines)

#: tokens per Mooncake hash id (FAST'25 release README: "block size 512")
MOONCAKE_HASH_BLOCK = 512
#: synthetic requests are drawn in chunks of this many (memory stays flat in --requests)
SYNTHETIC_CHUNK = 10_000

#: built-in trace name -> (file in kvcalc/simulation/traces, description)
BUILTIN_TRACES = {
    "azure-conv-2023": ("azure-llm-2023-conv.csv.gz",
                        "Azure LLM inference 2023, conversation (CC-BY 4.0)"),
    "azure-code-2023": ("azure-llm-2023-code.csv.gz",
                        "Azure LLM inference 2023, code completion (CC-BY 4.0)"),
    "mooncake-conv": ("mooncake-conversation.jsonl.gz",
                      "Mooncake FAST'25 conversation, prefix hash ids (Apache-2.0)"),
    "mooncake-synthetic": ("mooncake-synthetic.jsonl.gz",
                           "Mooncake FAST'25 synthetic, prefix hash ids (Apache-2.0)"),
}


@dataclass(frozen=True, slots=True)
class Arrival:
    arrival_s: float
    prompt: int
    output: int
    hash_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Trace:
    """A trace read into memory, sorted by arrival (stable)."""

    description: str
    arrivals: tuple[Arrival, ...]
    hash_block: int = MOONCAKE_HASH_BLOCK

    def __len__(self) -> int:
        return len(self.arrivals)

    def scaled(self, rate_scale: float) -> "Trace":
        """The same requests arriving ``rate_scale`` times as fast (``--rate-scale 2``)."""
        if not (math.isfinite(rate_scale) and rate_scale > 0):
            raise UsageError(f"invalid --rate-scale {rate_scale}: must be a positive number")
        if rate_scale == 1:
            return self
        return Trace(f"{self.description}, arrivals x{rate_scale:g} as fast",
                     tuple(Arrival(a.arrival_s / rate_scale, a.prompt, a.output, a.hash_ids)
                           for a in self.arrivals), self.hash_block)


def load_trace(name_or_path: str) -> Trace:
    """A built-in trace by name (:data:`BUILTIN_TRACES`) or a file (CSV/JSONL, .gz allowed),
    streamed through the bounded reader (:func:`kvcalc.workload.trace_lines`: regular files
    only, a byte limit after decompression, the row limit checked per row)."""
    if name_or_path in BUILTIN_TRACES:
        file, what = BUILTIN_TRACES[name_or_path]
        data = resources.files("kvcalc.simulation").joinpath("traces", file).read_bytes()
        return _parse(gzip.decompress(data).decode("utf-8-sig").splitlines(),
                      Path(file[:-3]), f"{name_or_path}: {what}")
    path = Path(name_or_path)
    if not os.path.lexists(path):
        from ..sources import suggest

        raise UsageError(f"no trace '{name_or_path}': give a CSV/JSONL file or one of "
                         f"{', '.join(BUILTIN_TRACES)}" + suggest(name_or_path,
                                                                  list(BUILTIN_TRACES)))
    inner = path.with_suffix("") if path.suffix.lower() == ".gz" else path
    return _parse(trace_lines(path), inner, f"trace {inner.name}")


def _parse(lines: Iterable[str], path: Path, description: str) -> Trace:
    rows = _csv_rows(lines, path) if path.suffix.lower() == ".csv" else _jsonl_rows(lines, path)
    if not rows:
        raise ConfigError(f"trace {path} holds no requests")
    rows.sort(key=lambda a: a.arrival_s)
    start = rows[0].arrival_s
    if start:
        rows = [Arrival(a.arrival_s - start, a.prompt, a.output, a.hash_ids) for a in rows]
    return Trace(f"{description}: {len(rows):,} requests over {rows[-1].arrival_s:,.0f} s",
                 tuple(rows))


def _arrival(path: Path, line: int, value) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        value = None
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not math.isfinite(t) or not 0 <= t <= MAX_TRACE_TIME:
        raise ConfigError(f"{path}:{line}: arrival time must be a non-negative number of "
                          f"seconds, at most {MAX_TRACE_TIME:g}, got {value!r}")
    return t


def _csv_rows(lines: Iterable[str], path: Path) -> list[Arrival]:
    reader = csv.DictReader(lines)
    fields = set(reader.fieldnames or ())
    rows: list[Arrival] = []
    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= fields:      # Azure 2023
        for line, row in enumerate(reader, start=2):
            check_count(path, len(rows) + 1)
            p, o = _lengths(path, line, row["ContextTokens"], row["GeneratedTokens"], text=True)
            rows.append(Arrival(_azure_time(path, line, row["TIMESTAMP"]), p, o))
        return rows
    if not {"prompt_len", "output_len"} <= fields:
        raise ConfigError(f"{path}:1: a CSV trace needs prompt_len and output_len columns "
                          "(optional arrival_s), or Azure's TIMESTAMP,ContextTokens,"
                          "GeneratedTokens")
    for line, row in enumerate(reader, start=2):
        check_count(path, len(rows) + 1)
        p, o = _lengths(path, line, row.get("prompt_len"), row.get("output_len"), text=True)
        rows.append(Arrival(_arrival(path, line, row.get("arrival_s") or None), p, o))
    return rows


def _azure_time(path: Path, line: int, text: str | None) -> float:
    """Seconds since the epoch of an Azure timestamp (``2023-11-16 18:15:46.6805900``: seven
    fractional digits, more than ``fromisoformat`` takes before Python 3.11)."""
    try:
        head, _, frac = (text or "").strip().partition(".")
        stamp = datetime.fromisoformat(head)
        return stamp.timestamp() + (float("0." + frac) if frac else 0.0)
    except ValueError:
        raise ConfigError(f"{path}:{line}: invalid TIMESTAMP {text!r}") from None


def _jsonl_rows(lines: Iterable[str], path: Path) -> list[Arrival]:
    rows: list[Arrival] = []
    for line, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        check_count(path, len(rows) + 1)
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{line}: invalid JSON ({exc.msg})") from None
        except (RecursionError, ValueError) as exc:   # nesting, 4,300+ digit numbers
            raise ConfigError(f"{path}:{line}: cannot be read ({type(exc).__name__})") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}:{line}: expected an object with prompt_len and "
                              "output_len (or Mooncake's input_length and output_length)")
        if "input_length" in obj:                                        # Mooncake FAST'25
            p, o = _lengths(path, line, obj.get("input_length"), obj.get("output_length"))
            ms = _arrival(path, line, obj.get("timestamp"))
            rows.append(Arrival(ms / 1000.0, p, o, _hash_ids(path, line, obj.get("hash_ids"))))
        else:
            p, o = _lengths(path, line, obj.get("prompt_len"), obj.get("output_len"))
            rows.append(Arrival(_arrival(path, line, obj.get("arrival_s")), p, o,
                                _hash_ids(path, line, obj.get("hash_ids"))))
    return rows


def _hash_ids(path: Path, line: int, value) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) and 0 <= h < 2**62 for h in value):
        raise ConfigError(f"{path}:{line}: hash_ids must be a list of non-negative integers")
    return tuple(value)


def synthetic(requests: int, rate: float | None, input_len: int, output_len: int,
              dist: str | None = None, input_std: float | None = None,
              output_std: float | None = None, max_len: int = 1 << 40,
              seed: int = 0) -> Iterator[Arrival]:
    """``requests`` arrivals: Poisson at ``rate`` per second (None: all at time 0), fixed
    lengths or drawn from ``dist`` (plan's distributions, :func:`kvcalc.workload.sampled`, with
    the lengths as means and the std defaulting to the mean), generated lazily in chunks."""
    if requests < 1 or requests > MAX_SEQUENCES:
        raise UsageError(f"--requests must be from 1 to {MAX_SEQUENCES:,}, got {requests:,}")
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise UsageError(f"invalid --rate {rate}: must be a positive number of requests/s")
    if input_len < 1 or output_len < 1:
        raise UsageError("--input-len and --output-len must be at least 1 token")
    rng = random.Random(seed)
    expovariate = rng.expovariate
    t = 0.0
    done = 0
    chunk_no = 0
    while done < requests:
        n = min(SYNTHETIC_CHUNK, requests - done)
        if dist:
            s1 = seed * 1_000_003 + 2 * chunk_no
            ins = _lengths_of(dist, input_len,
                              input_std if input_std is not None else input_len, max_len, n, s1)
            outs = _lengths_of(dist, output_len,
                               output_std if output_std is not None else output_len, max_len,
                               n, s1 + 1)
        else:
            ins, outs = (input_len,) * n, (output_len,) * n
        if rate is not None:
            for p, o in zip(ins, outs):
                t += expovariate(rate)
                yield Arrival(t, p, o)
        else:
            for p, o in zip(ins, outs):
                yield Arrival(t, p, o)
        done += n
        chunk_no += 1


def _lengths_of(dist: str, mean: float, std: float, max_len: int, n: int,
                seed: int) -> tuple[int, ...]:
    """``sampled(dist, mean, std, max_len, n, seed).lengths`` (:func:`kvcalc.workload.sampled`,
    which checks the arguments); lognormal lengths drawn inline, the same numbers."""
    if dist != "lognormal" or not _inline_lognormal_ok() or not (
            mean > 0 and std >= 0 and math.isfinite(mean) and math.isfinite(std)):
        return sampled(dist, mean, std, max_len, n, seed).lengths
    return _lognormal_lengths(mean, std, max_len, n, seed)


def _lognormal_lengths(mean: float, std: float, max_len: int, n: int,
                       seed: int) -> tuple[int, ...]:
    """``round(random.Random(seed).lognormvariate(mu, sigma))`` n times, clipped to
    [1, max_len], with :func:`kvcalc.workload.lognormal_params` as ``sampled`` uses it;
    ``lognormvariate`` = exp(``normalvariate``), Kinderman and Monahan's ratio of uniforms
    (CPython's ``random.py``), inline."""
    mu, sigma = lognormal_params(mean, std)
    rand = random.Random(seed).random
    log, exp = math.log, math.exp
    magic = _NV_MAGICCONST
    out = []
    append = out.append
    for _ in range(n):
        while True:
            u1 = rand()
            u2 = 1.0 - rand()
            z = magic * (u1 - 0.5) / u2
            zz = z * z / 4.0
            if zz <= -log(u2):
                break
        x = round(exp(mu + z * sigma))
        if x < 1:
            x = 1
        append(max_len if max_len < x else x)
    return tuple(out)


_NV_MAGICCONST = 4 * math.exp(-0.5) / math.sqrt(2.0)
_INLINE_OK: list[bool] = []


def _inline_lognormal_ok() -> bool:
    """Whether the inline draws are this Python's ``random`` draws (checked once)."""
    if not _INLINE_OK:
        ok = all(_lognormal_lengths(m, sd, 1 << 40, 300, seed)
                 == sampled("lognormal", m, sd, 1 << 40, 300, seed).lengths
                 for m, sd, seed in ((1000, 1000, 0), (200, 50, 7), (3.5, 20.0, 12345)))
        _INLINE_OK.append(ok)
    return _INLINE_OK[0]
