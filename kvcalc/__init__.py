"""kvcalc: KV-cache capacity planning for LLM inference.

Library entry points (all pure Python, no torch):

>>> from kvcalc.model import load_spec
>>> from kvcalc.engines import build_layout
>>> from kvcalc.memory import estimate
>>> _, spec = load_spec("llama-7b")
>>> estimate(build_layout(spec, "hf", "fp16"), seq=4096).bytes_per_sequence
2147483648
"""

__version__ = "0.1.0"
