"""Judging prompts for LLM judges, and reading the judge's answer back.

The defaults are the DPO paper's GPT-4 prompts (Rafailov et al. 2023, appendix C.2): "dialogue" (Anthropic HH:
which response is more helpful) and "summarization" (TL;DR: which summary better covers the post's most important
points). Each asks for a one-sentence comparison, then a last line naming "A" or "B" after a label ("More helpful:",
"Preferred:"). A local LM judge reads the next-token probabilities of "A" and "B" instead of an answer, so it gets the
same prompt asking for the letter only (`JudgePrompt.render(..., letter_only=True)`).

A user's template is a text file with `{prompt}`, `{a}` and `{b}` in it (nothing else is a placeholder: other braces
stay as written). Its answer label is the text before the colon on its last line, when that line names A and B.

Parsing never guesses (`parse_choice`): the answer is the last line that starts with the label (quotes, markdown and
"Response"/"Summary" before the letter allowed); without one, the last line that is a bare letter, optionally after a
short "Label:". Anything else is unparsed (None).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dpokit.core.errors import ConfigError, DataError
from dpokit.data.chat import plain_text

Choice = Literal["A", "B"]
PLACEHOLDERS = ("prompt", "a", "b")
_PLACEHOLDER = re.compile(r"\{(prompt|a|b)\}")

DIALOGUE = """For the following query to a chatbot, which response is more helpful?

Query: {prompt}

Response A:
{a}

Response B:
{b}

"""
DIALOGUE_ASK = """FIRST provide a one-sentence comparison of the two responses and explain which you feel is more \
helpful. SECOND, on a new line, state only "A" or "B" to indicate which response is more helpful. Your response \
should use the format:
Comparison: <one-sentence comparison and explanation>
More helpful: <"A" or "B">"""

SUMMARIZATION = """Which of the following summaries does a better job of summarizing the most important points in \
the given forum post?

Post:
{prompt}

Summary A:
{a}

Summary B:
{b}

"""
SUMMARIZATION_ASK = """FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and \
why. SECOND, on a new line, state only "A" or "B" to indicate your choice. Your response should use the format:
Comparison: <one-sentence comparison and explanation>
Preferred: <"A" or "B">"""


@dataclass(frozen=True)
class JudgePrompt:
    """A judging prompt: the question with `{prompt}`, `{a}`, `{b}`, and how its answer is asked for and labelled.

    Attributes:
        name: "dialogue", "summarization" or the template file's path.
        text: the whole prompt, as an API judge is asked it.
        letter_text: the prompt asking for the letter only (a local LM judge's); a user file's own text.
        label: what precedes the answer on its line ("More helpful"), or None when the template names none.
    """

    name: str
    text: str
    letter_text: str
    label: str | None

    def render(self, prompt: str | list[dict], a: str, b: str, letter_only: bool = False) -> str:
        """The judging prompt for one pair, response `a` shown first. Placeholders are filled in one pass, so a
        response that contains "{b}" stays as written."""
        values = {"prompt": prompt_text(prompt), "a": a.strip(), "b": b.strip()}
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.letter_text if letter_only else self.text)

    def parse(self, answer: str) -> Choice | None:
        """"A", "B" or None (unparsed): see `parse_choice`."""
        return parse_choice(answer, self.label)


BUILTIN = {
    "dialogue": JudgePrompt("dialogue", DIALOGUE + DIALOGUE_ASK,
                            DIALOGUE + 'State only "A" or "B" to indicate which response is more helpful.',
                            "More helpful"),
    "summarization": JudgePrompt("summarization", SUMMARIZATION + SUMMARIZATION_ASK,
                                 SUMMARIZATION + 'State only "A" or "B" to indicate your choice.', "Preferred"),
}


def load_prompt(spec: str) -> JudgePrompt:
    """The judging prompt `judge.template` names: "dialogue", "summarization" or a template file.

    Raises:
        ConfigError: the file does not exist, or lacks one of the placeholders.
    """
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"judge.template {spec!r} is neither {' nor '.join(BUILTIN)} nor an existing file")
    text = path.read_text(encoding="utf-8")
    missing = [f"{{{p}}}" for p in PLACEHOLDERS if f"{{{p}}}" not in text]
    if missing:
        raise ConfigError(f"judge.template {spec}: the template has no {', '.join(missing)} (it needs {{prompt}}, "
                          "{a} and {b})")
    return JudgePrompt(str(path), text, text, template_label(text))


def template_label(text: str) -> str | None:
    """The answer label of a template: the text before the colon on its last line, when that line names A and B.

    >>> template_label('...\\nComparison: <one sentence>\\nWinner: <"A" or "B">\\n')
    'Winner'
    """
    last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    label, colon, rest = last.partition(":")
    if colon and re.search(r"\bA\b", rest) and re.search(r"\bB\b", rest) and 0 < len(label.split()) <= 4:
        return _clean_line(label) or None
    return None


def prompt_text(prompt: str | list[dict]) -> str:
    """A prompt as a judge reads it: a string as it is (an HH-style "\\n\\nHuman: ...\\n\\nAssistant:" included),
    one user message as its text, a conversation as "User: ...\\nAssistant: ..." lines (`data.chat.plain_text`, as
    text rewards read it).

    >>> prompt_text([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}])
    'User: Hi\\nAssistant: Hello.'
    """
    if isinstance(prompt, str):
        return prompt.strip()
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"prompt message {i} is not a {{role, content}} object: {message!r}"[:200], field="prompt")
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return str(prompt[0]["content"]).strip()  # a single query reads as it is
    return plain_text(prompt).strip()


def parse_choice(answer: str, label: str | None = None) -> Choice | None:
    """Which response a judge's answer names: "A", "B", or None when no answer line can be read for sure.

    The last line starting with `label` decides (its value, or the next line when the value is empty): "A", "B",
    "Response A", '"B"', "**A**", "A." or "A, because ..." (when the rest names no "B"). Without such a line, the last
    line that is only a letter (optionally after a short "Something:") decides. Anything else is None.

    >>> parse_choice('Comparison: A is vague, B answers.\\nMore helpful: "B"', "More helpful")
    'B'
    >>> parse_choice("Comparison: A is better than B.") is None  # a sentence is no answer line
    True
    """
    lines = [_clean_line(line) for line in (answer or "").splitlines()]
    if label:
        pattern = re.compile(rf"^{re.escape(label)}\s*:\s*(.*)$", re.IGNORECASE)
        for i in range(len(lines) - 1, -1, -1):
            found = pattern.match(lines[i])
            if found is None:
                continue
            value = found.group(1).strip()
            if value:
                return _lenient(value)
            return _strict(next((line for line in lines[i + 1:] if line), ""))
    for line in reversed(lines):
        head, colon, value = line.partition(":")
        choice = _strict(value if colon and 0 < len(head.split()) <= 4 else line)
        if choice:
            return choice
    return None


def _clean_line(line: str) -> str:
    """A line without markdown emphasis, code marks, list bullets or heading marks."""
    line = re.sub(r"\*\*|__|`", "", line).strip()
    return re.sub(r"^(?:[#>*\-•]+\s*)+", "", line).strip()


_EDGES = " \t\"'“”‘’<>[](){}*_.!"


def _strict(value: str) -> Choice | None:
    """A value that is only a letter: "A", '"b"', "(A)", "Response B", "Summary A."."""
    value = value.strip(_EDGES)
    if value.upper() in ("A", "B"):
        return value.upper()  # type: ignore[return-value]
    found = re.fullmatch(r"(?i:response|summary|answer|option)\s+[\"'“‘(]?([AB])", value)
    return found.group(1) if found else None  # type: ignore[return-value]


def _lenient(value: str) -> Choice | None:
    """A labelled value: a bare letter, or a capital letter first ("A, since it ...") when the rest names no other
    letter."""
    choice = _strict(value)
    if choice:
        return choice
    found = re.match(r"(?:(?i:response|summary)\s+)?[\"'“‘(\[]?([AB])[\"'”’)\]]?(?:[\s.,;:!\-–—]+(.*))?$",
                     value.strip(), re.S)
    if found is None:
        return None
    other = "B" if found.group(1) == "A" else "A"
    return None if re.search(rf"\b{other}\b", found.group(2) or "") else found.group(1)  # type: ignore[return-value]
