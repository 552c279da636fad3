#!/usr/bin/env bash
# Issue 13's GPU check, for a CUDA machine (nothing here has run on a GPU yet: BENCHMARKS.md).
#
#   benchmarks/gpu.sh                      # on a GPU machine: JSON files in runs/gpu/
#   DEVICE=cpu N=16 SIZE=64 BENCH_SIZE=32 REPS=3 benchmarks/gpu.sh   # a dry run of every step on CPU
#
# 1. `uni-lab bench --device cuda` for EfficientNet-Lite0 (embedded weights) and ResNet-18
#    (random weights) at 224²: UNI against its floor of (1 + T + B) plain passes, IG against Captum,
#    images/s of every method;
# 2. a run of N = 1,000 generated JPEGs (256², resized to 224²) with uni and ig:black, decoded by
#    --workers processes, timed, then `uni-lab check`.
# The goal (issue 13): UNI images/s >= 0.85 x (plain fwd+bwd images/s) / (T + B + 2).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
DEVICE=${DEVICE:-cuda}
N=${N:-1000}
SIZE=${SIZE:-256}
BENCH_SIZE=${BENCH_SIZE:-224}
REPS=${REPS:-5}
WORKERS=${WORKERS:-4}
BATCH=${BATCH:-32}
mkdir -p "$OUT"
python - "$DEVICE" <<'PY'
import sys, torch
if sys.argv[1].startswith("cuda") and not torch.cuda.is_available():
    sys.exit("no CUDA device here: run this on a GPU machine, or DEVICE=cpu for a dry run")
PY
python -c "import json, torch, platform; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(), 'host': platform.node()}))" > "$OUT/machine.json"
for model in efficientnet_lite0 resnet18; do
  weights=()
  [ "$model" = resnet18 ] && weights=(--weights random)
  uni-lab bench --device "$DEVICE" --model "$model" "${weights[@]}" --size "$BENCH_SIZE" --reps "$REPS" --json --quiet \
    > "$OUT/bench_${model}_${BENCH_SIZE}.json"
  echo "bench $model: $OUT/bench_${model}_${BENCH_SIZE}.json"
done
python benchmarks/scale.py images "$OUT/jpeg$N" "$N" "$SIZE"
start=$(date +%s.%N)
uni-lab run --images "$OUT/jpeg$N" --methods uni,ig:black --device "$DEVICE" --workers "$WORKERS" --batch-size "$BATCH" \
  --no-progress --no-seed-stability --overwrite --out "$OUT/run$N.zarr" > "$OUT/run$N.txt"
end=$(date +%s.%N)
uni-lab check --json "$OUT/run$N.zarr" > "$OUT/check$N.json" || true
python - "$OUT" "$N" "$start" "$end" <<'PY'
import json, sys
out, n, start, end = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
check = json.load(open(f"{out}/check{n}.json"))
wall = end - start
res = {"images": n, "methods": ["uni", "ig:black"], "wall_s": wall, "images_per_s_all_methods": n / wall,
       "done": check["done"], "total": check["total"], "consistent": check["consistent"]}
json.dump(res, open(f"{out}/run{n}.json", "w"), indent=1)
print(json.dumps(res))
PY
