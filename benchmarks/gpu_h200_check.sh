#!/usr/bin/env bash
# Issue 20's GPU check in one command (about 6 minutes on an H200); results under $OUT.
#   OUT=/tmp/x PY=python3 benchmarks/gpu_h200_check.sh           # on the GPU machine
#   OUT=/tmp/x PY=.venv/bin/python TINY=--tiny benchmarks/gpu_h200_check.sh   # CPU dry run
set -o pipefail
OUT=${OUT:-/tmp/gpu_h200}
PY=${PY:-python3}
TINY=${TINY:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD
(nvidia-smi || echo "no nvidia-smi") >"$OUT/nvidia-smi.txt" 2>&1
timeout "${MAIN_S:-330}" "$PY" benchmarks/gpu_h200.py $TINY --out "$OUT" 2>&1 | tee "$OUT/main.log"
echo "main rc=$?"
# Compile time without and with the saved mega-cache: two fresh processes, separate Inductor caches.
V=$("$PY" -c "import json,sys;r=json.load(open(sys.argv[1]));v=r.get('fastest_verified') or '';print(v if 'compile' in v else 'fused+compile')" "$OUT/gpu_h200.json" 2>/dev/null || echo fused+compile)
CACHE=$(mktemp -d)
for run in cold warm; do
  TORCHINDUCTOR_CACHE_DIR="$CACHE/inductor-$run" timeout "${PROBE_S:-100}" "$PY" benchmarks/gpu_h200.py $TINY \
    --compile-probe "$V" --cache-file "$CACHE/mega.bin" --n-texts 600 --ref-texts 0 2>&1 | tee -a "$OUT/probe.log"
  echo "probe $run rc=$?"
done
grep -h "COMPILE_PROBE" "$OUT/probe.log" || true
