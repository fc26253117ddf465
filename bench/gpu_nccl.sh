#!/usr/bin/env bash
# torchrun with NCCL against one plain process on one CUDA GPU, ML-1M (issue 23).
#
#   OUT=bench/out/gpu-nccl EPOCHS=20 bench/gpu_nccl.sh
#
# `torchrun --nproc-per-node 1` joins a process group of one (NCCL for the gradients, gloo
# beside it for the CPU tensors of evaluation) and trains through DistributedDataParallel,
# as N ranks would; the plain process trains without either. Same spec, seed and batches:
# the test metrics must agree up to CUDA's floating-point order. Prints both and exits 1
# when NDCG@10 differs by more than 0.002.
set -euo pipefail
OUT=${OUT:-bench/out/gpu-nccl}
EPOCHS=${EPOCHS:-20}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of this script (gloo)
rm -rf "$OUT"
common=(feature_specs/ml-1m.yaml --set "train.device=$DEVICE" --set "train.epochs=$EPOCHS"
        --set train.eval_every=5)
featrec -q train "${common[@]}" --out "$OUT/single"
torchrun --standalone --nproc-per-node 1 -m featrec train "${common[@]}" --out "$OUT/nccl" \
  2> "$OUT/nccl.log"
grep -o "1 rank: .*" "$OUT/nccl.log"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
single, nccl = (json.loads((out / d / "final_metrics.json").read_text()) for d in ("single", "nccl"))
for metric in ("ndcg@10", "hr@10"):
    print(f"{metric}: single process {single['test'][metric]:.4f}, torchrun + NCCL "
          f"{nccl['test'][metric]:.4f}; seconds {single['train_seconds']:.0f} / "
          f"{nccl['train_seconds']:.0f}")
sys.exit(abs(single["test"]["ndcg@10"] - nccl["test"]["ndcg@10"]) > 0.002)
PY
