"""On-policy DPO (`dpokit online`): rounds of sample -> label -> train, from the current policy.

    run_online(cfg)
      for round r = 1..rounds:
        sample K completions of the round's prompts from the policy r starts from   lm.sampling.sample
        score each (a reward) or compare each with the first (a judge, K-1 calls)   rewards.sources / eval.judging
        label: best_worst | all_pairs | ranked | sampled, ties and unusable groups  rewards.preferences.label_group
          counted and left out -> round_r.jsonl (dpokit preference JSONL)
        the loss and implicit-reward accuracy on the new pairs, before training     trainer.run.evaluate_policy
        steps_per_round optimizer steps on them -> round_r/ (a `dpokit train` run)  trainer.loop.train
        a line of rounds.jsonl (and the trackers, at step r)

Each round is a `dpokit train` run from the previous round's model, so every loss, LoRA, packing, the reference
modes and checkpoints work as they do there; the optimizer starts afresh each round. The reference is the starting
model (`reference.update: fixed`) or the policy the round starts from (`round`). A stopped run continues with
`--resume`: finished rounds are read back, a round whose data is written reuses it (its samples are not drawn
again) and its training resumes from its last checkpoint, so rounds.jsonl comes out as an unbroken run's. Under
torchrun each process samples and labels its share of the prompts; the main process writes the files.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpokit.core.errors import ConfigError, DataError, DpokitError
from dpokit.core.progress import say
from dpokit.core.sections import SamplingSettings, Tracking
from dpokit.core.settings import save, to_dict, validate
from dpokit.data.prompts import read_prompts
from dpokit.eval.judges import Comparison, Judge
from dpokit.eval.judging import load_judge
from dpokit.lm.sampling import Samples, sample
from dpokit.lm.sequence_kl import sequence_kl
from dpokit.models.sampling import SamplingModel, load_for_sampling
from dpokit.rewards.preferences import label_group, training_texts, usable
from dpokit.rewards.sources import Reward, RewardError
from dpokit.rlhf.online_config import OnlineConfig
from dpokit.trainer import loop
from dpokit.trainer.dist import Parallel, Single
from dpokit.trainer.run import evaluate_policy
from dpokit.trainer.trackers import Trackers, open_trackers

ROUNDS_FILE = "rounds.jsonl"
# a round's own records (its model card too), not its model
RUN_FILES = {"metrics.jsonl", "summary.json", "config.yaml", "round.json", "README.md"}


@dataclass
class OnlineSummary:
    """What `run_online` returns: where the final policy is, and every round's record (as in rounds.jsonl)."""

    output_dir: str
    rounds: list[dict[str, Any]]
    seconds: float


@dataclass
class Labeller:
    """Scores a round's completions: a reward (one call per completion) or a judge (K-1 comparisons per prompt,
    each completion against the prompt's first). `calls` counts what it has been asked so far: the label budget."""

    reward: Reward | None = None
    judge: Judge | None = None
    calls: int = 0

    @property
    def name(self) -> str:
        return self.reward.name if self.reward is not None else self.judge.name

    def scores(self, samples: Samples, k: int) -> list[float]:
        if self.reward is not None:
            self.calls += len(samples.completions)
            return self.reward(samples.prompts, samples.completions)
        comparisons = [Comparison(samples.prompts[i], samples.completions[i], samples.completions[i - i % k])
                       for i in range(len(samples.completions)) if i % k]
        self.calls += len(comparisons)
        judgments = self.judge.judge(comparisons)
        if len(judgments) != len(comparisons):
            raise DataError(f"judge {self.name} returned {len(judgments)} judgments for {len(comparisons)} comparisons")
        wins = iter(judgment.score for judgment in judgments)
        return [0.5 if i % k == 0 else next(wins) for i in range(len(samples.completions))]


def run_online(cfg: OnlineConfig, reward: Reward | None = None, judge: Judge | None = None) -> OnlineSummary:
    """Runs (or, with `train.resume`, continues) the rounds; writes the output directory (module docstring).

    Args:
        cfg: the settings; `model.name_or_path`, `prompts` and `train.output_dir` are required.
        reward: used instead of loading `cfg.reward` (any `fn(prompts, completions) -> scores` wrapped in `Reward`).
        judge: used instead of loading `cfg.judge`.
    """
    start_time = time.perf_counter()
    validate(cfg, require=("model.name_or_path", "prompts", "train.output_dir"))
    out = Path(cfg.train.output_dir)
    _check_output_dir(out, cfg.train.resume)
    prompts = read_prompts(cfg.prompts)
    labeller = _labeller(cfg, reward, judge)  # loaded before any model: its errors come first
    group = Parallel() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else Single()
    try:
        return _rounds(cfg, out, prompts, labeller, group, start_time)
    finally:
        group.close()


def _rounds(cfg: OnlineConfig, out: Path, prompts: list, labeller: Labeller, group: Single,
            start_time: float) -> OnlineSummary:
    """Every round in turn; the main process writes the run's files, the others wait at each round's end."""
    start = load_for_sampling(cfg.model.name_or_path, cfg.chat, gguf_file=cfg.model.gguf_file)
    start.model.eval().requires_grad_(False)
    group.barrier()  # every process has checked the directory before the main one writes to it
    if group.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save(cfg, out / "config.yaml")
    records: list[dict[str, Any]] = []
    finished = sum((out / f"round_{r}" / "round.json").is_file() for r in range(1, cfg.rounds + 1))
    trackers = open_trackers(Tracking.of(cfg.train), out, to_dict(cfg), resume_step=finished) if group.is_main \
        else Trackers()
    try:
        current = cfg.model.name_or_path
        for r in range(1, cfg.rounds + 1):
            record = _round(cfg, r, current, start, prompts, labeller, out, group)
            records.append(record)
            if group.is_main:
                _write_jsonl(out / ROUNDS_FILE, records)
            if r > finished:
                trackers.log({k: v for k, v in record.items() if k != "round"}, step=r)
                if group.is_main:
                    say(_summary_line(record))
            if record["trained"]:
                current = str(out / f"round_{r}")
    finally:
        trackers.finish()
    summary = OnlineSummary(str(out), records, time.perf_counter() - start_time)
    if group.is_main:
        _copy_model(Path(current), out)
        (out / "summary.json").write_text(json.dumps(vars(summary), indent=2))
    group.barrier()
    return summary


def _labeller(cfg: OnlineConfig, reward: Reward | None, judge: Judge | None) -> Labeller:
    if judge is not None or (reward is None and cfg.judged):
        cache = str(Path(cfg.train.output_dir) / "judge_cache.jsonl")
        return Labeller(judge=judge or load_judge(cfg.judge, cache=cache))
    return Labeller(reward=reward or cfg.reward.load())


def _check_output_dir(out: Path, resume: str | None) -> None:
    """A new run needs a directory without an online run in it; --resume needs one."""
    started = (out / "config.yaml").is_file() and any(out.glob("round_*"))
    if started and not resume:
        raise ConfigError(f"{out} holds an online run already: add --resume to continue it, or choose another "
                          "--output-dir")
    if resume and not started:
        raise ConfigError(f"--resume: {out} holds no online run to continue")


def _round(cfg: OnlineConfig, r: int, current: str, start: SamplingModel, prompts: list, labeller: Labeller,
           out: Path, group: Single) -> dict[str, Any]:
    """One round: its record, read back when the round finished before (a resumed run). With several processes
    each samples and labels its share of the prompts, the main one writes the round's data, and all train on it."""
    round_dir, data_path, labelled_path = out / f"round_{r}", out / f"round_{r}.jsonl", out / f"round_{r}.labels.json"
    done = round_dir / "round.json"
    if done.is_file():
        record = json.loads(done.read_text())
        labeller.calls = record["label_calls"]
        return record
    if not labelled_path.is_file():  # else: sampled and labelled before a stop, the same data, not a new draw
        record = _sample_and_label(cfg, r, current, start, prompts, labeller, data_path, group)
        if group.is_main:
            record.update(_before_training(cfg, r, current, data_path, out) if record["pairs"] else {})
            labelled_path.write_text(json.dumps(record, indent=2))
        group.barrier()
    record = json.loads(labelled_path.read_text())
    labeller.calls = record["label_calls"]
    record["trained"] = record["pairs"] > 0
    if record["trained"]:
        t = time.perf_counter()
        resume = "latest" if any((round_dir / "checkpoints").glob("*")) else None
        round_cfg = cfg.round_config(current, _reference(cfg), str(data_path), str(round_dir), resume)
        summary = loop.train(round_cfg, keep_group=group.world > 1)
        record["train_loss"] = summary.final_train.get("loss")
        record["seconds_train"] = time.perf_counter() - t
    if group.is_main:
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(record, indent=2))
    group.barrier()
    return record


def _reference(cfg: OnlineConfig) -> str | None:
    """The reference weights of a round: the starting model (fixed) or None, the round's own starting weights."""
    if cfg.reference.update == "round":
        return None
    return cfg.reference.name_or_path or cfg.model.name_or_path


def _sample_and_label(cfg: OnlineConfig, r: int, current: str, start: SamplingModel, prompts: list,
                      labeller: Labeller, data_path: Path, group: Single) -> dict[str, Any]:
    """Samples this process's share of the round's prompts from the policy at `current`, scores and labels them;
    gathers every process's share; the main process writes round_r.jsonl. Returns the round's figures."""
    batch = _round_prompts(prompts, cfg.prompts_per_round, r)
    mine = _share(cfg, r, current, start, batch[group.rank::group.world], labeller, group.rank)
    shares = group.gather_objects(mine)
    rows = [row for share in shares for row in share["rows"]]
    if group.is_main:
        _write_jsonl(data_path, rows)
    scores = [s for share in shares for s in share["scores"]]
    total = {key: sum(share[key] for share in shares) for key in ("pairs", "tied", "dropped", "calls", "kl_sum")}
    labeller.calls = mine["calls_before"] + total["calls"]
    return {"round": r, "prompts": len(batch), "samples": len(scores), "reward_mean": _mean(scores),
            "reward_best": _mean([b for share in shares for b in share["best"]]),
            "reward_worst": _mean([w for share in shares for w in share["worst"]]),
            "kl": total["kl_sum"] / max(1, len(scores)), "pairs": total["pairs"], "tied_pairs": total["tied"],
            "dropped_prompts": total["dropped"], "label_calls": labeller.calls, "labeller": labeller.name,
            "seconds_sample": max(share["seconds_sample"] for share in shares),
            "seconds_score": max(share["seconds_score"] for share in shares)}


def _share(cfg: OnlineConfig, r: int, current: str, start: SamplingModel, batch: list, labeller: Labeller,
           rank: int) -> dict[str, Any]:
    """One process's part of a round: its prompts sampled K times, scored, labelled (as plain data, to gather)."""
    k, seed, calls_before = cfg.samples_per_prompt, cfg.train.seed, labeller.calls
    share: dict[str, Any] = {"rows": [], "scores": [], "best": [], "worst": [], "pairs": 0, "tied": 0, "dropped": 0,
                             "calls": 0, "kl_sum": 0.0, "calls_before": calls_before, "seconds_sample": 0.0,
                             "seconds_score": 0.0}
    if not batch:
        return share
    policy = start if current == cfg.model.name_or_path else load_for_sampling(current, start.chat)
    policy.model.eval()
    settings = SamplingSettings(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.sample_batch_size)
    t = time.perf_counter()
    samples = sample(policy.model, policy.tokenizer, batch, settings, seed=seed * 1_000_003 + r + rank * 7_919,
                     num_samples=k, progress=cfg.train.progress and rank == 0, chat=policy.chat)
    if policy is not start:
        share["kl_sum"] = float(sequence_kl(policy.model, start.model, samples.prompt_ids, samples.completion_ids,
                                            cfg.sample_batch_size).sum())
    share["seconds_sample"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        scores = labeller.scores(samples, k)
    except RewardError as err:
        raise RewardError(f"round {r}: {err}; the rounds before it are kept: fix the reward, then continue with "
                          "--resume") from None
    except DataError as err:
        raise DataError(f"round {r}: {err}") from None
    except DpokitError:
        raise
    except Exception as err:  # the user's reward function or judge: its own error, with where it happened
        raise DataError(f"round {r}: {labeller.name} failed while labelling: {type(err).__name__}: {err}") from err
    share["seconds_score"], share["calls"], share["scores"] = time.perf_counter() - t, labeller.calls - calls_before, \
        scores
    rng = random.Random(seed * 1_000_003 + r + rank * 7_919)  # process 0: as in a run of one process
    for i, prompt in enumerate(batch):
        texts, values = samples.completions[i * k:(i + 1) * k], scores[i * k:(i + 1) * k]
        share["best"].append(max(values))
        share["worst"].append(min(values))
        if not usable(texts):
            share["dropped"] += 1
            continue
        prompt_text, texts = training_texts(policy.tokenizer, policy.chat, prompt, texts)
        labelled = label_group(prompt_text, texts, values, cfg.labels, rng)
        share["rows"] += labelled.records
        share["tied"] += labelled.tied
        share["pairs"] += labelled.pairs
    return share


def _before_training(cfg: OnlineConfig, r: int, current: str, data_path: Path, out: Path) -> dict[str, float]:
    """The loss and implicit-reward accuracy of the policy `current` on the round's new pairs, before it trains."""
    t = time.perf_counter()
    round_cfg = cfg.round_config(current, _reference(cfg), str(data_path), str(out / f"round_{r}"))
    round_cfg.train.shuffle, round_cfg.train.progress = False, False
    metrics = evaluate_policy(round_cfg, say=lambda _: None)
    found = {"loss_before": metrics["loss"], "seconds_eval": time.perf_counter() - t}
    if "rewards/accuracies" in metrics:
        found["accuracy_before"] = metrics["rewards/accuracies"]
    return found


def _round_prompts(prompts: list, per_round: int | None, r: int) -> list:
    """Round r's prompts: all of them, or the next `per_round` in file order, wrapping around."""
    if per_round is None:
        return list(prompts)
    first = (r - 1) * per_round
    return [prompts[(first + i) % len(prompts)] for i in range(per_round)]


def _copy_model(source: Path, out: Path) -> None:
    """The final policy's files into the output directory itself, so `out` loads as a model."""
    if source == out or not source.is_dir():
        return
    for path in source.iterdir():
        if path.is_file() and path.name not in RUN_FILES:
            shutil.copy2(path, out / path.name)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _summary_line(record: dict[str, Any]) -> str:
    before = f", loss before {record['loss_before']:.4f}" if "loss_before" in record else ""
    return (f"round {record['round']}: reward {record['reward_mean']:+.4f} (best {record['reward_best']:+.4f}, worst "
            f"{record['reward_worst']:+.4f}), KL {record['kl']:.3f}, {record['pairs']} pairs ({record['tied_pairs']} "
            f"tied, {record['dropped_prompts']} prompts dropped){before}; {record['label_calls']} label calls")
