"""What each CLI command does once its arguments are parsed: build the config, run, print the outcome. Like `api`,
each command imports the layers it runs inside itself: the CLI starts (and answers `--help`) without loading them."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dpokit import api
from dpokit.core import settings as config_io
from dpokit.core.errors import ConfigError
from dpokit.trainer.config import Config, build_config

if TYPE_CHECKING:
    from dpokit.eval.eval_config import EvalConfig


def train(command: str, yaml_path: str | None, flags: dict, overrides: list[str]) -> int:
    base = Config()
    if command == "sft":  # Preferred-FT: NLL on the chosen responses, no reference model
        base.loss.name, base.reference.mode = "sft", "none"
    cfg = build_config(yaml_path, flags, config_io.parse_overrides(overrides), base=base)
    summary = api.sft(cfg) if command == "sft" else api.train(cfg)
    if summary.replica_digests is not None and os.environ.get("RANK", "0") != "0":
        return 0  # one report per job, from the main process
    print(f"\n{command} finished: {summary.steps} steps on {summary.train_pairs:,} examples "
          f"in {summary.seconds:.0f} s; outputs in {summary.output_dir}")
    _print_metrics("final train step", summary.final_train)
    if summary.final_eval:
        _print_metrics("held-out eval", summary.final_eval)
    return 0


def evaluate(yaml_path: str | None, flags: dict, overrides: list[str]) -> int:
    """Preference metrics (data.path) and/or held-out perplexity before and after (perplexity.sources); JSON out."""
    from dpokit.eval.eval_config import EvalConfig

    cfg = config_io.load(EvalConfig(), yaml_path, flags, config_io.parse_overrides(overrides))
    config_io.validate(cfg, require=("model.name_or_path",))
    held_out = _held_out(cfg)  # read first: a bad text source fails before any model loads
    result: dict = api.evaluate(cfg.as_train_config()) if cfg.data.path else {}
    if held_out:
        result["perplexity"] = _perplexity(cfg, held_out)
    _emit(json.dumps(result, indent=2), cfg.output or None)
    return 0


def _held_out(cfg: EvalConfig) -> list:
    from dpokit.eval.perplexity import read_held_out

    p = cfg.perplexity
    return [read_held_out(path, p.field, p.limit, p.split) for path in p.sources]


def _perplexity(cfg: EvalConfig, held_out: list) -> dict:
    """The reference (before, when there is one) and the policy (after) on the held-out text, with the policy's
    tokenizer for both, as in training; the table goes to stderr, the figures into the JSON."""
    import sys

    from dpokit.eval.perplexity import ModelSpec, table
    from dpokit.models.loading import load_tokenizer

    m = cfg.model
    tokenizer = load_tokenizer(m.tokenizer or m.name_or_path, m.trust_remote_code, None if m.tokenizer else m.gguf_file)
    models = {"reference": ModelSpec(cfg.reference.name_or_path, settings=m)} if cfg.reference.name_or_path else {}
    models["policy"] = ModelSpec(m.name_or_path, m.gguf_file, m)
    report = api.perplexity(models, held_out, tokenizer=tokenizer, max_length=cfg.data.max_length,
                            batch_size=cfg.batch_size, progress=True)
    print(table(report), file=sys.stderr)
    return report


def demo(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    size = "quick" if args.quick else "full"
    if args.size and args.quick and args.size != "quick":
        raise ConfigError(f"--quick and --size {args.size} contradict each other: give one")
    if args.task == "hh":
        size = args.size or size
        from dpokit.experiments.demo_hh import run_hh_demo

        run_hh_demo(args.output_dir or "dpokit-demo-hh", size, args.seed, args.data, args.judge, args.threads)
        return 0
    if args.data or args.judge or args.size:
        raise ConfigError("--data, --judge and --size belong to --task hh")
    from dpokit.experiments.demo import run_demo

    run_demo(args.output_dir or "dpokit-demo", size=size, seed=args.seed, threads=args.threads or 1)
    return 0


def generate(args: argparse.Namespace) -> int:
    from dpokit.data.prompts import read_prompts

    prompts = [*(args.prompt or []), *(read_prompts(args.prompts_file) if args.prompts_file else [])]
    if not prompts:
        raise ConfigError("nothing to complete: give --prompt TEXT (repeatable) or --prompts-file FILE")
    rows = api.generate(args.model, prompts, num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                        chat=False if args.no_chat else None, progress=True)
    _emit("\n".join(json.dumps(row, ensure_ascii=False) for row in rows), args.output)
    return 0


def _emit(text: str, output: str | None) -> None:
    """Prints `text`, and writes it to `output` too when given."""
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text + "\n")
    print(text)


def frontier(config_path: str, output_dir: str | None) -> int:
    from dpokit.experiments.frontier import run_frontier
    from dpokit.experiments.frontier_config import load_frontier_config
    from dpokit.experiments.report import console_summary, write_outputs
    from dpokit.rewards.sources import RewardConfig

    file = load_frontier_config(config_path, output_dir)
    cfg = file.experiment()  # reads the prompts: a missing file fails before the reward loads
    reward = RewardConfig(file.reward, file.reward_label, file.reward_text).load()
    result = run_frontier(cfg, reward)
    task = (f"Your experiment (`{config_path}`): {len(cfg.train_prompts)} training prompts, {len(cfg.eval_prompts)} "
            f"held-out prompts, reward `{reward.name}`, reference model `{cfg.model}`.")
    print(console_summary(result, write_outputs(result, Path(cfg.output_dir), task)))
    return 0


def bon(yaml_path: str | None, flags: dict, overrides: list[str]) -> int:
    """Best-of-N: the JSONL goes to `output` (or stdout, with the summary on stderr); the summary is printed."""
    import sys

    from dpokit.rlhf.bon import summary_text
    from dpokit.rlhf.bon_config import BonConfig

    cfg = config_io.load(BonConfig(), yaml_path, flags, config_io.parse_overrides(overrides))
    result = api.bon(cfg, progress=True)
    if not cfg.output:
        for row in result.rows():
            print(json.dumps(row, ensure_ascii=False))
    print(summary_text(result), file=sys.stdout if cfg.output else sys.stderr)
    return 0


def ppo(yaml_path: str | None, flags: dict, overrides: list[str]) -> int:
    """PPO-RLHF: trains, then prints where the run went and its last iteration's metrics (main process only)."""
    from dpokit.rlhf.ppo_config import PPOConfig

    cfg = config_io.load(PPOConfig(), yaml_path, flags, config_io.parse_overrides(overrides))
    summary = api.ppo(cfg)
    if os.environ.get("RANK", "0") != "0":
        return 0  # one report per job
    print(f"\nppo finished: {summary.iterations} iterations in {summary.seconds:.0f} s; outputs in "
          f"{summary.output_dir}")
    _print_metrics("last iteration", summary.final)
    return 0


def online(yaml_path: str | None, flags: dict, overrides: list[str]) -> int:
    """On-policy DPO: runs the rounds (a line per round on stderr), then prints where the final policy is."""
    from dpokit.rlhf.online_config import OnlineConfig

    cfg = config_io.load(OnlineConfig(), yaml_path, flags, config_io.parse_overrides(overrides))
    summary = api.online(cfg)
    if os.environ.get("RANK", "0") != "0":
        return 0  # one report per job
    last = summary.rounds[-1]
    rounds = f"{len(summary.rounds)} round{'' if len(summary.rounds) == 1 else 's'}"
    print(f"\nonline finished: {rounds} in {summary.seconds:.0f} s, {last['label_calls']} label "
          f"calls; the final policy is in {summary.output_dir} (rounds.jsonl: one line per round)")
    return 0


def rm(yaml_path: str | None, flags: dict, overrides: list[str]) -> int:
    """Reward model: trains, then prints where it went, its last step's and held-out metrics (main process only)."""
    from dpokit.rlhf.reward_config import RewardModelConfig

    cfg = config_io.load(RewardModelConfig(), yaml_path, flags, config_io.parse_overrides(overrides))
    summary = api.rm(cfg)
    if os.environ.get("RANK", "0") != "0":
        return 0  # one report per job
    print(f"\nrm finished: {summary.steps} steps on {summary.train_pairs:,} examples in {summary.seconds:.0f} s; "
          f"reward model in {summary.output_dir} (a reward wherever dpokit takes one: reward.source=DIR)")
    _print_metrics("final train step", summary.final_train)
    if summary.final_eval:
        _print_metrics("held-out eval", summary.final_eval)
    return 0


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    print(f"  {title}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float | int)))


def winrate(yaml_path: str | None, flags: dict, overrides: list[str]) -> int:
    """Judged win rates: writes winrate.json, comparisons.jsonl, winrate.png and winrate.md; prints the table."""
    from dpokit.eval.winrate_config import WinrateConfig
    from dpokit.eval.winrate_report import console_summary

    cfg = config_io.load(WinrateConfig(), yaml_path, flags, config_io.parse_overrides(overrides))
    result, paths = api.winrate(cfg, progress=True)
    print(console_summary(result, paths))
    return 0
