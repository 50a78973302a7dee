"""Judging prompts: the DPO paper's templates, user templates, prompts shown to a judge, and answer parsing that
reads what GPT-4-style judges write and never guesses at anything else."""

from __future__ import annotations

import doctest
import importlib

import pytest

from dpokit.core.errors import ConfigError, DataError
from dpokit.eval.judge_prompts import BUILTIN, load_prompt, parse_choice, prompt_text, template_label

DIALOGUE = "More helpful"
SUMMARY = "Preferred"

PARSED = [
    # the format the paper asks for
    ("Comparison: Response A gives the capital directly, B is off-topic.\nMore helpful: A", DIALOGUE, "A"),
    ("Comparison: B answers the question while A does not.\nMore helpful: B", DIALOGUE, "B"),
    ('Comparison: Summary B keeps the key points.\nPreferred: "B"', SUMMARY, "B"),
    ("Comparison: A is concise.\nPreferred: A.", SUMMARY, "A"),
    # markdown, quotes, brackets, case of the label, surrounding whitespace
    ("**Comparison:** A is vague; B is specific.\n**More helpful:** B", DIALOGUE, "B"),
    ("Comparison: both are short.\n\n**More helpful: A**\n", DIALOGUE, "A"),
    ("Comparison: x\nmore helpful: 'B'", DIALOGUE, "B"),
    ("Comparison: x\nMORE HELPFUL : “A”", DIALOGUE, "A"),
    ("Comparison: x\n- More helpful: `B`", DIALOGUE, "B"),
    ("Comparison: x\nMore helpful: [A]", DIALOGUE, "A"),
    ("Comparison: x\nMore helpful: <B>", DIALOGUE, "B"),
    ("Comparison: x\nMore helpful: Response B", DIALOGUE, "B"),
    ("Comparison: x\nPreferred: Summary A", SUMMARY, "A"),
    ("Comparison: x\nMore helpful: b", DIALOGUE, "B"),
    ("   Comparison: x   \n   More helpful:   A   \n\n", DIALOGUE, "A"),
    # the letter first, then a reason that names no other letter
    ("Comparison: x\nMore helpful: A, because it answers the question.", DIALOGUE, "A"),
    ("Comparison: x\nMore helpful: B - it is accurate.", DIALOGUE, "B"),
    # the value on the next line
    ("Comparison: x\nMore helpful:\n\nB", DIALOGUE, "B"),
    # the last labelled line decides (a judge that first echoes the format)
    ('Comparison: <one-sentence>\nMore helpful: <"A" or "B">\nComparison: A is right.\nMore helpful: A', DIALOGUE,
     "A"),
    # text after the answer line
    ("Comparison: x\nMore helpful: B\n\nNote: both responses are polite.", DIALOGUE, "B"),
    # no label line: the last line that is a bare letter (after a short label)
    ("Comparison: A rambles, B is to the point.\nB", DIALOGUE, "B"),
    ("Comparison: A rambles.\nFinal answer: A", DIALOGUE, "A"),
    ("Comparison: A rambles.\nPreferred: B", DIALOGUE, "B"),  # another template's label still names a letter
    ("A", DIALOGUE, "A"),
    ('"B"', None, "B"),
    ("**Answer:** Response A", None, "A"),
    ("Comparison: x\nMore helpful: A", None, "A"),
]

UNPARSED = [
    ("", DIALOGUE),
    ("I cannot decide; both responses have merits and flaws.", DIALOGUE),
    ("Comparison: Response A is better than Response B.", DIALOGUE),  # a sentence, no answer line
    ("Comparison: A is too long.\nA is worse than B.", DIALOGUE),
    ("Comparison: x\nMore helpful: Both", DIALOGUE),
    ("Comparison: x\nMore helpful: Neither", DIALOGUE),
    ("Comparison: x\nMore helpful: tie", DIALOGUE),
    ("Comparison: x\nMore helpful: A or B", DIALOGUE),
    ("Comparison: x\nMore helpful: A/B", DIALOGUE),
    ('Comparison: x\nMore helpful: <"A" or "B">', DIALOGUE),
    ("Comparison: x\nMore helpful: A, though B is close", DIALOGUE),
    ("Comparison: x\nMore helpful: a summary would help", DIALOGUE),
    ("Comparison: x\nMore helpful: C", DIALOGUE),
    ("Comparison: x\nMore helpful:", DIALOGUE),
    ("Comparison: x\nMore helpful: Answer", DIALOGUE),
    ("The answer is A.", DIALOGUE),  # a sentence naming a letter is not an answer line
    ("A is the first letter of the alphabet and B is the second.", None),
    ("asdf qwerty\n\x00\x01 ]]]", DIALOGUE),
    ("AB", None),
    ("Response C", None),
]


@pytest.mark.parametrize(("answer", "label", "expected"), PARSED)
def test_answers_that_name_a_response_are_read(answer, label, expected):
    assert parse_choice(answer, label) == expected


@pytest.mark.parametrize(("answer", "label"), UNPARSED)
def test_anything_else_is_unparsed_never_guessed(answer, label):
    assert parse_choice(answer, label) is None


def test_the_paper_templates_show_both_responses_and_ask_for_a_labelled_letter():
    dialogue = BUILTIN["dialogue"].render("What is the capital of France?", "Paris.", "I like turtles.")
    assert dialogue.startswith("For the following query to a chatbot, which response is more helpful?\n\n"
                               "Query: What is the capital of France?\n\nResponse A:\nParis.\n\n"
                               "Response B:\nI like turtles.\n\nFIRST provide a one-sentence comparison")
    assert dialogue.endswith('Comparison: <one-sentence comparison and explanation>\nMore helpful: <"A" or "B">')
    summary = BUILTIN["summarization"].render("POST TEXT", "sum one", "sum two")
    assert summary.startswith("Which of the following summaries does a better job of summarizing the most important "
                              "points in the given forum post?\n\nPost:\nPOST TEXT\n\nSummary A:\nsum one\n\n"
                              "Summary B:\nsum two\n\nFIRST")
    assert summary.endswith('Preferred: <"A" or "B">')
    assert (BUILTIN["dialogue"].label, BUILTIN["summarization"].label) == (DIALOGUE, SUMMARY)
    assert template_label(BUILTIN["dialogue"].text) == DIALOGUE
    assert template_label(BUILTIN["summarization"].text) == SUMMARY


def test_the_letter_only_variant_asks_for_the_letter_alone():
    text = BUILTIN["dialogue"].render("Q?", "x", "y", letter_only=True)
    assert "Response A:\nx\n\nResponse B:\ny" in text and "Comparison" not in text
    assert text.endswith('State only "A" or "B" to indicate which response is more helpful.')


def test_placeholders_are_filled_once_so_responses_keep_their_braces():
    text = BUILTIN["dialogue"].render("say {a}", "literally {b}", "{prompt} and {}")
    assert "Query: say {a}" in text and "literally {b}" in text and "{prompt} and {}" in text


def test_prompts_are_shown_as_readable_text():
    hh = "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant:"
    assert prompt_text(hh) == hh.strip()  # an HH-style string as it is
    assert prompt_text([{"role": "user", "content": "What is 2+2?"}]) == "What is 2+2?"
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4."}, {"role": "user", "content": "3+3?"}]
    assert prompt_text(conversation) == "System: Be brief.\nUser: 2+2?\nAssistant: 4.\nUser: 3+3?"
    with pytest.raises(DataError, match="prompt message 1"):
        prompt_text([{"role": "user", "content": "a"}, {"text": "b"}])


def test_a_user_template_file_fills_its_placeholders_and_names_its_label(tmp_path):
    path = tmp_path / "judge.txt"
    path.write_text("Question: {prompt}\nFirst: {a}\nSecond: {b}\nJSON like {\"x\": 1} stays.\n"
                    "Reply with: Reasoning: <text>\nWinner: <\"A\" or \"B\">\n")
    prompt = load_prompt(str(path))
    assert prompt.label == "Winner"
    text = prompt.render("Q?", "one", "two")
    assert text.startswith("Question: Q?\nFirst: one\nSecond: two\nJSON like {\"x\": 1} stays.")
    assert prompt.render("Q?", "one", "two", letter_only=True) == text  # a user file is used as written
    assert prompt.parse("Reasoning: two is wrong.\nWinner: A") == "A"
    assert prompt.parse("Reasoning: one is wrong.\nB") == "B"


def test_a_template_missing_a_placeholder_or_file_is_a_config_error(tmp_path):
    path = tmp_path / "judge.txt"
    path.write_text("Question: {prompt}\nFirst: {a}\nAnswer A or B.")
    with pytest.raises(ConfigError, match=r"judge.template .*judge.txt: the template has no \{b\}"):
        load_prompt(str(path))
    with pytest.raises(ConfigError, match="judge.template 'nope.txt' is neither dialogue nor summarization nor an "
                                          "existing file"):
        load_prompt("nope.txt")


@pytest.mark.parametrize("module", ["dpokit.eval.judge_prompts", "dpokit.eval.judge_openai", "dpokit.eval.judges"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), verbose=False)
    assert result.attempted > 0 and result.failed == 0
