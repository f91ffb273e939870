#!/usr/bin/env bash
# A short FER2013 training on one GPU, end to end through ray_fer: ingest the image-folder
# release into shards, train with Ray Train fed by Ray Data, evaluate the best checkpoint
# with and without test-time augmentation. Prints the metrics; copies them to $OUT if set.
#
#   bash benchmarks/fer2013_short.sh /path/to/fer2013 [method] [epochs]
set -euo pipefail
src=${1:?usage: fer2013_short.sh FER2013_FOLDER [METHOD] [EPOCHS]}
method=${2:-vgg_bn}
epochs=${3:-30}
work=${WORK:-/tmp/ray_fer_bench}
out=${OUT:-$work/out}
mkdir -p "$work" "$out"
[ -f "$work/shards/manifest.json" ] || \
  python -m ray_fer.ingest fer2013-folders "$src" --out "$work/shards" --no-progress
start=$(date +%s)
python -m ray_fer.train "$method" --data "$work/shards" --gpu --epochs "$epochs" \
  --batch-size 256 --storage "$work/runs" --name "$method" > "$out/$method-train.json"
echo "train wall s: $(( $(date +%s) - start ))" | tee "$out/$method-time.txt"
# Worker logs share stdout with the summary: take the checkpoint path from the summary.
best=$(grep -o '"best_checkpoint": "[^"]*"' "$out/$method-train.json" | tail -1 | cut -d'"' -f4)
python -m ray_fer.evaluate "$best" --split val --tta flip --device cuda --out "$out/$method-eval"
cat "$out/$method-eval/metrics.json"
