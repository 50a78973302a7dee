"""The prepared GPU session (benchmarks/gpu/) in its cheapest form: the scripts parse, the wheel download is the
one intended, and the peak step writes its result on CPU. The whole rehearsal takes about 2 minutes on 2 cores, so
it is run by hand before each device session (docs/performance.md, "On a GPU"):

    PYTHON=.venv/bin/python benchmarks/gpu/run.sh --dry-run
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

GPU = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"


def test_the_scripts_parse_and_the_download_is_the_intended_one():
    for script in ("run.sh", "fetch_wheels.sh"):
        subprocess.run(["bash", "-n", str(GPU / script)], check=True)
    printed = subprocess.run(["bash", str(GPU / "fetch_wheels.sh"), "--dry-run"], check=True, text=True,
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHON": sys.executable}).stdout
    command = printed.splitlines()[0].split()
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command and "--only-binary=:all:" in command
    assert command[command.index("--python-version") + 1] == "3.12"
    assert {"trl==1.16.0", "datasets==5.2.0", "pytest==9.2.0"} <= set(command)
    assert printed.splitlines()[1].endswith(".whl/")


def test_the_peak_step_writes_its_result_on_cpu(tmp_path):
    subprocess.run([sys.executable, str(GPU / "bench.py"), "peak", "--dry-run", "--out", str(tmp_path)], check=True,
                   timeout=120)
    peak = json.loads((tmp_path / "gpu_peak.json").read_text())
    assert peak["dtype"] == "bfloat16" and peak["n"] == 512
    assert peak["device"] == "cpu" and peak["peak_tflops"] == max(peak["tflops"]) > 0
