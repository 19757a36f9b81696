"""ggml's tensor types: values per block and bytes per block (the one table kvcalc keeps).

From ggml (ggml-org/llama.cpp ``ggml/include/ggml.h`` ``enum ggml_type`` for the ids,
``ggml/src/ggml.c`` ``type_traits`` for ``blck_size`` / ``type_size``, and the
``static_assert(sizeof(block_...))`` lines of ``ggml/src/ggml-common.h`` for the bytes), at
llama.cpp commit 0c1e57098 (vendored by llama-cpp-python 0.3.36). A tensor row of ``n`` values
in a type of block ``b`` and ``s`` bytes per block costs ``n / b x s`` bytes (``ggml_row_size``);
a contiguous tensor ``ggml_nbytes`` = elements / b x s.

Used for the weights (every tensor of a GGUF file, and the tensors of a preset quantized as
``llama-quantize`` would, :mod:`kvcalc.gguf_weights`) and for llama.cpp's K/V cache types.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError

QK_K = 256   # the super-block of the k-quants and most i-quants (ggml-common.h)


@dataclass(frozen=True)
class GgmlTypeInfo:
    """One ggml type: ``block`` values stored in ``block_bytes`` bytes."""

    name: str          # as ggml_type_name prints it, lower case ("q4_k", "f16")
    ggml_id: int       # enum ggml_type
    block: int
    block_bytes: int

    @property
    def quantized(self) -> bool:
        return self.block > 1

    @property
    def bits_per_weight(self) -> float:
        return self.block_bytes * 8 / self.block

    def nbytes(self, elements: int) -> int:
        """``ggml_nbytes`` of a contiguous tensor of ``elements`` values (whole blocks)."""
        return elements // self.block * self.block_bytes

    def row_bytes(self, n: int) -> int:
        """``ggml_row_size``: a row of ``n`` values (``n`` must be a whole number of blocks)."""
        if n % self.block:
            raise UsageError(f"ggml type {self.name} stores blocks of {self.block} values: a row "
                             f"of {n} values does not fit (llama.cpp refuses it)")
        return n // self.block * self.block_bytes


def _t(name: str, ggml_id: int, block: int, block_bytes: int) -> GgmlTypeInfo:
    return GgmlTypeInfo(name, ggml_id, block, block_bytes)


#: every ggml type a GGUF file may hold; bytes per block from ggml-common.h's static_asserts
TYPES: tuple[GgmlTypeInfo, ...] = (
    _t("f32", 0, 1, 4),
    _t("f16", 1, 1, 2),
    _t("q4_0", 2, 32, 18),          # fp16 d + 16 B of nibbles
    _t("q4_1", 3, 32, 20),          # fp16 d, m + 16 B
    _t("q5_0", 6, 32, 22),          # fp16 d + 4 B high bits + 16 B
    _t("q5_1", 7, 32, 24),
    _t("q8_0", 8, 32, 34),          # fp16 d + 32 x int8
    _t("q8_1", 9, 32, 40),
    _t("q2_k", 10, QK_K, 84),       # 2 fp16 + QK_K/16 + QK_K/4
    _t("q3_k", 11, QK_K, 110),      # fp16 + QK_K/4 + QK_K/8 + 12
    _t("q4_k", 12, QK_K, 144),      # 2 fp16 + 12 B scales + QK_K/2
    _t("q5_k", 13, QK_K, 176),      # 2 fp16 + 12 + QK_K/2 + QK_K/8
    _t("q6_k", 14, QK_K, 210),      # fp16 + QK_K/16 + 3 QK_K/4
    _t("q8_k", 15, QK_K, 292),
    _t("iq2_xxs", 16, QK_K, 66),
    _t("iq2_xs", 17, QK_K, 74),
    _t("iq3_xxs", 18, QK_K, 98),
    _t("iq1_s", 19, QK_K, 50),
    _t("iq4_nl", 20, 32, 18),
    _t("iq3_s", 21, QK_K, 110),
    _t("iq2_s", 22, QK_K, 82),
    _t("iq4_xs", 23, QK_K, 136),
    _t("i8", 24, 1, 1),
    _t("i16", 25, 1, 2),
    _t("i32", 26, 1, 4),
    _t("i64", 27, 1, 8),
    _t("f64", 28, 1, 8),
    _t("iq1_m", 29, QK_K, 56),
    _t("bf16", 30, 1, 2),
    _t("tq1_0", 34, QK_K, 54),
    _t("tq2_0", 35, QK_K, 66),
    _t("mxfp4", 39, 32, 17),        # e8m0 scale + 16 B
    _t("nvfp4", 40, 64, 36),        # 4 fp8 scales + 32 B
    _t("q1_0", 41, 128, 18),        # fp16 + QK1_0/8
    _t("q2_0", 42, 64, 18),         # fp16 + QK2_0/4
)
BY_NAME: dict[str, GgmlTypeInfo] = {t.name: t for t in TYPES}
BY_ID: dict[int, GgmlTypeInfo] = {t.ggml_id: t for t in TYPES}


def ggml_type_info(name: str) -> GgmlTypeInfo:
    """The ggml type named ``name`` (case-insensitive: ``Q4_K``, ``q4_k``)."""
    key = str(name).strip().lower()
    if key not in BY_NAME:
        raise UsageError(f"unknown ggml type '{name}': choose one of {', '.join(BY_NAME)}")
    return BY_NAME[key]
