#!/usr/bin/env bash
# The GPU check of issue 20, in one device call of a few minutes.
#
# Here, on the CPU machine, first (needs the project's .venv, GDAL and the package index):
#     bash benchmarks/gpu_check.sh --prepare
# builds .gpu/ (chips, scene, model: `python -m benchmarks.gpu prepare`) and downloads into .whl/
# the wheels the GPU machine lacks (Python 3.12, manylinux x86_64), and rehearses the check on
# the CPU with imports limited to what the GPU machine will have (the GPU parts are skipped
# loudly there; `REHEARSE=1 PY=.venv/bin/python bash benchmarks/gpu_check.sh`). Both folders are git-ignored locally (.git/info/exclude) and travel with
# `carry: [".whl", ".gpu"]`.
#
# On the GPU machine (the device tool runs it in the repository root, $OUT set):
#     bash benchmarks/gpu_check.sh
# installs the wheels into /tmp/site, runs the `requires_gpu` tests, then
# `python -m benchmarks.gpu measure`, writing gpu-h200.json and the logs under $OUT.
#
# Not carried: rasterio/GDAL (35 MB; nothing measured here writes a GeoTIFF) and
# onnxruntime-gpu (hundreds of MB): GPU inference is measured through eoforge's torch session
# (eoforge.inference.torch_session), and the ORT CUDA test is skipped loudly.
set -u

WHEELS=(
  affine==3.0.1 annotated-types==0.8.0 donfig==0.8.1.post1 google-crc32c==1.9.0
  numcodecs==0.16.6 pydantic==2.14.3 pydantic_core==2.50.4 pydot==4.0.1 shapely==2.2.0
  typing-inspection==0.4.5 typing_extensions==4.16.0 zarr==3.1.6
)

if [[ "${1:-}" == "--prepare" ]]; then
  set -e
  PY=${PY:-.venv/bin/python}
  mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  "$PY" -m benchmarks.gpu prepare --out .gpu
  du -sh .whl .gpu
  exit 0
fi

OUT=${OUT:-/tmp/eoforge-gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
started=$(date +%s)
export PYTHONUNBUFFERED=1
PY=${PY:-python3}

# REHEARSE=1 (on the CPU machine): no wheel install, tests only collected, GPU paths on the CPU
REHEARSE=${REHEARSE:-0}
if [[ "$REHEARSE" == 1 ]]; then
  echo "!!! REHEARSAL on a machine without a GPU: no figure below is a GPU figure"
  MEASURE_ARGS="--rehearse --epochs 1 --scene-size 512 --seconds 1 --repeats 2 ${MEASURE_ARGS:-}"
elif ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 1; }
fi
mkdir -p /tmp/site
cp tests/_helpers.py /tmp/site/eoforge_test_helpers.py
export PYTHONPATH="/tmp/site:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

echo "== requires_gpu tests"
collect=""
[[ "$REHEARSE" == 1 ]] && collect="--collect-only"
timeout "${TEST_TIMEOUT:-180}" "$PY" -m pytest --noconftest -p no:cacheprovider -q -rA $collect \
  -m requires_gpu tests/eoforge/compute/test_gpu.py tests/eoforge/training/test_train.py \
  tests/eoforge/inference/test_torch_session.py 2>&1 | tee "$OUT/requires_gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
echo "requires_gpu tests exit code: $tests_rc after $(( $(date +%s) - started )) s"

echo "== benchmarks.gpu measure"
left=$(( ${BUDGET_S:-460} - ($(date +%s) - started) ))
"$PY" -m benchmarks.gpu measure --inputs .gpu --json "$OUT/gpu-h200.json" \
  --budget-s "$(( left > 60 ? left - 60 : 30 ))" ${MEASURE_ARGS:-}
bench_rc=$?
echo "benchmark exit code: $bench_rc; total $(( $(date +%s) - started )) s"
exit $(( tests_rc != 0 || bench_rc != 0 ))
