#!/usr/bin/env bash
# One call on the lent GPU machine (torch, triton, JAX preinstalled; no network):
#   bash bench/gpu_session.sh            results under $OUT (or ./gpu-out)
# 1. GPU correctness tests at real sizes, 2. kernel layout variants, 3. the benchmark suite,
# 4. BENCHMARKS.md regenerated. Each step's log is kept even when an earlier one fails.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
SUPBENCH_TEST_ON_GPU=1 timeout 300 python -m pytest -q -m gpu tests -p no:cacheprovider -s > "$OUT/gpu-tests.log" 2>&1
echo "gpu tests rc=$?" | tee -a "$OUT/status.txt"
timeout 200 python -m bench.tune --out "$OUT" > "$OUT/tune.log" 2>&1
echo "tune rc=$?" | tee -a "$OUT/status.txt"
timeout 420 python -m bench.suite --out "$OUT/suite.json" > "$OUT/suite.log" 2>&1
echo "suite rc=$?" | tee -a "$OUT/status.txt"
if [ -f "$OUT/suite.json" ]; then
  mkdir -p "$OUT/results" && cp "$OUT/suite.json" "$OUT/results/"
  python -m bench.report --results "$OUT/results" --out "$OUT/BENCHMARKS.md" >> "$OUT/suite.log" 2>&1
fi
tail -n 5 "$OUT"/*.log
