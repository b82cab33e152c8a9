#!/usr/bin/env bash
# The GPU benchmarks in one call, for one H100/H200-class card. Each part is a `python -m benchmarks` command
# under its own timeout, so one that fails or overruns leaves the others' figures:
#   bench  python -m benchmarks gpu (355 s): bf16 matmul peak (8192^3), copy bandwidth, GPT-2 124M training at
#          seq 1024 (bf16 autocast, flash attention, torch.compile, fused AdamW) for gptscratch and
#          transformers at the largest micro-batch of 64/32/16 that fits, with MFU against the nominal and the
#          measured peak; generation (KV cache, no cache, transformers) at batch 1 and 8, 256 new tokens
#   ab     python -m benchmarks gpu-ab (160 s): which loss path / compile mode / attention kernel trains
#          GPT-2 124M fastest (the variants compiled within 130 s are timed), to make the winner the CUDA default
#   train  python -m benchmarks train-check (110 s each): `gptscratch train` itself, gpt2-124m and then
#          modern-124m (rope, QK-norm, SwiGLU, untied head, Muon, wsd) on the same random shards: tokens/s
#          and MFU of each, with val loss, HellaSwag and samples inside the run
#   fsdp   python -m benchmarks train-check --parallel fsdp (75 s): world size 1 (NCCL), gpt2-124m compiled,
#          bf16 through FSDP's MixedPrecisionPolicy, 2 micro-steps, val loss, HellaSwag, a sharded (DCP)
#          checkpoint and samples: the FSDP path starts and steps on CUDA. Should compile fail under FSDP, it
#          runs again uncompiled (25 s), so the answer to "does it step" comes either way.
# The default is ab,train,fsdp (the timeouts add up to 480 s); --parts all adds bench (6 minutes more).
# Needs torch and transformers, not the gptscratch install (PYTHONPATH=src is set here). With OUT set, the
# log goes to $OUT/gpu.log and each part writes its files there (gpu_summary.json, gpu_ab.json,
# train_check_*_metrics.jsonl and _loss.png).
#
#   bash benchmarks/gpu.sh --dry-run              # tiny shapes on the CPU: run this before spending GPU time
#   bash benchmarks/gpu.sh                        # on the GPU machine
#   bash benchmarks/gpu.sh --parts bench          # any of bench,ab,train,fsdp, or all
# To change a part's flags (e.g. `gpu --batch-sizes 32`), run its python command, which this script prints.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"; [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
DRY=(); PARTS=ab,train,fsdp
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=(--dry-run); shift ;;
    --parts) PARTS="${2:-}"; shift 2 || { echo "gpu.sh: --parts needs a list: bench,ab,train,fsdp or all" >&2; exit 2; } ;;
    *) echo "gpu.sh: unknown argument '$1' (expected --dry-run, --parts bench,ab,train,fsdp|all)" >&2; exit 2 ;;
  esac
done
[ "$PARTS" = all ] && PARTS=bench,ab,train,fsdp
for part in ${PARTS//,/ }; do
  case "$part" in bench|ab|train|fsdp) ;; *) echo "gpu.sh: --parts: '$part' is not bench, ab, train or fsdp" >&2; exit 2 ;; esac
done
has() { [[ ",$PARTS," == *",$1,"* ]]; }

FAILED=0
bench() {  # the part's timeout, then `python -m benchmarks` and its arguments; says how a failed part ended
  local limit="$1"; shift
  echo "\$ python -m benchmarks $*"
  timeout -k 10 "$limit" "$PY" -m benchmarks "$@" || { echo "exit $? from: python -m benchmarks $*"; FAILED=1; return 1; }
}

run() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
    --format=csv 2>/dev/null
  echo "python: $("$PY" -V 2>&1) ($PY)"
  if has bench; then
    echo "== bench"
    bench "${GPU_BENCH_LIMIT_S:-355}" gpu "${DRY[@]}"  # the Python side keeps to its own 330 s budget
  fi
  if has ab; then
    echo "== ab"
    bench 160 gpu-ab --budget-s 130 "${DRY[@]}"
  fi
  if has train; then
    for preset in gpt2-124m modern-124m; do
      echo "== train: $preset"
      if [ ${#DRY[@]} -gt 0 ]; then
        small=tiny; [ "$preset" = modern-124m ] && small=modern-demo
        bench 120 train-check --dry-run --tag "$preset" --preset "$small" --seq-len 32 --batch-size 4 --n-layer 2 \
          --n-embd 32 --n-head 2
      else
        bench 110 train-check --tag "$preset" --preset "$preset"
      fi
    done
  fi
  if has fsdp; then
    echo "== fsdp, world size 1"
    FSDP=(--parallel fsdp --max-steps 6 --batch-size 16 --total-batch-tokens 32768 --eval-interval 3
          --hellaswag-interval 3 --ckpt-interval 3)
    if [ ${#DRY[@]} -gt 0 ]; then
      bench 120 train-check --dry-run --tag fsdp "${FSDP[@]}" --batch-size 2 --total-batch-tokens 128
    else
      before=$FAILED
      bench 75 train-check --tag fsdp "${FSDP[@]}" \
        || { echo "again without compile"; FAILED=$before; bench 25 train-check --tag fsdp "${FSDP[@]}" --compile false; }
    fi
  fi
  return "$FAILED"  # non-zero when a part failed; the others' figures stand
}

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  run 2>&1 | tee "$OUT/gpu.log"
else
  run 2>&1
fi
