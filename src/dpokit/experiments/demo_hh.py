"""`dpokit demo --task hh`: the DPO paper's single-turn dialogue experiment (§6.2, Fig. 3) on a real model, offline.

    Anthropic HH pairs (../shared/data) -- seeded split --> preference-training | judge-training | held-out
    πref = SmolLM2-135M-Instruct (GGUF from PyPI, saved once as safetensors)
    judge-training -> dpokit rm -> the proxy judge; its agreement with the held-out human labels (§6.4)
    preference-training -> DPO (from πref, against πref), Preferred-FT (`sft`), dpokit rm -> Best-of-N's reward
    held-out -> implicit-reward accuracy before/after, win rate vs the chosen responses across temperatures
                (πref, Preferred-FT, DPO, Best-of-N), perplexity before/after -> hh_report.md, winrate.png

The paper's judge is GPT-4; offline, the default judge is a reward model trained on a split no policy sees, and the
report says so. With `judge_source` set (e.g. `openai:gpt-4o-mini` and OPENAI_BASE_URL), an LLM judges instead.
"""

from __future__ import annotations

import gzip
import json
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dpokit.core.errors import ConfigError, DataError
from dpokit.core.sections import ModelConfig, SamplingSettings
from dpokit.data.chat import hh_messages
from dpokit.eval.judges import Comparison, JudgeConfig
from dpokit.eval.judging import load_judge
from dpokit.eval.perplexity import Document, HeldOut, ModelSpec, PerplexitySettings, score_models
from dpokit.eval.winrate import judge_agreement, judge_cell, run_winrate
from dpokit.eval.winrate_config import WinrateConfig, read_prompt_set
from dpokit.experiments.demo import torch_threads
from dpokit.experiments.demo_hh_report import write_report
from dpokit.models.loading import load_model, load_tokenizer
from dpokit.models.sampling import load_for_sampling
from dpokit.rewards.sources import load_reward
from dpokit.rlhf import reward_train
from dpokit.rlhf.bon import best_of_n
from dpokit.rlhf.reward_config import RewardModelConfig
from dpokit.trainer import loop
from dpokit.trainer.config import Config
from dpokit.trainer.launch import deepspeed_unprobed
from dpokit.trainer.run import evaluate_policy

HH_FILE = "hh_harmless_test.jsonl.gz"
REF_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class HHSize:
    """How big each stage is. FULL was sized for about an hour on 2 CPU cores and measured ~93 min (README: training
    53 min, evaluation 40 min); QUICK runs in CI (1 min 45 s on idle cores)."""

    held_out: int = 64  # pairs held out: implicit-reward accuracy, perplexity; the first `winrate_prompts` of them
    winrate_prompts: int = 32  # held-out prompts each method answers at each temperature (and Best-of-N)
    judge_pairs: int = 640  # the judge reward model's training pairs
    pref_pairs: int = 640  # preference-training pairs (DPO, Preferred-FT, Best-of-N's reward model)
    agreement_pairs: int = 256  # pairs the judge is checked on: the held-out ones, then pairs no split uses
    max_chars: int = 1000  # pairs whose chosen dialogue is longer are left out (sequence length on CPU)
    max_length: int = 320  # tokens per sequence in training
    batch_size: int = 8
    dpo_steps: int = 60
    sft_steps: int = 60
    rm_steps: int = 60  # each reward model (judge, Best-of-N's)
    lr: float = 3e-6  # DPO and Preferred-FT (AdamW, 5 warmup steps): 2e-5 garbles SmolLM2's answers within steps
    rm_lr: float = 2e-5
    beta: float = 0.1
    temperatures: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    max_new_tokens: int = 64
    bon_n: int = 4
    perplexity_docs: int = 64


FULL = HHSize()
QUICK = replace(FULL, held_out=4, winrate_prompts=4, judge_pairs=8, pref_pairs=8, agreement_pairs=8, max_chars=400,
                max_length=128, batch_size=2, dpo_steps=2, sft_steps=2, rm_steps=2, temperatures=(0.0, 1.0),
                max_new_tokens=8, bon_n=2, perplexity_docs=4)
SIZES = {"full": FULL, "quick": QUICK}


@dataclass
class Splits:
    """The seeded split of the HH pairs, as conversational records ({prompt, chosen, rejected} messages)."""

    pref: list[dict]
    judge: list[dict]
    held_out: list[dict]
    agreement: list[dict]  # the held-out pairs, then pairs no split uses: the judge's check against human labels
    usable: int  # pairs that passed the filters
    total: int  # pairs in the file


def find_hh_data(path: str | None) -> Path:
    """The HH file: `path`, or ../shared/data/ beside the working directory or beside the dpokit checkout."""
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"--data: no such file: {path}")
        return Path(path)
    here = Path(__file__).resolve()
    for base in (Path.cwd(), Path.cwd().parent, *here.parents):
        candidate = base / "shared" / "data" / HH_FILE
        if candidate.is_file():
            return candidate
    raise ConfigError(f"the HH data ({HH_FILE}) is not in ../shared/data: pass --data PATH (Anthropic HH JSONL with "
                      "chosen/rejected dialogues)")


def hh_pair(row: dict, where: str) -> dict | None:
    """A conversational record from an HH row, or None when the two dialogues do not form a clean pair (they differ
    before the last reply, a reply is empty, or both replies are the same)."""
    try:
        chosen, rejected = hh_messages(row["chosen"]), hh_messages(row["rejected"])
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"not an HH record ({err})", source=where) from None
    if not chosen or chosen[:-1] != rejected[:-1] or chosen[-1]["role"] != "assistant" or len(chosen) < 2:
        return None
    if not chosen[-1]["content"] or not rejected[-1]["content"] or chosen[-1] == rejected[-1]:
        return None
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def split_hh(path: Path, size: HHSize, seed: int) -> Splits:
    """Reads, filters and splits the pairs: held-out first, then the judge's, then the preference-training ones."""
    records: list[dict] = []
    total = 0
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            total += 1
            row = json.loads(line)
            pair = hh_pair(row, f"{path}:{line_no}")
            if pair is not None and len(row["chosen"]) <= size.max_chars:
                records.append(pair)
    random.Random(seed).shuffle(records)
    need = size.held_out + size.judge_pairs + size.pref_pairs
    if len(records) < need:
        raise DataError(f"{len(records)} usable pairs, but the split needs {need}", source=str(path))
    held, judge = records[:size.held_out], records[size.held_out:size.held_out + size.judge_pairs]
    pref = records[size.held_out + size.judge_pairs:need]
    agreement = (held + records[need:])[:size.agreement_pairs]
    return Splits(pref, judge, held, agreement, len(records), total)


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@dataclass
class Stage:
    name: str
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)


class Timer:
    """Times the demo's stages for the report."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []

    def run(self, name: str, fn, *args, reuses: Path | None = None, **kwargs):
        """Runs `fn(*args, **kwargs)` as the stage `name`; `reuses`: the stage's model directory, which a finished
        earlier run may have left (the stage is then marked reused, its time that run's)."""
        if reuses is not None and trained(reuses):
            name += " (reused: trained by an earlier run into this directory)"
        tqdm.write(f"[hh demo] {name} ...")
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.stages.append(Stage(name, time.perf_counter() - start))
        tqdm.write(f"[hh demo] {name}: {self.stages[-1].seconds:.0f} s")
        return result


def save_reference(out: Path) -> Path:
    """πref once as plain safetensors (the GGUF file is unpacked a single time, not by every stage)."""

    path = out / "models" / "ref"
    if (path / "model.safetensors").is_file():
        return path
    model = load_model(REF_MODEL, ModelConfig())
    with deepspeed_unprobed():
        model.save_pretrained(path)
    load_tokenizer(REF_MODEL).save_pretrained(path)
    return path


def train_config(size: HHSize, model: Path, data: Path, out: Path, steps: int, lr: float, seed: int):
    """The shared training settings of every stage (conversational data, AdamW, short warmup, no eval)."""

    cfg = Config()
    cfg.model.name_or_path, cfg.data.path, cfg.data.format = str(model), str(data), "conversational"
    cfg.data.max_length, cfg.data.max_prompt_length = size.max_length, size.max_length * 2 // 3
    train = cfg.train
    train.output_dir, train.max_steps, train.batch_size, train.lr = str(out), steps, size.batch_size, lr
    train.optimizer, train.warmup_steps, train.seed, train.log_every = "adamw", min(5, steps - 1), seed, 5
    return cfg


def trained(out: Path) -> bool:
    """A stage's model is already in `out` (an earlier run of the demo into the same directory finished it)."""
    return (out / "summary.json").is_file() and (out / "model.safetensors").is_file()


def train_reward_model(size: HHSize, ref: Path, data: Path, out: Path, seed: int) -> Path:
    if trained(out):
        return out

    base = train_config(size, ref, data, out, size.rm_steps, size.rm_lr, seed)
    cfg = RewardModelConfig(model=base.model, data=base.data, train=base.train)
    reward_train.train_reward_model(cfg)
    return out


def train_policy(size: HHSize, ref: Path, data: Path, out: Path, seed: int, loss: str) -> Path:
    """DPO (`sigmoid`, against πref) or Preferred-FT (`sft`, no reference), from πref."""
    if trained(out):
        return out
    cfg = train_config(size, ref, data, out, size.sft_steps if loss == "sft" else size.dpo_steps, size.lr, seed)
    cfg.loss.name, cfg.loss.beta = loss, size.beta
    if loss == "sft":
        cfg.reference.mode = "none"
    loop.train(cfg)
    return out


def implicit_accuracy(size: HHSize, policy: Path, ref: Path, data: Path) -> dict[str, float]:
    """Held-out preference metrics of `policy` against πref: the implicit reward β·log πθ/πref's accuracy (a tie,
    as for πref against itself, counts as no win) and margin."""
    cfg = train_config(size, policy, data, policy / "eval", 1, 1e-6, 0)
    cfg.reference.name_or_path, cfg.loss.beta = str(ref), size.beta
    cfg.train.shuffle, cfg.train.progress = False, False
    metrics = evaluate_policy(cfg)
    return {"accuracy": metrics["rewards/accuracies"], "margin": metrics["rewards/margins"]}


def bon_cells(size: HHSize, ref: Path, reward_dir: Path, held: Path, judge, seed: int):
    """Best-of-N at each temperature: N samples of πref per held-out prompt, the best by the reward model trained on
    the preference split, judged against the chosen response like the trained policies."""

    reward = load_reward(str(reward_dir))
    loaded = load_for_sampling(str(ref), chat=True, name="πref")
    prompts = read_prompt_set(str(held), "chosen", chat=True, limit=size.winrate_prompts)
    cells, rows = [], []
    for t in size.temperatures:
        settings = SamplingSettings(size.max_new_tokens, t, 1.0, 16)
        result = best_of_n(loaded.model, loaded.tokenizer, prompts.prompts, reward, size.bon_n, settings, seed,
                           chat=True, progress=True)
        comparisons = [(i, 0, Comparison(p, texts[best], b)) for i, (p, texts, best, b) in
                       enumerate(zip(prompts.prompts, result.completions, result.best, prompts.baselines,
                                     strict=True))]
        cell, judged = judge_cell(judge, f"Best-of-{size.bon_n}", "held-out", t, comparisons)
        cells.append(cell)
        rows += judged
    return cells, rows


def perplexities(size: HHSize, models: dict[str, Path], held: list[dict]) -> dict[str, dict[str, float]]:
    """Per-token NLL and perplexity of each model on the held-out chosen dialogues (rendered by the chat
    template): the capability check, before (πref) and after (each trained policy)."""

    dialogues = [Document(r["prompt"] + r["chosen"], "held_out.jsonl", i + 1, "chosen")
                 for i, r in enumerate(held[:size.perplexity_docs])]
    report = score_models({name: ModelSpec(str(path)) for name, path in models.items()},
                          [HeldOut("held_out.jsonl", "chosen", dialogues)], settings=PerplexitySettings(512, 8))
    return {name: {key: r[key] for key in ("nll", "perplexity", "tokens")}
            for name, r in report["sources"][0]["results"].items()}


def run_hh_demo(output_dir: str, size: str = "full", seed: int = 0, data: str | None = None,
                judge_source: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """Runs the whole experiment (module docstring) and writes hh_report.md, hh_results.json and the win-rate files.

    Args:
        judge_source: None: the reward model trained on the judge split; else any `judge.source` (openai:MODEL...).
        threads: torch CPU threads while it runs (restored after); None keeps torch's setting.
    """

    with torch_threads(threads):
        return _run_hh_demo(output_dir, size, seed, data, judge_source)


def _run_hh_demo(output_dir: str, size: str, seed: int, data: str | None, judge_source: str | None) -> dict[str, Any]:

    settings, out, timer, start = SIZES[size], Path(output_dir), Timer(), time.perf_counter()
    splits = split_hh(find_hh_data(data), settings, seed)
    files = {name: write_jsonl(getattr(splits, name), out / "data" / f"{name}.jsonl")
             for name in ("pref", "judge", "held_out", "agreement")}
    ref = timer.run("πref: SmolLM2-135M-Instruct from GGUF to safetensors", save_reference, out)
    models = out / "models"
    judge_rm = timer.run("judge: dpokit rm on the judge split", train_reward_model, settings, ref, files["judge"],
                         models / "judge_rm", seed, reuses=models / "judge_rm")
    judge = _judge(judge_source, judge_rm, out)
    agreement = timer.run("judge agreement with held-out human labels", _agreement, judge, files["agreement"],
                          settings)
    bon_rm = timer.run("Best-of-N's reward model: dpokit rm on the preference split", train_reward_model, settings,
                       ref, files["pref"], models / "rm", seed, reuses=models / "rm")
    sft = timer.run("Preferred-FT: dpokit sft on the preference split", train_policy, settings, ref, files["pref"],
                    models / "sft", seed, "sft", reuses=models / "sft")
    dpo = timer.run("DPO: dpokit train on the preference split", train_policy, settings, ref, files["pref"],
                    models / "dpo", seed, "sigmoid", reuses=models / "dpo")
    policies = {"πref (SmolLM2-135M-Instruct)": ref, "Preferred-FT": sft, "DPO": dpo}
    accuracy = timer.run("held-out implicit-reward accuracy", lambda: {
        name: implicit_accuracy(settings, path, ref, files["held_out"]) for name, path in policies.items()})
    result = timer.run("win rates of πref, Preferred-FT and DPO", _winrates, settings, policies, files["held_out"],
                       judge, out, seed)
    cells, rows = timer.run(f"Best-of-{settings.bon_n} win rates", bon_cells, settings, ref, bon_rm,
                            files["held_out"], judge, seed)
    result.cells += cells
    result.comparisons += rows
    result.agreement = agreement
    ppl = timer.run("held-out perplexity", perplexities, settings, policies, splits.held_out)
    summary = {"size": size, "seed": seed, "settings": settings, "splits": splits, "accuracy": accuracy,
               "perplexity": ppl, "stages": timer.stages, "seconds": time.perf_counter() - start,
               "judge_is_proxy": judge_source is None}
    return write_report(result, summary, out)


def _judge(source: str | None, judge_rm: Path, out: Path):

    return load_judge(JudgeConfig(source=source or str(judge_rm)), cache=str(out / "judge_cache.jsonl"))


def _agreement(judge, held: Path, size: HHSize):

    return judge_agreement(judge, str(held), size.agreement_pairs)


def _winrates(size: HHSize, policies: dict[str, Path], held: Path, judge, out: Path, seed: int):

    cfg = WinrateConfig(models=[f"{name}={path}" for name, path in policies.items()],
                        prompts=[f"held-out={held}"], baseline="chosen", temperatures=list(size.temperatures),
                        max_new_tokens=size.max_new_tokens, limit=size.winrate_prompts, seed=seed, output_dir=str(out),
                        chat=True)
    return run_winrate(cfg, judge, say=tqdm.write)
