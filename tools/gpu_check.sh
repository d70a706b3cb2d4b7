#!/usr/bin/env bash
# The GPU check of issue 18, in one run, for a machine with cupy, a CUDA GPU and PyTorch CUDA:
#   1. CPU-vs-GPU parity of every op, module, loss and optimizer (tests/test_cuda_parity.py);
#   2. the benchmarks against PyTorch CUDA (benchmarks/bench_gpu.py, with a profile);
#   3. the whole test suite with the cuda device enabled (every `device`-parametrised test runs
#      on cuda() too), minus the two tests that check the repository and the docs site;
#   4. needle's NDArray backend (NEEDLE_BACKEND=nd) with its cuda device: the NDArray, op, conv,
#      batch-norm and layer tests, parametrised over its enabled devices.
# Each step writes its log under $OUT as it goes, so a run cut short still returns what it did.
#
#   OUT=/tmp/gpu bash tools/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/needle_nb_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CUPY_TF32=0
PY=${PYTHON:-python3}

{ nvidia-smi; $PY -c "import cupy, numpy, torch, sys; print(sys.version); print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } >"$OUT/machine.txt" 2>&1

echo "==> 1. parity"
timeout ${PARITY_S:-200} $PY -m pytest -q -p no:cacheprovider -rfEs --tb=short tests/test_cuda_parity.py 2>&1 | tee "$OUT/parity.txt"

echo "==> 2. benchmarks"
timeout ${BENCH_S:-150} $PY benchmarks/bench_gpu.py --out "$OUT/bench_gpu.json" --profile "$OUT/profile.txt" 2>&1 | tee "$OUT/bench.txt"

echo "==> 3. suite"
timeout ${SUITE_S:-240} $PY -m pytest -q -p no:cacheprovider -rfE --tb=short -n ${WORKERS:-6} \
    --ignore tests/test_project.py --ignore tests/test_docs_site.py --ignore tests/test_cuda_parity.py tests/ \
    2>&1 | tee "$OUT/suite.txt"

echo "==> 4. nd backend on cuda"
NEEDLE_BACKEND=nd timeout ${ND_S:-90} $PY -m pytest -q -p no:cacheprovider -rfE --tb=short -n ${WORKERS:-6} \
    tests/test_ndarray.py tests/test_ops.py tests/test_conv.py tests/test_norm_ops.py tests/test_nn_layers.py \
    2>&1 | tee "$OUT/nd.txt"
echo "==> done"
