#!/usr/bin/env bash
# Quality runs of issue 3: leave-one-out, full ranking, seen items excluded.
# Trains each (dataset, variant, seed) given on the command line, one after another, into
# bench/out/<dataset>-<variant>-seed<N>/ and copies its final metrics to
# bench/results/<dataset>-<variant>-seed<N>.json. A finished run is skipped.
#
#   FEATREC_DATA_DIR=../shared/datasets bench/quality.sh ml-100k:behavior-only:0 ml-100k:full:0
#
# Summarise with: python bench/summarize_quality.py
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a featrec <<<"${FEATREC:-featrec}"  # e.g. FEATREC="python -m featrec.cli"
mkdir -p bench/out bench/results
for job in "$@"; do
  IFS=: read -r dataset variant seed <<<"$job"
  name="$dataset-$variant-seed$seed"
  [ -f "bench/results/$name.json" ] && { echo "skip $name (done)"; continue; }
  flags=(--set "train.seed=$seed" --out "bench/out/$name")
  [ "$variant" = behavior-only ] && flags+=(--behavior-only)
  [ -f "bench/out/$name/checkpoints/last.pt" ] && flags+=(--resume)
  echo "$(date -u +%FT%TZ) start $name"
  "${featrec[@]}" train "feature_specs/$dataset.yaml" "${flags[@]}" >"bench/out/$name.log" 2>&1
  cp "bench/out/$name/final_metrics.json" "bench/results/$name.json"
  echo "$(date -u +%FT%TZ) done $name"
done
