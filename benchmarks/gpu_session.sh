#!/usr/bin/env bash
# The next GPU session's one prepared call (issues 12 and 15), about 8 minutes on one H100/H200:
#   1. benchmarks/gpu_ab.py: which loss path / compile mode / attention kernel trains GPT-2 124M fastest
#      (budget 210 s), to make the winner the CUDA default;
#   2. gptscratch train itself, gpt2-124m and then modern-124m (the modern recipe: rope, QK-norm, ReLU^2,
#      untied head, Muon, wsd), side by side on the same random shards: tokens/s and MFU of each.
# Everything lands in $OUT (gpu_ab.json, train_check_*.jsonl, session.log) when OUT is set.
#
#   bash benchmarks/gpu_session.sh --dry-run   # tiny shapes on the CPU: run this before spending GPU time
#   bash benchmarks/gpu_session.sh             # on the GPU machine
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"; [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
DRY=(); [ "${1:-}" = "--dry-run" ] && DRY=(--dry-run)
LOG="${OUT:-/tmp}/session.log"; mkdir -p "$(dirname "$LOG")"
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  echo "== 1. gpu_ab"
  timeout -k 10 240 "$PY" benchmarks/gpu_ab.py --budget-s 210 "${DRY[@]}" || echo "gpu_ab: exit $?"
  for preset in gpt2-124m modern-124m; do
    echo "== 2. train check: $preset"
    if [ ${#DRY[@]} -gt 0 ]; then
      small=tiny; [ "$preset" = modern-124m ] && small=modern-demo
      OUT_TAG="$preset" timeout -k 10 120 bash benchmarks/gpu_train_check.sh --dry-run --preset "$small" \
        --seq-len 32 --batch-size 4 --n-layer 2 --n-embd 32 --n-head 2 || echo "train check $preset: exit $?"
    else
      OUT_TAG="$preset" timeout -k 10 150 bash benchmarks/gpu_train_check.sh --preset "$preset" \
        || echo "train check $preset: exit $?"
    fi
  done
} 2>&1 | tee "$LOG"
