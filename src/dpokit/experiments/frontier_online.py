"""The frontier's on-policy arm (`kind: online`): `dpokit online` from πref on the training prompts, its samples
labelled by the method's reward (the ground truth, or the learned reward model), each round's policy evaluated on
the held-out prompts like every other run.

By default an online run spends what an offline run does: the offline preference data costs K reward calls for each
of the P training prompts, and an online run of R rounds samples P/R new prompts per round (K x P calls in all); the
offline runs take `train.max_steps` optimizer steps, and an online run takes max_steps / R per round. `online:` (and
the method's `run`) may change either.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from dpokit.core import settings as config_io
from dpokit.core.sections import ModelConfig
from dpokit.experiments.frontier_config import FrontierConfig, MethodSpec, refuse_frontier_keys
from dpokit.experiments.frontier_eval import MethodContext, Recorder, RunResult
from dpokit.models.loading import default_device, load_model
from dpokit.rewards.preferences import PreferenceFiles
from dpokit.rlhf.online import run_online
from dpokit.rlhf.online_config import OnlineConfig

FROM_FRONTIER = ("model", "prompts", "reward", "judge", "samples_per_prompt", "max_new_tokens", "chat")
ROUNDS = 4  # default rounds of an online method
TRAIN_KEYS = ("train.", "loss.", "model.lora.", "reference.")  # what the shared `run` passes on to each round


def online_config(cfg: FrontierConfig, method: MethodSpec, prompts_path: str, chat: bool | None) -> OnlineConfig:
    """`dpokit online` settings of one method: the frontier's model, prompts, K, budget and seed; the shared run's
    training keys; the budget-matching defaults; then the frontier's `online`, the method's `run`, `beta`."""
    refuse_frontier_keys({"online": cfg.online, f"{method.label} run": method.run}, FROM_FRONTIER)
    train = {k: v for k, v in cfg.run.items() if k.startswith(TRAIN_KEYS) and k not in ("train.max_steps",
                                                                                        "train.epochs",
                                                                                        "train.eval_every")}
    rounds = int(cfg.online.get("rounds", method.run.get("rounds", ROUNDS)))
    steps = int(cfg.run.get("train.max_steps", 0)) or 8 * rounds
    layers = {"model.name_or_path": cfg.model, "prompts": prompts_path, "samples_per_prompt": cfg.samples_per_prompt,
              "max_new_tokens": cfg.max_new_tokens, "chat": chat, "sample_batch_size": cfg.sample_batch_size,
              "train.output_dir": str(Path(cfg.output_dir) / "runs" / method.slug), "train.seed": cfg.seed,
              "train.progress": cfg.progress, "loss.name": method.loss, "rounds": rounds,
              "prompts_per_round": max(1, math.ceil(len(cfg.train_prompts) / rounds)),
              "steps_per_round": max(1, steps // rounds)}
    if "data.max_length" in cfg.run:
        layers["max_length"] = cfg.run["data.max_length"]
    beta = {"loss.beta": method.beta} if method.beta is not None else {}
    return config_io.load(OnlineConfig(), None, train, layers, cfg.online, method.run, beta)


def check_online_method(cfg: FrontierConfig, method: MethodSpec, files: PreferenceFiles) -> None:
    """The method's online settings, validated before anything is sampled (the prompts file is written later)."""
    config_io.validate(online_config(cfg, method, "", cfg.chat), require=("model.name_or_path",))


def run_online_method(context: MethodContext, method: MethodSpec) -> RunResult:
    """`dpokit online` from πref; each round's policy is evaluated on the held-out prompts (step = optimizer steps
    so far)."""
    cfg = context.cfg
    prompts = Path(cfg.output_dir) / "data" / "train_prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in cfg.train_prompts))
    online_cfg = online_config(cfg, method, str(prompts), context.evaluator.chat)
    run_dir = Path(online_cfg.train.output_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun of the frontier starts the method afresh, as offline runs do
    summary = run_online(online_cfg, reward=context.rewards[method.reward])
    record = Recorder(context.evaluator, method)
    steps = 0
    for r in summary.rounds:
        if r["trained"]:
            steps += online_cfg.steps_per_round
            policy = load_model(str(run_dir / f"round_{r['round']}"), ModelConfig()).to(default_device()).eval()
            record(steps, policy)
    if record.last is None:  # no round had a pair to train on: the policy is πref
        record(0, context.evaluator.reference)
    calls = summary.rounds[-1]["label_calls"]
    return RunResult(method, str(run_dir), record.points, record.last, steps, summary.seconds, label_calls=calls)
