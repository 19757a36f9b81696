"""GGUF files: the header and key/values only (never the tensor data), read into a ModelSpec.

``--model FILE.gguf`` (or a directory holding one GGUF file) comes here from
:mod:`kvcalc.sources`. The header is parsed by streaming through it: the key/value section and
the tensor table, skipping long arrays (the tokenizer's 262,144 strings) without keeping them,
so a 100 GB file reads in milliseconds. (The ``gguf`` package's ``GGUFReader`` builds a numpy
view per tokenizer entry: 30 s to 3 min for the small models kvcalc tests with.) Each tensor's
name, ggml type, shape and offset are kept (:class:`GGUFTensor`); with ggml's bytes per block
(:mod:`kvcalc.ggml`) the file's tensor bytes -- the weights llama.cpp loads, per layer and for
the embeddings and output -- are known without reading them (:mod:`kvcalc.gguf_weights`).

The layer rules follow llama.cpp (``src/llama-model.cpp``, ``src/llama-hparams.cpp``,
``src/models/<arch>.cpp``; ggml-org/llama.cpp), the one reader of these files that matters:

- ``{arch}.block_count`` layers; ``{arch}.attention.head_count`` and ``head_count_kv`` are a
  scalar or one value per layer (``head_count_kv`` defaults to ``head_count``; a layer with 0 KV
  heads caches nothing);
- head sizes: ``{arch}.attention.key_length`` / ``value_length`` when present, else
  ``embedding_length / head_count`` (``llama_model_loader``: ``n_embd_head_k``); SWA layers use
  ``key_length_swa`` / ``value_length_swa`` when the file has them;
- sliding-window layers: ``{arch}.attention.sliding_window`` with the file's
  ``sliding_window_pattern`` (a per-layer bool array, or a period ``n``: layer ``il`` is SWA
  iff ``il % n < n - 1``, ``llama_hparams::set_swa_pattern``), else the architecture's built-in
  period (:data:`SWA_PATTERNS`); architectures without an SWA rule ignore the key, as
  llama.cpp does (Mistral v0.1 runs as ``llama`` with full attention);
- MLA (``deepseek2`` and kin, ``attention.kv_lora_rank``): one K row of
  ``kv_lora_rank + rope.dimension_count`` values per token, no V;
- KV reuse (``attention.shared_kv_layers``, Gemma 3n): the last layers read an earlier layer's
  cache and store nothing;
- recurrent architectures (``{arch}.ssm.*``, ``{arch}.wkv.*`` keys) are refused: kvcalc's
  llama.cpp layout covers attention caches.
"""

from __future__ import annotations

import math

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from . import arch
from .errors import ConfigError, LimitError
from .files import open_regular

GGUF_MAGIC = b"GGUF"
#: header versions llama.cpp reads (gguf.cpp: v1 is refused, v2 and v3 read)
GGUF_VERSIONS = (2, 3)
#: bounds on what a header may declare (a real file: < 2,000 tensors, < 100 keys)
MAX_TENSORS = 1_000_000
MAX_KEYS = 100_000
MAX_STRING_BYTES = 64 * 1024 * 1024     # chat templates are < 100 kB
MAX_ARRAY_ITEMS = 1 << 31
MAX_DIMS = 4                             # GGML_MAX_DIMS
#: ggml refuses a tensor whose size overflows int64 (gguf.cpp: INT64_MAX / ne checks)
MAX_TENSOR_ELEMENTS = (1 << 63) - 1
#: arrays longer than this are skipped, not kept (tokenizer vocabularies, merges, scores);
#: per-layer arrays are far shorter
KEEP_ARRAY_ITEMS = 4096
#: the whole key/value section: bytes kept in memory (keys, kept strings and arrays), and
#: strings stepped over one by one (a tokenizer's vocabulary and merges: under 1,000,000 in a
#: real file); past either the file is refused, so a header costs bounded memory and time
MAX_METADATA_KEPT_BYTES = 64 * 1024 * 1024
MAX_METADATA_STRINGS = 4_000_000
#: the key under which the GGUF facts travel inside the raw config (arch.build_spec hands a
#: config holding it to :func:`build_gguf_spec`)
GGUF_CONFIG_KEY = arch.GGUF_CONFIG_KEY

#: value types of the GGUF key/value section (gguf.h ``enum gguf_type``): struct formats
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

#: llama.cpp architecture -> the Hugging Face model_type of the same family (for parameter
#: counts and the other engines' rules)
HF_TYPES = {"gemma3": "gemma3_text", "gpt-oss": "gpt_oss", "gemma3n": "gemma3n_text",
            "deepseek2": "deepseek_v3", "qwen3moe": "qwen3_moe", "qwen2moe": "qwen2_moe",
            "phi3": "phi3", "command-r": "cohere"}


@dataclass(frozen=True)
class GGUFTensor:
    """One entry of the tensor table: name, ggml type, shape (ne0 first), offset in the data
    section, and its bytes (``ggml_nbytes``)."""

    name: str
    ggml_type: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF file declares before its tensor data."""

    path: str
    version: int
    metadata: Mapping[str, Any]        # long arrays kept as ("array", n) placeholders
    tensor_count: int
    tensor_bytes: int                  # bytes of every tensor, from its type and shape
    tensor_types: Mapping[str, int]    # ggml type name -> tensors of that type
    tensors: tuple[GGUFTensor, ...] = ()
    alignment: int = 32                # general.alignment: the data section's tensor alignment

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


class _Stream:
    """Bounded little-endian reads; a short read, or a skip past the end of the file, is a
    truncated file; the metadata budget (:data:`MAX_METADATA_KEPT_BYTES`,
    :data:`MAX_METADATA_STRINGS`) is charged as values are read."""

    def __init__(self, fh: BinaryIO, path: str):
        self.fh, self.path = fh, path
        self.size = os.fstat(fh.fileno()).st_size
        self.kept = 0
        self.strings = 0

    def read(self, n: int) -> bytes:
        if n > self.size - self.fh.tell():
            raise ConfigError(f"{self.path}: truncated GGUF header (a value runs past the end "
                              "of the file)")
        data = self.fh.read(n)
        if len(data) != n:
            raise ConfigError(f"{self.path}: truncated GGUF header (the file ends inside it)")
        return data

    def skip(self, n: int) -> None:
        if n > self.size - self.fh.tell():
            raise ConfigError(f"{self.path}: truncated GGUF header (a value runs past the end "
                              "of the file)")
        self.fh.seek(n, 1)

    def charge(self, kept: int = 0, strings: int = 0) -> None:
        self.kept += kept
        self.strings += strings
        if self.kept > MAX_METADATA_KEPT_BYTES or self.strings > MAX_METADATA_STRINGS:
            raise LimitError(f"{self.path}: the GGUF metadata exceeds kvcalc's budget "
                             f"({MAX_METADATA_KEPT_BYTES:,} bytes kept, "
                             f"{MAX_METADATA_STRINGS:,} strings; docs/security.md)")

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self._string_length()
        self.charge(kept=n)
        return self.read(n).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.skip(self._string_length())

    def _string_length(self) -> int:
        n = self.unpack("<Q")
        self.charge(strings=1)
        if n > MAX_STRING_BYTES:
            raise LimitError(f"{self.path}: a GGUF string of {n:,} bytes (at most "
                             f"{MAX_STRING_BYTES:,})")
        return n

    def value(self, vtype: int, keep: bool = True) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string() if keep else self.skip_string()
        if vtype == _ARRAY:
            itype, n = self.unpack("<I"), self.unpack("<Q")
            if n > MAX_ARRAY_ITEMS:
                raise LimitError(f"{self.path}: a GGUF array of {n:,} items")
            if itype == _ARRAY:
                raise ConfigError(f"{self.path}: nested GGUF arrays are not part of the format")
            if n > KEEP_ARRAY_ITEMS or not keep:
                if itype in _SCALARS:
                    self.skip(n * struct.calcsize(_SCALARS[itype]))
                elif itype == _STRING:
                    for _ in range(n):
                        self.skip_string()
                else:
                    raise ConfigError(f"{self.path}: unknown GGUF value type {itype}")
                return ("array", n)
            if itype not in _SCALARS and itype != _STRING:
                raise ConfigError(f"{self.path}: unknown GGUF value type {itype}")
            self.charge(kept=n * 8)
            return [self.value(itype) for _ in range(n)]
        raise ConfigError(f"{self.path}: unknown GGUF value type {vtype}")


def read_header(path: str | Path) -> GGUFHeader:
    """Parse the header of the GGUF file at ``path``: key/values and the tensor table."""
    quant = _quant_sizes()
    p = Path(path)
    with open_regular(p, "GGUF file") as fh:
        s = _Stream(fh, str(p))
        magic = fh.read(4)
        if magic != GGUF_MAGIC:
            raise ConfigError(f"{p} is not a GGUF file (it does not start with 'GGUF')")
        version = s.unpack("<I")
        if version not in GGUF_VERSIONS:
            raise ConfigError(f"{p}: GGUF version {version} (kvcalc reads versions 2 and 3, "
                              "as llama.cpp does)")
        n_tensors, n_kv = s.unpack("<Q"), s.unpack("<Q")
        if n_tensors > MAX_TENSORS or n_kv > MAX_KEYS:
            raise LimitError(f"{p}: the GGUF header declares {n_tensors:,} tensors and "
                             f"{n_kv:,} keys (at most {MAX_TENSORS:,} and {MAX_KEYS:,})")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = s.string()
            if key in meta:
                raise ConfigError(f"{p}: the GGUF key {key!r} appears twice (llama.cpp refuses "
                                  "duplicate keys)")
            meta[key] = s.value(s.unpack("<I"), keep=not key.startswith("tokenizer.ggml."))
        total, types, tensors = 0, {}, []
        for _ in range(n_tensors):
            tname = s.string()
            n_dims = s.unpack("<I")
            if n_dims > MAX_DIMS:
                raise ConfigError(f"{p}: a tensor with {n_dims} dimensions (at most {MAX_DIMS})")
            elements, shape = 1, []
            for _ in range(n_dims):
                shape.append(s.unpack("<Q"))
                elements *= shape[-1]
            if elements > MAX_TENSOR_ELEMENTS:
                raise ConfigError(f"{p}: a tensor of {elements:,} values (ggml's limit is "
                                  f"{MAX_TENSOR_ELEMENTS:,})")
            ttype = s.unpack("<I")
            offset = s.unpack("<Q")  # offset into the data section
            if ttype not in quant:
                raise ConfigError(f"{p}: a tensor of unknown ggml type {ttype}")
            name, block, size = quant[ttype]
            nbytes = tensor_bytes(elements, block, size)
            total += nbytes
            types[name] = types.get(name, 0) + 1
            tensors.append(GGUFTensor(tname, name, tuple(shape), offset, nbytes))
    align = meta.get("general.alignment", 32)
    return GGUFHeader(str(p), version, meta, n_tensors, total, types, tuple(tensors),
                      align if isinstance(align, int) and align > 0 else 32)


def tensor_bytes(elements: int, block_elements: int, block_bytes: int) -> int:
    """Bytes of a tensor of ``elements`` values in a ggml type storing ``block_elements``
    values in ``block_bytes`` (``ggml_nbytes`` for a contiguous tensor)."""
    return elements // block_elements * block_bytes


def _quant_sizes() -> dict[int, tuple[str, int, int]]:
    """ggml type id -> (name, values per block, bytes per block) (:mod:`kvcalc.ggml`)."""
    from .ggml import TYPES

    return {t.ggml_id: (t.name, t.block, t.block_bytes) for t in TYPES}


def find_gguf(directory: Path) -> Path | None:
    """The one ``*.gguf`` file in ``directory`` (None when there is none; an error when there
    are several, naming them)."""
    files = sorted(f for f in directory.glob("*.gguf") if f.is_file())
    if len(files) > 1:
        raise ConfigError(f"directory {directory} holds {len(files)} GGUF files "
                          f"({', '.join(f.name for f in files[:4])}): name one")
    return files[0] if files else None


def is_gguf(path: Path) -> bool:
    """A file whose name ends in .gguf or whose first bytes are the GGUF magic."""
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with open_regular(path) as fh:
            return fh.read(4) == GGUF_MAGIC
    except (OSError, ConfigError):
        return False


# --------------------------------------------------------------------------------------------
# header -> raw config (Hugging Face names for the shared fields + the GGUF facts)


def gguf_config(header: GGUFHeader) -> dict[str, Any]:
    """The raw config of a GGUF model: the fields every engine and params.py read, under their
    Hugging Face names, and the llama.cpp facts under :data:`GGUF_CONFIG_KEY`."""
    meta = header.metadata
    arch = header.architecture
    if not arch:
        raise ConfigError(f"{header.path}: the GGUF header has no 'general.architecture'")
    if any(k.startswith((f"{arch}.ssm.", f"{arch}.wkv.", f"{arch}.shortconv."))
           for k in meta):
        raise ConfigError(f"{header.path}: llama.cpp architecture '{arch}' keeps a recurrent "
                          "state; kvcalc reads GGUF models whose cache is attention only")
    prefix = f"{arch}."
    required = ("block_count", "embedding_length", "attention.head_count")
    missing = [prefix + k for k in required if prefix + k not in meta]
    if missing:
        raise ConfigError(f"{header.path}: llama.cpp architecture '{arch}' is missing "
                          f"{', '.join(repr(k) for k in missing)}")
    arch_meta = {k[len(prefix):]: v for k, v in meta.items() if k.startswith(prefix)}
    vocab = meta.get(prefix + "vocab_size")
    tokens = meta.get("tokenizer.ggml.tokens")
    if vocab is None and isinstance(tokens, tuple):
        vocab = tokens[1]
    where = f"{header.path} (GGUF, architecture '{arch}')"
    heads = _largest(arch_meta["attention.head_count"], "attention.head_count", where)
    kv = _largest(arch_meta.get("attention.head_count_kv", heads), "attention.head_count_kv",
                  where)
    cfg: dict[str, Any] = {
        "model_type": HF_TYPES.get(arch, arch),
        "hidden_size": arch_meta["embedding_length"],
        "num_hidden_layers": arch_meta["block_count"],
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": _largest(arch_meta.get("feed_forward_length"),
                                      "feed_forward_length", where),
        "max_position_embeddings": arch_meta.get("context_length"),
        "vocab_size": vocab,
        "torch_dtype": "float16",
        GGUF_CONFIG_KEY: {
            "architecture": arch,
            "name": meta.get("general.name"),
            "file": header.path,
            "file_type": meta.get("general.file_type"),
            "tensor_bytes": header.tensor_bytes,
            "tensor_count": header.tensor_count,
            "tensor_types": dict(header.tensor_types),
            # every tensor: [name, ggml type, shape, bytes] (kvcalc.gguf_weights)
            "tensors": [[t.name, t.ggml_type, list(t.shape), t.nbytes] for t in header.tensors],
            "hparams": {k: v for k, v in arch_meta.items() if not isinstance(v, tuple)},
        },
    }
    if "attention.key_length" in arch_meta:
        cfg["head_dim"] = arch_meta["attention.key_length"]
    names = {t.name for t in header.tensors}
    if "token_embd.weight" in names:
        # no output matrix: llama.cpp reuses the token embeddings (tied), counted once
        cfg["tie_word_embeddings"] = "output.weight" not in names
    return {k: v for k, v in cfg.items() if v is not None}


def _largest(value: Any, key: str, where: str) -> Any:
    """A scalar as it is; a per-layer array's largest value, after checking that it is a
    non-empty array of integers (NaN, fractions, text and empty arrays are one ConfigError);
    None stays None."""
    if not isinstance(value, list):
        return value
    if not value:
        raise ConfigError(f"{where}: '{key}' is an empty array (one value per layer expected)")
    return max(arch.checked_int(f"{key}[{i}]", v, where, 0, arch.MAX_DIM)
               for i, v in enumerate(value))


def read_gguf_config(path: str | Path) -> dict[str, Any]:
    """``gguf_config(read_header(path))``."""
    return gguf_config(read_header(path))


# --------------------------------------------------------------------------------------------
# raw config -> ModelSpec: llama.cpp's layer rules live in kvcalc.arch (the one adapter from a raw
# config to a ModelSpec; arch never imports this module). Re-exported for existing callers.

from .arch import (GGUF_FIELDS, SWA_DEFAULT_WINDOW, SWA_PATTERNS, build_gguf_spec,  # noqa: E402,F401
                   per_layer, swa_by_period, swa_layers, swa_rule_text)
