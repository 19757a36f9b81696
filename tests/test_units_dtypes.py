"""Size parsing/formatting and KV dtype row sizes."""

from __future__ import annotations

import pytest

from kvcalc.dtypes import DTYPES, normalise_dtype_name, resolve_kv_dtype
from kvcalc.errors import UsageError
from kvcalc.units import format_bytes, parse_bytes, parse_token_list, parse_tokens


@pytest.mark.parametrize("text, value", [
    ("4096", 4096), ("4k", 4096), ("4K", 4096), ("128k", 131_072), ("1M", 1_048_576),
    ("1.5k", 1536), ("32_768", 32_768), (" 8k ", 8192),
])
def test_parse_tokens(text, value):
    assert parse_tokens(text) == value


@pytest.mark.parametrize("text", ["", "abc", "4kb", "0", "-1", "1.3k", "k"])
def test_parse_tokens_rejects(text):
    with pytest.raises(UsageError):
        parse_tokens(text)


def test_token_list_keeps_order_and_drops_duplicates():
    assert parse_token_list("1k,4k,1024,32k") == [1024, 4096, 32768]


@pytest.mark.parametrize("text, value", [
    ("48GiB", 48 * 2**30), ("80GB", 80 * 10**9), ("3.81GiB", int(3.81 * 2**30)),
    ("512MiB", 512 * 2**20), ("1024", 1024), ("2TiB", 2 * 2**40), ("0", 0),
])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "lots", "5 parsecs", "-3GiB"])
def test_parse_bytes_rejects(text):
    with pytest.raises(UsageError):
        parse_bytes(text)


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (524_288, "512.00 KiB"),
    (2**31, "2.00 GiB"), (3 * 2**40, "3.00 TiB"), (-2**20, "-1.00 MiB"),
])
def test_format_bytes_is_binary_and_labelled(n, text):
    assert format_bytes(n) == text


def test_row_bytes_with_scales():
    # one K row of a 128-dim head
    assert DTYPES["bf16"].row_bytes(128) == 256
    assert DTYPES["fp32"].row_bytes(128) == 512
    assert DTYPES["fp8"].row_bytes(128) == 128
    assert DTYPES["int8"].row_bytes(128) == 128 + 4              # fp32 scale per token-head
    assert DTYPES["int4"].row_bytes(128) == 64 + 2 * 4           # 2 groups of 64: scale + zero
    assert DTYPES["int4"].row_bytes(576) == 288 + 9 * 4


def test_dtype_names_and_auto():
    assert normalise_dtype_name("bfloat16") == "bf16"
    assert normalise_dtype_name("torch.float16") == "fp16"
    assert normalise_dtype_name("float8_e4m3fn") == "fp8"
    assert normalise_dtype_name("complex64") is None
    assert resolve_kv_dtype("auto", "fp16").name == "fp16"
    with pytest.raises(UsageError):
        resolve_kv_dtype("fp7", "bf16")
