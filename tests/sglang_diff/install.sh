#!/usr/bin/env bash
# The SGLang differential environment (.sglang-venv, or the path given as $1): SGLang 0.5.23
# without its dependencies, the CPU build of torch (constraints.txt pins it, so nothing can
# pull a CUDA build), and the pure-Python packages its argument resolution and KV-cache sizing
# import. See harness.py for what is patched and why.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/../../.sglang-venv}"
rm -rf "$venv"
python3 -m venv "$venv"
export PIP_CONSTRAINT="$here/constraints.txt"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet --no-deps "sglang==0.5.23"
# what `import sglang.srt.server_args` and `sglang.srt.mem_cache.kv_cache_configurator` need
"$venv/bin/python" -m pip install --quiet numpy orjson psutil pybase64 requests packaging \
    pillow starlette msgspec pydantic pyzmq tqdm ipython aiohttp transformers dill triton \
    sentencepiece apache-tvm-ffi compressed-tensors gguf
"$venv/bin/python" - <<'PY'
import torch
assert torch.__version__.endswith("+cpu"), f"a non-CPU torch got in: {torch.__version__}"
print("sglang-venv: torch", torch.__version__)
PY
