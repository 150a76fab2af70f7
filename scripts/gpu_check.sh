#!/usr/bin/env bash
# Everything jaxgd checks on a GPU, as one command with a time limit per phase (a lent GPU machine
# gives minutes, not hours). Run from the repository root on the GPU machine:
#     bash scripts/gpu_check.sh [OUT]
# Prepared beforehand on a machine with the data (the GPU machine needs no TFDS folder and no network):
#     jaxgd data export cifar2 mnist --to .gpudata      # decoded copies, ~44 MB, read without TFDS
#     git rev-parse --short HEAD > .gpudata/commit      # the commit the copy is of (no .git travels)
#     pip download ... -d .whl tensorflow-datasets ...  # only for tests/test_data.py's TFDS mock tests
# Phases, each logged to OUT/<phase>.log and timed in OUT/phases.txt:
#   env    nvidia-smi and the versions of JAX, PyTorch, optax
#   bench  jaxgd bench with PyTorch on CUDA beside it, the INF265 grid section included
#   tests  the test suite (pytest-xdist, 8 workers), one line per test
#   quick  jaxgd reproduce --quick on the exported CIFAR-2 and MNIST (CIFAR-10's two experiments need
#          the whole CIFAR-10, which does not travel)
# Each phase's limit is an environment variable (BENCH_S, TESTS_S, QUICK_S; 0 leaves the phase out).
# The results of bench and quick are packed into OUT/results.tgz.
set -u
OUT=${1:-${OUT:-/tmp/jaxgd-gpu}}
mkdir -p "$OUT"
RES=/tmp/jaxgd-gpu-results
rm -rf "$RES"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false JAXGD_PROGRESS=0
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the jaxgd command itself (tests/test_cli.py looks for it on PATH); offline, no dependencies
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "no jaxgd command"
export TFDS_DATA_DIR="$PWD/.gpudata" JAXGD_CACHE_DIR=/tmp/jaxgd-cache
# the copy's git history may be missing or another one: provenance takes the commit from here
# (and keeps what git says there; its code_fingerprint checks the code)
[ -f .gpudata/commit ] && export JAXGD_SOURCE_COMMIT="$(cat .gpudata/commit)"

phase() {  # phase NAME SECONDS COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $(($(date +%s) - start))s (limit ${limit}s)" | tee -a "$OUT/phases.txt"
}

phase env 60 bash -c 'nvidia-smi; python3 -c "
import sys, jax, optax, chex, numpy, torch
print(sys.version); print(\"jax\", jax.__version__, jax.devices()); print(\"optax\", optax.__version__, \"chex\", chex.__version__, \"numpy\", numpy.__version__)
print(\"torch\", torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))
import jaxgd, tensorflow_datasets; print(\"jaxgd\", jaxgd.__file__, \"tfds\", tensorflow_datasets.__version__)"'
[ "${BENCH_S:-210}" -gt 0 ] && phase bench "${BENCH_S:-210}" python3 -m jaxgd bench --sections matmul mlp_epoch grad configs cnn_epoch grid \
    --repeats 3 --results "$RES" --quiet
# QUICK: the experiments of the quick profile to run, in order (the float64 gradient checks last: on an
# H200 they did not finish in 110 s); TESTS: pytest's arguments (default: the whole suite)
[ "${TESTS_S:-230}" -gt 0 ] && phase tests "${TESTS_S:-230}" python3 -m pytest -v -n 8 -p no:cacheprovider \
    --timeout 150 --durations 25 --tb=short -rfE --continue-on-collection-errors ${TESTS:-}
[ "${QUICK_S:-130}" -gt 0 ] && phase quick "${QUICK_S:-130}" python3 -m jaxgd reproduce --quick --results "$RES" \
    --only ${QUICK:-matrix_chain data_report cifar2 cifar2_improved mnist_zoo mnist_improved gradcheck}
tar czf "$OUT/results.tgz" -C "$RES" . 2>/dev/null
grep -E "passed|failed" "$OUT/tests.log" | tail -n 1
cat "$OUT/phases.txt"
