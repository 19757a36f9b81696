"""The meta-device check: transformers' own cache shapes for any config, with no memory.

The model is built on PyTorch's ``meta`` device (no weights, no initialisation) from the same
config ``estimate`` reads, one forward of ``seq`` tokens fills its cache (``use_cache=True``,
``logits_to_keep=1``), and the cache's tensors — meta tensors with exact shapes and dtypes — are
summed. Structurally identical decoder layers run once per forward (:class:`LayerReplay`). The result is compared to ``estimate --engine hf`` for the installed transformers
version (transformers >= 5.14.1, the floor of the ``verify`` extra; older releases fail on
meta tensors or lack model classes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..arch import build_spec
from ..errors import KvcalcError
from ..engines import build_layout
from .build import build_random
from .cache import cache_bytes
from .compat import cache_mutators, call_cache, output_cache


@dataclass(frozen=True)
class MetaResult:
    model: str
    seq: int
    dtype: str
    predicted_bytes: int
    measured_bytes: int | None
    error: str | None = None

    @property
    def match(self) -> bool | None:
        if self.measured_bytes is None:
            return None
        return self.measured_bytes == self.predicted_bytes


def meta_forward_bytes(model: Any, seq: int, every_layer: bool = False) -> int:
    """Cache bytes after one forward of ``seq`` tokens on the meta device.

    Unless ``every_layer``, each distinct decoder layer runs once and its twins replay its cache
    calls (:class:`LayerReplay`); should that forward fail, every layer runs."""
    import torch

    ids = torch.zeros((1, seq), dtype=torch.long, device="meta")
    with torch.inference_mode():
        if not every_layer:
            try:
                with LayerReplay(model):
                    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                return cache_bytes(output_cache(out)).total
            except Exception:  # noqa: BLE001 - fall back to the plain forward
                pass
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return cache_bytes(output_cache(out)).total


def check_lengths(raw: Mapping[str, Any], name: str) -> list[int]:
    """A length inside every window and one beyond the largest window; one length (1,000) for
    models without windows, whose cache is the same per token at any length."""
    spec = build_spec(raw, name)
    windows = [l.window for l in spec.layers if getattr(l, "window", None)]
    if spec.count("state"):
        # transformers' CPU fallback scans recurrent layers token by token (Jamba: ~13 ms per
        # token on meta); the state is length-independent, so two short lengths tell the fixed
        # state from the per-token attention layers
        return [8, 24]
    if not windows:
        return [1000]
    return sorted({max(2, min(windows) // 2), max(windows) + 100})


def meta_check(raw: Mapping[str, Any], name: str, seqs: list[int],
               dtype: str | None = None, every_layer: bool = False) -> list[MetaResult]:
    """Build ``raw`` on meta once and compare its cache with the hf prediction at each length."""
    import transformers

    spec = build_spec(raw, name)
    # a config that names no dtype is built in the dtype kvcalc assumes for it (bf16), not in
    # transformers' fp32 default, so both sides describe the same model
    built = build_random(raw, device="meta", dtype=dtype or spec.dtype, name=name)
    layout = build_layout(spec, "hf", built.dtype, version=transformers.__version__)
    out = []
    for seq in seqs:
        try:
            measured = meta_forward_bytes(built.model, seq, every_layer)
            out.append(MetaResult(name, seq, built.dtype, layout.bytes_per_sequence(seq), measured))
        except Exception as exc:  # noqa: BLE001 - report, never hide
            out.append(MetaResult(name, seq, built.dtype, layout.bytes_per_sequence(seq), None,
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"))
    return out


def safe_meta_check(raw: Mapping[str, Any], name: str, seqs: list[int] | None = None,
                    dtype: str | None = None, every_layer: bool = False) -> list[MetaResult]:
    """As :func:`meta_check`, but a model transformers cannot build is reported, not raised."""
    try:
        return meta_check(raw, name, seqs or check_lengths(raw, name), dtype, every_layer)
    except KvcalcError as exc:
        return [MetaResult(name, 0, dtype or "?", 0, None, str(exc))]
    except Exception as exc:  # noqa: BLE001
        return [MetaResult(name, 0, dtype or "?", 0, None,
                           f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")]


def check_many(targets: list[tuple[str, dict, list[int] | None, str | None]], jobs: int = 1,
               every_layer: bool = False):
    """Run :func:`safe_meta_check` for many configs, in ``jobs`` processes; yields each
    target's results as it finishes (order not kept)."""
    if jobs <= 1 or len(targets) <= 1:
        for name, raw, seqs, dtype in targets:
            yield safe_meta_check(raw, name, seqs, dtype, every_layer)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("fork")
    # longest first (cost ~ layers x forwards), so the workers finish together
    targets = sorted(targets, key=_expected_cost, reverse=True)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init)
    try:
        futures = [pool.submit(safe_meta_check, raw, name, seqs, dtype, every_layer)
                   for name, raw, seqs, dtype in targets]
        for fut in as_completed(futures):
            yield fut.result()
    except BaseException:
        # Ctrl-C (or the caller closing the generator): stop the workers now instead of
        # letting the pool run every queued check first
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _worker_init() -> None:
    """Workers leave SIGINT to the parent (which stops them): a terminal's Ctrl-C reaches the
    whole process group, and a worker dying mid-check would only break the pool. Each worker
    uses one torch thread: meta ops compute nothing, and N workers x N threads only contend."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _expected_cost(target: tuple[str, dict, list[int] | None, str | None]) -> int:
    """Rough cost of checking one target: every op of every layer runs a Python shape
    function on meta, once per forward (state layers scan token by token)."""
    name, raw, seqs, _ = target
    try:
        spec = build_spec(raw, name)
        forwards = len(seqs or check_lengths(raw, name))
        return len(spec.layers) * forwards
    except Exception:  # noqa: BLE001 - unbuildable targets are cheap
        return 0


# --- running each distinct decoder layer once --------------------------------------------
#
# On the meta device every op runs a Python shape function, so a forward costs ~10 ms per
# decoder layer whatever the sizes; a 126-layer model costs a second per length. Decoder
# layers that are structurally identical produce identical cache calls, so the first one of
# each kind runs for real and the cache calls it made (``update``, ``update_conv_state``,
# ``update_recurrent_state``, ``update_indexer``) are replayed at each later twin's own index
# into transformers' own cache object, with fresh tensors of the same shapes: which layer class
# the cache uses at that index, and what it keeps (windows, states), is still transformers'
# decision. The cache argument and the cache methods are found from what the installed
# transformers exposes (:mod:`.compat`): the argument whose value is a ``Cache``, the
# cache class's ``update*`` methods that take a ``layer_idx``. Twins must agree on the module tree (classes, parameter and buffer shapes and
# dtypes, primitive attributes other than the layer index), on the config's per-layer entries
# at their index, on the cache layer waiting for them, and on the shapes of their inputs; a
# layer whose cache calls name another index (KV sharing) is never replayed.

#: attributes that hold a layer's own index (excluded from its structural signature)
INDEX_ATTRS = frozenset({"layer_idx", "layer_id", "layer_number", "layer_index", "idx"})
_PRIMITIVE = (bool, int, float, str, type(None))


def _primitive(value: Any) -> Any:
    import torch

    if isinstance(value, _PRIMITIVE):
        return value
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, (tuple, list)) and all(isinstance(v, _PRIMITIVE) for v in value):
        return tuple(value)
    return _SKIP


_SKIP = object()


def _attrs(obj: Any) -> tuple:
    out = []
    for key, value in vars(obj).items():
        if key.startswith("_") or key in INDEX_ATTRS or key == "training":
            continue
        prim = _primitive(value)
        if prim is not _SKIP:
            out.append((key, prim))
    return tuple(sorted(out, key=lambda kv: kv[0]))


def _module_signature(layer: Any) -> tuple:
    parts = []
    for name, sub in layer.named_modules():
        params = tuple((n, tuple(p.shape), str(p.dtype))
                       for n, p in sub.named_parameters(recurse=False))
        buffers = tuple((n, tuple(b.shape), str(b.dtype))
                        for n, b in sub.named_buffers(recurse=False))
        parts.append((name, type(sub).__qualname__, _attrs(sub), params, buffers))
    return tuple(parts)


def _per_layer_config(cfg: Any, n: int, i: int) -> tuple:
    """Layer ``i``'s entries of the config's per-layer lists. A list of layer indices
    (strictly increasing ints below ``n``, e.g. Llama 4's ``moe_layers``) says whether ``i`` is
    in it; any other list of ``n`` entries gives its ``i``-th entry."""
    out = []
    for key, value in sorted(vars(cfg).items()):
        if not isinstance(value, (list, tuple)):
            continue
        if _is_index_list(value, n):
            out.append((key, i in value))
        elif len(value) == n:
            out.append((key, repr(value[i])))
    return tuple(out)


def _is_index_list(value: Any, n: int) -> bool:
    return (len(value) > 2 and all(type(v) is int for v in value)
            and all(a < b for a, b in zip(value, value[1:])) and 0 <= value[0]
            and value[-1] < n)


def _shape_key(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), str(value.dtype))
    if isinstance(value, (tuple, list)):
        return tuple(_shape_key(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _shape_key(v)) for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))
    prim = _primitive(value)
    return prim if prim is not _SKIP else type(value).__qualname__


def _fresh(value: Any) -> Any:
    """The same structure with new (meta) tensors of the same shapes."""
    import torch

    if isinstance(value, torch.Tensor):
        return torch.empty_like(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_fresh(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_fresh(v) for v in value)
    if isinstance(value, dict):
        return type(value)({k: _fresh(v) for k, v in value.items()})
    return value


def _decoder_layers(model: Any) -> Any:
    """The ModuleList of decoder layers (length = num_hidden_layers, named ``layers`` first,
    then the shallowest), or None."""
    import torch

    n = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    found = [(not name.endswith("layers"), name.count("."), name, mod)
             for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.ModuleList) and n and len(mod) == n]
    return min(found, key=lambda f: f[:3])[3] if found else None


class LayerReplay:
    """Context manager: while active, each distinct decoder layer of ``model`` runs once per
    forward and its structural twins replay its cache calls (see the comment above)."""

    def __init__(self, model: Any):
        self.model = model
        self.layers = _decoder_layers(model)
        self.ran = 0
        self.replayed = 0

    def __enter__(self) -> "LayerReplay":
        if self.layers is None:
            return self
        cfg = self.model.config.get_text_config()
        n = len(self.layers)
        self.recorded: dict[Any, Any] = {}
        self.sigs = [(_module_signature(layer), _per_layer_config(cfg, n, i))
                     for i, layer in enumerate(self.layers)]
        for i, layer in enumerate(self.layers):
            layer.forward = self._wrap(i, layer.forward)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.layers is None:
            return
        for layer in self.layers:
            layer.__dict__.pop("forward", None)

    def _wrap(self, i: int, forward: Any):
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            cache = call_cache(args, kwargs)
            if cache is None or not hasattr(cache, "layers"):
                self.ran += 1
                return forward(*args, **kwargs)
            layer_state = cache.layers[i] if i < len(cache.layers) else None
            key = (self.sigs[i], type(layer_state).__qualname__,
                   _attrs(layer_state) if layer_state is not None else (),
                   _shape_key(args), _shape_key(kwargs))
            hit = self.recorded.get(key)
            if hit is not None:
                calls, out = hit
                for method, bound in calls:
                    replay = bound.signature.bind(*_fresh(bound.args), **_fresh(bound.kwargs))
                    replay.arguments["layer_idx"] = i
                    getattr(cache, method)(*replay.args, **replay.kwargs)
                self.replayed += 1
                return _fresh(out)
            calls: list[tuple[str, Any]] = []
            out = self._record(cache, calls, forward, args, kwargs)
            self.ran += 1
            if all(bound.arguments.get("layer_idx") == i for _, bound in calls):
                self.recorded[key] = (calls, out)
            return out

        return wrapped

    @staticmethod
    def _record(cache: Any, calls: list, forward: Any, args: tuple, kwargs: dict) -> Any:
        depth = [0]
        patched = []
        for name, sig in list(cache_mutators(cache)):
            if name in vars(cache):
                continue
            method = getattr(cache, name)

            def recorder(*a: Any, __name=name, __method=method, __sig=sig, **k: Any) -> Any:
                if depth[0] == 0:
                    calls.append((__name, __sig.bind(*a, **k)))
                depth[0] += 1
                try:
                    return __method(*a, **k)
                finally:
                    depth[0] -= 1

            setattr(cache, name, recorder)
            patched.append(name)
        try:
            return forward(*args, **kwargs)
        finally:
            for name in patched:
                delattr(cache, name)
