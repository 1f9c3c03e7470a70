#!/usr/bin/env bash
# Quality of each ViDiT-Q scheme on trained-dit: compile every variant, then `genzip eval`
# each against the FP32 artifact on the same held-out labels and seeds.
# Usage: bash benchmarks/eval_quant_schemes.sh OUT_DIR [SAMPLES] [VARIANTS]   (writes OUT_DIR/results.json)
# VARIANTS: space-separated names from the table below (default: the six schemes without ranges).
set -euo pipefail
out=${1:?usage: eval_quant_schemes.sh OUT_DIR [SAMPLES]}
samples=${2:-100}
mkdir -p "$out"
declare -A specs=(
  [w8a8]="annotate-precision,calibrate,quant{scheme=w8a8}"
  [w8a8-dynamic]="annotate-precision{scheme=w8a8-dynamic},quant{scheme=w8a8-dynamic}"
  [w4a8]="annotate-precision{scheme=w4a8},calibrate,quant{scheme=w4a8}"
  [w4a8-dynamic]="annotate-precision{scheme=w4a8-dynamic},quant{scheme=w4a8-dynamic}"
  [w4a8-dynamic-hadamard]="annotate-precision{scheme=w4a8-dynamic},smooth{rotate=hadamard},quant{scheme=w4a8-dynamic}"
  [w4a8-hadamard]="annotate-precision{scheme=w4a8},smooth{rotate=hadamard},calibrate,quant{scheme=w4a8}"
  # ViDiT-Q's timestep-wise channel balancing: one smoothing (and weight) per timestep range
  [w8a8-dynamic-smooth]="annotate-precision{scheme=w8a8-dynamic},smooth,quant{scheme=w8a8-dynamic}"
  [w8a8-dynamic-smooth-ranges4]="annotate-precision{scheme=w8a8-dynamic},smooth{ranges=4},quant{scheme=w8a8-dynamic}"
  [w4a8-dynamic-hadamard-ranges4]="annotate-precision{scheme=w4a8-dynamic},smooth{rotate=hadamard ranges=4},quant{scheme=w4a8-dynamic}"
)
order=${3:-"w8a8 w8a8-dynamic w4a8 w4a8-dynamic w4a8-dynamic-hadamard w4a8-hadamard"}
genzip-compile trained-dit --target ort --out "$out/fp32" --force --quiet
genzip eval "$out/fp32" --samples "$samples" --json > "$out/fp32.json"
for v in $order; do
  genzip-compile trained-dit --target ort --out "$out/$v" --force --quiet --min-cosine 0.5 --passes "${specs[$v]}"
  genzip eval "$out/$v" --vs "$out/fp32" --samples "$samples" --json > "$out/$v.json"
done
python - "$out" $order <<'PY'
import json, sys
out, names = sys.argv[1], ["fp32", *sys.argv[2:]]
keys = ("accuracy", "frechet_distance", "psnr_db", "ssim", "samples")
rows = {n: {k: json.load(open(f"{out}/{n}.json"))[k] for k in keys} for n in names}
json.dump(rows, open(f"{out}/results.json", "w"), indent=1)
print(json.dumps(rows, indent=1))
PY
