#!/usr/bin/env bash
# The ML-1M "where features enter" table on one CUDA machine (issue 19): every (variant,
# seed) pair of the ablation side by side on one GPU (`featrec ablate --jobs`), resumable.
#
#   OUT=ablations/ml-1m bench/gpu_fusion.sh            # JOBS (default 8), SEEDS (default 3)
#
# Same spec, split and users as the CPU runs (train.device is `auto`: CUDA there), so pairs
# trained here and on a CPU go in one ablation directory and one report. A pair cut short
# by a time limit resumes from its last checkpoint on the next call.
set -euo pipefail
OUT=${OUT:-ablations/ml-1m}
JOBS=${JOBS:-8}
SEEDS=${SEEDS:-3}
SPEC=feature_specs/ml-1m.yaml
common=(--set train.eval_every=5 --out "$OUT" --jobs "$JOBS")
featrec -q ablate "$SPEC" --seeds "$SEEDS" --fusions nova difsr nova+event "${common[@]}" \
  --variants behavior-only full full@nova full@difsr full@nova+event
featrec -q ablate "$SPEC" --seeds 1 --fusions nova difsr nova+event "${common[@]}" \
  --variants -item -item@nova -item@difsr -item@nova+event din most-popular
featrec report "$OUT" | head -40
