"""Every combination of command × backend × option either trains and matches one process, or is refused.

The cells are generated from the settings registries: a command's axes are the keys its config class has
(`model.lora.enabled`, `reference.mode` with every choice its metadata lists, `train.packing`, `loss.name`), crossed
with every backend: one process, DDP-2 (torchrun), FSDP2-2 (`train.fsdp=true`; ppo's `fsdp=true`), ZeRO-2 and ZeRO-3
(`accelerate launch` with configs/), all on CPU over gloo. Each cell has exactly two allowed outcomes:

- refused: exit 2 and a one-line reason, before any model loads. Shown by running the cell on a copy of the model
  whose weights file is garbage: a refusal that comes first cannot have read it;
- trains: exit 0 on the real model, and the final weights equal those of the one-process plain run at the same
  global batch (grad_accum=2, packing off, reference auto), within fp32 tolerance. `ppo` and `online` sample, and each
  process draws its own share with its own seeds: their cells must end with identical replicas in every process
  (when not sharded), and on FSDP2 / ZeRO equal the DDP run, which drew the same responses.

Anything else (a crash, a hang, a mismatch, a refusal after loading) fails. The whole matrix runs by hand:
`pytest -m matrix tests/integration/test_matrix.py` (its time and counts: docs/distributed.md); the default suite
runs `SLICE`, which covers every backend and every command at least once.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dpokit.core.settings import keys_of
from dpokit.rlhf.online_config import OnlineConfig
from dpokit.rlhf.ppo_config import PPOConfig
from dpokit.rlhf.reward_config import RewardModelConfig
from dpokit.trainer.config import Config, ReferenceConfig

REPO = Path(__file__).resolve().parents[2]
BACKENDS = {  # name: (accelerate config or None for torchrun, extra keys); "single" runs one process
    "single": (None, []), "ddp": (None, []), "fsdp": (None, ["fsdp=true"]),  # the command's own fsdp key
    "zero2": ("accelerate_zero2.yaml", []), "zero3": ("accelerate_zero3.yaml", []),
}
COMMANDS = {"train": Config, "sft": Config, "rm": RewardModelConfig, "ppo": PPOConfig, "online": OnlineConfig}
# each process samples its own share: replicas must agree, and every other backend equal DDP (the same draws)
SAMPLING = ("ppo", "online")
LOSSES = {"train": ["sigmoid", "sigmoid + 0.1*kl"], "sft": ["sft"]}  # without and with a token-level term


def reference_modes() -> list[str]:
    return list(ReferenceConfig.__dataclass_fields__["mode"].metadata["choices"])


def cells() -> list[tuple[str, str, bool, str | None, bool, str | None]]:
    """(command, backend, lora, reference mode, packing, loss) for every combination a command's keys allow."""
    out = []
    for command, config in COMMANDS.items():
        keys = {key for key, *_ in keys_of(config)}
        lora = [False, True] if "model.lora.enabled" in keys else [False]
        modes = reference_modes() if "reference.mode" in keys and command == "train" else [None]
        packing = [False, True] if "train.packing" in keys and command not in SAMPLING else [False]
        for backend, lo, mode, pack, loss in itertools.product(BACKENDS, lora, modes, packing,
                                                               LOSSES.get(command, [None])):
            out.append((command, backend, lo, mode, pack, loss))
    return out


# every backend and every command at least once, LoRA, the cached reference, the kl term sharded, and a sampling
# command sharded (compared with its DDP run) among them
SLICE = {("train", "single", False, "precomputed", True, "sigmoid + 0.1*kl"), ("train", "ddp", True, "auto", True,
         "sigmoid"), ("train", "fsdp", False, "copy", False, "sigmoid + 0.1*kl"), ("sft", "zero2", False, None, True,
         "sft"), ("rm", "zero3", True, None, False, None), ("ppo", "fsdp", True, None, False, None),
         ("online", "ddp", False, None, False, None), ("train", "zero3", False, "precomputed", False, "sigmoid")}


def cell_id(cell) -> str:
    command, backend, lora, mode, pack, loss = cell
    return "-".join(str(p) for p in (command, backend, "lora" if lora else "full", mode or "", "packed" if pack else
                                     "plain", (loss or "").replace(" ", "")) if p)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(backend: str) -> list[str]:
    config, _ = BACKENDS[backend]
    if backend == "single":
        return [sys.executable, "-m", "dpokit"]
    if config is None:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port()), "-m", "dpokit"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs" / config),
            "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), "-m",
            "dpokit"]


@pytest.fixture(scope="module")
def task(tmp_path_factory, model_dir, hh_path) -> Path:
    """24 HH pairs, prompts and a reward file beside them, and a copy of the model whose weights are garbage."""
    import gzip

    root = tmp_path_factory.mktemp("matrix")
    with gzip.open(hh_path, "rt") as f:
        (root / "pairs.jsonl").write_text("".join(line for _, line in zip(range(24), f, strict=False)))
    (root / "prompts.txt").write_text("Human: How do I bake bread?\nHuman: Tell me a joke.\n")
    (root / "rew.py").write_text("def length(prompts, completions):\n    return [float(len(c)) for c in completions]\n")
    shutil.copytree(model_dir, root / "broken")
    (root / "broken" / "model.safetensors").write_bytes(b"not safetensors" * 64)
    return root


def command_args(cell, task: Path, model: Path, out: Path, global_batch: bool) -> list[str]:
    """The cell's command line; `global_batch`: as one process with grad_accum=2 (the comparison run)."""
    command, backend, lora, mode, pack, loss = cell
    extra = [own_key(command, key) for key in BACKENDS[backend][1]] if not global_batch else []
    if lora:
        extra.append("model.lora.enabled=true")
    if command == "ppo":
        return ["ppo", "--model", str(model), "--prompts", str(task / "prompts.txt"), "--reward",
                f"{task / 'rew.py'}:length", "--output-dir", str(out), "--iterations", "2", "--rollout-batch-size", "4",
                "--minibatch-size", "2", "--max-new-tokens", "4", "progress=false", *extra]
    if command == "online":
        return ["online", "--model", str(model), "--prompts", str(task / "prompts.txt"), "--reward",
                f"{task / 'rew.py'}:length", "--output-dir", str(out), "--samples-per-prompt", "3", "--max-new-tokens",
                "6", "--batch-size", "2", "--lr", "1e-4", "--rounds", "1", "--steps-per-round", "2",
                "train.progress=false", *extra]
    args = [command, "--model", str(model), "--data", str(task / "pairs.jsonl"), "--output-dir", str(out),
            "--max-steps", "3", "--lr", "1e-3", "--batch-size", "2", "--max-length", "96", "data.on_bad_record=skip",
            "train.optimizer=adamw", "train.progress=false", f"reference.cache_dir={out.parent / 'refcache'}"
            if command == "train" else None, *extra]
    if command == "train":
        args.append(f"loss.name={loss}")
    if mode and not global_batch:
        args.append(f"reference.mode={mode}")
    if pack and not global_batch:
        args += ["train.packing=true", "train.shared_prompt=true"]
    if global_batch or backend == "single":
        args.append("train.grad_accum=2")
    return [a for a in args if a is not None]


def own_key(command: str, setting: str) -> str:
    """`fsdp=true` as the command spells it: `train.fsdp` for train/sft/rm/online, `fsdp` at ppo's top level."""
    name, value = setting.split("=", 1)
    keys = [key for key, *_ in keys_of(COMMANDS[command]) if key.split(".")[-1] == name]
    return f"{keys[0] if keys else name}={value}"


def run(argv: list[str], backend: str) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher(backend), *argv], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def refusal(done: subprocess.CompletedProcess) -> str | None:
    """The one-line reason of a refusal before any load, or None (the run went on to read the broken weights).
    Each process prints the same `dpokit: error: ...` line (torchrun prefixes it with the rank)."""
    reasons = {line.split("dpokit: error:")[1].strip() for line in done.stderr.splitlines()
               if "dpokit: error:" in line}  # [1]: two processes' lines can run together on one line
    if done.returncode not in (1, 2) or len(reasons) != 1 or "broken" in next(iter(reasons)):
        return None
    return next(iter(reasons))


_baselines: dict[tuple, Path] = {}


def baseline(cell, task: Path, model_dir: Path) -> Path:
    """The one-process plain run the cell must equal (cached per command, LoRA and loss)."""
    command, _, lora, _, _, loss = cell
    return _run_once((command, lora, loss), (command, "single", lora, None, False, loss), True,
                     task / f"baseline-{command}-{lora}-{(loss or '').replace(' ', '')}", task, model_dir)


def sampling_baseline(cell, task: Path, model_dir: Path) -> Path:
    """The DDP run a ppo / online cell on another 2-process backend must equal: each process draws with its own
    seeds whatever the backend, so they sample the same responses (cached per command and LoRA)."""
    command, _, lora, *_ = cell
    return _run_once(("ddp", command, lora), (command, "ddp", lora, None, False, None), False,
                     task / f"baseline-ddp-{command}-{lora}", task, model_dir)


def _run_once(key: tuple, cell, global_batch: bool, out: Path, task: Path, model_dir: Path) -> Path:
    """Runs `cell` into `out` the first time `key` is asked for; its output directory every time."""
    if key not in _baselines:
        done = run(command_args(cell, task, model_dir, out, global_batch), cell[1])
        assert done.returncode == 0, done.stderr[-3000:]
        _baselines[key] = out
    return _baselines[key]


def check(cell, task: Path, model_dir: Path) -> str:
    command, backend = cell[0], cell[1]
    if backend.startswith("zero"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is an optional extra: pip install 'dpokit[deepspeed]'")
    probe = run(command_args(cell, task, task / "broken", task / f"probe-{cell_id(cell)}", False), backend)
    reason = refusal(probe)
    if reason is not None:
        assert probe.returncode == 2 or backend != "single", probe.stderr[-2000:]
        return f"refused: {reason}"
    assert probe.returncode != 0, "the probe trained on garbage weights"
    out = task / cell_id(cell)
    done = run(command_args(cell, task, model_dir, out, False), backend)
    assert done.returncode == 0, f"neither refused before loading nor trained:\n{done.stderr[-3000:]}"
    if command in SAMPLING:
        summaries = [out / "summary.json"] if command == "ppo" else sorted(out.glob("round_*/summary.json"))
        for path in summaries:
            summary = json.loads(path.read_text())
            assert summary["sharded"] or len(set(summary["replica_digests"])) == 1, summary["replica_digests"]
        if backend in ("single", "ddp"):
            return "trains"
    reference = sampling_baseline(cell, task, model_dir) if command in SAMPLING else baseline(cell, task, model_dir)
    ours = load_file(str(out / "model.safetensors"))
    theirs = load_file(str(reference / "model.safetensors"))
    assert set(ours) == set(theirs)
    worst = max((ours[n] - theirs[n]).abs().max().item() for n in ours)
    assert worst <= 2e-5, f"final weights differ from one process's by {worst:.3g}"
    return "trains"


def _marks(cell):
    return [] if cell in SLICE else [pytest.mark.matrix]


@pytest.mark.parametrize("cell", [pytest.param(c, id=cell_id(c), marks=_marks(c)) for c in cells()])
def test_cell_trains_and_matches_or_is_refused(cell, task, model_dir):
    outcome = check(cell, task, model_dir)
    if os.environ.get("DPOKIT_MATRIX_LOG"):  # a table of every cell's outcome, for docs/distributed.md
        with open(os.environ["DPOKIT_MATRIX_LOG"], "a") as f:
            f.write(json.dumps({"cell": cell_id(cell), "outcome": outcome}) + "\n")
