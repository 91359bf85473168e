#!/usr/bin/env bash
# Real-data result of the polyp bundle on 2 CPU cores (see docs/polyp-results.md):
# Kvasir-SEG (all 824 frames), seeded split by image id (seed 0: 660 train / 82 validation / 82 held-out test),
# teacher (ResNet18 stages 1-2 + 64-ch FPN) + 2 students (half-width ResNet10 + 32-ch FPN), mode kdml, online teacher,
# "cpu" preset at 160 px, 24 epochs (the bundle's defaults for real data), then the held-out test evaluation.
#
# Usage (from the repository root): benchmarks/polyp_kvasir_cpu.sh [DATASET_DIR] [OUTPUT_DIR]
#   DATASET_DIR  default ../shared/data/kvasir-seg
#   OUTPUT_DIR   default /work/runs/polyp_kvasir (outside the repository: it holds checkpoints and logs)
# Writes OUTPUT_DIR/train.log, OUTPUT_DIR/evaluate.log, OUTPUT_DIR/timing.txt, OUTPUT_DIR/models/*,
# OUTPUT_DIR/eval/metrics_history.csv (per epoch) and OUTPUT_DIR/eval/test/summary.{csv,md} (held-out test).
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET_DIR=${1:-../shared/data/kvasir-seg}
OUTPUT_DIR=${2:-/work/runs/polyp_kvasir}
# the machine is shared: idle OpenMP threads must not spin on cores other processes need
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$OUTPUT_DIR"
# --teacher_stage false: the documented result is the online teacher's (the bundle's default before issue 17)
common=(--logging_file bundles/polyp/logging.conf --bundle_root "$OUTPUT_DIR" --dataset_dir "$DATASET_DIR" --teacher_stage false)

start=$SECONDS
python -m monai.bundle run --config_file bundles/polyp/train.json "${common[@]}" >"$OUTPUT_DIR/train.log" 2>&1
train_s=$((SECONDS - start))
python -m monai.bundle run --config_file "['bundles/polyp/train.json','bundles/polyp/evaluate.json']" \
    "${common[@]}" >"$OUTPUT_DIR/evaluate.log" 2>&1
eval_s=$((SECONDS - start - train_s))
{
    echo "train_seconds=$train_s"
    echo "evaluate_seconds=$eval_s"
    echo "host_cores=$(nproc)"
    echo "finished=$(date -Is)"
} >"$OUTPUT_DIR/timing.txt"
cat "$OUTPUT_DIR/timing.txt" "$OUTPUT_DIR/eval/test/summary.md"
