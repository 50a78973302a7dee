"""Hard faults on real processes and real files: `kill -9` in the middle of a checkpoint write, a disk that fills up
during a save (a small tmpfs), checkpoint files truncated or altered, and a reward that raises mid-round. Each run
either resumes to exactly the unbroken run's metrics, or stops with a one-line error that names the cause."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.trainer.checkpoint import list_checkpoints

# no `one_thread` here: the runs in this process and those in subprocesses must use the same torch threads, or their
# float reductions (and so their metrics) differ in the last bits
DETERMINISTIC = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                 "grad_norm", "lr", "num_pairs")


def args(model_dir, hh_path, out, *extra):
    return ["train", "--model", str(model_dir), "--data", str(hh_path), "--output-dir", str(out), "--max-steps", "8",
            "--lr", "1e-3", "--batch-size", "4", "--max-length", "128", "data.limit=24", "data.on_bad_record=skip",
            "train.optimizer=adamw", "train.progress=false", "train.save=false", *extra]


def metrics(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], {k: r[k] for k in DETERMINISTIC if k in r}) for r in rows]


def dpokit(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "dpokit", *argv]


def kill_during_checkpoint_write(command: list[str], out: Path, timeout: float = 300) -> Path:
    """Runs `command` and SIGKILLs it while a checkpoint is half written: a `.tmp-step-*` directory holds files but
    no state.json yet. Checked with the process stopped (SIGSTOP), so the kill lands mid-write, not just after.
    Returns the half-written directory."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, root = time.time() + timeout, out / "checkpoints"
    try:
        while time.time() < deadline and proc.poll() is None:
            partial = [p for p in root.glob(".tmp-step-*")] if root.is_dir() else []
            if partial and list_checkpoints(out) and _holds_files(partial[0]):  # not the first: one is complete
                proc.send_signal(signal.SIGSTOP)
                if partial[0].is_dir() and not (partial[0] / "state.json").exists():
                    proc.kill()
                    proc.wait()
                    return partial[0]
                proc.send_signal(signal.SIGCONT)
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raise AssertionError("the run ended before it could be killed mid-checkpoint")


def _holds_files(path: Path) -> bool:
    try:
        return any(path.iterdir())
    except FileNotFoundError:  # renamed into place meanwhile
        return False


def test_kill_9_during_a_checkpoint_write_resumes_from_the_last_complete_one(model_dir, hh_path, tmp_path):
    every_step = ("train.save_every=1", "train.keep_checkpoints=2")
    whole = tmp_path / "whole"
    assert main(args(model_dir, hh_path, whole, *every_step)) == 0

    cut = tmp_path / "cut"
    partial = kill_during_checkpoint_write(dpokit(args(model_dir, hh_path, cut, *every_step)), cut)
    complete = list_checkpoints(cut)
    assert partial.is_dir() and not (partial / "state.json").exists()  # really killed in the middle of a write
    assert complete and int(partial.name.split("-")[-1]) == int(complete[-1].name.split("-")[-1]) + 1
    assert main(args(model_dir, hh_path, cut, *every_step, "--resume")) == 0
    assert metrics(cut) == metrics(whole)  # resumed from the last complete checkpoint: every figure identical
    assert not list((cut / "checkpoints").glob(".tmp-*"))  # the half-written directory was cleared


def can_mount_tmpfs() -> bool:
    """A tmpfs in a private mount namespace (`unshare -rm`: no root needed where user namespaces are allowed)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not can_mount_tmpfs(), reason="cannot mount a tmpfs here (unshare -rm refused)")
def test_a_full_disk_during_a_save_is_a_clear_error_and_the_previous_checkpoint_stays_intact(model_dir, hh_path,
                                                                                            tmp_path):
    every_4 = ("train.save_every=4", "train.keep_checkpoints=1")
    whole = tmp_path / "whole"
    assert main(args(model_dir, hh_path, whole, *every_4)) == 0
    size = sum(f.stat().st_size for f in (whole / "checkpoints" / "step-00000008").iterdir())

    # out/checkpoints is a tmpfs with room for one checkpoint and a half: step 4 fits, step 8 (beside it) does not
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    run = shlex.join(dpokit(args(model_dir, hh_path, cut, *every_4)))
    script = (f"mount -t tmpfs -o size={size * 3 // 2} tmpfs {cut / 'checkpoints'} && {{ {run}; rc=$?; "
              f"cp -a {cut / 'checkpoints'} {cut / 'kept'}; exit $rc; }}")  # the tmpfs goes with the namespace
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr
    assert last.startswith("dpokit: error: could not write checkpoint ") and "step-00000008" in last
    assert "step-00000008: the disk is full" in last and "newest complete checkpoint is" in last, last
    assert sorted(p.name for p in (cut / "kept").iterdir()) == ["step-00000004"]  # no partial copy left beside it

    assert main(args(model_dir, hh_path, cut, *every_4, "train.resume=" + str(cut / "kept" / "step-00000004"))) == 0
    assert metrics(cut) == metrics(whole)  # the kept checkpoint was whole: the run continues exactly


@pytest.fixture()
def checkpointed(model_dir, hh_path, tmp_path):
    """A run of 8 steps with checkpoints at steps 4 and 8."""
    out = tmp_path / "run"
    assert main(args(model_dir, hh_path, out, "train.save_every=4")) == 0
    return out


@pytest.mark.parametrize("damage", ["truncated", "altered", "missing"])
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "rng.pt"])
def test_a_damaged_checkpoint_file_is_refused_by_name(checkpointed, model_dir, hh_path, capsys, damage, name):
    file = checkpointed / "checkpoints" / "step-00000008" / name
    data = file.read_bytes()
    if damage == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "altered":  # one bit in the middle: the file still parses, only its digest tells
        middle = len(data) // 2
        file.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:])
    else:
        file.unlink()
    before = (checkpointed / "metrics.jsonl").read_text()
    assert main(args(model_dir, hh_path, checkpointed, "--max-steps", "12", "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"dpokit: error: checkpoint file {file} is {'missing' if damage == 'missing' else 'damaged'}")
    assert f"train.resume={checkpointed / 'checkpoints' / 'step-00000004'}" in err  # the other checkpoint offered
    assert (checkpointed / "metrics.jsonl").read_text() == before  # refused before anything was touched


def test_a_damaged_state_file_is_refused_by_name(checkpointed, model_dir, hh_path, capsys):
    state = checkpointed / "checkpoints" / "step-00000008" / "state.json"
    state.write_text(state.read_text()[:10])
    assert main(args(model_dir, hh_path, checkpointed, "--resume")) == 2
    assert f"checkpoint file {state} is damaged" in capsys.readouterr().err


PROMPTS = ["Human: How do I bake bread?", "Human: What is a good movie?", "Human: Tell me a joke."]
FLAKY_REWARD = '''import os
from pathlib import Path


def length(prompts, completions):
    calls = Path(os.environ["REWARD_CALLS"])
    calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
    if len(calls.read_text()) == int(os.environ.get("REWARD_FAILS_AT", "0")):
        raise ValueError("the scoring service is down")
    return [float(len(c)) for c in completions]
'''


def online_args(tmp_path: Path, model_dir: Path, out: Path) -> list[str]:
    return ["online", "--model", str(model_dir), "--prompts", str(tmp_path / "prompts.txt"), "--reward",
            f"{tmp_path / 'rew.py'}:length", "--output-dir", str(out), "--samples-per-prompt", "3",
            "--max-new-tokens", "8", "--batch-size", "3", "--lr", "1e-4", "--rounds", "3", "--steps-per-round", "2",
            "train.progress=false"]


def test_a_reward_raising_mid_run_stops_it_with_the_cause_and_it_resumes_cleanly(model_dir, tmp_path):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / "rew.py").write_text(FLAKY_REWARD)
    env = {**os.environ, "REWARD_CALLS": str(tmp_path / "calls")}
    whole = tmp_path / "whole"
    assert subprocess.run(dpokit(online_args(tmp_path, model_dir, whole)), env=env, capture_output=True,
                          timeout=300).returncode == 0

    cut = tmp_path / "cut"
    (tmp_path / "calls").unlink()
    failing = {**env, "REWARD_FAILS_AT": "2"}  # round 2's scoring raises
    done = subprocess.run(dpokit(online_args(tmp_path, model_dir, cut)), env=failing, capture_output=True,
                          text=True, timeout=300)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr
    assert last.startswith(f"dpokit: error: round 2: reward {tmp_path / 'rew.py'}:length raised ValueError: the "
                           f"scoring service is down (at {tmp_path / 'rew.py'}:9 in length)"), last
    assert last.endswith("continue with --resume") and "Traceback" not in done.stderr
    assert len((cut / "rounds.jsonl").read_text().splitlines()) == 1  # round 1 finished and kept

    resumed = subprocess.run(dpokit([*online_args(tmp_path, model_dir, cut), "--resume"]), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    def figures(out: Path) -> list[dict]:
        rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rows]

    assert figures(cut) == figures(whole)  # the rounds of the unbroken run
