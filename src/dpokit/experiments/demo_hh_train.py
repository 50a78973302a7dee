"""The HH demo's trained arms: the two reward models, Preferred-FT, offline DPO (from Preferred-FT and from the
instruct model) and on-policy DPO, each a `dpokit rm` / `dpokit train` / `dpokit online` run through its Python API.

    instruct (SmolLM2-135M-Instruct) --sft on the chosen replies--> Preferred-FT = πref
    πref --DPO against πref--> DPO                   (the paper's protocol)
    instruct --DPO against instruct--> DPO from instruct   (what many users do: DPO on a tuned chat model)
    πref --online DPO against πref, labels by Best-of-N's reward model--> online DPO

Every model directory is kept: a second run into the same output directory reuses what a finished run trained.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpokit.core.sections import ModelConfig
from dpokit.models.loading import load_model, load_tokenizer
from dpokit.rewards.sources import RewardConfig
from dpokit.rlhf import reward_train
from dpokit.rlhf.online import ROUNDS_FILE, run_online
from dpokit.rlhf.online_config import OnlineConfig
from dpokit.rlhf.reward_config import RewardModelConfig
from dpokit.trainer import loop
from dpokit.trainer.config import Config
from dpokit.trainer.launch import deepspeed_unprobed

if TYPE_CHECKING:
    from dpokit.experiments.demo_hh_sizes import HHSize

INSTRUCT = "smollm2-135m-instruct"


def save_instruct(out: Path) -> Path:
    """The instruct model once as plain safetensors (the GGUF file is unpacked a single time, not by every stage)."""
    path = out / "models" / "instruct"
    if (path / "model.safetensors").is_file():
        return path
    model = load_model(INSTRUCT, ModelConfig())
    with deepspeed_unprobed():
        model.save_pretrained(path)
    load_tokenizer(INSTRUCT).save_pretrained(path)
    return path


def train_config(size: HHSize, model: Path, data: Path, out: Path, steps: int, lr: float, seed: int) -> Config:
    """The shared training settings of every stage (conversational data, AdamW, short warmup, no eval)."""
    cfg = Config()
    cfg.model.name_or_path, cfg.data.path, cfg.data.format = str(model), str(data), "conversational"
    cfg.data.max_length, cfg.data.max_prompt_length = size.max_length, size.max_length * 2 // 3
    train = cfg.train
    train.output_dir, train.max_steps, train.batch_size, train.lr = str(out), steps, size.batch_size, lr
    train.optimizer, train.warmup_steps, train.seed, train.log_every = "adamw", min(5, steps - 1), seed, 5
    train.resume = "latest" if any((out / "checkpoints").glob("step-*")) else None  # a stopped run continues
    return cfg


def trained(out: Path) -> bool:
    """A stage's model is already in `out` (an earlier run of the demo into the same directory finished it)."""
    return (out / "summary.json").is_file() and (out / "model.safetensors").is_file()


def train_reward_model(size: HHSize, start: Path, data: Path, out: Path, seed: int) -> Path:
    """`dpokit rm` from `start` on `data` (the judge's on the judge split; Best-of-N's on the preference split)."""
    if trained(out):
        return out
    base = train_config(size, start, data, out, size.rm_steps, size.rm_lr, seed)
    reward_train.train_reward_model(RewardModelConfig(model=base.model, data=base.data, train=base.train))
    return out


def train_sft(size: HHSize, start: Path, data: Path, out: Path, seed: int) -> Path:
    """Preferred-FT: the `sft` loss on the chosen replies of `data`, from `start`, no reference."""
    if trained(out):
        return out
    cfg = train_config(size, start, data, out, size.sft_steps, size.lr, seed)
    cfg.loss.name, cfg.reference.mode = "sft", "none"
    loop.train(cfg)
    return out


def train_dpo(size: HHSize, start: Path, data: Path, out: Path, seed: int) -> Path:
    """DPO (`sigmoid`, β = size.beta) from `start` against `start` itself, named as the reference explicitly."""
    if trained(out):
        return out
    cfg = train_config(size, start, data, out, size.dpo_steps, size.lr, seed)
    cfg.loss.name, cfg.loss.beta, cfg.reference.name_or_path = "sigmoid", size.beta, str(start)
    loop.train(cfg)
    return out


def online_config(size: HHSize, start: Path, prompts: Path, reward_model: Path, out: Path, seed: int) -> OnlineConfig:
    """On-policy DPO at offline DPO's budget: `rounds` rounds over the preference split's prompts (each prompt once),
    K = 2 samples per prompt scored by the reward model (2 calls = one labelled pair, as one human comparison labels
    an offline pair), best_worst; offline DPO's optimizer steps split evenly over the rounds; the reference fixed."""
    cfg = OnlineConfig(prompts=str(prompts), reward=RewardConfig(source=str(reward_model)), samples_per_prompt=2,
                       rounds=size.online_rounds, prompts_per_round=size.pref_pairs // size.online_rounds,
                       steps_per_round=size.dpo_steps // size.online_rounds, labels="best_worst", temperature=1.0,
                       max_new_tokens=size.max_new_tokens, sample_batch_size=size.sample_batch_size, chat=True,
                       max_length=size.max_length)
    base = train_config(size, start, prompts, out, cfg.steps_per_round, size.lr, seed)
    cfg.model, cfg.train = base.model, base.train
    cfg.train.progress = True
    cfg.loss.name, cfg.loss.beta = "sigmoid", size.beta
    cfg.reference.name_or_path, cfg.reference.update = str(start), "fixed"
    return cfg


def train_online(size: HHSize, start: Path, prompts: Path, reward_model: Path, out: Path,
                 seed: int) -> list[dict[str, Any]]:
    """`dpokit online` from `start` on the preference split's prompts (`online_config`); returns its rounds. A run
    stopped part-way starts afresh (its rounds were not finished)."""
    if not trained(out):
        shutil.rmtree(out, ignore_errors=True)
        run_online(online_config(size, start, prompts, reward_model, out, seed))
    return [json.loads(line) for line in (out / ROUNDS_FILE).read_text().splitlines()]
