#!/usr/bin/env bash
# The prepared device check: on a machine with one CUDA GPU, in at most 8 minutes,
#   1. the test suite's GPU tests (and the noise and engine tests, on the GPU machine's torch),
#   2. CERTIFY for the MNIST CNN (with a compiled forward pass too) and for ResNet-50 at 224x224,
#      fp32 and bf16, the engine against the per-input loop (bench_certify.py),
#   3. the Algorithm 1 step table for ResNet-50 (bench_optimize.py),
#   4. one ImageNet-shaped certification at n=100,000 and the share of time spent drawing noise
#      (bench_headline.py).
# Each step has its own time limit, so one slow or failing step does not cost the others; each
# writes OUT/<step>.log. The tables go into docs/benchmarks.md.
#
#   bash benchmarks/device_check.sh [OUT]           # on the GPU machine (python3 there holds torch)
#   bash benchmarks/device_check.sh --quick [OUT]   # on the CPU with tiny sizes: that it runs (make test)
set -uo pipefail
cd "$(dirname "$0")/.."

quick=""
if [ "${1:-}" = "--quick" ]; then
    quick="--quick"
    shift
fi
out=${1:-device-check}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device=cuda
limits=(120 100 100 60 110)  # seconds per step: 490 in all
tests=(tests/test_gpu.py tests/test_noise.py tests/test_sampling.py tests/test_certify_math.py)
compile=--compile
if [ -n "$quick" ]; then  # make test runs the other tests itself, and compiling for the CPU takes long
    device=cpu
    limits=(300 300 300 300 300)  # hang guards: a loaded CI machine is slow
    tests=(tests/test_gpu.py)
    compile=""
fi
failed=0

step() {  # step NAME LIMIT COMMAND...: run it with a time limit, log it, note a failure
    local name=$1 limit=$2
    shift 2
    echo "### $name"
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    local status=$?
    grep -v -E "^(USDT|ERROR):.*(Profiler|DeviceProperties)" "$out/$name.log"
    echo "($name: exit $status after $((SECONDS - started)) s)"
    [ "$status" -eq 0 ] || failed=1
}

echo "## device check $(date -u +%FT%TZ)"
if [ -z "$quick" ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
fi
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"

step gpu-tests "${limits[0]}" "$python" -m pytest -q -p no:cacheprovider "${tests[@]}"
step certify-mnist "${limits[1]}" "$python" benchmarks/bench_certify.py --device "$device" --images 50 \
    --rounds 2 $compile $quick
step certify-resnet50 "${limits[2]}" "$python" benchmarks/bench_certify.py --arch resnet50 --device "$device" \
    --images 4 --rounds 2 --scan-images 2 --memory-n 0 $quick
step optimize-resnet50 "${limits[3]}" "$python" benchmarks/bench_optimize.py --arch resnet50 --device "$device" \
    --batch-size 8 --steps 2 --rounds 2 $quick
step headline "${limits[4]}" "$python" benchmarks/bench_headline.py --device "$device" $quick

echo "## device check done in $SECONDS s; $([ $failed -eq 0 ] && echo 'every step passed' || echo 'a step failed')"
exit $failed
