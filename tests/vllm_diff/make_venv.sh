#!/usr/bin/env bash
# Build .vllm-venv-<version>/ (repo root): vLLM installed --no-deps, the CPU build of torch, and
# the small packages vLLM's config / attention-selector / KV-cache planning modules import
# (requirements.txt beside this script, also --no-deps). Used by tests/test_vllm_differential.py
# and tests/vllm_diff/compare.py. Idempotent: an existing, working environment is kept.
#   VLLM_VERSION=X  the vLLM release (default 0.34.0, the newest band kvcalc models; CI also builds
#                   0.33.0 and, as the drift sentinel, the newest release on the registry)
#   VLLM_VENV=path  build elsewhere (default: <repo>/.vllm-venv-<version>)
#   PYTHON=python3  interpreter to build it from
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-python3}"
version="${VLLM_VERSION:-0.34.0}"
venv="${VLLM_VENV:-$root/.vllm-venv-$version}"
if [ "$version" = "latest" ]; then
  # the drift sentinel: the newest vLLM release on the registry
  version=$("$py" -m pip index versions vllm 2>/dev/null | sed -n 's/^vllm (\(.*\))$/\1/p')
  [ -n "$version" ] || { echo "make_venv.sh: cannot read vLLM's newest release" >&2; exit 1; }
  echo "vllm venv: the newest release on the registry is $version"
fi
stamp="$venv/.kvcalc-vllm-venv"
want="vllm==$version torch==2.13.0 $(sha256sum "$here/requirements.txt" | cut -c1-16)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$venv/bin/python" -c "import vllm, torch" 2>/dev/null; then
  echo "vllm venv: $venv is up to date"
  exit 0
fi

start=$(date +%s)
rm -rf "$venv"
"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)
# torch first, on its own: the CPU wheel (a bare `torch` pulled in by vllm's requirements could
# be a multi-GB CUDA build; --no-deps below keeps vllm from asking for one).
"${pip[@]}" install "torch==2.13.0"
"$venv/bin/python" -W ignore - <<'PY'
import torch
assert torch.version.cuda is None, f"expected the CPU build of torch, got CUDA {torch.version.cuda}"
PY
"${pip[@]}" install --no-deps "vllm==$version"
"${pip[@]}" install --no-deps -r "$here/requirements.txt"
# FlashInfer: vLLM's CUDA wheel requires it (Requires-Dist: flashinfer-python==X), and whether it
# imports decides backends (FlashInfer MLA on SM 10.x, FlashInfer attention before FlashAttention
# 4 on Blackwell). It is pure Python until a kernel is JIT-compiled. The exact pin, else the
# nearest later release of the same minor that the registry has (0.34.0 pins 0.7.3, which the
# registry lacks: 0.7.4).
fi_pin=$("$venv/bin/python" - <<'PY'
from importlib.metadata import requires
pins = [r.split("==", 1)[1].split(";")[0].strip() for r in requires("vllm") or []
        if r.replace(" ", "").startswith("flashinfer-python==")]
print(pins[0] if pins else "")
PY
)
if [ -n "$fi_pin" ]; then
  minor="${fi_pin%.*}"
  "${pip[@]}" install --no-deps "flashinfer-python==$fi_pin" 2>/dev/null \
    || "${pip[@]}" install --no-deps "flashinfer-python>$fi_pin,<${minor%.*}.$(( ${minor#*.} + 1 ))"
fi
# Byte-compile once, so each harness run does not recompile vLLM (PYTHONDONTWRITEBYTECODE).
"$venv/bin/python" -m compileall -q -j 0 "$venv/lib" > /dev/null 2>&1 || true
echo "$want" > "$stamp"
echo "vllm venv: built $venv in $(( $(date +%s) - start )) s ($(du -sh "$venv" | cut -f1))"
