"""Starts a real training command and sends it SIGTERM once it has logged a few steps (shared by the resume tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def sigterm_after(command: list[str], out: Path, lines: int = 3, timeout: float = 300) -> tuple[int, str]:
    """Runs `command`, waits until `out/metrics.jsonl` has `lines` lines, sends SIGTERM; returns (exit code, stderr)."""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= lines:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err
