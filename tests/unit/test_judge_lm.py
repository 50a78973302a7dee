"""The local LM judge on a tiny random chat model saved like a real checkpoint: the letters' tokens found through the
chat template, p = softmax over logp("A"), logp("B") in both orders, the mirror symmetry of swapping the two
responses, left-padded batches equal to one prompt at a time, and the plain forward as the reference."""

from __future__ import annotations

import pytest
import torch

from dpokit.core.errors import ConfigError
from dpokit.data.chat import render_prompt
from dpokit.eval.judge_lm import LocalLMJudge, letter_ids
from dpokit.eval.judge_prompts import BUILTIN
from dpokit.eval.judges import Comparison, JudgeConfig
from dpokit.models.tiny import tiny_llama, train_bpe_tokenizer
from judge_checks import check_letter_orders  # tests/judge_checks.py

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["What is the capital of France? Paris. I like turtles. Response A: Response B: which response is more "
         "helpful? State only A or B to indicate which. Tell me a joke about cats and dogs."] * 20
OPEN = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")
QUESTIONS = [
    Comparison("What is the capital of France?", "Paris.", "I like turtles."),
    Comparison([{"role": "user", "content": "Tell me a joke."}], "Cats and dogs walk into a bar.", "No."),
    Comparison("\n\nHuman: Capital of France?\n\nAssistant:", "It is Paris, of course, the capital.", "Turtles."),
]


def save_tiny(path) -> str:
    """A tiny chat Llama whose weight matrices are drawn wider than at init (std 0.4, not 0.02), so that what it
    predicts depends on the prompt: the padding and order tests then have something to catch."""
    tokenizer = train_bpe_tokenizer(TEXTS, vocab_size=300)
    model = tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.normal_(0.0, 0.4, generator=generator)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory) -> LocalLMJudge:
    path = save_tiny(tmp_path_factory.mktemp("tiny-chat"))
    judge = LocalLMJudge(JudgeConfig(source=f"lm:{path}", batch_size=2))
    judge.show_progress = False
    return judge


def test_both_orders_give_probabilities_from_the_two_letters(tiny_judge):
    judgments = tiny_judge.judge(QUESTIONS)
    check_letter_orders(judgments, 3)
    for judgment in judgments:
        mean = sum(o.p for o in judgment.orders) / 2
        assert judgment.verdict == ("model" if mean > 0.5 else "baseline" if mean < 0.5 else "tie")


def test_swapping_the_responses_mirrors_the_probabilities(tiny_judge):
    """Comparison (x, y) in order "model first" shows A = x, B = y; the swapped comparison (y, x) shows that same
    prompt in its "baseline first" order. So p'(model first) = 1 - p(baseline first), p'(baseline first) = 1 -
    p(model first), and the verdict flips."""
    swapped = [Comparison(c.prompt, c.baseline, c.completion) for c in QUESTIONS]
    for judgment, mirror in zip(tiny_judge.judge(QUESTIONS), tiny_judge.judge(swapped), strict=True):
        assert mirror.orders[0].p == pytest.approx(1 - judgment.orders[1].p, abs=1e-5)
        assert mirror.orders[1].p == pytest.approx(1 - judgment.orders[0].p, abs=1e-5)
        assert mirror.orders[0].raw == pytest.approx(judgment.orders[1].raw, abs=1e-5)
        flipped = {"model": "baseline", "baseline": "model", "tie": "tie"}
        assert mirror.verdict == flipped[judgment.verdict]


def test_left_padded_batches_equal_the_plain_forward_one_prompt_at_a_time(tiny_judge):
    texts = [render_prompt(tiny_judge.tokenizer, BUILTIN["dialogue"].render(c.prompt, c.completion, c.baseline,
                                                                             letter_only=True)) for c in QUESTIONS]
    assert len({len(tiny_judge.tokenizer(t)["input_ids"]) for t in texts}) == 3  # padding is exercised
    batched = tiny_judge.letter_logps(texts)
    assert batched.a.std() > 0.1  # the prompt matters to this model
    model, tokenizer = tiny_judge.model, tiny_judge.tokenizer
    for i, text in enumerate(texts):
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logps = model(ids).logits[0, -1].float().log_softmax(-1)
        a, b = tiny_judge.letters
        assert batched.a[i].item() == pytest.approx(logps[a].item(), abs=1e-4)
        assert batched.b[i].item() == pytest.approx(logps[b].item(), abs=1e-4)


def test_the_letters_are_the_tokens_the_template_opens_a_reply_with(tmp_path):
    chatml_like = train_bpe_tokenizer(TEXTS, vocab_size=300)  # dpokit.models.tiny's template: "<|assistant|>\n" + reply
    prompt = render_prompt(chatml_like, "Which? State only A or B.")
    assert [chatml_like.decode([t]) for t in letter_ids(chatml_like, prompt)] == ["A", "B"]
    open_ended = train_bpe_tokenizer(TEXTS, vocab_size=300)
    open_ended.chat_template = OPEN  # "assistant:" then " A"
    prompt = render_prompt(open_ended, "Which? State only A or B.")
    assert [open_ended.decode([t]) for t in letter_ids(open_ended, prompt)] == [" A", " B"]


def test_a_tokenizer_that_merges_the_letter_into_more_is_refused(tmp_path):
    glued = "{% for m in messages %}{{ m['role'] }}\n{{ m['content'] }}x\n{% endfor %}" \
            "{% if add_generation_prompt %}assistant\n{% endif %}"
    tokenizer = train_bpe_tokenizer(["\nAx\nBx\n"] * 50 + TEXTS, vocab_size=300)
    tokenizer.chat_template = glued
    with pytest.raises(ConfigError, match="does not start with one token for 'A'"):
        letter_ids(tokenizer, render_prompt(tokenizer, "Which?"))


def test_a_model_without_a_chat_template_or_directory_is_refused(tmp_path):
    path = save_tiny(tmp_path / "plain")
    (tmp_path / "plain" / "chat_template.jinja").unlink(missing_ok=True)
    config = (tmp_path / "plain" / "tokenizer_config.json")
    config.write_text(config.read_text().replace('"chat_template"', '"unused_template"'))
    with pytest.raises(ConfigError, match="has no chat template"):
        LocalLMJudge(JudgeConfig(source=f"lm:{path}"))
    with pytest.raises(ConfigError, match="cannot load tokenizer"):
        LocalLMJudge(JudgeConfig(source=f"lm:{tmp_path / 'missing'}"))
