#!/usr/bin/env bash
# The first CUDA session of issue 25, in one script: the CUDA tests, the bf16 matmul peak, then dpokit vs TRL on
# three model shapes. Each step has its own time limit and writes its result even when a later step fails.
#
#   benchmarks/gpu/run.sh              # on the lent GPU machine, from the repository root ($OUT: where results go)
#   benchmarks/gpu/run.sh --dry-run    # here, on CPU: tiny models, 3 steps, every step rehearsed (about 2 minutes)
#
# On the GPU machine python3 has torch, transformers, accelerate, peft, safetensors, tokenizers, pyarrow but no
# registry: the missing wheels travel in the ignored .whl/ folder (benchmarks/gpu/fetch_wheels.sh fills it here),
# with the HH data file, and are installed into /tmp/site first. Device time is 15 minutes, start included, and one
# command runs 10 at most: the limits below add up to 8 minutes (490 s).
set -u
cd "$(dirname "$0")/../.."
DRY=""
[ "${1:-}" = "--dry-run" ] && DRY="--dry-run"
OUT=${OUT:-$PWD/benchmarks/gpu/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -z "$DRY" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD/src
  if [ -f .whl/hh_harmless_test.jsonl.gz ]; then  # the benchmark's pairs and the tests' tokenizer text
    export DPOKIT_BENCH_DATA=$PWD/.whl/hh_harmless_test.jsonl.gz DPOKIT_SHARED_DATA=$PWD/.whl
  fi
  MODELS="smollm2-135m qwen2-0.5b qwen2-1.5b"
  LIMITS="100 110 130"
  TEST_DEVICE=cuda
else
  export PYTHONPATH=${PYTHONPATH:-$PWD/src}
  MODELS="tiny-llama tiny-qwen2"
  LIMITS="120 120"
  TEST_DEVICE=cpu   # the CUDA tests' code, run on the CPU (FlexAttention's gradient tests skip there)
fi

step() {  # step NAME LIMIT_S COMMAND...: runs it under `timeout`, its output in $OUT/NAME.log, a line in steps.jsonl
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "[$(date +%T)] $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  printf '{"step": "%s", "rc": %d, "limit_s": %d, "wall_s": %d}\n' "$name" "$rc" "$limit" $((SECONDS - start)) \
    | tee -a "$OUT/steps.jsonl"
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
step versions 30 $PY -c "import torch, transformers, trl, datasets; print(torch.__version__, torch.version.cuda, \
transformers.__version__, trl.__version__, datasets.__version__, torch.cuda.is_available())"
step cuda_tests 100 env DPOKIT_TEST_DEVICE=$TEST_DEVICE $PY -m pytest -q -p no:cacheprovider \
  tests/unit/test_cuda_paths.py --junitxml="$OUT/cuda_tests.xml"
step peak 20 $PY benchmarks/gpu/bench.py peak $DRY --out "$OUT"
set -- $LIMITS
for model in $MODELS; do
  step "bench_$model" "$1" $PY benchmarks/gpu/bench.py model "$model" $DRY --out "$OUT"
  shift
done
cp -r benchmarks/.cache/logs "$OUT/runner_logs" 2>/dev/null || true
# the device tool brings back at most 8 files: the results as they are, every log in one archive
(cd "$OUT" && tar czf logs.tar.gz --remove-files -- *.log nvidia-smi.txt cuda_tests.xml runner_logs 2>/dev/null)
echo "results in $OUT: steps.jsonl, gpu_peak.json, gpu_<model>.json, logs.tar.gz (logs, cuda_tests.xml)"
ls "$OUT"
