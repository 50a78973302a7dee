"""`dpokit demo`: the DPO paper's controlled sentiment experiment (§6.1, Fig. 2 left), offline, in a few minutes.

    corpus of reviews (demo_task) -> BPE tokenizer + random tiny Llama -> SFT with dpokit (`sft` loss) = πref
    -> run_frontier: πref's samples scored by VADER -> pairs / ranked lists -> DPO (β sweep), Unlikelihood (α),
       Preferred-FT, Plackett–Luce, each evaluated on held-out prompts every few steps; a reward model learned from
       the pairs -> PPO (learned RM) and PPO-GT (VADER), evaluated every few iterations, and Best-of-N by the
       learned RM -> plots + report

Everything is built here: the text, the tokenizer, the model. Only the `vaderSentiment` package (its lexicon ships
inside it) is needed besides dpokit's own dependencies.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from dpokit.experiments.demo_task import corpus, split_prefix
from dpokit.experiments.frontier import FrontierResult, run_frontier
from dpokit.experiments.frontier_config import FrontierConfig, MethodSpec, online_methods, paper_methods, rlhf_methods
from dpokit.experiments.report import console_summary, write_outputs
from dpokit.models.tiny import tiny_llama, train_bpe_tokenizer
from dpokit.rewards.sources import load_reward
from dpokit.trainer.config import Config
from dpokit.trainer.launch import deepspeed_unprobed
from dpokit.trainer.loop import train


@dataclass(frozen=True)
class DemoSize:
    """How big each stage is. `FULL` takes ~5–8 minutes on 2 CPU cores (budget: 10); `QUICK` about two. PPO runs one
    KL coefficient (β = 0.05), not the paper's sweep: a second β would not fit the budget."""

    reviews: int = 16000  # SFT corpus: (prefix, continuation) examples, one per review
    vocab_size: int = 512  # BPE vocabulary; the grammar's ~200 words each become one token
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    sft_steps: int = 250
    sft_batch: int = 64
    sft_lr: float = 2e-3  # AdamW, warmup then cosine: a tiny model from scratch wants a large lr
    train_prompts: int = 512  # -> 4 samples each -> up to 6 pairs each
    eval_prompts: int = 384  # held out; 1 sample each per evaluation
    max_new_tokens: int = 24
    method_steps: int = 200
    batch_size: int = 16  # pairs per step (2 * 16 sequences for every method, see frontier.method_config)
    lr: float = 2e-4  # AdamW, constant after 10 warmup steps, the same for every method
    eval_every: int = 25
    rm_steps: int = 300  # the learned reward model (Bradley–Terry on the pairs), AdamW, batch of `batch_size` pairs
    rm_lr: float = 2e-4
    ppo_iterations: int = 48  # PPO and PPO-GT: rollout of `ppo_rollout` responses, 4 epochs of minibatches of 16
    ppo_rollout: int = 64
    ppo_lr: float = 1e-4
    ppo_eval_every: int = 8
    online_rounds: int = 4  # online DPO: the training prompts split over 4 rounds, method_steps / 4 steps each
    methods: tuple[MethodSpec, ...] = tuple(paper_methods() + rlhf_methods(ppo_betas=(0.05,), ns=(4, 16, 64))
                                            + online_methods())


FULL = DemoSize()
QUICK = replace(FULL, reviews=6000, sft_steps=120, train_prompts=192, eval_prompts=128, method_steps=80,
                eval_every=20, rm_steps=120, ppo_iterations=16, ppo_eval_every=4,
                methods=(MethodSpec("DPO", "sigmoid", beta=0.1), MethodSpec("DPO", "sigmoid", beta=1.0),
                         MethodSpec("Unlikelihood", "unlikelihood", alpha=1.0), MethodSpec("Preferred-FT", "sft"),
                         MethodSpec("Plackett-Luce", "plackett_luce", beta=0.1),
                         *rlhf_methods(ppo_betas=(0.05,), ns=(4, 16, 64)), *online_methods()))
TINY = replace(FULL, reviews=600, vocab_size=400, hidden=32, layers=1, heads=2, sft_steps=40, sft_batch=16,
               train_prompts=16, eval_prompts=6, max_new_tokens=8, method_steps=4, batch_size=4, lr=5e-3, eval_every=2,
               rm_steps=6, ppo_iterations=4, ppo_rollout=8, ppo_lr=5e-3, ppo_eval_every=2,
               methods=(*QUICK.methods[1:5], *rlhf_methods(ppo_betas=(0.1,), ns=(2, 4)), *online_methods()))  # seconds
SIZES = {"full": FULL, "quick": QUICK, "tiny": TINY}

TASK = """\
**Positive movie-review continuations, scored by VADER** (the paper's IMDb + sentiment-classifier task, rebuilt
offline). The demo writes its own corpus of short reviews from a small probabilistic grammar (`dpokit/demo_task.py`):
each review has a hidden tone that decides how often its sentiment slots take a positive or a negative word, and
sentences mix plain judgments ("the acting was very good."), negation ("the plot was not bad."), contrast ("the music
was lovely, but the story was dull."), opinions ("i hated it."), exclamations and neutral filler. A prompt is a
review's first 2–5 words; the ground-truth reward is VADER's compound score (in [-1, 1]) of the *completion* alone,
a rule-based function of the text (lexicon of human-rated words, intensifiers, negation, "but") that the model never
sees. The SFT model πref is a randomly initialised tiny Llama trained by dpokit (`sft` loss) on the corpus.

Limits: the vocabulary (~200 words) and grammar are tiny, so the model learns them in a minute and a positive
completion is a few word choices away from a negative one; real reviews are far more varied, and the paper's policy
is GPT-2 large. VADER is a lexicon, not a learned classifier, so it can be gamed by stacking positive words, which a
policy optimising it may learn to do. The absolute numbers say nothing about real models; the shape of the
comparison is the point."""


def run_demo(output_dir: str, size: str = "full", seed: int = 0, threads: int | None = 1) -> FrontierResult:
    """Builds the task and πref, runs the frontier, writes the report, prints where it is and the table.

    Args:
        output_dir: everything goes here (created).
        size: "full", "quick" or "tiny" (`SIZES`).
        seed: seeds the corpus, the weights and every draw; the same seed gives the same report numbers.
        threads: torch CPU threads while the demo runs (restored after); None keeps torch's setting. One by
            default: these models are so small that a second thread gains at most ~1.5x on an idle machine, and
            each op's thread barrier stalls many-fold when another process competes for the cores.
    """
    with torch_threads(threads):
        return _run_demo(output_dir, SIZES[size], size, seed)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's CPU thread count set to `count` for the block (None: left as it is), then restored."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_demo(output_dir: str, settings: DemoSize, size: str, seed: int) -> FrontierResult:
    start = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    reward = load_reward("vader")  # fails now, not after the SFT, if vaderSentiment is missing
    tqdm.write(f"dpokit demo ({size}): building the task and the SFT model in {out}")
    sft = build_sft_model(out, settings, seed)
    train_prompts, eval_prompts = demo_prompts(settings, seed)
    run: dict[str, object] = {
        "train.max_steps": settings.method_steps, "train.batch_size": settings.batch_size, "train.lr": settings.lr,
        "train.optimizer": "adamw", "train.warmup_steps": 10, "train.eval_every": settings.eval_every,
        "train.log_every": 5, "data.max_length": 64,
    }
    rm = {"train.max_steps": settings.rm_steps, "train.lr": settings.rm_lr, "train.batch_size": settings.batch_size}
    ppo = {"iterations": settings.ppo_iterations, "rollout_batch_size": settings.ppo_rollout, "lr": settings.ppo_lr,
           "minibatch_size": min(16, settings.ppo_rollout), "log_every": 5}
    cfg = FrontierConfig(model=str(sft.path), train_prompts=train_prompts, eval_prompts=eval_prompts,
                         output_dir=str(out), methods=list(settings.methods), run=run, rm=rm, ppo=ppo,
                         online={"rounds": settings.online_rounds},
                         ppo_eval_every=settings.ppo_eval_every, max_new_tokens=settings.max_new_tokens, seed=seed)
    result = run_frontier(cfg, reward)
    result.seconds = time.perf_counter() - start
    paths = write_outputs(result, out, TASK + "\n\n" + details(settings, sft, train_prompts, eval_prompts))
    print(console_summary(result, paths))
    return result


class SftModel(NamedTuple):
    path: Path
    vocab: int  # tokenizer size
    loss: float  # final training loss, nats per token
    seconds: float


def details(settings: DemoSize, sft: SftModel, train_prompts: list[str], eval_prompts: list[str]) -> str:
    """The run-specific part of the task description: model, SFT, prompts."""
    seen = set(train_prompts)
    repeats = sum(p in seen for p in eval_prompts)
    return (
        f"This run: πref is a Llama with hidden size {settings.hidden}, {settings.layers} layers, {settings.heads} "
        f"heads and a {sft.vocab}-token BPE vocabulary, trained from random weights by dpokit's `sft` loss for "
        f"{settings.sft_steps} steps of {settings.sft_batch} (prefix, continuation) examples drawn from "
        f"{settings.reviews:,} generated reviews (AdamW, lr {settings.sft_lr:g}, 20 warmup steps, cosine decay), "
        f"ending at {sft.loss:.2f} nats per token after {sft.seconds:.0f} s. Prompts come from other generated "
        f"reviews: {len(train_prompts)} for preference data, {len(eval_prompts)} held out. Because prefixes of 2–5 "
        f"words from a small grammar recur, {repeats} of the held-out prompts ({repeats / len(eval_prompts):.0%}) "
        "also occur verbatim among the training prompts: the evaluation measures the policy on the prompt "
        "distribution, not on unseen prompts."
    )


def build_sft_model(out: Path, settings: DemoSize, seed: int) -> SftModel:
    """Corpus -> tokenizer + random Llama (out/base) -> dpokit SFT on (prefix, continuation) -> out/sft."""

    reviews = corpus(settings.reviews, seed)
    tokenizer = train_bpe_tokenizer([r.text for r in reviews], vocab_size=settings.vocab_size)
    tokenizer.chat_template = None  # a plain LM of review text: prompts are completed as text, not chat turns
    base = out / "base"
    model = tiny_llama(tokenizer, hidden_size=settings.hidden, num_layers=settings.layers, num_heads=settings.heads,
                       max_position_embeddings=128, seed=seed)
    with deepspeed_unprobed():  # a plain save must not load DeepSpeed (see trainer/launch.py)
        model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    data = out / "data" / "sft.jsonl"
    write_sft_data([r.text for r in reviews], data, seed)
    cfg = Config()
    cfg.model.name_or_path, cfg.data.path, cfg.data.format = str(base), str(data), "explicit"
    cfg.loss.name, cfg.reference.mode = "sft", "none"
    cfg.data.max_length = 64
    train_cfg = cfg.train
    train_cfg.output_dir, train_cfg.seed, train_cfg.max_steps = str(out / "sft"), seed, settings.sft_steps
    train_cfg.batch_size, train_cfg.lr, train_cfg.optimizer = settings.sft_batch, settings.sft_lr, "adamw"
    train_cfg.warmup_steps, train_cfg.schedule, train_cfg.log_every = 20, "cosine", 10
    (out / "sft" / "metrics.jsonl").unlink(missing_ok=True)
    tqdm.write(f"SFT: {settings.sft_steps} steps on {len(reviews):,} review continuations")
    summary = train(cfg)
    loss = summary.final_train["loss"]
    tqdm.write(f"SFT done in {summary.seconds:.0f} s, loss {loss:.3f} per token")
    return SftModel(out / "sft", len(tokenizer), loss, summary.seconds)


def write_sft_data(texts: list[str], path: Path, seed: int) -> None:
    """Explicit-format records whose `chosen` is the review's continuation after a 2–5 word prefix.

    `dpokit sft` reads preference files and trains on the chosen side only; `rejected` (the previous review) is
    there because the format requires a pair, and is never trained on.
    """
    rng = random.Random(seed + 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, text in enumerate(texts):
            prompt, chosen = split_prefix(text, rng)
            rejected = " " + texts[i - 1]
            if rejected == chosen:
                rejected += " ."
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")


def demo_prompts(settings: DemoSize, seed: int) -> tuple[list[str], list[str]]:
    """Review prefixes from fresh reviews (a different seed from the SFT corpus): training and held-out prompts."""
    rng = random.Random(seed + 20)
    reviews = corpus(settings.train_prompts + settings.eval_prompts, seed + 1)
    prompts = [split_prefix(r.text, rng)[0] for r in reviews]
    return prompts[:settings.train_prompts], prompts[settings.train_prompts:]
