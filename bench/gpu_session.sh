#!/usr/bin/env bash
# Every GPU figure issues 19 and 21 ask for, in one call on a lent CUDA machine, in order of
# value; each step has its own time limit, so one slow step cannot cost the ones after it.
#
#   OUT=bench/out/gpu bench/gpu_session.sh                        # on the CUDA machine
#   DEVICE=cpu EPOCHS=2 SYNTH="--users 2000 --items 5000 --events 40000" STEPS=2 \
#     OUT=bench/out/gpu-dry bench/gpu_session.sh                  # a dry run of the script
#
# 1. ML-1M behavior-only, the spec's 200 epochs (no early stop), alone on the device: the
#    wall-clock of the whole `featrec train` (issue 21: <= 5 min on one H200).
# 2. bench/throughput.py there: useful tokens/s and MFU of the ML-1M step, fp32 and bf16,
#    and the attention-level fusions' step against behavior-only (issue 19: <= 1.5x).
# 3. The 1M-item synthetic data set: `featrec synth`, then bench/scale.py --device: training
#    tokens/s and MFU with sampled softmax against ML-1M, full-ranking evaluation of 10,000
#    users against every item.
# 4. bench/gpu_check.py: the same 2 epochs on CUDA and on the CPU agree.
# 5. One whole training epoch of the synthetic spec on the device.
#
# The steps run in the order 1, 3, 2, 5, 4 (the issues' targets first), all within DEADLINE
# seconds (default 530): a step gets what is left when its own limit is more.
# Everything it prints goes to $OUT/log.txt; the small result files to $OUT/results.tgz.
set -uo pipefail
OUT=${OUT:-bench/out/gpu}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-200}
SYNTH=${SYNTH:---users 1000000 --items 1000000 --events 20000000}
STEPS=${STEPS:-20}
EVAL_USERS=${EVAL_USERS:-10000}
FEATREC=${FEATREC:-featrec}
WORK=${WORK:-$OUT/work}
DEADLINE=${DEADLINE:-530}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/log.txt") 2>&1

step() {  # step LIMIT NAME COMMAND...: run it under `timeout`, say how it ended
  local limit=$1 name=$2 start=$SECONDS left=$((DEADLINE - SECONDS))
  shift 2
  if [ "$left" -lt 30 ]; then echo "=== $name: skipped, ${left} s left"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit} s) at $(date +%T)"
  timeout "$limit" "$@"
  echo "=== $name: exit $? after $((SECONDS - start)) s"
}

pack() {
  (cd "$WORK" && find . -maxdepth 3 \( -name '*.json' -o -name 'metrics.jsonl' \
    -o -name '*.txt' \) ! -name item_popularity.json -print0 | tar czf - --null -T -) > "$OUT/results.tgz"
}
trap pack EXIT

echo "host: $(nproc) cores; $(nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
python3 -c "import torch, polars, pydantic; print('torch', torch.__version__, 'cuda',
  torch.cuda.is_available(), 'polars', polars.__version__, 'pydantic', pydantic.__version__)"

# 1. the headline wall-clock, alone on the device
step 330 "ML-1M behavior-only, $EPOCHS epochs on $DEVICE" \
  $FEATREC -q train feature_specs/ml-1m.yaml --behavior-only --set "train.device=$DEVICE" \
  --set "train.epochs=$EPOCHS" --set "train.min_epochs=$EPOCHS" --out "$WORK/ml1m-bo"
python3 - "$WORK/ml1m-bo" <<'PY' || true
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
final = json.loads((run / "final_metrics.json").read_text())
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
epoch_s = sorted(r["seconds"] for r in rows)[len(rows) // 2]
print(f"ML-1M behavior-only: {len(rows)} epochs, train_seconds {final.get('train_seconds')}, "
      f"median epoch {epoch_s:.2f} s, test NDCG@10 {final['test']['ndcg@10']:.4f}")
PY
pack

# 3. the 1M-item synthetic data set
# shellcheck disable=SC2086
step 120 "featrec synth ($SYNTH)" $FEATREC -q synth "$WORK/synth" $SYNTH
step 200 "scale.py on $DEVICE" python3 bench/scale.py --synth "$WORK/synth" \
  --parts prepare train evaluate --device "$DEVICE" --steps "$STEPS" --rounds 3 \
  --eval-users "$EVAL_USERS"
pack

# 2. the ML-1M step: tokens/s, MFU, bf16, attention-level fusion against behavior-only
step 150 "throughput on $DEVICE" python3 bench/throughput.py --device "$DEVICE" --bf16 \
  --fusions nova difsr --repeats 3

# 5. one whole epoch of the synthetic spec
step 240 "synthetic spec, one epoch on $DEVICE" $FEATREC -q train "$WORK/synth/spec.yaml" \
  --set "train.device=$DEVICE" --set train.epochs=1 --set train.min_epochs=1 \
  --set "eval.max_users=$EVAL_USERS" --out "$WORK/synth-run"
tail -1 "$WORK/synth-run/metrics.jsonl" 2>/dev/null

# 4. CUDA against the CPU, same seed, 2 epochs
if [ "$DEVICE" = cuda ]; then
  step 120 "gpu_check" python3 bench/gpu_check.py --epochs 2 --out "$WORK/gpu_check"
fi

echo "=== done at $(date +%T)"
