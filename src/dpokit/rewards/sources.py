"""Ground-truth rewards: functions of the text that score sampled completions for the reward–KL frontier.

Three sources, chosen by one string (`load_reward`):
- "vader": VADER's compound sentiment score in [-1, 1] (Hutto & Gilbert 2014), a rule-based analyser over a
  human-rated lexicon that ships with the `vaderSentiment` package: offline, deterministic, no model to download.
- "module:function" or "path/to/file.py:function": your own Python callable, `f(prompts, completions) -> scores`.
- a directory (or hub name) of a Hugging Face sequence-classification model: the logit of one label, e.g. the
  positive class of a sentiment classifier, as the DPO paper scores IMDb completions. Loaded from safetensors only,
  with remote code off. A directory written by `dpokit rm` is scored by dpokit's own tokenization instead (prompt and
  completion apart, as in training; the centred reward): `rewards.reward_model.reward_model_scores`.

Every reward is called as `reward(prompts, completions)` and returns one finite float per completion. Commands name a
reward with a `RewardConfig` section (`reward.source`, `reward.label`, `reward.text`), the one notion of a reward
every command shares (the frontier YAML spells the same three keys `reward`, `reward_label`, `reward_text`).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dpokit.core.errors import ConfigError, DataError, DpokitError
from dpokit.core.settings import setting
from dpokit.data.chat import plain_text

ScoreFn = Callable[[list[str], list[str]], Sequence[float]]
TEXT_MODES = ("completion", "full")


@dataclass
class RewardConfig:
    """Which reward scores completions: a config section of every command that needs one."""

    source: str = setting("vader", "vader | module:function | file.py:function | sequence-classification model "
                                   "directory (any Hugging Face reward model, dpokit rm's included)")
    label: str | int | None = setting(None, "classifier only: the label (name or index) whose logit is the reward; "
                                            "may be left out for a one-output model")
    text: str = setting("completion", "what is scored: completion | full (prompt + completion)",
                        choices=TEXT_MODES)

    def load(self) -> Reward:
        """The reward, loaded (a model or module is imported now: errors surface before any sampling)."""
        return load_reward(self.source, None if self.label is None else str(self.label), self.text)


@dataclass
class Reward:
    """A named reward function with its output checked.

    Attributes:
        name: how reports refer to it, e.g. "vader(completion)".
        fn: (prompts, completions) -> scores.
    """

    name: str
    fn: ScoreFn

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The scores, checked. An exception of the function itself becomes a `RewardError` that says what it raised
        and where (the innermost file and line), in one line; dpokit's own errors pass as they are."""
        try:
            scores = list(self.fn(list(prompts), list(completions)))
        except DpokitError:
            raise
        except Exception as err:
            raise RewardError(f"reward {self.name} raised {type(err).__name__}: {err}{_where(err)}") from err
        if len(scores) != len(completions):
            raise DataError(f"reward {self.name} returned {len(scores)} scores for {len(completions)} completions")
        bad = [i for i, s in enumerate(scores)
               if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s)]
        if bad:
            prompt = str(prompts[bad[0]])
            raise DataError(f"reward {self.name} returned a score that is not a finite number: {scores[bad[0]]!r} "
                            f"(prompt {bad[0]}: {prompt[:80]!r}{'...' if len(prompt) > 80 else ''})")
        return [float(s) for s in scores]


class RewardError(DpokitError):
    """A reward function raised: what it raised and where, from `Reward.__call__`."""


def _where(err: BaseException) -> str:
    """" (at file.py:12 in fn)": the innermost frame of the traceback, where the error was raised."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename}:{last.lineno} in {last.name})"


def load_reward(source: str, label: str | None = None, text: str = "completion") -> Reward:
    """The reward named by `source` (see the module docstring).

    Args:
        source: "vader", "module:function", "file.py:function", or a sequence-classification model path.
        label: classifier only: the label whose logit is the reward (name or index); may be omitted for a
            one-output model.
        text: "completion" scores the completion alone; "full" scores prompt + completion (vader and classifiers;
            a callable and a `dpokit rm` model always receive both).

    Raises:
        ConfigError: unknown text mode, a callable that cannot be imported, or a model that cannot be loaded.
    """
    if text not in TEXT_MODES:
        raise ConfigError(f"reward text must be one of {', '.join(TEXT_MODES)}, got {text!r}")
    if source == "vader":
        return Reward(f"vader({text})", _texts(text, vader_scores()))
    if ":" in source and not Path(source).exists():
        return Reward(source, load_callable(source))
    # loads transformers (slow): only a model source needs it, so `import dpokit` and the CLI's start stay quick
    from dpokit.rewards.reward_model import is_reward_model, reward_model_scores

    if is_reward_model(source):
        return Reward(f"{source}(dpokit rm)", reward_model_scores(source))
    return Reward(f"{source}[{label}]({text})" if label else f"{source}({text})",
                  _texts(text, classifier_scores(source, label)))


def _texts(mode: str, score: Callable[[list[str]], list[float]]) -> ScoreFn:
    if mode == "full":
        return lambda prompts, completions: score([_full_text(p, c) for p, c in zip(prompts, completions,
                                                                                     strict=True)])
    return lambda prompts, completions: score(completions)


def _full_text(prompt: str | list[dict], completion: str) -> str:
    """Prompt + completion as one text; a prompt of messages reads as a transcript the completion ends."""
    if isinstance(prompt, str):
        return prompt + completion
    return plain_text(prompt + [{"role": "assistant", "content": completion}])


def vader_scores() -> Callable[[list[str]], list[float]]:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise ConfigError("the VADER reward needs the vaderSentiment package: pip install 'dpokit[demo]'") from None
    analyzer = SentimentIntensityAnalyzer()
    return lambda texts: [analyzer.polarity_scores(t)["compound"] for t in texts]


def load_callable(spec: str) -> ScoreFn:
    """Imports `module:function` (a module on sys.path) or `path/to/file.py:function`."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise ConfigError(f"reward {spec!r} is not of the form module:function or file.py:function")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"reward {spec!r}: file not found: {target}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ConfigError(f"reward {spec!r}: cannot import module {target!r}: {err}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"reward {spec!r}: {target} has no function {name!r}")
    return fn


def classifier_scores(path: str, label: str | None, batch_size: int = 32) -> Callable[[list[str]], list[float]]:
    """Logit of `label` from a sequence-classification model, batched, in eval mode without gradients."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True,
                                                                   trust_remote_code=False).eval()
    except (OSError, ValueError) as err:
        raise ConfigError(f"reward {path!r} is neither 'vader', module:function, nor a loadable sequence-"
                          f"classification model (safetensors only): {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:  # batched scoring finds each row's last real token through it
        model.config.pad_token_id = tokenizer.pad_token_id
    index = label_index(model.config.id2label, model.config.num_labels, label, path)

    @torch.no_grad()
    def score(texts: list[str]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                              max_length=512)
            scores.extend(model(**batch).logits[:, index].float().tolist())
        return scores

    return score


def label_index(id2label: dict, num_labels: int, label: str | None, path: str) -> int:
    """The output column for `label`, given as a label name or an index."""
    names = {str(name): int(i) for i, name in id2label.items()}
    if label is None:
        if num_labels == 1:
            return 0
        raise ConfigError(f"reward model {path} has {num_labels} labels ({', '.join(names)}): say which one is the "
                          "reward with reward_label")
    if label in names:
        return names[label]
    if label.isdigit() and int(label) < num_labels:
        return int(label)
    raise ConfigError(f"reward model {path} has no label {label!r}; its labels: {', '.join(names)}")
