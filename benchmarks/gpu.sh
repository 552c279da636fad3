#!/usr/bin/env bash
# Issues 13 and 25: the GPU check, for a CUDA machine (nothing here has run on a GPU yet: BENCHMARKS.md).
#
#   benchmarks/gpu.sh                      # on a GPU machine: JSON files in runs/gpu/, at most ~8 minutes
#   DEVICE=cpu N=16 SIZE=64 BENCH_SIZE=32 REPS=3 benchmarks/gpu.sh   # a dry run of every step on CPU (~2 min idle)
#
# 1. `uni-lab bench --device cuda` for EfficientNet-Lite0 (embedded weights) and ResNet-18
#    (random weights) at 224²: UNI against its floor of (1 + T + B) plain passes, with UNI's phase
#    split (unlearn, match, integrate) from the same reps, IG against Captum, images/s of $METHODS;
# 2. benchmarks/unlearn_check.py --counts: per-image unlearning per model (which path and chunk
#    sizes, host syncs under torch.cuda.set_sync_debug_mode, torch.func batching rules missing,
#    cost in floor passes timed, and each UNI phase's FLOPs and ATen ops counted in floor passes);
# 3. a run of N = 1,000 generated JPEGs (256², resized to 224²) with uni and ig:black, decoded by
#    --workers processes, timed, then `uni-lab check`.
# Every step has its own time limit (*_TIMEOUT, seconds; together 7 min 50 s): a step over it is
# recorded in $OUT/timeouts.txt and the script goes on.
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
METHODS=${METHODS:-uni,ig:black,saliency}
# ConvNeXt, Swin and ViT unlearn through torch.func's vmap: minutes each on a CPU, so not in a dry run
ALL_MODELS=efficientnet_lite0,resnet18,convnext_tiny,swin_t,vit_b_16
[ "$DEVICE" = cpu ] && ALL_MODELS=efficientnet_lite0,resnet18
UNLEARN_MODELS=${UNLEARN_MODELS:-$ALL_MODELS}
# The limits bound the GPU run; a CPU dry run (a rehearsal of every step, often on a shared
# machine) gets SLACK times as long
SLACK=1
[ "$DEVICE" = cpu ] && SLACK=4
BENCH_TIMEOUT=${BENCH_TIMEOUT:-$((105 * SLACK))}
UNLEARN_TIMEOUT=${UNLEARN_TIMEOUT:-$((75 * SLACK))}
IMAGES_TIMEOUT=${IMAGES_TIMEOUT:-$((30 * SLACK))}
RUN_TIMEOUT=${RUN_TIMEOUT:-$((110 * SLACK))}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-$((45 * SLACK))}
mkdir -p "$OUT"
: > "$OUT/timeouts.txt"
bounded() {  # bounded SECONDS NAME CMD...: run CMD, at most SECONDS; a step over it is noted, not fatal
  local limit=$1 name=$2; shift 2
  timeout --kill-after=10 "$limit" "$@" || { rc=$?; echo "$name: exit $rc (124: over ${limit}s)" >> "$OUT/timeouts.txt"; }
}
python - "$DEVICE" <<'PY'
import sys, torch
if sys.argv[1].startswith("cuda") and not torch.cuda.is_available():
    sys.exit("no CUDA device here: run this on a GPU machine, or DEVICE=cpu for a dry run")
PY
python -c "import json, torch, platform; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(), 'host': platform.node()}))" > "$OUT/machine.json"
for model in efficientnet_lite0 resnet18; do
  weights=()
  [ "$model" = resnet18 ] && weights=(--weights random)
  bounded "$BENCH_TIMEOUT" "bench $model" uni-lab bench --device "$DEVICE" --model "$model" "${weights[@]}" \
    --size "$BENCH_SIZE" --reps "$REPS" --methods "$METHODS" --json --quiet > "$OUT/bench_${model}_${BENCH_SIZE}.json"
  python - "$OUT/bench_${model}_${BENCH_SIZE}.json" <<'PY' || true
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    sys.exit(f"no bench result in {sys.argv[1]} (see timeouts.txt)")
split = ", ".join(f"{k} {v:.1f}" for k, v in r["uni_phases_in_floor_passes"].items())
print(f"bench {r['model']} {r['size'][0]}²: uni_vs_floor {r['uni_vs_floor']:.3f} ({r['floor_counts']}); "
      f"UNI phases in floor passes, same reps: {split}")
PY
done
bounded "$UNLEARN_TIMEOUT" "unlearn_check" python benchmarks/unlearn_check.py --device "$DEVICE" --size "$BENCH_SIZE" \
  --reps 3 --counts --models "$UNLEARN_MODELS" > "$OUT/unlearn_${BENCH_SIZE}.jsonl"
cat "$OUT/unlearn_${BENCH_SIZE}.jsonl"
bounded "$IMAGES_TIMEOUT" "images $N" python benchmarks/scale.py images "$OUT/jpeg$N" "$N" "$SIZE"
start=$(date +%s.%N)
bounded "$RUN_TIMEOUT" "run $N" uni-lab run --images "$OUT/jpeg$N" --methods uni,ig:black --device "$DEVICE" \
  --workers "$WORKERS" --batch-size "$BATCH" --no-progress --no-seed-stability --overwrite --out "$OUT/run$N.zarr" \
  > "$OUT/run$N.txt"
end=$(date +%s.%N)
bounded "$CHECK_TIMEOUT" "check $N" uni-lab check --json "$OUT/run$N.zarr" > "$OUT/check$N.json"
python - "$OUT" "$N" "$start" "$end" <<'PY'
import json, sys
out, n, start, end = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
try:
    check = json.load(open(f"{out}/check{n}.json"))
except (OSError, ValueError):
    check = {"done": None, "total": None, "consistent": None}
wall = end - start
res = {"images": n, "methods": ["uni", "ig:black"], "wall_s": wall, "images_per_s_all_methods": n / wall,
       "done": check["done"], "total": check["total"], "consistent": check["consistent"]}
json.dump(res, open(f"{out}/run{n}.json", "w"), indent=1)
print(json.dumps(res))
PY
cat "$OUT/timeouts.txt"
