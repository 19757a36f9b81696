"""Generate with and without the cache and measure: cache bytes, peak memory, wall time.

Per new-token count g, ``generate`` runs greedily with ``min_new_tokens = max_new_tokens = g``
and no EOS, once with ``use_cache=True`` and once with ``use_cache=False``, after one warm-up,
``repeats`` times each:

- cache bytes: the exact bytes of the returned cache's tensors (:mod:`.cache`);
- CUDA: ``torch.cuda.max_memory_allocated`` during the run minus the allocated bytes after the
  weights were loaded and a warm-up ran (synchronised, peak stats reset per run): with and
  without the cache; and the cache's own device footprint, the drop of
  ``torch.cuda.memory_allocated`` when the returned cache is released (whose slope over the
  cached lengths is the measured KV bytes per token);
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
from .compat import output_cache, release_output_cache


class OutOfMemory(KvcalcError):
    """A run did not fit in device memory; ``partial`` holds the runs that did."""

    def __init__(self, message: str, partial: list | None = None):
        super().__init__(message)
        self.partial = partial or []


@dataclass
class RunResult:
    use_cache: bool
    new_tokens: int
    seconds: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    cache_bytes: int | None = None
    cache_held_bytes: int | None = None
    cache_allocated_bytes: int | None = None
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
                "cache_held_bytes": self.cache_held_bytes,
                "cache_allocated_bytes": self.cache_allocated_bytes,
                "cached_tokens": self.cached_tokens, "repeats": len(self.seconds)}


def _rss_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class CpuMeter:
    """CPU: the growth of the process's peak RSS, best effort (the high-water mark never
    falls, so a run that needs less than an earlier one reads 0)."""

    kind = "cpu"

    def __init__(self, device: str):
        self.device = device
        self.baseline = _rss_peak_bytes()

    def rebase(self) -> None:
        self.baseline = _rss_peak_bytes()

    def start(self) -> None:
        pass  # collecting would not lower the high-water mark

    def peak(self) -> int:
        return max(0, _rss_peak_bytes() - self.baseline)

    def now(self) -> float:
        return time.perf_counter()

    def allocated(self) -> int | None:
        return None


class CudaMeter:
    """CUDA: the caching allocator's counters (torch.cuda), always read after a synchronize.

    * ``rebase``: baseline = ``memory_allocated`` once the weights are loaded and a warm-up has
      created cuBLAS workspaces and kernels;
    * ``start``: ``gc.collect``, ``empty_cache`` and ``reset_peak_memory_stats`` before each run;
    * ``peak``: ``max_memory_allocated`` during the run minus the baseline (includes
      activations: the peak is often set by the prefill, not by the cache);
    * ``allocated``: ``memory_allocated`` now (used to weigh the cache by dropping it).

    ``api`` is ``torch.cuda`` (tests pass a stand-in).
    """

    kind = "cuda"

    def __init__(self, device: str, api: Any = None):
        if api is None:
            import torch

            api = torch.cuda
        self.api = api
        self.device = device
        self.baseline = self.allocated()

    def _sync(self) -> None:
        self.api.synchronize(self.device)

    def allocated(self) -> int:
        self._sync()
        return int(self.api.memory_allocated(self.device))

    def rebase(self) -> None:
        gc.collect()
        self.baseline = self.allocated()

    def start(self) -> None:
        gc.collect()
        self._sync()
        self.api.empty_cache()
        self.api.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        self._sync()
        return int(self.api.max_memory_allocated(self.device)) - self.baseline

    def now(self) -> float:
        self._sync()
        return time.perf_counter()


def make_meter(device: str):
    """The meter for ``device`` (tests replace this to drive the CUDA path on the CPU)."""
    return CudaMeter(device) if device.startswith("cuda") else CpuMeter(device)


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

    ``progress`` is called after every generate (warm-up excluded) with a label.
    KeyboardInterrupt propagates with ``.partial`` set to the finished runs; out-of-memory
    becomes :class:`OutOfMemory` naming the run that did not fit and the runs that did.
    """
    import torch

    oom_error = _oom_error(torch)
    prepare(model)
    ids = prompt_ids(vocab, prompt_len, device)
    meter = make_meter(device)
    results: list[RunResult] = []
    try:
        generate_once(model, ids, 1, True)  # warm-up: kernels, workspaces, allocator pools
    except oom_error:
        raise OutOfMemory(f"out of device memory in the warm-up (prompt {prompt_len} tokens, 1 "
                          "new token): the model itself leaves no room; try --layers N or a "
                          "smaller --dtype") from None
    meter.rebase()
    modes = (True, False) if with_and_without else (True,)
    try:
        for g in new_tokens:
            for use_cache in modes:
                run = RunResult(use_cache, g)
                label = f"{g} new tokens, {'with' if use_cache else 'without'} cache"
                out = None
                try:
                    meter.start()
                    for _ in range(repeats):
                        out = None
                        t0 = meter.now()
                        out = generate_once(model, ids, g, use_cache)
                        run.seconds.append(meter.now() - t0)
                        if progress:
                            progress(label)
                    run.peak_bytes = meter.peak()
                    if use_cache:
                        _weigh_cache(run, out, meter, prompt_len + g - 1)
                except oom_error:
                    out = None
                    _free(meter)
                    done = ", ".join(f"{r.new_tokens}{'' if r.use_cache else ' (no cache)'}"
                                     for r in results) or "none"
                    raise OutOfMemory(
                        f"out of device memory generating {g} new tokens with "
                        f"use_cache={use_cache} (prompt {prompt_len}); runs that fitted: {done}. "
                        "Try --layers N, fewer --new-tokens, or a smaller --dtype",
                        partial=results,
                    ) from None
                del out
                results.append(run)
    except KeyboardInterrupt as exc:
        exc.partial = results  # type: ignore[attr-defined]
        raise
    return results


def _oom_error(torch: Any) -> type[BaseException]:
    """``torch.OutOfMemoryError`` (torch >= 2.5), else ``torch.cuda.OutOfMemoryError``."""
    return getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def _weigh_cache(run: RunResult, out: Any, meter: Any, cached_tokens: int) -> None:
    """Exact tensor bytes of the returned cache and, on CUDA, what the allocator frees when
    the cache is dropped (its real device footprint, 512-byte rounding included)."""
    pkv = output_cache(out)
    counted = cache_bytes(pkv)
    run.cache_bytes = counted.total
    run.cache_held_bytes = counted.held_bytes
    run.cached_tokens = cached_tokens
    if meter.allocated() is None:
        return
    release_output_cache(out)  # whatever the installed transformers calls the field
    del out
    gc.collect()
    with_cache = meter.allocated()
    del pkv
    gc.collect()
    run.cache_allocated_bytes = with_cache - meter.allocated()


def _free(meter: Any) -> None:
    gc.collect()
    if meter.kind == "cuda":
        meter.api.empty_cache()


def fit_slope(xs: list[int], ys: list[int]) -> float | None:
    """Least-squares slope of ys over xs (bytes per token), None with fewer than 2 points."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    num = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    den = sum((x - mx) ** 2 for x in xs)
    return num / den
