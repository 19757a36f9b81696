#!/usr/bin/env bash
# The SGLang differential environment (.sglang-venv, or the path given as $1): SGLang 0.5.23
# without its dependencies, the CPU build of torch (constraints.txt pins it, so nothing can
# pull a CUDA build), and the pure-Python packages its argument resolution and KV-cache sizing
# import. See harness.py for what is patched and why.
#   SGLANG_VERSION=X  the release (default 0.5.23, the newest kvcalc checked; "latest": the newest
#                     on the registry -- CI's drift sentinel)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/../../.sglang-venv}"
version="${SGLANG_VERSION:-0.5.23}"
if [ "$version" = "latest" ]; then
  version=$(python3 -m pip index versions sglang 2>/dev/null | sed -n 's/^sglang (\(.*\))$/\1/p')
  [ -n "$version" ] || { echo "install.sh: cannot read SGLang's newest release" >&2; exit 1; }
  echo "sglang-venv: the newest release on the registry is $version"
fi
rm -rf "$venv"
python3 -m venv "$venv"
export PIP_CONSTRAINT="$here/constraints.txt"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet --no-deps "sglang==$version"
# what `import sglang.srt.server_args` and `sglang.srt.mem_cache.kv_cache_configurator` need
"$venv/bin/python" -m pip install --quiet numpy orjson psutil pybase64 requests packaging \
    pillow starlette msgspec pydantic pyzmq tqdm ipython aiohttp transformers dill triton \
    sentencepiece apache-tvm-ffi compressed-tensors gguf
"$venv/bin/python" - <<'PY'
import torch
assert torch.__version__.endswith("+cpu"), f"a non-CPU torch got in: {torch.__version__}"
print("sglang-venv: torch", torch.__version__)
PY
