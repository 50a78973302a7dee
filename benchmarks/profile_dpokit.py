"""Where a dpokit training step's time goes: a few steps under torch.profiler (CPU), grouped two ways.

By phase (labels this script puts around the loop's own calls): collation (the layout building a packed batch),
policy forward, reference forward, backward, optimizer (clipping + AdamW step), the rest of the step.

By operator kind (each profiled op's *self* time, classified by its name and input shapes, then by its callers):
- attention: scaled-dot-product attention, forward and backward (with dpokit's dense (R, 1, L, L) boolean mask);
- LM head / logits: any op on a tensor with a vocabulary-sized dimension (the head's matmuls, log-softmax pieces,
  their backward and recompute), except the embedding lookup;
- other matmuls: the remaining mm / addmm / bmm / linear (attention projections, MLP), forward and backward;
- optimizer: everything under clipping and the optimizer step; collation: everything under the layout call;
- other: elementwise ops, norms, RoPE, the autograd engine, Python inside the labelled regions.
"untraced" is the window's wall time no op accounts for (the interpreter between ops, the loop itself).

Step 1 (`--warmup`) runs unprofiled; the next `--profile-steps` are profiled. Arguments are the runners' (the same
fixture, mode presets and overrides as run_dpokit.py):

    python benchmarks/profile_dpokit.py --model smollm2 --mode default --profile-steps 2   # prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import fixture
import run_dpokit
from measure import START, add_runner_args, other_cores

PHASES = ("collate", "policy_forward", "reference_forward", "backward", "optimizer")
KINDS = ("attention", "lm_head", "other_matmul", "optimizer", "collate", "other")
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"}
LABEL = "dpokit::"


def labelled(name: str, fn):
    """`fn` inside a profiler range named dpokit::<name>."""
    import torch

    def call(*args, **kwargs):
        with torch.profiler.record_function(LABEL + name):
            return fn(*args, **kwargs)

    return call


class Window:
    """Starts the profiler when step `first` begins and stops it when step `last` ends; labels the phases."""

    def __init__(self, first: int, last: int) -> None:
        import torch

        self.first, self.last = first, last
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
        self.step_wall_s: list[float] = []
        self._labelled = False

    def install(self) -> None:
        from dpokit.trainer import loop

        inner = loop._step

        def step(run, order, number):
            if not self._labelled:
                self._label(run)
            if number == self.first:
                self.profiler.start()
            start = time.perf_counter()
            out = inner(run, order, number)
            if self.first <= number <= self.last:
                self.step_wall_s.append(time.perf_counter() - start)
            if number == self.last:
                self.profiler.stop()
            return out

        loop._step = step

    def _label(self, run) -> None:
        """Wraps the objects the loop calls (instance attributes shadow the class methods; behaviour unchanged)."""
        run.layout = labelled("collate", run.layout)
        run.parallel.clip_and_step = labelled("optimizer", run.parallel.clip_and_step)
        run.parallel.backward = labelled("backward", run.parallel.backward)
        run.trainee.engine.forward = labelled("policy_forward", run.trainee.engine.forward)
        if run.trainee.reference is not None:
            run.trainee.reference.logps = labelled("reference_forward", run.trainee.reference.logps)
        self._labelled = True


def kind_of(event, vocab: int) -> str:
    """The operator kind of one profiled event: a labelled caller decides first, then the op and its callers."""
    chain = []
    node = event
    while node is not None:
        chain.append(node)
        node = node.cpu_parent
    names = [e.name for e in chain]
    if any(n in (LABEL + "optimizer",) or n.startswith("Optimizer.") for n in names):
        return "optimizer"
    if LABEL + "collate" in names:
        return "collate"
    for node in chain:
        name = node.name.lower().replace("_", "")
        if "scaleddotproduct" in name or "flashattention" in name or "efficientattention" in name:
            return "attention"
        if "embedding" in name:
            return "other"
        if any(vocab in shape for shape in (node.input_shapes or []) if isinstance(shape, list)):
            return "lm_head"
        if node.name in MATMULS or name.startswith(("mmbackward", "addmmbackward", "bmmbackward")):
            return "other_matmul"
    return "other"


def summarize(window: Window, vocab: int, top: int) -> dict:
    """Phase and operator-kind totals over the profiled window, in seconds and as shares of its wall time."""
    events = [e for e in window.profiler.events() if e.device_type.name == "CPU"]
    wall = sum(window.step_wall_s)
    phases = defaultdict(float)
    for e in events:
        if e.name.startswith(LABEL):
            phases[e.name[len(LABEL):]] += e.cpu_time_total / 1e6
    steps = len(window.step_wall_s)
    kinds, ops = defaultdict(float), defaultdict(lambda: [0.0, 0])
    for e in events:
        seconds = e.self_cpu_time_total / 1e6
        kind = kind_of(e, vocab)
        kinds[kind] += seconds
        op = ops[(e.name, kind)]
        op[0] += seconds
        op[1] += 1
    traced = sum(kinds.values())
    kinds["untraced"] = max(0.0, wall - traced)
    phases["rest_of_step"] = max(0.0, wall - sum(phases[p] for p in PHASES))
    top_ops = sorted(ops.items(), key=lambda item: -item[1][0])[:top]
    return {
        "profiled_steps": steps, "wall_s_per_step": wall / steps,
        "phases_s_per_step": {k: phases[k] / steps for k in (*PHASES, "rest_of_step")},
        "kinds_s_per_step": {k: kinds[k] / steps for k in (*KINDS, "untraced")},
        "top_ops": [{"op": name, "kind": kind, "s_per_step": s / steps, "calls_per_step": n / steps}
                    for (name, kind), (s, n) in top_ops],
    }


def run(args: argparse.Namespace) -> dict:
    import torch

    from dpokit.core import settings as config_io
    from dpokit.trainer.config import build_config
    from dpokit.trainer.loop import train

    if args.threads:
        torch.set_num_threads(args.threads)
    fix = fixture.build(args.small, args.model)
    args.steps = args.warmup + args.profile_steps
    window = Window(args.warmup + 1, args.steps)
    window.install()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        items = run_dpokit.overrides(args, fix, Path(tmp))
        cfg = build_config(None, config_io.parse_overrides(items))
        train(cfg)
    vocab = json.loads((Path(fix.model) / "config.json").read_text())["vocab_size"]
    result = summarize(window, vocab, args.top)
    return {"system": "dpokit", "mode": args.mode, "torch_threads": torch.get_num_threads(),
            "other_cores": other_cores(START), **result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runner_args(parser)
    parser.add_argument("--mode", choices=sorted(run_dpokit.MODES), default="default")
    parser.add_argument("--truncation", choices=sorted(run_dpokit.TRUNCATION), default="matched")
    parser.add_argument("--profile-steps", type=int, default=2, help="steps profiled after the warm-up")
    parser.add_argument("--top", type=int, default=15, help="ops listed by self time")
    args = parser.parse_args(argv)
    print(json.dumps({"profile": run(args)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
