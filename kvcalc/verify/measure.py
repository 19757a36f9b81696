"""Generate with and without the cache and measure: cache bytes, peak memory, wall time.

Per new-token count g, ``generate`` runs greedily with ``min_new_tokens = max_new_tokens = g``
and no EOS, once with ``use_cache=True`` and once with ``use_cache=False``, after one warm-up,
``repeats`` times each:

- cache bytes: the exact bytes of the returned cache's tensors (:mod:`.cache`);
- CUDA: ``torch.cuda.max_memory_allocated`` during the run minus the allocated bytes after the
  weights were loaded (synchronised, peak stats reset per run): with and without the cache;
- CPU: the growth of the process's peak resident set (``ru_maxrss``) over the baseline, a
  best-effort figure (the high-water mark never goes down, so later runs can show 0);
- wall time (synchronised on CUDA), mean and standard deviation over the repeats.
"""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import KvcalcError
from .cache import cache_bytes


class OutOfMemory(KvcalcError):
    """A run did not fit in device memory."""


@dataclass
class RunResult:
    use_cache: bool
    new_tokens: int
    seconds: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    cache_bytes: int | None = None
    cache_held_bytes: int | None = None
    cached_tokens: int | None = None

    @property
    def seconds_mean(self) -> float:
        return statistics.fmean(self.seconds) if self.seconds else 0.0

    @property
    def seconds_std(self) -> float:
        return statistics.stdev(self.seconds) if len(self.seconds) > 1 else 0.0

    def record(self) -> dict[str, Any]:
        return {"use_cache": self.use_cache, "new_tokens": self.new_tokens,
                "seconds_mean": self.seconds_mean, "seconds_std": self.seconds_std,
                "peak_bytes": self.peak_bytes, "cache_bytes": self.cache_bytes,
                "cache_held_bytes": self.cache_held_bytes, "repeats": len(self.seconds)}


def _rss_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class Meter:
    """Peak-memory bookkeeping for one device."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.cuda = device.startswith("cuda")
        self.device = device
        self.baseline = self._current()

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def _current(self) -> int:
        if self.cuda:
            self._sync()
            return self.torch.cuda.memory_allocated(self.device)
        return _rss_peak_bytes()

    def start(self) -> None:
        gc.collect()
        if self.cuda:
            self._sync()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        if self.cuda:
            self._sync()
            return self.torch.cuda.max_memory_allocated(self.device) - self.baseline
        return max(0, _rss_peak_bytes() - self.baseline)

    def now(self) -> float:
        self._sync()
        return time.perf_counter()


def prompt_ids(vocab: int, prompt_len: int, device: str, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, max(4, vocab), (1, prompt_len), generator=gen)
    return ids.to(device)


def generate_once(model: Any, ids: Any, new_tokens: int, use_cache: bool) -> Any:
    import torch

    with torch.inference_mode():
        return model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=False, use_cache=use_cache,
            return_dict_in_generate=True, pad_token_id=0, eos_token_id=None,
        )


def prepare(model: Any) -> None:
    """Greedy, no EOS, no sampling knobs that would warn or stop early."""
    gc_ = model.generation_config
    gc_.eos_token_id = None
    gc_.do_sample = False
    for attr in ("temperature", "top_p", "top_k"):
        if hasattr(gc_, attr):
            setattr(gc_, attr, None)
    gc_.cache_implementation = None


def measure(model: Any, *, device: str, vocab: int, prompt_len: int, new_tokens: list[int],
            repeats: int, with_and_without: bool = True,
            progress: Callable[[str], None] | None = None) -> list[RunResult]:
    """Run the matrix of (new tokens x use_cache) and return what finished.

    KeyboardInterrupt propagates with ``.partial`` set to the finished runs; CUDA out-of-memory
    becomes :class:`OutOfMemory` naming the run that did not fit and the runs that did.
    """
    import torch

    prepare(model)
    ids = prompt_ids(vocab, prompt_len, device)
    meter = Meter(device)
    generate_once(model, ids, 1, True)  # warm-up: kernels, workspaces, allocator pools
    results: list[RunResult] = []
    modes = (True, False) if with_and_without else (True,)
    try:
        for g in new_tokens:
            for use_cache in modes:
                run = RunResult(use_cache, g)
                if progress:
                    progress(f"new_tokens={g} use_cache={use_cache}")
                try:
                    meter.start()
                    for _ in range(repeats):
                        t0 = meter.now()
                        out = generate_once(model, ids, g, use_cache)
                        run.seconds.append(meter.now() - t0)
                    run.peak_bytes = meter.peak()
                except torch.OutOfMemoryError:
                    done = ", ".join(f"{r.new_tokens}{'' if r.use_cache else ' (no cache)'}"
                                     for r in results) or "none"
                    raise OutOfMemory(
                        f"out of device memory generating {g} new tokens with "
                        f"use_cache={use_cache} (prompt {prompt_len}); runs that fitted: {done}. "
                        "Try --layers N, fewer --new-tokens, or a smaller --dtype"
                    ) from None
                if use_cache:
                    counted = cache_bytes(out.past_key_values)
                    run.cache_bytes = counted.total
                    run.cache_held_bytes = counted.held_bytes
                    run.cached_tokens = prompt_len + g - 1
                del out
                results.append(run)
    except KeyboardInterrupt as exc:
        exc.partial = results  # type: ignore[attr-defined]
        raise
    return results


def fit_slope(xs: list[int], ys: list[int]) -> float | None:
    """Least-squares slope of ys over xs (bytes per token), None with fewer than 2 points."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    num = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    den = sum((x - mx) ** 2 for x in xs)
    return num / den
