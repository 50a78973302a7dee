#!/usr/bin/env bash
# Fills the ignored .whl/ folder with what benchmarks/gpu/run.sh installs on the GPU machine (no registry there):
# the pure-Python or manylinux wheels of the packages its python3 lacks (dpokit's datasets with its own missing
# dependencies, TRL 1.16, liger-kernel, pytest for the CUDA tests), for CPython 3.12 on x86_64, no dependencies resolved (the list is the whole
# set), plus a copy of the HH data file. Run here, with network; carry .whl/ to the device run.
#
#   benchmarks/gpu/fetch_wheels.sh             # downloads (about 20 MB)
#   benchmarks/gpu/fetch_wheels.sh --dry-run   # prints the pip command only
set -eu
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
PACKAGES=(
  trl==1.16.0 liger-kernel==0.8.5
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 fsspec==2026.9.0 pandas==3.1.1
  python-dateutil==4.0.0 tzdata==2026.6 pyyaml==6.0.3 tqdm==4.70.1
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0
  requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.18 charset-normalizer==3.5.2
)  # the versions of the venv this was rehearsed in (`pip list`); pure Python but xxhash, pandas, pyyaml, charset
CMD=($PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
     -d .whl "${PACKAGES[@]}")
DATA=${DPOKIT_BENCH_DATA:-../shared/data/hh_harmless_test.jsonl.gz}
if [ "${1:-}" = "--dry-run" ]; then
  echo "${CMD[*]}"
  echo "cp $DATA .whl/"
  exit 0
fi
mkdir -p .whl
"${CMD[@]}"
cp "$DATA" .whl/
du -sh .whl
