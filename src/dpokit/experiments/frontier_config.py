"""What a reward–KL frontier experiment runs: the reference model, prompts, methods and shared training settings.

`dpokit frontier --config frontier.yaml` reads a `FrontierFile` (its keys and help: `dpokit frontier --help`) with the
loader every command uses (`core.settings.load`); `FrontierFile.experiment()` reads the prompts and gives the
`FrontierConfig` that `frontier.run_frontier` runs. The demo builds a `FrontierConfig` directly.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, fields
from typing import Any

from dpokit.core import settings as config_io
from dpokit.core.errors import ConfigError
from dpokit.core.sections import sampling
from dpokit.core.settings import setting
from dpokit.core.validation import check_tree
from dpokit.data.prompts import read_prompts


@dataclass(frozen=True)
class MethodKind:
    """What a kind of method needs and produces; `MethodSpec.check` and the report ask these, never the name.

    Attributes:
        loss: it trains a dpokit loss (`loss:` required) rather than taking none.
        reward: it optimises or selects by a reward (`reward: learned | ground_truth`).
        n: it is Best-of-N (`n:` required, >= 1).
        trains: it has a training trajectory (curves, several evaluations); Best-of-N has one point per N.
    """

    loss: bool = False
    reward: bool = False
    n: bool = False
    trains: bool = True


KINDS = {
    "loss": MethodKind(loss=True),  # dpokit `train()` on the preference files (DPO, Unlikelihood, ...)
    "ppo": MethodKind(reward=True),  # `train_ppo` from πref on the training prompts
    "bon": MethodKind(reward=True, n=True, trains=False),  # best of N samples of πref on the held-out prompts
    "online": MethodKind(loss=True, reward=True),  # `dpokit online` from πref: rounds of its own samples, labelled
}
REWARDS = ("learned", "ground_truth")


@dataclass
class MethodSpec:
    """One run of the sweep (an entry of the YAML's `methods` list)."""

    label: str = setting(help="the method's name in plots and tables; runs with the same label form one family "
                              "(e.g. DPO's β sweep)")
    loss: str = setting("", "kind loss: a dpokit loss expression, e.g. sigmoid, unlikelihood, sft, plackett_luce")
    kind: str = setting("loss", "loss: dpokit train with `loss` | ppo: PPO-RLHF from πref on the training prompts | "
                                "bon: Best-of-N samples of πref on the held-out prompts | online: dpokit online with "
                                "`loss` from πref on the training prompts, labelled by `reward`", choices=tuple(KINDS))
    reward: str | None = setting(None, "ppo, bon and online: learned (a reward model trained once on the frontier's "
                                       "own pairs, see `rm`) | ground_truth (the frontier's reward)",
                                 choices=(None, *REWARDS))
    n: int | None = setting(None, "bon: samples per prompt, the best by `reward` kept (x: log N - (N-1)/N)")
    beta: float | None = setting(None, "loss.beta for this run, if the loss uses it; ppo: the KL coefficient")
    alpha: float | None = setting(None, "loss.unlikelihood_alpha for this run")
    run: dict[str, Any] = setting(help="`dpokit train` settings for this run only, applied after the shared `run`, "
                                       "e.g. {train: {lr: 1.0e-4}}; ppo: `dpokit ppo` keys, after the shared `ppo`",
                                  factory=dict)

    def __post_init__(self) -> None:
        self.run = config_io.flatten(self.run)  # dotted keys: {"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}

    @property
    def setting(self) -> str:
        """The swept hyper-parameter, e.g. "β=0.1" or "N=16" ("" for none)."""
        parts = [f"N={self.n}" if self.n is not None else "", f"β={self.beta:g}" if self.beta is not None else "",
                 f"α={self.alpha:g}" if self.alpha is not None else ""]
        return ", ".join(p for p in parts if p)

    @property
    def slug(self) -> str:
        """A directory name, e.g. "dpo-beta0.1"."""
        text = self.label.lower() + (f"-n{self.n}" if self.n is not None else "")
        text += f"-beta{self.beta:g}" if self.beta is not None else ""
        text += f"-alpha{self.alpha:g}" if self.alpha is not None else ""
        return re.sub(r"[^a-z0-9.+-]+", "-", text).strip("-")

    def check(self, where: str) -> None:
        """What this method's kind requires (`KINDS`); `where` names it in errors, e.g. "methods[2]"."""
        kind = KINDS.get(self.kind)
        if kind is None:
            raise ConfigError(f"config key '{where}.kind' must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if not self.label.strip():
            raise ConfigError(f"config key '{where}.label' may not be empty")
        if kind.loss != bool(self.loss.strip()):
            raise ConfigError(f"config key '{where}.loss': " + ("a loss method needs a loss" if kind.loss else
                                                               f"a {self.kind} method takes no loss"))
        if kind.reward != (self.reward is not None) or (self.reward is not None and self.reward not in REWARDS):
            raise ConfigError(f"config key '{where}.reward': " + (f"a {self.kind} method needs reward: learned or "
                                                                 "ground_truth" if kind.reward else
                                                                 f"a {self.kind} method takes no reward"))
        if kind.n != (self.n is not None) or (self.n is not None and self.n < 1):
            raise ConfigError(f"config key '{where}.n': " + (f"Best-of-N needs n >= 1, got {self.n}" if kind.n else
                                                            f"a {self.kind} method takes no n"))
        if self.alpha is not None and not kind.loss:
            raise ConfigError(f"config key '{where}.alpha': a {self.kind} method takes no alpha")
        if kind.n and (self.beta is not None or self.run):
            raise ConfigError(f"config key '{where}': Best-of-N trains nothing; it takes no beta or run")


def paper_methods() -> list[MethodSpec]:
    """The DPO paper's §6.1 comparison (its PPO arms aside): DPO over β, Unlikelihood over α, Preferred-FT, and
    DPO's Plackett–Luce form over the ranked 4-lists."""
    return [
        *(MethodSpec("DPO", "sigmoid", beta=b) for b in (0.05, 0.1, 1.0, 5.0)),
        *(MethodSpec("Unlikelihood", "unlikelihood", alpha=a) for a in (0.1, 1.0)),
        MethodSpec("Preferred-FT", "sft"),
        MethodSpec("Plackett-Luce", "plackett_luce", beta=0.1),
    ]


def refuse_frontier_keys(sections: dict[str, dict[str, Any]], owned: tuple[str, ...]) -> None:
    """A method's settings sections (`ppo:`, `online:`, a method's `run`) may not set what the frontier itself sets
    for every method (`owned`: model, prompts, reward, ...); `sections` maps each section's name to its keys.

    Raises:
        ConfigError: naming the section and the keys, e.g. "ppo: model come(s) from the frontier itself ...".
    """
    for where, keys in sections.items():
        clash = sorted(k for k in keys if k.split(".")[0] in owned)
        if clash:
            raise ConfigError(f"{where}: {', '.join(clash)} come(s) from the frontier itself and may not be set here")


def online_methods(betas: tuple[float, ...] = (0.1,)) -> list[MethodSpec]:
    """On-policy DPO (the question the paper leaves open): `dpokit online` from πref, its samples labelled by the
    ground-truth reward, at the offline runs' reward-call and step budget, for each β in `betas`."""
    return [MethodSpec("Online DPO", "sigmoid", kind="online", reward="ground_truth", beta=b) for b in betas]


def rlhf_methods(ppo_betas: tuple[float, ...] = (0.05,), ns: tuple[int, ...] = (4, 16, 64)) -> list[MethodSpec]:
    """The paper's RL arms: PPO with a reward model learned from the preference pairs, PPO-GT with the ground-truth
    reward itself (an upper bound for PPO), each over the KL coefficients `ppo_betas`; and Best-of-N by the learned
    reward model for each N in `ns`."""
    return [
        *(MethodSpec("PPO", kind="ppo", reward="learned", beta=b) for b in ppo_betas),
        *(MethodSpec("PPO-GT", kind="ppo", reward="ground_truth", beta=b) for b in ppo_betas),
        *(MethodSpec("Best-of-N", kind="bon", reward="learned", n=n) for n in ns),
    ]


@dataclass(kw_only=True)
class FrontierSettings:
    """What the YAML file and the experiment share; each key's help is what `dpokit frontier --help` prints."""

    model: str = setting("", "required: πref, a saved causal LM + tokenizer; every method starts from it")
    output_dir: str = setting("frontier-run", "where runs, figures and the report go (--output-dir overrides it)")
    samples_per_prompt: int = setting(4, "K completions per training prompt -> K(K-1)/2 pairs and one ranked list")
    eval_samples_per_prompt: int = setting(1, "completions per held-out prompt at each evaluation", gt=0)
    max_new_tokens: int = sampling("max_new_tokens", 24, "for every sample")
    chat: bool | None = sampling("chat", None)
    seed: int = setting(0, "seeds the prompt split, every draw and every run")
    run: dict[str, Any] = setting(
        help="`dpokit train` settings for every method, by section, e.g. {train: {lr: 3.0e-4, max_steps: 200, "
             "eval_every: 25}}; evaluations run every train.eval_every steps; batch_size counts pairs, and ranked / "
             "best-of-K runs get as many sequences per step (2 x batch_size)", factory=dict)
    methods: list[MethodSpec] = setting(
        help="one run each, e.g. [{label: DPO, loss: sigmoid, beta: 0.1}, {label: PPO, kind: ppo, reward: learned, "
             "beta: 0.05}, {label: Best-of-N, kind: bon, reward: learned, n: 16}]; default: the DPO paper's set "
             "without its RL arms (DPO over β, Unlikelihood over α, Preferred-FT, Plackett-Luce)",
        factory=paper_methods)
    rm: dict[str, Any] = setting(
        help="methods with reward: learned: `dpokit rm` settings of the one reward model trained from πref on the "
             "pairs (data.max_length from `run`), e.g. {train: {lr: 1.0e-4, max_steps: 200, batch_size: 16}}",
        factory=dict)
    rm_eval_fraction: float = setting(0.1, "fraction of the training prompts whose pairs the reward model does not "
                                           "train on, to report its held-out accuracy (DPO still trains on all)")
    ppo: dict[str, Any] = setting(
        help="`dpokit ppo` settings for every ppo method, e.g. {iterations: 60, rollout_batch_size: 64, lr: 1.0e-4}; "
             "model, prompts, reward, seed and max_new_tokens come from the frontier", factory=dict)
    ppo_eval_every: int = setting(10, "ppo methods: evaluate on the held-out prompts every N iterations (and after "
                                      "the last)", gt=0)
    online: dict[str, Any] = setting(
        help="`dpokit online` settings for every online method, e.g. {rounds: 4, labels: sampled}; by default its "
             "reward calls and optimizer steps match the offline runs': the training prompts split over the rounds, "
             "train.max_steps split over them; model, prompts, reward, samples_per_prompt, max_new_tokens and seed "
             "come from the frontier", factory=dict)


@dataclass(kw_only=True)
class FrontierConfig(FrontierSettings):
    """Everything the protocol needs except the reward function (see `frontier.run_frontier`)."""

    train_prompts: list[str]
    eval_prompts: list[str]
    sample_batch_size: int = 128
    progress: bool = True

    def check(self) -> None:
        if not self.model:
            raise ConfigError("the frontier needs a reference model (model:)")
        if not self.train_prompts:
            raise ConfigError("the frontier needs training prompts (prompts:)")
        if not self.eval_prompts:
            raise ConfigError("the frontier needs held-out prompts (eval_prompts:, or eval_fraction > 0)")
        if self.samples_per_prompt < 2:
            raise ConfigError(f"samples_per_prompt must be >= 2 to form pairs, got {self.samples_per_prompt}")
        if self.sample_batch_size < 1:
            raise ConfigError(f"sample_batch_size must be >= 1, got {self.sample_batch_size}")
        if not self.methods:
            raise ConfigError("methods: is empty; list at least one {label, loss} or leave it out for the paper's set")
        for i, method in enumerate(self.methods):
            method.check(f"methods[{i}]")
        check_tree(self)  # types, choices and each setting's range (after the methods' own, more telling checks)
        if not 0 < self.rm_eval_fraction < 1:
            raise ConfigError(f"rm_eval_fraction must be in (0, 1), got {self.rm_eval_fraction}")
        slugs = [m.slug for m in self.methods]
        repeated = sorted({s for s in slugs if slugs.count(s) > 1})
        if repeated:
            raise ConfigError(f"methods repeat the same label and setting: {', '.join(repeated)}")


@dataclass(kw_only=True)
class FrontierFile(FrontierSettings):
    """`dpokit frontier --config FILE`: the shared settings, plus where the prompts and the reward come from."""

    prompts: str = setting("", "required: JSONL with a \"prompt\" field, or .txt with one prompt per line")
    eval_prompts: str | None = setting(None, "held-out prompts, same formats; default: eval_fraction of `prompts`")
    eval_fraction: float = setting(0.2, "fraction of `prompts` held out when eval_prompts is not given (seeded)")
    reward: str = setting("vader", "vader | module:function | file.py:function | sequence-classification model dir")
    reward_label: str | int | None = setting(None, "classifier only: the label (name or index) whose logit is the "
                                                   "reward")
    reward_text: str = setting("completion", "completion | full (prompt + completion)", choices=("completion", "full"))

    def experiment(self) -> FrontierConfig:
        """The prompts read (held-out ones split off, seeded, unless `eval_prompts` names a file); checked."""
        prompts = read_prompts(self.prompts)
        if self.eval_prompts:
            train, held_out = prompts, read_prompts(self.eval_prompts)
        else:
            train, held_out = split_prompts(prompts, self.eval_fraction, self.seed)
        shared = {f.name: getattr(self, f.name) for f in fields(FrontierSettings)}
        flat = {key: config_io.flatten(getattr(self, key)) for key in ("run", "rm", "ppo", "online")}
        cfg = FrontierConfig(**{**shared, **flat}, train_prompts=train,
                             eval_prompts=held_out)
        cfg.check()
        return cfg


def load_frontier_config(path: str, output_dir: str | None = None) -> FrontierFile:
    """The YAML file, checked like every config (unknown keys, types, `methods[i].key`); `output_dir` overrides it."""
    file = config_io.load(FrontierFile(), path, {"output_dir": output_dir} if output_dir else {})
    config_io.validate(file, require=("model", "prompts"))
    return file


def split_prompts(prompts: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held out): a seeded shuffle, so held-out prompts are never trained on."""
    if not 0 < eval_fraction < 1:
        raise ConfigError(f"eval_fraction must be in (0, 1) when no eval_prompts are given, got {eval_fraction}")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(prompts) * eval_fraction))
    return [prompts[i] for i in order[n_eval:]], [prompts[i] for i in order[:n_eval]]
