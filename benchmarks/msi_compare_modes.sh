#!/usr/bin/env bash
# Train the MSI bundle on its demo data in each mode and evaluate on the demo test split.
# Usage (from the repository root): bash benchmarks/msi_compare_modes.sh [output_root] [extra overrides...]
# Each run is the bundle's default demo run (teacher + 2 students, 14 epochs, 64 px) with only --mode changed, and
# the online teacher (--teacher_stage false) that the documented results used.
set -euo pipefail
out=${1:-/work/runs/msi_modes}; shift || true
mkdir -p "$out"
for mode in independent kd ml kdml; do
  root="$out/$mode"
  python -m monai.bundle run --config_file bundles/msi/train.json --bundle_root "$root" --teacher_stage false \
    --cache_dir "$out/cache" --mode "$mode" "$@" > "$out/$mode.train.log" 2>&1
  python -m monai.bundle run --config_file "['bundles/msi/train.json','bundles/msi/evaluate.json']" \
    --bundle_root "$root" --cache_dir "$out/cache" --mode "$mode" "$@" > "$out/$mode.eval.log" 2>&1
  echo "== $mode"; sed -n '5,10p' "$root/eval/test/summary.md"
done
