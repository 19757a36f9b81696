"""Raw config -> transformers config class -> a model on the target device.

* The config class is chosen by ``model_type`` from transformers' own ``CONFIG_MAPPING``
  (remote-code types mapped to their native equivalent: ``kimi_k2`` -> ``deepseek_v3``).
  Every field that names code, a kernel or a hub repository to load (``auto_map``,
  ``attn_implementation: kernels-community/...``, ``quantization_config``...:
  :data:`kvcalc.arch.CODE_FIELDS`) is dropped at every level and ``trust_remote_code`` is never
  used: no code from a model repository or the hub runs.
* Multimodal checkpoints are reduced to their decoder (``text_config``), the part that caches.
* Random weights are created directly on the target device in the target dtype (a
  ``torch.device`` context), so a GPU model never passes through a CPU copy; on the meta device
  initialisation is skipped altogether (``no_init_weights``).
* ``--layers N`` keeps the first N decoder layers (:func:`kvcalc.arch.truncate_config`), and the
  prediction is made from the same truncated config.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import arch
from ..errors import ConfigError, KvcalcError, UsageError

#: remote-code model types whose architecture transformers has natively under another name
REMOTE_TO_NATIVE = {
    "kimi_k2": "deepseek_v3",          # Kimi-K2 ships DeepseekV3Config as remote code
    "RefinedWeb": "falcon",            # legacy Falcon remote code
    "RefinedWebModel": "falcon",
}
#: config keys that name the dtype (older ``torch_dtype``, newer ``dtype``)
DTYPE_KEYS = ("dtype", "torch_dtype")

DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
VERIFY_DTYPES = tuple(DTYPE_NAMES)


def torch_dtype(name: str):
    """'bf16' -> torch.bfloat16."""
    import torch

    try:
        return getattr(torch, DTYPE_NAMES[name])
    except KeyError:
        raise UsageError(f"unknown dtype '{name}': choose one of {', '.join(VERIFY_DTYPES)}") from None


def dtype_short(dtype) -> str:
    """torch.bfloat16 -> 'bf16' (the names kvcalc's layouts use)."""
    text = str(dtype).removeprefix("torch.")
    for short, long in DTYPE_NAMES.items():
        if text == long:
            return short
    raise UsageError(f"the model's dtype {text} is not one kvcalc verifies ({', '.join(VERIFY_DTYPES)})")


def decoder_config_dict(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The decoder's config as a plain dict: nested ``text_config`` unwrapped (its model_type
    filled from the parent's), the parent's dtype carried over, remote-code keys dropped."""
    text, nested = arch.unwrap_text_config(arch.without_code_fields(raw)[0])
    if nested:
        if not text.get("model_type"):
            parent = raw.get("model_type")
            text["model_type"] = arch._PARENT_TO_TEXT_TYPE.get(parent, parent)
        for key in DTYPE_KEYS:
            if text.get(key) is None and raw.get(key) is not None:
                text[key] = raw[key]
    return text


def native_model_type(model_type: str | None) -> str | None:
    return REMOTE_TO_NATIVE.get(model_type, model_type)


def hf_config(raw: Mapping[str, Any], name: str = "model"):
    """A transformers config object for the decoder of ``raw`` (never remote code)."""
    from transformers import CONFIG_MAPPING

    import transformers

    text = decoder_config_dict(raw)
    model_type = text.get("model_type")
    native = native_model_type(model_type)
    if not native:
        raise ConfigError(f"the config of {name} has no model_type: transformers cannot build it")
    if native not in CONFIG_MAPPING:
        raise ConfigError(
            f"transformers {transformers.__version__} has no native class for model_type "
            f"'{model_type}' (it needs the repository's remote code, which kvcalc never runs)"
        )
    text["model_type"] = native
    cls = CONFIG_MAPPING[native]
    try:
        return cls(**{k: v for k, v in text.items() if k != "model_type"})
    except Exception as exc:  # noqa: BLE001 - config classes raise anything
        raise ConfigError(f"transformers' {cls.__name__} rejects the config of {name}: "
                          f"{type(exc).__name__}: {exc}") from None


@dataclass
class BuiltModel:
    """A model ready to run, with the raw config its prediction must be made from."""

    model: Any
    raw_config: dict[str, Any]
    device: str
    dtype: str            # 'bf16' | 'fp16' | 'fp32' (the dtype the weights actually have)
    weights: str          # 'random' or the checkpoint path
    num_parameters: int

    @property
    def vocab_size(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "vocab_size", None) or cfg.get_text_config().vocab_size)


def build_random(raw: Mapping[str, Any], *, device: str, dtype: str | None, name: str = "model"):
    """A random-weight model for ``raw`` built directly on ``device`` (``meta``, ``cpu``, ``cuda``).

    ``dtype`` None means the config's own dtype (transformers' default, fp32 when it names none).
    """
    import torch
    from transformers import AutoModelForCausalLM

    cfg = hf_config(raw, name)
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = torch_dtype(dtype)
    inits = [torch.device(device)]
    if device == "meta":
        from transformers import initialization

        inits.append(initialization.no_init_weights())
        # every op on meta runs a Python shape function; eager attention needs fewer of them
        # than SDPA, and the cache does not depend on the attention implementation
        kwargs["attn_implementation"] = "eager"
    with contextlib.ExitStack() as stack:
        for ctx in inits:
            stack.enter_context(ctx)
        try:
            model = AutoModelForCausalLM.from_config(cfg, **kwargs)
        except ValueError as exc:
            if "Unrecognized configuration class" in str(exc):
                raise ConfigError(f"transformers has no causal-LM class for {type(cfg).__name__} "
                                  f"({name})") from None
            raise
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    return BuiltModel(model, dict(raw), device, dtype_short(model.dtype), "random", n_params)


def build_from_weights(path: str | Path, *, device: str, dtype: str | None,
                       layers: int | None = None, name: str = "model"):
    """A model with real weights from a checkpoint directory or a GGUF file.

    GGUF needs the ``gguf`` package (and ``accelerate``); transformers dequantises the weights
    (to fp32 unless ``dtype`` says otherwise). ``layers`` keeps the first N decoder layers.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"--weights: no such file or directory: {path}")
    kwargs: dict[str, Any] = {}
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UsageError(f"--weights {path}: a file must be a .gguf; otherwise give the "
                             "checkpoint directory (config.json + *.safetensors)")
        _require_gguf()
        # transformers' GGUF reader only ever sees a file kvcalc's own reader accepted (regular
        # file, bounded metadata, every field within the config rules: kvcalc/gguf.py)
        from ..gguf import read_gguf_config

        arch.build_spec(read_gguf_config(path), path.stem)
        location, kwargs["gguf_file"] = str(path.parent), path.name
    else:
        if not (path / "config.json").is_file():
            raise UsageError(f"--weights {path}: the directory holds no config.json")
        location = str(path)
    if dtype is not None:
        kwargs["dtype"] = torch_dtype(dtype)
    try:
        cfg = AutoConfig.from_pretrained(location, local_files_only=True, **_only(kwargs, "gguf_file"))
        raw = arch.without_code_fields(cfg.to_dict())[0]
        if layers is not None:
            raw = arch.truncate_config(raw, layers)
        # rebuilt from the cleaned dict: the checkpoint's attn_implementation (a hub kernel?)
        # and remote-code pointers never reach from_pretrained
        cfg = type(cfg)(**{k: v for k, v in raw.items() if k != "model_type"})
        with _device_context(device):
            model = AutoModelForCausalLM.from_pretrained(location, config=cfg,
                                                         local_files_only=True, **kwargs)
    except (KvcalcError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a third-party reader of a user's file: struct.error,
        # KeyError, ... from a hostile or unsupported checkpoint become one line
        first = (str(exc).splitlines() or [""])[0][:300]
        raise ConfigError(f"cannot load weights from {path}: {type(exc).__name__}"
                          + (f": {first}" if first else "")) from None
    if next(model.parameters()).device.type != device.split(":")[0]:
        model = model.to(device)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    return BuiltModel(model, raw, device, dtype_short(model.dtype), str(path), n_params)


def weights_config(path: str | Path) -> dict[str, Any] | None:
    """The config.json next to checkpoint weights, read as plain JSON (None for GGUF)."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        from ..sources import load_json_file

        return load_json_file(path / "config.json")
    return None


def _only(kwargs: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in keys}


def _device_context(device: str):
    import torch

    return torch.device(device) if device != "cpu" else contextlib.nullcontext()


def _require_gguf() -> None:
    missing = []
    for mod in ("gguf", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        from .backend import BackendMissingError

        raise BackendMissingError(
            f"reading GGUF weights needs {' and '.join(missing)}: pip install gguf accelerate"
        )
