#!/usr/bin/env bash
# On the lent GPU machine (torch, triton, JAX preinstalled; no network), one stage per call
# (each fits the device tool's 10-minute limit); logs and results land in $OUT (or ./gpu-out):
#   bash bench/gpu_session.sh check   static estimates, all kernel tests compiled on the GPU (real sizes too),
#                                     then layout variants timed (bench.tune)
#   bash bench/gpu_session.sh bench   the benchmark suite (JSON record) and BENCHMARKS.md from it
#   bash bench/gpu_session.sh lease   both in one call of at most ~9 minutes, for a 15-minute lease:
#                                     kernel tests (GPU), the suite without the K-scaling sweep, a short
#                                     tune; every part time-boxed and its output saved as it goes
# Copy $OUT/results/*.json into bench/results/ and run `python -m bench.report` to publish.
set -u
stage=${1:?usage: bash bench/gpu_session.sh check|bench}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
case "$stage" in
  check)
    # The static estimates (bench.sass) of the default layouts, beside the timings below, so CPU-only
    # sessions can see how far the issue bound sits from the real GPU.
    timeout 40 python -m bench.sass --shapes "2,1;3,2;20,5;400,30" > "$OUT/sass.log" 2>&1
    timeout 20 python -m bench.sass --shapes "20,5;400,30" --precision tf32 >> "$OUT/sass.log" 2>&1
    # Every kernel test compiled for the GPU (not only the gpu-marked ones), plus the CLI's GPU test.
    SUPBENCH_TEST_ON_GPU=1 timeout 320 python -m pytest -q -p no:cacheprovider -s tests/test_kernels.py \
      tests/test_cli.py::test_gpu_phase_diagram_agreement_no_worse_on_triton > "$OUT/gpu-tests.log" 2>&1
    echo "gpu tests rc=$?" | tee -a "$OUT/status.txt"
    timeout 190 python -m bench.tune --out "$OUT" > "$OUT/tune.log" 2>&1
    echo "tune rc=$?" | tee -a "$OUT/status.txt"
    ;;
  bench)
    mkdir -p "$OUT/results"
    timeout 560 python -m bench.suite --out "$OUT/results/$(date -u +%Y%m%dT%H%M%SZ)-$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' _).json" > "$OUT/suite.log" 2>&1
    echo "suite rc=$?" | tee -a "$OUT/status.txt"
    python -m bench.report --results "$OUT/results" --out "$OUT/BENCHMARKS.md" >> "$OUT/suite.log" 2>&1
    ;;
  lease)
    mkdir -p "$OUT/results"
    SUPBENCH_TEST_ON_GPU=1 timeout 200 python -m pytest -v -p no:cacheprovider --durations=12 tests/test_kernels.py \
      tests/test_cli.py::test_gpu_phase_diagram_agreement_no_worse_on_triton > "$OUT/gpu-tests.log" 2>&1
    echo "gpu tests rc=$?" | tee -a "$OUT/status.txt"
    timeout 250 python -m bench.suite --no-scaling --rounds 5 --out "$OUT/results/$(date -u +%Y%m%dT%H%M%SZ)-$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' _).json" > "$OUT/suite.log" 2>&1
    echo "suite rc=$?" | tee -a "$OUT/status.txt"
    timeout 60 python -m bench.tune --max-variants 3 --steps 10 --out "$OUT" > "$OUT/tune.log" 2>&1
    echo "tune rc=$?" | tee -a "$OUT/status.txt"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
tail -n 8 "$OUT"/*.log
