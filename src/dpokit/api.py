"""The Python API: what the CLI commands do, with the same validation and errors, returning results.

    import dpokit

    cfg = dpokit.Config()
    cfg.model.name_or_path, cfg.data.path, cfg.train.output_dir = "runs/sft", "pairs.jsonl", "runs/dpo"
    summary = dpokit.train(cfg)                        # RunSummary: steps, final metrics, output_dir
    metrics = dpokit.evaluate(cfg)                     # preference metrics of cfg.model against its reference
    rows = dpokit.generate("runs/dpo", ["Hello"])      # [{"prompt": ..., "completion": ...}]

Every function checks its inputs before any model loads and raises `dpokit.ConfigError` / `dpokit.DataError` with
the message the CLI prints. Each function imports the layers it runs inside itself, so `import dpokit` (and every
`dpokit ... --help`) loads neither transformers nor the code of commands it does not run; below this top layer,
imports sit at the top of each file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dpokit.core import settings as config_io
from dpokit.core.errors import ConfigError
from dpokit.trainer.config import Config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from dpokit.eval.judges import Judge
    from dpokit.eval.perplexity import HeldOut, ModelSpec
    from dpokit.eval.winrate import WinrateResult
    from dpokit.eval.winrate_config import WinrateConfig
    from dpokit.rlhf.bon import BestOfN
    from dpokit.rlhf.bon_config import BonConfig
    from dpokit.rlhf.online import OnlineSummary
    from dpokit.rlhf.online_config import OnlineConfig
    from dpokit.rlhf.ppo_config import PPOConfig
    from dpokit.rlhf.ppo_trainer import PPOSummary
    from dpokit.rlhf.reward_config import RewardModelConfig
    from dpokit.trainer.loop import Callback, RunSummary


def train(config: Config, callback: Callback | None = None) -> RunSummary:
    """Trains a policy with the configured preference loss; writes the run directory (README, `dpokit train`).

    Args:
        config: the run; `model.name_or_path`, `data.path` and `train.output_dir` are required.
        callback: `callback(step, policy)` at every `train.eval_every` steps and after the last (see trainer/loop.py).
    """
    from dpokit.trainer.loop import train as run_training

    return run_training(config, callback=callback)


def sft(config: Config) -> RunSummary:
    """Preferred-FT: the `sft` loss on each example's preferred response, no reference (`dpokit sft`)."""
    from dpokit.losses import objective_from_config

    objective, _ = objective_from_config(config.loss)
    if not objective.chosen_only:
        raise ConfigError(f"dpokit sft trains a chosen-only loss ('sft'); for '{config.loss.name}' use dpokit train "
                          "(dpokit.train in Python)")
    return train(config)


def evaluate(config: Config) -> dict[str, float]:
    """Preference metrics (loss, reward accuracy and margins, log-probs) of `model.name_or_path` on `data.path`,
    against `reference.name_or_path` (or a copy of the policy's own weights), in dataset order, without training."""
    from dpokit.trainer.run import evaluate_policy

    return evaluate_policy(config, say=_stderr)


def perplexity(models: str | Mapping[str, str | ModelSpec], texts: str | HeldOut | Sequence[str | HeldOut], *,
               field: str = "text", limit: int | None = None, split: str = "train", tokenizer: Any = None,
               max_length: int = 1024, batch_size: int = 8, progress: bool = False) -> dict[str, Any]:
    """Per-token NLL and perplexity of one or more models on held-out text (`dpokit eval --perplexity`).

    Args:
        models: a model (directory, hub name, `.gguf`, packaged short name), or {name: model or `ModelSpec`} in
            report order; the first is the baseline ("before") whose change the others report.
        texts: a `.txt` file (one document per line), a data file or `datasets` name whose `field` holds a string or
            {role, content} messages; several; or `HeldOut` documents already read (`eval.perplexity`).
        field, limit, split: which field, how many documents at most, which dataset split.
        tokenizer: a name or a loaded tokenizer for every model (per-token figures compare only with one tokenizer);
            None: each model its own.
        max_length: tokens per forward; longer documents are scored in windows that overlap by one token.

    Returns:
        `eval.perplexity.score_models`'s JSON-ready dict: per source, every model's nll, perplexity, tokens,
        documents and windowed, and each model's change from the first.
    """
    import os

    from dpokit.eval.perplexity import HeldOut, ModelSpec, PerplexitySettings, read_held_out, score_models
    from dpokit.models.loading import load_tokenizer

    settings = PerplexitySettings(max_length, batch_size)
    settings.check()
    sources = [texts] if isinstance(texts, str | os.PathLike | HeldOut) else list(texts)
    held_out = [t if isinstance(t, HeldOut) else read_held_out(t, field, limit, split) for t in sources]
    named = {"model": models} if isinstance(models, str) else dict(models)
    specs = {name: m if isinstance(m, ModelSpec) else ModelSpec(m) for name, m in named.items()}
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    return score_models(specs, held_out, tok, settings, progress)


def rm(config: RewardModelConfig) -> RunSummary:
    """Trains a Bradley–Terry reward model on preference data (`dpokit rm`): a scalar head on each response's last
    token, loss −log σ(r(x, yw) − r(x, yl)) (Plackett–Luce over ranked lists), rewards centred on the training data.

    Args:
        config: a `dpokit.RewardModelConfig` (`dpokit train`'s model, data and train sections); `model.name_or_path`,
            `data.path` and `train.output_dir` are required.

    Returns:
        The RunSummary of `train`; `final_eval` holds the held-out loss, accuracy and margin. The saved directory loads
        with `AutoModelForSequenceClassification` and as a reward: `rewards.sources.load_reward(output_dir)`.
    """
    from dpokit.rlhf.reward_train import train_reward_model

    return train_reward_model(config)


def generate(model: str, prompts: Sequence[str | list[dict]], *, num_samples: int = 1, max_new_tokens: int = 64,
             temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 32,
             chat: bool | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Samples completions of `prompts` from `model` (`dpokit generate`).

    Args:
        model: a saved causal LM (directory or hub name).
        prompts: texts, or lists of {role, content} messages (these need a chat template).
        chat: render prompts with the model's chat template and stop at its end of turn; None: when it has one.

    Returns:
        One {"prompt", "completion"} per completion, all of a prompt's samples together, in prompt order.
    """
    from dpokit.core.sections import SamplingSettings
    from dpokit.lm.sampling import sample
    from dpokit.models.sampling import load_for_sampling

    if not prompts:
        raise ConfigError("nothing to complete: no prompts were given")
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    settings = SamplingSettings(max_new_tokens, temperature, top_p, batch_size)
    settings.check()
    policy = load_for_sampling(model, chat)
    samples = sample(policy.model, policy.tokenizer, list(prompts), settings, seed, num_samples, progress=progress,
                     chat=policy.chat)
    return [{"prompt": p, "completion": c} for p, c in zip(samples.prompts, samples.completions, strict=True)]


def bon(config: BonConfig, *, prompts: Sequence[str | list[dict]] | None = None, reward: Callable | None = None,
        progress: bool = False) -> BestOfN:
    """Best-of-N from `config.model` (`dpokit bon`): `config.n` samples per prompt, each scored, the best chosen;
    the JSONL (one line per prompt) is written to `config.output` when it is set.

    Args:
        config: a `dpokit.BonConfig`; `model` is required, and `prompts` (a file) unless prompts are passed.
        prompts: texts or lists of {role, content} messages, used instead of reading `config.prompts`.
        reward: any `fn(prompts, completions) -> scores`, used instead of loading `config.reward`.

    Returns:
        `rlhf.bon.BestOfN`: every sample with its reward, the chosen index per prompt; `.summary()`, `.rows()`.
    """
    from dpokit.data.prompts import read_prompts
    from dpokit.models.sampling import load_for_sampling
    from dpokit.rlhf.bon import best_of_n

    config_io.validate(config, require=("model",) if prompts is not None else ("model", "prompts"))
    prompt_list = list(prompts) if prompts is not None else read_prompts(config.prompts)
    if not prompt_list:
        raise ConfigError("nothing to complete: no prompts were given")
    score = config.reward.load() if reward is None else reward  # loaded before the model: its errors come first
    policy = load_for_sampling(config.model, config.chat, gguf_file=config.gguf_file, key="config key 'chat'")
    result = best_of_n(policy.model, policy.tokenizer, prompt_list, score, config.n, config.sampling(), config.seed,
                       policy.chat, progress)
    if config.output:
        result.write_jsonl(config.output)
    return result


def online(config: OnlineConfig, *, reward: Callable | None = None, judge: Judge | None = None) -> OnlineSummary:
    """On-policy DPO (`dpokit online`): rounds of K samples per prompt from the current policy, labelled by a reward
    or a judge, then `steps_per_round` steps of the configured loss on them; writes the output directory.

    Args:
        config: a `dpokit.OnlineConfig`; `model.name_or_path`, `prompts` and `train.output_dir` are required.
        reward: any `fn(prompts, completions) -> scores`, used instead of loading `config.reward`.
        judge: any `eval.judges.Judge`, used instead of loading `config.judge`.

    Returns:
        `rlhf.online.OnlineSummary`: output_dir (the final policy loads from it), each round's record, seconds.
    """
    from dpokit.rewards.sources import Reward
    from dpokit.rlhf.online import run_online

    wrapped = reward if reward is None or isinstance(reward, Reward) else Reward(getattr(reward, "__name__", "reward"),
                                                                                 reward)
    return run_online(config, wrapped, judge)


def ppo(config: PPOConfig) -> PPOSummary:
    """PPO-RLHF from `config.model.name_or_path` against `config.reward` (`dpokit ppo`); writes the run directory.

    Args:
        config: a `dpokit.PPOConfig`; `model.name_or_path`, `prompts` and `output_dir` are required.

    Returns:
        `rlhf.ppo_trainer.PPOSummary`: output_dir, iterations, seconds, the last iteration's metrics.
    """
    from dpokit.rlhf.ppo_trainer import train_ppo

    return train_ppo(config)


def winrate(config: WinrateConfig, *, judge: Judge | None = None,
            progress: bool = False) -> tuple[WinrateResult, dict[str, Path]]:
    """Judged win rates (`dpokit winrate`): each of `config.models` sampled on every prompt set at every temperature,
    judged against the baseline; writes winrate.json, comparisons.jsonl, winrate.png and winrate.md to
    `config.output_dir`.

    Args:
        config: a `dpokit.WinrateConfig`; `models`, `prompts` and `output_dir` are required.
        judge: any object with `name` and `judge(comparisons) -> judgments` (`eval.judges.Judge`), used instead of
            loading `config.judge`.

    Returns:
        (`eval.winrate.WinrateResult`, the written files by name).
    """
    from pathlib import Path

    from dpokit.eval.winrate import run_winrate
    from dpokit.eval.winrate_report import log_to_trackers, write_outputs

    result = run_winrate(config, judge, say=_stderr if progress else _silent)
    paths = write_outputs(result, Path(config.output_dir))
    log_to_trackers(result, config)
    return result, paths


def _silent(message: str) -> None:
    pass


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr)
