"""A local Hugging Face chat model as a pairwise judge ("lm:MODEL"): the probability of "A" against "B".

The judging prompt (`judge_prompts`, asking for the letter only) is rendered as one user message with the model's
chat template and its generation prompt; the judge's answer is read from the next-token distribution, without
sampling: p(first is better) = softmax(logp("A"), logp("B"))[0] = sigmoid(logp("A") - logp("B")). Each comparison
is scored in both orders, as an API judge is asked, and `judges.combine` averages the two probabilities that the
model's response is better.

The tokens of "A" and "B" are the ones the template itself writes first for an assistant reply "A" (or "B"): "A"
after ChatML's "<|im_start|>assistant\\n", " A" after a template ending in "assistant:". A template that does not
open the reply with one token for the letter is refused (`letter_ids`).

The model loads like any dpokit model (`models.load_model`: a directory, hub name, `.gguf` file or packaged short
name such as smollm2-135m-instruct; safetensors only, remote code off), in eval mode, on the GPU when there is one.
Prompts are batched `judge.batch_size` at a time, left-padded so every row's last position is its own last token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from dpokit.core.errors import ConfigError
from dpokit.core.progress import transient
from dpokit.core.sections import ModelConfig
from dpokit.data.chat import TemplateError, has_template, render_prompt, render_reply
from dpokit.data.tokenize import encode_prompts
from dpokit.eval.judge_prompts import JudgePrompt, load_prompt
from dpokit.eval.judges import Comparison, JudgeConfig, Judgment, Order, combine
from dpokit.models.loading import default_device, load_model, load_tokenizer

PROBE = ("Say hi.", "Hi!", "Hello.")  # any pair: only the end of the rendered prompt decides the letters' tokens


class LetterLogps(NamedTuple):
    """Next-token log-probabilities of the two letters after one judging prompt, both of shape (N,)."""

    a: torch.Tensor
    b: torch.Tensor


class LocalLMJudge:
    """A local chat model as a pairwise judge.

    Args:
        config: `judge.source` "lm:MODEL", `judge.template`, `judge.batch_size`.

    Raises:
        ConfigError: the model or tokenizer cannot be loaded, the tokenizer has no chat template, the template
            cannot be loaded, or the letters are not single tokens after the generation prompt.
    """

    def __init__(self, config: JudgeConfig):
        name = config.source.partition(":")[2].strip()
        self.name = f"lm {name}"
        self.prompt: JudgePrompt = load_prompt(config.template)
        self.batch_size = config.batch_size
        self.show_progress = True
        self.tokenizer = load_tokenizer(name)
        if not has_template(self.tokenizer):
            raise ConfigError(f"judge.source {config.source!r}: the tokenizer has no chat template; an lm judge "
                              "needs a chat model")
        self.letters = letter_ids(self.tokenizer, self._render(*PROBE, True))
        model = load_model(name, ModelConfig(name_or_path=name))
        self.model = model.to(default_device()).eval()

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgment]:
        """One judgment per comparison, scored in both orders (model first, then baseline first)."""
        asked = [(model_first, self._render(c.prompt, *_pair(c, model_first), True))
                 for c in comparisons for model_first in (True, False)]
        logps = self.letter_logps([text for _, text in asked])
        orders = []
        for i, (model_first, _) in enumerate(asked):
            p_first = torch.sigmoid(logps.a[i] - logps.b[i]).item()  # softmax over the two letters
            raw = {"logp_a": logps.a[i].item(), "logp_b": logps.b[i].item()}
            orders.append(Order(model_first, p_first if model_first else 1.0 - p_first, raw))
        return [combine(orders[i:i + 2]) for i in range(0, len(orders), 2)]

    def _render(self, prompt: Any, a: str, b: str, letter_only: bool) -> str:
        try:
            return render_prompt(self.tokenizer, self.prompt.render(prompt, a, b, letter_only=letter_only))
        except TemplateError as err:
            raise ConfigError(f"judge {self.name}: {err}") from None

    @torch.no_grad()
    def letter_logps(self, texts: Sequence[str]) -> LetterLogps:
        """log p("A") and log p("B") as the next token after each rendered prompt, `batch_size` prompts a pass.

        Args:
            texts: N rendered prompts (generation prompt included).

        Returns:
            `LetterLogps` of two (N,) float32 tensors, on the CPU.
        """
        rows = encode_prompts(self.tokenizer, list(texts))
        starts = range(0, len(rows), self.batch_size)
        parts = [self._batch_logps(rows[s:s + self.batch_size])
                 for s in transient(starts, f"judge {self.name}", self.show_progress)]
        if not parts:
            return LetterLogps(torch.zeros(0), torch.zeros(0))
        both = torch.cat(parts)  # (N, 2)
        return LetterLogps(both[:, 0], both[:, 1])

    def _batch_logps(self, rows: list[list[int]]) -> torch.Tensor:
        """(n, 2) log-probs of the two letters after each of n token rows, left-padded into one forward."""
        device = next(self.model.parameters()).device
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
        hidden = self.model.get_decoder()(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                          use_cache=False).last_hidden_state[:, -1]  # (n, H)
        logits = self.model.get_output_embeddings()(hidden).float()  # (n, V): the last position only
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return torch.log_softmax(logits, dim=-1)[:, list(self.letters)].cpu()


def _pair(c: Comparison, model_first: bool) -> tuple[str, str]:
    return (c.completion, c.baseline) if model_first else (c.baseline, c.completion)


def letter_ids(tokenizer: Any, prompt_text: str) -> tuple[int, int]:
    """The token ids of "A" and "B" as the chat template opens an assistant reply "A" / "B" after `prompt_text`.

    Args:
        tokenizer: a tokenizer with a chat template.
        prompt_text: a rendered judging prompt, generation prompt included (its last message the user's).

    Raises:
        ConfigError: the reply does not start with one token that is the letter (space allowed), or A and B share it.
    """
    messages = [{"role": "user", "content": "?"}]
    base = render_prompt(tokenizer, messages)
    [prompt_ids] = encode_prompts(tokenizer, [prompt_text])
    ids = []
    for letter in ("A", "B"):
        try:
            reply = render_reply(tokenizer, messages, base, [{"role": "assistant", "content": letter}])
        except TemplateError as err:
            raise ConfigError(f"lm judge: cannot find the token of {letter!r} after the generation prompt: {err}") \
                from None
        [full] = encode_prompts(tokenizer, [prompt_text + reply])
        token = full[len(prompt_ids)] if full[:len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids) else None
        if token is None or tokenizer.decode([token]).strip() != letter:
            shown = tokenizer.convert_ids_to_tokens(full[len(prompt_ids):len(prompt_ids) + 3])
            raise ConfigError(f"lm judge: the chat template's reply {reply!r} does not start with one token for "
                              f"{letter!r} (tokens {shown}); this tokenizer cannot be used as an lm judge")
        ids.append(token)
    if ids[0] == ids[1]:
        raise ConfigError(f"lm judge: 'A' and 'B' are the same token ({ids[0]})")
    return ids[0], ids[1]
