"""`dpokit` command line: parse -> build config -> run. Errors a user can fix print as one line, exit code 2."""

from __future__ import annotations

import argparse
import importlib
import sys
import types
import typing
from dataclasses import MISSING, dataclass

from dpokit.core.errors import DpokitError
from dpokit.core.settings import describe_keys, field_of
from dpokit.trainer.config import Config

# flag -> dotted config key, for `train` and `sft`; each flag's type and help come from the key's field
TRAIN_FLAGS = {
    "model": "model.name_or_path",
    "data": "data.path",
    "output_dir": "train.output_dir",
    "loss": "loss.name",
    "beta": "loss.beta",
    "batch_size": "train.batch_size",
    "max_length": "data.max_length",
    "max_steps": "train.max_steps",
    "epochs": "train.epochs",
    "lr": "train.lr",
    "seed": "train.seed",
}


@dataclass(frozen=True)
class KeyCommand:
    """A command whose settings are a config dataclass: `--config FILE`, a few flags that are keys of it, optionally
    `--resume`, and `key=value` overrides; its --help lists every key."""

    settings: str  # "module:Class" of the settings dataclass, imported when the parser is built
    flags: dict[str, str]  # flag -> key of the settings, e.g. {"output_dir": "train.output_dir"}
    help: str
    resume_key: str | None = None  # the key --resume sets; None: no --resume
    example: str = "key=value"  # shown for the overrides

    def dataclass(self) -> type:
        module, _, name = self.settings.partition(":")
        return getattr(importlib.import_module(module), name)


# flag -> key of `dpokit bon`'s settings (rlhf.bon.BonConfig); each flag's type and help come from the key's field
BON_FLAGS = {
    "model": "model", "prompts": "prompts", "n": "n", "reward": "reward.source", "reward_label": "reward.label",
    "reward_text": "reward.text", "max_new_tokens": "max_new_tokens", "seed": "seed", "output": "output",
}
# flag -> key of `dpokit ppo`'s settings (rlhf.ppo_config.PPOConfig)
PPO_FLAGS = {
    "model": "model.name_or_path", "prompts": "prompts", "reward": "reward.source", "reward_label": "reward.label",
    "output_dir": "output_dir", "iterations": "iterations", "beta": "beta", "kl_target": "kl_target", "lr": "lr",
    "rollout_batch_size": "rollout_batch_size", "minibatch_size": "minibatch_size", "max_new_tokens": "max_new_tokens",
    "seed": "seed",
}
# flag -> key of `dpokit online`'s settings (rlhf.online_config.OnlineConfig)
ONLINE_FLAGS = {
    "model": "model.name_or_path", "prompts": "prompts", "reward": "reward.source", "judge": "judge.source",
    "output_dir": "train.output_dir", "samples_per_prompt": "samples_per_prompt", "rounds": "rounds",
    "prompts_per_round": "prompts_per_round", "steps_per_round": "steps_per_round", "labels": "labels",
    "loss": "loss.name", "beta": "loss.beta", "lr": "train.lr", "batch_size": "train.batch_size",
    "temperature": "temperature", "max_new_tokens": "max_new_tokens", "seed": "train.seed",
}
# flag -> key of `dpokit eval`'s settings (eval.eval_config.EvalConfig); --perplexity repeats
EVAL_FLAGS = {
    "policy": "model.name_or_path", "reference": "reference.name_or_path", "data": "data.path", "beta": "loss.beta",
    "loss": "loss.name", "max_length": "data.max_length", "max_prompt_length": "data.max_prompt_length",
    "batch_size": "batch_size", "output": "output", "perplexity": "perplexity.sources",
    "perplexity_field": "perplexity.field", "perplexity_limit": "perplexity.limit",
    "perplexity_split": "perplexity.split",
}
# flag -> key of `dpokit rm`'s settings (rlhf.reward_config.RewardModelConfig): train's flags less the loss's
RM_FLAGS = {name: key for name, key in TRAIN_FLAGS.items() if not key.startswith("loss.")}

KEY_COMMANDS = {
    "train": KeyCommand("dpokit.trainer.config:Config", TRAIN_FLAGS,
                        "train a policy with DPO (or another preference loss)", "train.resume", "loss.beta=0.5"),
    "sft": KeyCommand("dpokit.trainer.config:Config", TRAIN_FLAGS,
                      "Preferred-FT: fine-tune on the chosen responses (builds πref when no SFT model exists)",
                      "train.resume", "train.lr=1e-5"),
    "rm": KeyCommand("dpokit.rlhf.reward_config:RewardModelConfig", RM_FLAGS, "train a Bradley-Terry reward model on "
                     "preference data: a scalar head on each response's last token, rewards centred on the training "
                     "data", "train.resume", "train.lr=1e-5"),
    "eval": KeyCommand("dpokit.eval.eval_config:EvalConfig", EVAL_FLAGS, "preference metrics of a policy against a "
                       "reference on a dataset, and/or perplexity on held-out text before (reference) and after "
                       "(policy) (JSON out)", example="data.format=implicit"),
    "bon": KeyCommand("dpokit.rlhf.bon_config:BonConfig", BON_FLAGS, "Best-of-N: n samples per prompt from a model, "
                      "each scored by a reward, the best kept (JSON lines); prints mean rewards and the analytic KL "
                      "log N - (N-1)/N", example="temperature=0.7"),
    "online": KeyCommand("dpokit.rlhf.online_config:OnlineConfig", ONLINE_FLAGS, "on-policy DPO: rounds of K samples "
                         "per prompt from the current policy, labelled by a reward or a judge, then steps of any "
                         "preference loss on them", "train.resume", "labels=sampled"),
    "ppo": KeyCommand("dpokit.rlhf.ppo_config:PPOConfig", PPO_FLAGS, "PPO-RLHF (the DPO paper's baseline): rollouts "
                      "from the policy, a reward model (PPO) or any reward (PPO-GT), per-token KL penalty, value head, "
                      "GAE, clipped updates", "resume", "ppo_epochs=2"),
}


def _add_key_command(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter], name: str) -> None:
    command = KEY_COMMANDS[name]
    settings = command.dataclass()
    epilog = "config keys (YAML, or key=value overrides), default, meaning:\n" + describe_keys(settings)
    if settings is Config or name in ("online", "eval"):
        epilog += "\n\n" + losses_help()
    parser = sub.add_parser(name, help=command.help, epilog=epilog, formatter_class=fmt)
    parser.add_argument("--config", help="YAML file with any of the keys below")
    _add_key_flags(parser, settings, command.flags)
    if command.resume_key:
        parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT", help="continue from the "
                            f"newest checkpoint in --output-dir, or from CHECKPOINT [{command.resume_key}]")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"any key below, e.g. {command.example}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpokit", description="Direct Preference Optimization for causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    for name in ("train", "sft"):
        _add_key_command(sub, fmt, name)

    _add_key_command(sub, fmt, "eval")
    _add_experiment_commands(sub, fmt)
    for name in ("bon", "ppo", "rm", "online"):
        _add_key_command(sub, fmt, name)
    _add_winrate_command(sub, fmt)
    return parser


# flag -> key of `dpokit winrate`'s settings (eval.winrate_config.WinrateConfig); --model/--prompts repeat
WINRATE_FLAGS = {
    "baseline": "baseline", "judge": "judge.source", "judge_template": "judge.template",
    "judge_base_url": "judge.base_url", "agreement": "agreement", "num_samples": "num_samples",
    "max_new_tokens": "max_new_tokens", "limit": "limit", "seed": "seed", "output_dir": "output_dir",
}


def _add_winrate_command(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    from dpokit.eval.winrate_config import WinrateConfig

    epilog = "config keys (YAML, or key=value overrides), default, meaning:\n" + describe_keys(WinrateConfig)
    parser = sub.add_parser("winrate", help="judged win rates: each model's samples against a baseline (a field "
                            "such as chosen, or a model) across temperatures and prompt sets; judge agreement with "
                            "human labels", epilog=epilog, formatter_class=fmt)
    parser.add_argument("--config", help="YAML file with any of the keys below")
    parser.add_argument("--model", action="append", help="a model to judge, `name=path` or a path; repeatable "
                        "[models]")
    parser.add_argument("--prompts", action="append", help="a prompt set, `name=path` or a path; repeatable "
                        "[prompts]")
    parser.add_argument("--temperatures", help="comma-separated sampling temperatures (default 0,0.25,0.5,0.75,1) "
                        "[temperatures]")
    _add_key_flags(parser, WinrateConfig, WINRATE_FLAGS)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="any key below, e.g. judge.concurrency=4")


def _add_experiment_commands(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    """`demo`, `generate` and `frontier`: sampling from models and the reward–KL experiment."""
    demo = sub.add_parser("demo", help="the DPO paper's experiments in miniature, offline: --task sentiment "
                          "(default; < 10 min on 2 CPU cores): the reward-KL frontier of DPO vs baselines on review "
                          "continuations scored by VADER; --task hh: the paper's single-turn dialogue protocol on "
                          "Anthropic HH with SmolLM2-135M-Instruct (Preferred-FT as πref, DPO from it, Best-of-N, "
                          "online DPO, DPO from the instruct model), judged win rates (sized for < 60 min on 2 CPU "
                          "cores)")
    demo.add_argument("--task", choices=("sentiment", "hh"), default="sentiment", help="which experiment "
                      "(default sentiment)")
    demo.add_argument("--output-dir", help="where the demo writes its runs and report (default dpokit-demo, or "
                      "dpokit-demo-hh for --task hh)")
    demo.add_argument("--quick", action="store_true", help="smaller everything: about a minute (sentiment) or a few "
                      "minutes (hh)")
    demo.add_argument("--seed", type=int, default=0, help="seeds the data split, the models and every draw "
                      "(default 0)")
    demo.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 for sentiment, whose "
                      "models are tiny and whose extra threads stall when other processes share the cores; torch's "
                      "own default for hh)")
    demo.add_argument("--data", help="hh: the Anthropic HH file (default: ../shared/data/hh_harmless_test.jsonl.gz)")
    demo.add_argument("--judge", help="hh: a third judge beside the reward model trained on the judge split and the "
                      "local SmolLM2 judge (e.g. openai:gpt-4o-mini, with OPENAI_BASE_URL and OPENAI_API_KEY set); "
                      "the judge that agrees best with the held-out human labels judges the win rates")
    demo.add_argument("--size", choices=("full", "quick", "gpu"), help="hh: full (default; sized for < 60 min on 2 "
                      "CPU cores), quick (= --quick) or gpu (a larger preset for a CUDA GPU, closer to the paper)")

    gen = sub.add_parser("generate", help="sample completions from a model; prints JSON lines {prompt, completion}")
    gen.add_argument("--model", required=True, help="causal LM: local directory or hub name (safetensors only)")
    gen.add_argument("--prompt", action="append", help="a prompt to complete; repeat the flag for several")
    gen.add_argument("--prompts-file", help=".txt with one prompt per line, or JSONL (JSON, Parquet, CSV) with a "
                     "'prompt' field: a string or a list of {role, content} messages")
    gen.add_argument("--no-chat", action="store_true", help="do not apply the model's chat template: complete the "
                     "prompt text as it is (by default a model with a template gets each prompt as a user message "
                     "and stops at its end of turn)")
    gen.add_argument("--num-samples", type=int, default=1, help="completions per prompt (default 1)")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="completion budget in tokens (default 64)")
    gen.add_argument("--temperature", type=float, default=1.0, help="1 samples the model's own distribution; 0 is "
                     "greedy (default 1)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 keeps it all (default 1)")
    gen.add_argument("--seed", type=int, default=0, help="same seed, same completions (default 0)")
    gen.add_argument("--batch-size", type=int, default=32, help="prompts per generate call (default 32)")
    gen.add_argument("--output", help="also write the JSON lines to this file")

    frontier = sub.add_parser("frontier", help="reward-KL frontier of DPO vs baselines on your own model, prompts "
                              "and reward (the demo's protocol)", epilog=frontier_yaml_help(), formatter_class=fmt)
    frontier.add_argument("--config", required=True, help="frontier YAML file (keys below)")
    frontier.add_argument("--output-dir", help="where runs, figures and report go (overrides output_dir)")


def _add_key_flags(parser: argparse.ArgumentParser, settings: type, flags: dict[str, str]) -> None:
    """One `--flag` per entry of `flags` (flag -> key of the settings dataclass), typed and helped by its field."""
    for name, key in flags.items():
        spec, hint = field_of(settings, key)
        kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kind = next(k for k in kinds if k is not type(None))  # `int | None` -> int
        repeated = typing.get_origin(kind) is list  # `list[str]`: the flag repeats, each time one item
        kind = typing.get_args(kind)[0] if repeated else kind
        kind = str if kind not in (int, float, str) else kind  # `str | int | None` (reward.label): taken as text
        default = "" if spec.default in ("", None, MISSING) else f" (default {spec.default!r})"
        text = spec.metadata["help"].replace("%", "%%")
        parser.add_argument("--" + name.replace("_", "-"), type=kind, action="append" if repeated else "store",
                            help=f"{text}{default} [{key}]")


def losses_help() -> str:
    """The registry's losses with their descriptions, for `train --help`: the list grows with the registry."""
    from dpokit.losses import LOSSES

    lines = [f"  {name:<16} {spec.description}" for name, spec in LOSSES.items()]
    return "losses (loss.name / --loss; a weighted sum such as 'sigmoid + 0.5*sft' combines them):\n" + "\n".join(lines)


def frontier_yaml_help() -> str:
    from dpokit.experiments.frontier_config import FrontierFile

    return "frontier YAML keys, default, meaning (methods[i] are the keys of each methods entry):\n" + describe_keys(
        FrontierFile) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Like parse_args, but `key.sub=value` overrides may stand anywhere, also between flags."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    _quiet_transformers()
    try:
        return _run(args)
    except DpokitError as err:
        print(f"dpokit: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print("dpokit: interrupted", file=sys.stderr)
        return 130


def _quiet_transformers() -> None:
    """transformers draws a bar for every weight load and save; dpokit's own bars say what is happening."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _run(args: argparse.Namespace) -> int:
    from dpokit import commands

    if args.command in KEY_COMMANDS:
        command = KEY_COMMANDS[args.command]
        flags = {key: getattr(args, name) for name, key in command.flags.items() if getattr(args, name) is not None}
        if command.resume_key and args.resume:
            flags[command.resume_key] = args.resume
        if args.command in ("train", "sft"):
            return commands.train(args.command, args.config, flags, args.overrides)
        if args.command == "eval":
            return commands.evaluate(args.config, flags, args.overrides)
        return getattr(commands, args.command)(args.config, flags, args.overrides)
    if args.command == "winrate":
        return commands.winrate(args.config, _winrate_flags(args), args.overrides)
    if args.command == "generate":
        return commands.generate(args)
    if args.command == "frontier":
        return commands.frontier(args.config, args.output_dir)
    return commands.demo(args)


def _winrate_flags(args: argparse.Namespace) -> dict:
    flags = {key: getattr(args, name) for name, key in WINRATE_FLAGS.items() if getattr(args, name) is not None}
    if args.model:
        flags["models"] = args.model
    if args.prompts:
        flags["prompts"] = args.prompts
    if args.temperatures:
        try:
            flags["temperatures"] = [float(t) for t in args.temperatures.split(",") if t.strip()]
        except ValueError:
            raise DpokitError(f"--temperatures: expected numbers separated by commas, got {args.temperatures!r}") \
                from None
    return flags


if __name__ == "__main__":
    raise SystemExit(main())
