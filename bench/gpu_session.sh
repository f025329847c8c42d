#!/usr/bin/env bash
# Every GPU check of the open issues, in priority order, in one call on a lent GPU machine
# (device tool: run "bash bench/gpu_session.sh" there; about 9 minutes with the default limits).
# Each stage has its own time limit so that a slow one cannot starve the next; what does not fit
# the budget is reported as not run (run it in the next call with LIFT_GPU_STAGES). Three files
# come back in $OUT (the device tool returns at most 8): machine.txt, stages.txt and session.tgz
# (every log and benchmark JSON). A stage table is printed last. Nothing is installed from a
# registry: the machine's python3 has torch, triton, onnxruntime, pytest-benchmark, pytest-timeout.
#
#   LIFT_GPU_STAGES="build match_tests matcher head head_flat pipeline pipeline_triton tests train compile compile_pipeline"  (default: all, in this order)
#   LIFT_GPU_COMMIT=<short hash>     the commit of the tree sent (the device's git shows the session's first commit): pass it
#   LIFT_GPU_LIMIT_<STAGE>=seconds   override one stage's limit
#   LIFT_GPU_MATCHER_ARGS="--sizes 12544 --dtypes bf16"   narrow the matcher table (default: every row)
#   LIFT_GPU_HEAD_K="gpu and triton and 448"              narrow the head bench (default: every case but compile)
#   LIFT_GPU_TOTAL=seconds           whole-script budget (default 540, under the tool's 600 s per call)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT="${OUT:-bench/results/gpu-session}"
WORK=$(mktemp -d /tmp/lift-gpu-session.XXXX)
mkdir -p "$OUT"
PY="${LIFT_GPU_PYTHON:-python3}"
STAGES="${LIFT_GPU_STAGES:-build match_tests matcher head head_flat pipeline pipeline_triton tests train compile compile_pipeline}"
export LIFT_GPU_COMMIT="${LIFT_GPU_COMMIT:-}"
# Below this many seconds left, a stage is reported as not run rather than started to be cut off (compiles and
# autotuning spend their first ~40 s before measuring anything).
declare -A MIN_SECS=([head]=60 [head_flat]=60 [pipeline_triton]=60 [compile]=70 [compile_pipeline]=70 [tests]=40 [train]=40)
DEADLINE=$((SECONDS + ${LIFT_GPU_TOTAL:-540}))
SUMMARY="$OUT/stages.txt"
: > "$SUMMARY"
save() {  # session.tgz after every stage, written aside and renamed: a SIGKILL at the call's limit keeps what finished
  tar czf "$OUT/session.part.tgz" -C "$WORK" . && mv "$OUT/session.part.tgz" "$OUT/session.tgz"
}
trap save EXIT

limit() {  # default limit for a stage, unless LIFT_GPU_LIMIT_<STAGE> is set
  local var="LIFT_GPU_LIMIT_${1^^}"
  echo "${!var:-$2}"
}

stage() {  # stage NAME DEFAULT_LIMIT COMMAND...: run with a limit, log to $WORK/NAME.log, record rc and time
  local name=$1 secs
  secs=$(limit "$1" "$2")
  shift 2
  [[ " $STAGES " == *" $name "* ]] || return 0
  local left=$((DEADLINE - SECONDS - 20))
  if ((left < ${MIN_SECS[$name]:-20})); then
    printf '%-16s not run: %ss left, it needs %ss\n' "$name" "$((left > 0 ? left : 0))" "${MIN_SECS[$name]:-20}" | tee -a "$SUMMARY"
    return 0
  fi
  ((secs > left)) && secs=$left
  echo "== $name (limit ${secs}s): $*"
  local t0=$SECONDS
  LIFT_BENCH_LOG="$WORK/$name-bench.jsonl" timeout --signal=INT --kill-after=5 "$secs" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  printf '%-16s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$(tail -n 1 "$WORK/$name.log" | cut -c1-110)" | tee -a "$SUMMARY"
  save
}

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse --short HEAD 2>/dev/null || echo "commit unknown"
  [[ -n "$LIFT_GPU_COMMIT" ]] && echo "tested commit: $LIFT_GPU_COMMIT"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  $PY -c "import torch, triton, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"
  $PY -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>&1 | tail -n 1
  nvcc --version | tail -n 1
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# 1. The extension with its CUDA path (the CI machine builds it too, but never runs it).
stage build 150 $PY -m pip install --no-build-isolation --no-deps -e .
$PY -c "from lift_rt import _C; print('lift_rt._C has_cuda:', _C.has_cuda())" 2>&1 | tee -a "$OUT/machine.txt"

# 2. The matchers' correctness first (issue 4): kernels changed since the last GPU run are checked before timing.
#    A stage is its own process, so a CUDA fault here cannot poison the stages after it.
stage match_tests 75 bash -c "$PY -m pytest -q -rfEs --timeout 60 -p no:cacheprovider --durations=10 tests/test_matching.py -k cuda; \
  a=\$?; $PY -m pytest -q -rfEs --timeout 60 -p no:cacheprovider --durations=10 tests/test_kernels_match_nearest.py; b=\$?; exit \$((a | b))"

# 3. Matchers against cuBLAS (issue 4's target: <= 1.2x the GEMM, no N x M allocation).
stage matcher 120 $PY bench/matching_cuda_table.py --out "$WORK" ${LIFT_GPU_MATCHER_ARGS:-}

# 4. The LiFT head alone, every variant but torch.compile (issue 6's targets), the Triton kernels' candidate flat loop
#    form in a stage of its own (each autotunes ~35 s a shape), autotuning choices printed to the logs; then the pipeline.
stage head 130 env TRITON_PRINT_AUTOTUNING=1 $PY -m pytest bench/test_bench_lift_head.py --benchmark-only -s -q \
  -k "${LIFT_GPU_HEAD_K:-gpu and not compile and not tritonflat}" -p no:cacheprovider --benchmark-json="$WORK/lift_head.json"
stage head_flat 130 env TRITON_PRINT_AUTOTUNING=1 $PY -m pytest bench/test_bench_lift_head.py --benchmark-only -s -q \
  -k "gpu and tritonflat" -p no:cacheprovider --benchmark-json="$WORK/lift_head_flat.json"
stage pipeline 45 $PY -m pytest bench/test_bench_pipeline.py --benchmark-only -q -p no:cacheprovider \
  -k "(224px-b1 or 224px-b8) and torch" --benchmark-json="$WORK/pipeline.json"
# The triton backend autotunes its LiFT kernels for each new shape (the 2026-11-26 H100 run spent its
# whole pipeline stage there), so it has a stage of its own, bf16 only.
stage pipeline_triton 90 $PY -m pytest bench/test_bench_pipeline.py --benchmark-only -q -p no:cacheprovider \
  -k "(224px-b1 or 224px-b8) and triton and bf16" --benchmark-json="$WORK/pipeline_triton.json"

# 5. Every Triton kernel incl. bf16 at real sizes (one block config each: LIFT_TRITON_AUTOTUNE=0 is set
#    by tests/kernel_utils.py), the triton / compile / onnxruntime / tensorrt backends against the
#    reference (tensorrt and onnxruntime-gpu where importable).
stage tests 110 $PY -m pytest -q -rfEs --timeout 60 -p no:cacheprovider --durations=15 \
  tests/test_kernels_up_conv.py tests/test_kernels_conv2d.py tests/test_kernels_lift.py tests/test_kernels_fold.py \
  tests/test_backends.py

# 6. Training throughput (issue 3's open GPU number): dino_s8 at 448 px, bf16 autocast, 30 steps of 64.
stage train 90 bash -c "$PY -m lift_rt.data sample /tmp/lift-demo --crops 40 --size 448 > /dev/null && \
  $PY -m lift_rt.train --backbone dino_s8 --random-init --data /tmp/lift-demo/train --epochs 6 --max-steps 30 \
  --batch 64 --workers 8 --no-progress --out $WORK/train; rc=\$?; cp $WORK/train/log.jsonl $WORK/train-log.jsonl; \
  rm -f $WORK/train/*.safetensors $WORK/train/*.state.pt; tail -n 1 $WORK/train-log.jsonl; exit \$rc"

# 7. torch.compile (max-autotune compiles for minutes): late, so that it cannot starve the rest.
#    The head at 224 and 448 px (issue 6 compares the Triton path with it), then the bf16 pipeline (issue 5).
stage compile 160 $PY -m pytest bench/test_bench_lift_head.py --benchmark-only -s -q -k "gpu and compile" \
  -p no:cacheprovider --benchmark-json="$WORK/lift_head_compile.json"
stage compile_pipeline 120 $PY -m pytest bench/test_bench_pipeline.py --benchmark-only -q -p no:cacheprovider \
  -k "compile and bf16 and (224px-b1 or 224px-b8)" --benchmark-json="$WORK/pipeline_compile.json"

echo
echo "== stages (rc 124 = stopped at its limit; logs and JSON in \$OUT/session.tgz)"
cat "$SUMMARY"
echo
grep -h -E "^\| [0-9]" "$WORK/matcher.log" 2>/dev/null | head -n 20
grep -h -E "floor .* ms" "$WORK/head.log" "$WORK/head_flat.log" "$WORK/compile.log" 2>/dev/null | cut -c1-150
grep -h -E "^(FAILED|ERROR)" "$WORK/match_tests.log" "$WORK/tests.log" 2>/dev/null | head -n 20
