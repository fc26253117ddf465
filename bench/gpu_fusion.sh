#!/usr/bin/env bash
# The ML-1M "where features enter" table on one CUDA machine (issue 19): every (variant,
# seed) pair of the ablation side by side on one GPU (`featrec ablate --jobs`), resumable.
#
#   OUT=ablations/ml-1m bench/gpu_fusion.sh       # JOBS (default 8), SEEDS (default 3)
#   VARIANTS="full@nova full@difsr" SEEDS=3 ...   # only these pairs (what fits one call)
#   PACK=$OUT_OF_THE_DEVICE_TOOL/ablation.tgz ... # also pack the runs, checkpoints left out
#
# The budget of the headline rows (bench/RESULTS.md): warmup 1000 steps, 300 epochs; BUDGET
# replaces it (e.g. BUDGET="" for the spec's 200 epochs). Same spec, split and users as the
# CPU runs (train.device is `auto`: CUDA there), so pairs trained here and on a CPU go in one
# ablation directory and one report: unpack PACK into the CPU's OUT (a run's
# final_metrics.json, ranks.parquet and spec.yaml are what `featrec report` reads). A pair
# cut short by a time limit resumes from its last checkpoint on the next call on the same
# machine; its checkpoints are not packed (5.6 MB each).
set -uo pipefail
OUT=${OUT:-ablations/ml-1m}
JOBS=${JOBS:-8}
SEEDS=${SEEDS:-3}
BUDGET=${BUDGET---set train.warmup_steps=1000 --set train.epochs=300}
FEATREC=${FEATREC:-featrec}
SPEC=${SPEC:-feature_specs/ml-1m.yaml}
FUSIONS=${FUSIONS-nova difsr nova+event}  # FUSIONS="" for variants under the spec's method only
pack() {
  [ -n "${PACK:-}" ] && [ -d "$OUT" ] && tar czf "$PACK" --exclude=checkpoints -C "$OUT" .
}
trap pack EXIT
# shellcheck disable=SC2086
common=(--set train.eval_every=5 $BUDGET --out "$OUT" --jobs "$JOBS" ${FUSIONS:+--fusions $FUSIONS})
if [ -n "${VARIANTS:-}" ]; then
  # shellcheck disable=SC2086
  $FEATREC -q ablate "$SPEC" --seeds "$SEEDS" "${common[@]}" \
    --variants $VARIANTS
  $FEATREC report "$OUT" | head -40
  exit
fi
$FEATREC -q ablate "$SPEC" --seeds "$SEEDS" "${common[@]}" \
  --variants behavior-only full full@nova full@difsr full@nova+event
$FEATREC -q ablate "$SPEC" --seeds 1 "${common[@]}" \
  --variants -item -item@nova -item@difsr -item@nova+event din most-popular \
  --set din:train.lr=3e-4 --set din:train.next_item_share=0.2 \
  --set din:train.sampler=popularity
$FEATREC report "$OUT" | head -40
