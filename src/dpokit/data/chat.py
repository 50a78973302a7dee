"""Chat templates: one renderer for training data and for sampling, and the token that ends an assistant turn.

The convention (README, "Chat templates"): a conversational example's prompt is the template's rendering of the
prompt messages with the generation prompt (`add_generation_prompt=True`); each response is what the template
renders after that for the whole conversation, closing tokens included: for ChatML `Paris.<|im_end|>\n`, for a
Llama-3-style template `Paris.<|eot_id|>`, for a Gemma-style one `Paris<end_of_turn>\n`. When the template closes
the assistant's turn itself, no eos is appended (it would teach the model a doubled end of turn); a template that
does not close turns gets eos appended, like plain text. Sampling renders prompts the same way and stops at the
template's end-of-turn token as well as at eos.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

Messages = list[dict[str, Any]]
_PROBE = "dpokit-probe-reply"


class TemplateError(ValueError):
    """The chat template cannot render the messages (it raised, or it renders the prompt differently in context)."""


def has_template(tokenizer: Any) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def render(tokenizer: Any, messages: Messages, *, add_generation_prompt: bool) -> str:
    """The template's text for `messages`.

    Raises:
        TemplateError: the template raised (templates check e.g. the order of roles).
    """
    import jinja2

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except (jinja2.TemplateError, ValueError, TypeError, KeyError) as e:
        raise TemplateError(f"chat template failed: {e}") from e


def render_prompt(tokenizer: Any, prompt: str | Messages) -> str:
    """A prompt as the model sees it before its reply: a string is one user message."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return render(tokenizer, messages, add_generation_prompt=True)


def render_reply(tokenizer: Any, prompt: Messages, prompt_text: str, reply: Messages) -> str:
    """What the template renders after `prompt_text` (the prompt with its generation prompt) for prompt + reply.

    Raises:
        TemplateError: the template renders the prompt differently inside the whole conversation.
    """
    full = render(tokenizer, prompt + reply, add_generation_prompt=False)
    if not full.startswith(prompt_text):
        raise TemplateError("the chat template renders the prompt differently inside the full conversation, so the "
                            "response cannot be split off it")
    return full[len(prompt_text):]


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the template writes right after an assistant message, or None if it writes none.

    Found by rendering a probe conversation: ChatML gives `<|im_end|>`, Llama 3 `<|eot_id|>`, Gemma `<end_of_turn>`.
    """
    if not has_template(tokenizer):
        return None
    try:
        text = render(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}],
                      add_generation_prompt=False)
    except TemplateError:
        return None
    at = text.rfind(_PROBE)
    if at < 0:
        return None
    special = set(tokenizer.all_special_ids)
    tail = tokenizer(text[at + len(_PROBE):], add_special_tokens=False)["input_ids"]
    return next((t for t in tail if t in special), None)


def stop_ids(tokenizer: Any, chat: bool) -> list[int]:
    """Token ids that end a sampled completion: eos, and with a chat template the end-of-turn token."""
    ids = [tokenizer.eos_token_id]
    eot = end_of_turn_id(tokenizer) if chat else None
    return ids + [eot] if eot is not None and eot not in ids else ids


def render_prompts(tokenizer: Any, prompts: Sequence[str | Messages], chat: bool) -> list[str]:
    """Prompt texts for sampling: rendered with the chat template when `chat`, else as they are (strings only)."""
    if chat:
        return [render_prompt(tokenizer, p) for p in prompts]
    bad = next((p for p in prompts if not isinstance(p, str)), None)
    if bad is not None:
        raise TemplateError(f"a prompt given as messages needs the chat template (chat is off): {bad!r}"[:200])
    return list(prompts)


def hh_messages(dialogue: str) -> Messages:
    """An Anthropic HH dialogue ("\\n\\nHuman: ...\\n\\nAssistant: ...") as {role, content} messages; text before the
    first turn marker is dropped, and so is an empty last turn (a prompt ending in "\\n\\nAssistant:").

    >>> turns = hh_messages("\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\nHuman: Bye\\n\\nAssistant:")
    >>> [m["role"] + ": " + m["content"] for m in turns]
    ['user: Hi', 'assistant: Hello!', 'user: Bye']
    """
    parts = re.split(r"\n\n(Human|Assistant):", dialogue)
    roles = {"Human": "user", "Assistant": "assistant"}
    turns = [{"role": roles[who], "content": text.strip()} for who, text in zip(parts[1::2], parts[2::2], strict=True)]
    return turns[:-1] if turns and not turns[-1]["content"] else turns


def plain_text(prompt: str | Messages) -> str:
    """A prompt for a judge or a text reward to read: a string as it is; messages as "User: ..." lines.

    >>> plain_text([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    'User: Hi\\nAssistant: Hello'
    """
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)
