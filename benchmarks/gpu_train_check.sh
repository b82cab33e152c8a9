#!/usr/bin/env bash
# `gptscratch train` itself on a GPU: the gpt2-124m preset (compile, bf16 autocast, fused AdamW) on random
# llm.c shards, with val loss, HellaSwag (a small generated file) and samples inside the run, so that
# evaluation under torch.compile is exercised for real. Prints the run's tokens/s and MFU.
#
#   bash benchmarks/gpu_train_check.sh --dry-run   # the tiny preset on the CPU, seconds
#   bash benchmarks/gpu_train_check.sh             # on the GPU machine (about 2 minutes, compile included)
#   bash benchmarks/gpu_train_check.sh --compile-mode max-autotune-no-cudagraphs   # extra train flags
# Copies the run's metrics.jsonl and loss.png to $OUT when it is set.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"; [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
WORK="$(mktemp -d)"; RUN="$WORK/gpu_train"
"$PY" - "$WORK" <<'PYEOF'
import json, sys
import numpy as np
work = sys.argv[1]
rng = np.random.default_rng(0)
for split, n in (("train", 4_000_000), ("val", 500_000)):
    header = np.zeros(256, np.int32); header[:3] = (20240520, 1, n)
    with open(f"{work}/rand_{split}_000000.bin", "wb") as f:
        f.write(header.tobytes()); f.write(rng.integers(0, 50257, n).astype(np.uint16).tobytes())
with open(f"{work}/hellaswag.jsonl", "w") as f:
    for i in range(200):
        f.write(json.dumps({"ind": i, "activity_label": "x", "ctx_a": "A man walks", "ctx_b": "into the",
                            "ctx": "A man walks into the " + "room " * (i % 40), "split": "val", "split_type": "indomain",
                            "label": i % 4, "endings": [f"bar {i}", "shop and buys bread", "park.", "house " * (1 + i % 5)],
                            "source_id": "gen"}) + "\n")
PYEOF
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1 && shift
if [ "$DRY" = 1 ]; then
  ARGS=(--preset tiny --device cpu --max-steps 6 --eval-interval 3 --hellaswag-interval 3 --ckpt-interval 3)
else
  ARGS=(--preset gpt2-124m --max-steps 30 --batch-size 64 --total-batch-tokens 131072 --warmup-steps 5
        --eval-interval 15 --eval-batches 4 --hellaswag-interval 15 --ckpt-interval 15 --sample-tokens 24)
fi
"$PY" -m gptscratch train "${ARGS[@]}" --data "$WORK" --out "$RUN" --hellaswag-file "$WORK/hellaswag.jsonl" \
  --sample-prompt "Hello" --keep 1 "$@"
"$PY" - "$RUN" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl") if l.strip()]
train = [r for r in rows if "loss" in r][5:] or [r for r in rows if "loss" in r]  # skip compile/warm-up steps
tok = statistics.median(r["tokens_per_s"] for r in train)
mfu = [r["mfu"] for r in train if "mfu" in r]
print(json.dumps({"train_tokens_per_s_median": round(tok), "mfu_median": statistics.median(mfu) if mfu else None,
                  "val": [r for r in rows if "val_loss" in r], "hellaswag": [r for r in rows if "hellaswag_n" in r]}))
PYEOF
if [ -n "${OUT:-}" ]; then TAG="${OUT_TAG:+_$OUT_TAG}"; cp "$RUN/metrics.jsonl" "$OUT/train_check${TAG}_metrics.jsonl"; cp "$RUN/loss.png" "$OUT/train_check${TAG}_loss.png" 2>/dev/null || true; fi
