"""Ollama's model names (``family:size[-variant][-quant]``) -> kvcalc presets and quantization.

Ollama's library (ollama.com/library) names a model ``family:tag``; the tag is a size
(``8b``), optionally a variant (``-instruct``, ``-it``, ``-text``) and a quantization
(``-q4_K_M``, ``-q8_0``, ``-fp16``). A tag without a quantization is the library's default,
Q4_K_M for every family below (the ``latest`` / size tags point at ``...-q4_K_M``; gpt-oss
ships MXFP4). A bare family (``llama3.1``) is its ``latest`` tag. The table names the kvcalc
preset with the same architecture; the KV cache and the tensor shapes depend only on it.
docs/llamacpp.md lists the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ModelNotFoundError

#: Ollama's default quantization for library tags without one
DEFAULT_QUANT = "q4_k_m"


@dataclass(frozen=True)
class OllamaModel:
    name: str            # family:size as Ollama spells it
    preset: str          # kvcalc preset with that architecture
    quant: str = DEFAULT_QUANT
    note: str = ""


def _m(name: str, preset: str, quant: str = DEFAULT_QUANT, note: str = "") -> OllamaModel:
    return OllamaModel(name, preset, quant, note)


#: family:size -> preset (ollama.com/library; the first size of a family is its ``latest``)
TABLE: tuple[OllamaModel, ...] = (
    _m("llama3.1:8b", "llama-3.1-8b"), _m("llama3.1:70b", "llama-3.1-70b"),
    _m("llama3.1:405b", "llama-3.1-405b"),
    _m("llama3.2:3b", "llama-3.2-3b"), _m("llama3.2:1b", "llama-3.2-1b"),
    _m("llama3.3:70b", "llama-3.3-70b"),
    _m("llama3:8b", "llama-3-8b"), _m("llama3:70b", "llama-3-70b"),
    _m("llama2:7b", "llama-2-7b", "q4_0", "llama2's library tags are Q4_0"),
    _m("llama2:13b", "llama-2-13b", "q4_0", "llama2's library tags are Q4_0"),
    _m("llama2:70b", "llama-2-70b", "q4_0", "llama2's library tags are Q4_0"),
    _m("gemma3:4b", "gemma-3-4b"), _m("gemma3:1b", "gemma-3-1b"),
    _m("gemma3:12b", "gemma-3-12b"), _m("gemma3:27b", "gemma-3-27b"),
    _m("gemma3n:e4b", "gemma-3n-e4b"),
    _m("gemma2:9b", "gemma-2-9b"), _m("gemma2:27b", "gemma-2-27b"),
    _m("gemma:2b", "gemma-2b"),
    _m("qwen2.5:7b", "qwen2.5-7b-instruct"), _m("qwen2.5:1.5b", "qwen2.5-1.5b"),
    _m("qwen2.5:3b", "qwen2.5-3b"), _m("qwen2.5:32b", "qwen2.5-32b"),
    _m("qwen2.5:72b", "qwen2.5-72b"),
    _m("qwen2:7b", "qwen2-7b"),
    _m("qwen3:8b", "qwen3-8b"), _m("qwen3:0.6b", "qwen3-0.6b"), _m("qwen3:1.7b", "qwen3-1.7b"),
    _m("qwen3:32b", "qwen3-32b"), _m("qwen3:30b", "qwen3-30b-a3b"),
    _m("qwen3:235b", "qwen3-235b-a22b"),
    _m("deepseek-r1:7b", "qwen2.5-7b", note="DeepSeek-R1-Distill-Qwen-7B: Qwen2.5 7B's layers"),
    _m("deepseek-r1:32b", "qwen2.5-32b",
       note="DeepSeek-R1-Distill-Qwen-32B: Qwen2.5 32B's layers"),
    _m("deepseek-r1:70b", "llama-3.3-70b",
       note="DeepSeek-R1-Distill-Llama-70B: Llama 3.3 70B's layers"),
    _m("deepseek-r1:671b", "deepseek-r1"), _m("deepseek-v3:671b", "deepseek-v3"),
    _m("mistral:7b", "mistral-7b-v0.3"), _m("mistral-nemo:12b", "mistral-nemo"),
    _m("mixtral:8x7b", "mixtral-8x7b"), _m("mixtral:8x22b", "mixtral-8x22b"),
    _m("phi3:3.8b", "phi-3-mini"), _m("phi4:14b", "phi-4"),
    _m("gpt-oss:20b", "gpt-oss-20b", "mxfp4_moe", "gpt-oss ships MXFP4 experts"),
    _m("gpt-oss:120b", "gpt-oss-120b", "mxfp4_moe", "gpt-oss ships MXFP4 experts"),
    _m("olmo2:7b", "olmo-2-7b"), _m("starcoder2:7b", "starcoder2-7b"),
    _m("internlm2:7b", "internlm2.5-7b"), _m("falcon:7b", "falcon-7b"),
    _m("falcon:40b", "falcon-40b"),
)
BY_NAME = {m.name: m for m in TABLE}
#: the quantization suffixes of library tags -> llama.cpp file types
_QUANT = re.compile(r"-(q[0-9]_[0-9a-z_]+|iq[0-9]_[a-z_]+|fp16|bf16|f16|q8_0)$", re.I)
_VARIANTS = ("instruct", "it", "text", "chat", "base", "qat")


def is_ollama_name(name: str) -> bool:
    """A ``family:tag`` spelling (no path separator, one colon), or a bare library family
    (``llama3.1``: its ``latest`` tag)."""
    if name.count(":") == 1 and "/" not in name and not name.startswith((".", "~")):
        return True
    return name.strip().lower() in {m.name.split(":")[0] for m in TABLE}


def lookup(name: str) -> tuple[OllamaModel, str]:
    """The table entry and the quantization (a llama.cpp file type) for an Ollama name."""
    text = name.strip().lower()
    family, _, tag = text.partition(":")
    if not tag or tag == "latest":
        entry = next((m for m in TABLE if m.name.split(":")[0] == family), None)
        if entry is None:
            raise ModelNotFoundError(_unknown(name))
        return entry, entry.quant
    quant = None
    q = _QUANT.search(tag)
    if q:
        quant = {"fp16": "f16"}.get(q.group(1).lower(), q.group(1).lower())
        tag = tag[:q.start()]
    size, *rest = tag.split("-")
    if any(v not in _VARIANTS for v in rest):
        raise ModelNotFoundError(f"Ollama tag '{name}': kvcalc reads family:size[-variant]"
                                 f"[-quant] (variants {', '.join(_VARIANTS)})")
    entry = BY_NAME.get(f"{family}:{size}")
    if entry is None:
        raise ModelNotFoundError(_unknown(name))
    from .gguf_weights import FILE_TYPES

    if quant is not None and quant not in FILE_TYPES:
        raise ModelNotFoundError(f"Ollama tag '{name}': unknown quantization '{quant}'")
    return entry, quant or entry.quant


def _unknown(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name.lower(), list(BY_NAME), n=3, cutoff=0.5)
    return (f"unknown Ollama model '{name}': kvcalc maps {len(TABLE)} library names to presets"
            + (f"; did you mean {', '.join(close)}?" if close else "")
            + " (kvcalc models --ollama lists them)")
