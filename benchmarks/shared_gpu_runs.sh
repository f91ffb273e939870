#!/usr/bin/env bash
# Real-data runs sharing one GPU: concurrent Ray Train runs (one per fold) that each take a
# fraction of it. The small sets cannot load a GPU with one run, and the fixed start of
# each run, not the GPU, sets their pace. PARTS picks what runs (default all but fer):
#   caf    CAF vs its no-critic baseline (caf_baseline) on the Taiwanese set's
#          subject-disjoint folds FOLDS_TW (default 0-4), derived V/A;
#   ck     SMALL_MODEL on CK+'s subject-independent folds FOLDS_CK (default 0-9), CK_EPOCHS
#          (default 25) at batch CK_BATCH (default 64);
#   jaffe  SMALL_MODEL on JAFFE's 120/23/70 split, best validation checkpoint evaluated
#          on the 70 test faces, JAFFE_EPOCHS (default 100) at batch JAFFE_BATCH (default 32);
#   loso   SMALL_MODEL on JAFFE leave-one-subject-out (10 folds), same epochs and batch;
#   ae     the face-generating autoencoder, stage 1 through ray_fer.train (V/A face grid
#          PNG), and the paper's tables 1-3 (benchmarks/face_ae_tables.py), fold 0 held out;
#   fer    FER2013 (official split, PublicTest as val): FER_MODELS (default vgg_bn
#          deep_emotion_wide efficientnet_b0_dense) for FER_EPOCHS (default 60) at
#          FER_SHARE (default 0.3) of the GPU each, best checkpoints evaluated with flip TTA;
#          FER_SET (default fer) names the shard prefix (ferplus: FER+ majority labels) and
#          FER_ARGS adds ray_fer.train flags to every run (e.g. --set data.image_size=48).
# SMALL_MODEL (default deep_emotion) is the model of the ck, jaffe and loso runs, and
# SMALL_ARGS adds ray_fer.train flags to each of them (e.g. --init CKPT to fine-tune a
# FER2013 run of that model, --lr 3e-4); CAF_ARGS adds flags to each caf and caf_baseline
# run (e.g. --set model.options.encoder=resnet18, the paper's encoder at 48 px).
#
#   bash benchmarks/shared_gpu_runs.sh DATA
#   PARTS="caf ck" FOLDS_TW="2 3 4" bash benchmarks/shared_gpu_runs.sh DATA
#
# DATA holds shard prefixes made with python -m ray_fer.ingest:
#   tw48   taiwanese --size 48 --channels 1 --folds 5
#   tw64   taiwanese --size 64 --channels 3 --folds 5
#   ck     ckplus48 --folds 10
#   jaffe  jaffe --size 48 --channels 1 --holdout train=120,val=23,test=70
#   jaffe_loso  jaffe --size 48 --channels 1 --folds 10
#   fer    fer2013-folders
#   ferplus  ferplus
# Runs land in $WORK/runs/<name> (default WORK=/tmp/ray_fer_small); the k-fold tables
# (benchmarks/folds_table.py) and a tarball of reports and logs go to $OUT. BUDGET_S
# (default 0: none) stops every run still going after that many seconds, so the reports
# of what finished still come back from a machine with a time limit.
set -euo pipefail
data=${1:?usage: shared_gpu_runs.sh DATA}
work=${WORK:-/tmp/ray_fer_small}
out=${OUT:-$work/out}
parts=" ${PARTS:-caf ck jaffe loso ae} "
share=${GPU_SHARE:-0.08}
budget=${BUDGET_S:-0}
mkdir -p "$work/logs" "$work/rc" "$out"
# One Ray node for all runs, with a token of its own (Ray 2.60 listens on all interfaces),
# unless RAY_ADDRESS names a running one (several invocations then share its GPU; its
# RAY_AUTH_MODE and RAY_AUTH_TOKEN must be set too).
if [[ -z ${RAY_ADDRESS:-} ]]; then
  RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
  # NUM_CPUS: logical CPUs of the node (default: the cores). Each run's worker holds one
  # for its whole run and its Ray Data reads need another: above ~cores/2 concurrent runs
  # (21 on 16 cores), all CPUs are held by workers whose reads can never be scheduled.
  ray start --head --num-gpus "${NUM_GPUS:-1}" --num-cpus "${NUM_CPUS:-$(nproc)}" \
    --disable-usage-stats > "$work/logs/ray.log" 2>&1
  trap 'ray stop --force > /dev/null 2>&1 || true' EXIT
  export RAY_ADDRESS=auto
fi
job() {  # name, command...: run in the background, log and exit status under $work
  local name=$1
  shift
  (set +e; timeout "$budget" "$@" > "$work/logs/$name.log" 2>&1; echo $? > "$work/rc/$name") &
}
train() {  # name, method, args...: one ray_fer.train run on a GPU share
  local name=$1 method=$2
  shift 2
  job "$name" python -m ray_fer.train "$method" --gpu --set "resources.gpus_per_worker=$share" \
    --storage "$work/runs" --name "$name" "$@"
}
small=${SMALL_MODEL:-deep_emotion}
start=$(date +%s)
if [[ $parts == *" caf "* ]]; then
  for fold in ${FOLDS_TW:-0 1 2 3 4}; do
    for method in caf caf_baseline; do
      # shellcheck disable=SC2086  # CAF_ARGS is a list of flags
      train "$method-tw-fold$fold" "$method" --data "$data/tw48" --fold "$fold" --epochs 60 \
        --batch-size 64 ${CAF_ARGS:-}
    done
  done
fi
if [[ $parts == *" ck "* ]]; then
  for fold in ${FOLDS_CK:-0 1 2 3 4 5 6 7 8 9}; do
    # shellcheck disable=SC2086  # SMALL_ARGS is a list of flags
    train "$small-ck-fold$fold" "$small" --data "$data/ck" --fold "$fold" \
      --epochs "${CK_EPOCHS:-25}" --batch-size "${CK_BATCH:-64}" ${SMALL_ARGS:-}
  done
fi
if [[ $parts == *" jaffe "* ]]; then
  # shellcheck disable=SC2086  # SMALL_ARGS is a list of flags
  train "$small-jaffe" "$small" --data "$data/jaffe" --epochs "${JAFFE_EPOCHS:-100}" \
    --batch-size "${JAFFE_BATCH:-32}" ${SMALL_ARGS:-}
fi
if [[ $parts == *" loso "* ]]; then
  for fold in 0 1 2 3 4 5 6 7 8 9; do
    # shellcheck disable=SC2086  # SMALL_ARGS is a list of flags
    train "$small-jaffe-loso-fold$fold" "$small" --data "$data/jaffe_loso" --fold "$fold" \
      --epochs "${JAFFE_EPOCHS:-100}" --batch-size "${JAFFE_BATCH:-32}" ${SMALL_ARGS:-}
  done
fi
fer_models=${FER_MODELS:-vgg_bn deep_emotion_wide efficientnet_b0_dense}
fer_set=${FER_SET:-fer}
if [[ $parts == *" fer "* ]]; then
  for model in $fer_models; do
    # shellcheck disable=SC2086  # FER_ARGS is a list of flags
    share=${FER_SHARE:-0.3} train "$fer_set-$model" "$model" --data "$data/$fer_set" \
      --epochs "${FER_EPOCHS:-60}" --batch-size 128 ${FER_ARGS:-}
  done
fi
if [[ $parts == *" ae "* ]]; then
  train ae-tw face_ae --data "$data/tw64" --fold 0 --epochs 60 --set model.options.width=32
  job face_ae_tables python benchmarks/face_ae_tables.py --data "$data/tw64" --eval-fold 0 \
    --seeds 3 --epochs 30 --ae-epochs 60 --image-size 112 --pretrained none \
    --under 50 100 250 --over 50 100 250 --device "${DEVICE:-cuda}"
fi
wait
evaluate() {  # run name, data, split: its best checkpoint on the split, plain and flip TTA
  [[ -f $work/rc/$1 && $(cat "$work/rc/$1") == 0 ]] || return 0
  local best
  best=$(grep -o '"best_checkpoint": "[^"]*"' "$work/logs/$1.log" | tail -1 | cut -d'"' -f4)
  python -m ray_fer.evaluate "$best" --data "$2" --split "$3" --tta flip \
    --device "${DEVICE:-cuda}" --out "$work/runs/$1-$3" > "$work/logs/$1-eval.log" 2>&1 || true
}
evaluate "$small-jaffe" "$data/jaffe" test
for model in $fer_models; do
  evaluate "$fer_set-$model" "$data/$fer_set" val
done
echo "all runs: $(( $(date +%s) - start )) s" | tee "$work/wall.txt"
grep -H . "$work"/rc/* | sed "s|$work/rc/||" | tee -a "$work/wall.txt"
tables() {  # title, folds_table arguments...
  echo "### $1"
  python benchmarks/folds_table.py "${@:2}" || true
}
{
  [[ $parts == *" caf "* ]] && tables "CAF vs no-critic baseline, Taiwanese, derived V/A" \
    "caf=$work/runs/caf-tw-fold*" "caf_baseline=$work/runs/caf_baseline-tw-fold*"
  [[ $parts == *" ck "* ]] && tables "$small, CK+ 10-fold" \
    "$small=$work/runs/$small-ck-fold*" --metrics val_accuracy,val_macro_f1
  [[ $parts == *" loso "* ]] && tables "$small, JAFFE leave-one-subject-out" \
    "$small=$work/runs/$small-jaffe-loso-fold*" --metrics val_accuracy,val_macro_f1
  [[ $parts == *" ae "* ]] && cat "$work/logs/face_ae_tables.log"
  for m in "$work"/runs/*-val/metrics.json "$work"/runs/*-test/metrics.json; do
    [[ -f $m ]] && python - "$m" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
s = m["split"]
print(f"{sys.argv[1]}: epoch {m['epoch']}, accuracy {m[s + '_accuracy']:.4f}, "
      f"macro-F1 {m[s + '_macro_f1']:.4f}, flip TTA {m['tta']['accuracy']:.4f}")
PY
  done
  true
} > "$work/tables.md"
cat "$work/tables.md"
tar -czf "$out/shared_gpu_runs.tar.gz" -C "$work" --exclude='checkpoint_*' \
  --exclude='events.out.tfevents.*' logs rc runs wall.txt tables.md
