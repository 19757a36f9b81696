"""Every preset name and alias names exactly one model, and a Llama 3 alias is Llama 3."""

from __future__ import annotations

from collections import Counter

import kvcalc
from kvcalc.sources import all_presets


def test_names_and_aliases_are_unique():
    names = Counter(n for p in all_presets() for n in (p.name, *p.aliases))
    assert [n for n, c in names.items() if c > 1] == []


def test_llama_3_is_not_llama_3_1():
    # same KV layout (8 KV heads x 128 x 2 B x 2 per layer), different context
    three, three_one = kvcalc.resolve("llama-3-70b"), kvcalc.resolve("llama-3.1-70b")
    assert three.spec.max_position_embeddings == 8192
    assert three_one.spec.max_position_embeddings == 131072
    assert (kvcalc.estimate("llama3-70b", seq=1).bytes_per_token
            == kvcalc.estimate("llama-3.1-70b", seq=1).bytes_per_token == 80 * 8 * 2 * 128 * 2)
    assert kvcalc.resolve("llama3-8b").name == "llama-3-8b"
