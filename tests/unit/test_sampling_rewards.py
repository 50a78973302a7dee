"""Sampling draws from the model's own distribution, reproducibly; rewards load from every source and check output."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from dpokit.core.errors import ConfigError, DataError
from dpokit.core.sections import SamplingSettings
from dpokit.lm.sampling import left_pad, sample, sample_ids
from dpokit.models.tiny import tiny_llama, train_bpe_tokenizer
from dpokit.rewards.sources import load_reward

TEXTS = ["the acting was great. i loved it.", "the plot was dull, but the music was lovely.",
         "it is about a chef who opens a restaurant.", "what a terrible film!"] * 20


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def review_tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=320)


@pytest.fixture(scope="module")
def review_model(review_tokenizer):
    return tiny_llama(review_tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)


def test_left_pad_right_aligns_rows():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("shared", [1, 20000], ids=["prefill-per-row", "one-shared-prefill"])
def test_first_token_frequencies_match_the_softmax(shared):
    """60 tokens, near-uniform: transformers' default top_k=50 would never draw 10 of them (~17% of the mass). The
    same with the 20,000 rows sharing one prefill of the prompt (K samples of one prompt)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, eos_token_id=0,
                                         pad_token_id=1, bos_token_id=None)).eval()
    model.generation_config.top_k = 5  # a checkpoint's own defaults must not leak into the draw either
    prompt = [7, 8, 9]
    n = 20000
    drawn = sample_ids(model, [prompt] * n, SamplingSettings(max_new_tokens=1, batch_size=n), stop=0, pad_id=1,
                       shared=shared)
    counts = torch.bincount(torch.tensor([ids[0] for ids in drawn]), minlength=60).double() / n
    with torch.no_grad():
        probs = model(torch.tensor([prompt])).logits[0, -1].double().softmax(-1)
    total_variation = 0.5 * (counts - probs).abs().sum().item()
    assert total_variation < 0.04  # ~0.014 expected from sampling noise alone
    assert (counts > 0).all()
    assert model.generation_config.top_k == 5  # restored


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_k_samples_sharing_one_prefill_are_the_plain_paths_draws(temperature):
    """Prompts of 1, 2, 4 and 6 tokens (left padding of 0-5), K = 3, 8 new tokens: the same rows in the same order
    draw the same ids with the prefill shared as with a prefill per row, greedy and sampled: the seeded draw at each
    step sees the same logits (to float precision), so the same samples come out, not only the same distribution."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=0,
                                         pad_token_id=1, bos_token_id=None)).eval()
    prompts = [[5], [11, 12], [13, 14, 15, 16], [20, 21, 22, 23, 24, 25]]
    rows = [p for p in prompts for _ in range(3)]
    settings = SamplingSettings(max_new_tokens=8, temperature=temperature, batch_size=6)  # 2 prompts x 3 per call
    plain = sample_ids(model, rows, settings, stop=0, pad_id=1, seed=5)
    shared = sample_ids(model, rows, settings, stop=0, pad_id=1, seed=5, shared=3)
    assert shared == plain
    distinct = len({tuple(ids) for ids in plain})
    assert distinct == 4 if temperature == 0 else distinct > 4  # greedy repeats a prompt's sample; sampling does not
    with pytest.raises(ValueError, match="runs of 3"):
        sample_ids(model, [[5], [6], [5]], settings, stop=0, pad_id=1, shared=3)


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(review_model, review_tokenizer):
    prompts = ["the acting", "what a"]
    settings = SamplingSettings(max_new_tokens=6, batch_size=2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = sample(review_model, review_tokenizer, prompts, settings, seed=3, num_samples=2)
    assert torch.rand(1).item() == before.item()
    second = sample(review_model, review_tokenizer, prompts, settings, seed=3, num_samples=2)
    assert first.completion_ids == second.completion_ids
    assert first.prompts == ["the acting", "the acting", "what a", "what a"]
    other = sample(review_model, review_tokenizer, prompts, settings, seed=4, num_samples=2)
    assert other.completion_ids != first.completion_ids
    for ids, text, done in zip(first.completion_ids, first.completions, first.finished, strict=True):
        assert 1 <= len(ids) <= 6
        assert done == (ids[-1] == review_tokenizer.eos_token_id)
        assert text == review_tokenizer.decode([t for t in ids if t != review_tokenizer.eos_token_id],
                                               skip_special_tokens=True)


def test_sampling_sees_the_prompt_ids_training_sees(review_model, review_tokenizer):
    """One prompt encoder: odd prompts (trailing spaces, empty, chat-rendered) give the same ids in both."""
    from dpokit.data.records import Example
    from dpokit.data.tokenize import TokenizeSettings, tokenize_examples

    chat = review_tokenizer.apply_chat_template([{"role": "user", "content": "the plot?"}], tokenize=False,
                                                add_generation_prompt=True)
    prompts = ["the acting was ", "what a", "", "   ", "the music  ", chat]
    trained = tokenize_examples([Example(p, (" great.", " bad.")) for p in prompts], review_tokenizer,
                                TokenizeSettings()).examples
    sampled = sample(review_model, review_tokenizer, prompts, SamplingSettings(max_new_tokens=2), seed=0)
    assert sampled.prompt_ids == [list(ex.prompt_ids) for ex in trained]
    assert sampled.prompt_ids[2] == sampled.prompt_ids[3] == [review_tokenizer.eos_token_id]  # empty: a boundary
    assert review_tokenizer.decode(sampled.prompt_ids[5]) == chat.rstrip(" ")


def test_greedy_decoding_is_deterministic(review_model, review_tokenizer):
    settings = SamplingSettings(max_new_tokens=5, temperature=0.0)
    a = sample(review_model, review_tokenizer, ["the plot"], settings, seed=0)
    b = sample(review_model, review_tokenizer, ["the plot"], settings, seed=99)
    assert a.completion_ids == b.completion_ids


@pytest.mark.parametrize(("field", "value"), [("max_new_tokens", 0), ("temperature", -1.0), ("top_p", 0.0)])
def test_bad_sampling_settings_fail_clearly(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplingSettings(**{field: value}).check()


def test_vader_scores_the_completion_or_the_full_text():
    reward = load_reward("vader")
    scores = reward(["i hated", "i hated"], [" it. then it was great and lovely.", " it. awful, terrible film."])
    assert scores[0] > 0.5 > -0.5 > scores[1]
    full = load_reward("vader", text="full")
    assert full(["terrible, awful:"], [" ok"])[0] < 0 < reward(["terrible, awful:"], [" ok"])[0]


def test_callable_reward_from_a_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text("def score(prompts, completions):\n    return [float(len(c)) for c in completions]\n"
                    "def broken(prompts, completions):\n    return [float('nan')] * len(completions)\n")
    assert load_reward(f"{path}:score")(["p", "q"], ["ab", "abcd"]) == [2.0, 4.0]
    with pytest.raises(DataError, match="finite"):
        load_reward(f"{path}:broken")(["p"], ["x"])
    with pytest.raises(ConfigError, match="no function"):
        load_reward(f"{path}:missing")
    with pytest.raises(ConfigError, match="cannot import"):
        load_reward("no_such_module_xyz:score")


def test_classifier_reward_is_the_chosen_label_logit(tmp_path, review_tokenizer):
    config = LlamaConfig(vocab_size=len(review_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=2,
                         id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                         pad_token_id=review_tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    review_tokenizer.save_pretrained(tmp_path)
    texts = [" great.", " a long and dull film, really."]
    reward = load_reward(str(tmp_path), label="POSITIVE")
    got = reward(["x", "y"], texts)
    with torch.no_grad():
        expected = [model(torch.tensor([review_tokenizer(t)["input_ids"]])).logits[0, 1].item() for t in texts]
    assert got == pytest.approx(expected, abs=1e-5)
    assert all(math.isfinite(s) for s in got)
    with pytest.raises(ConfigError, match="2 labels"):
        load_reward(str(tmp_path))
    with pytest.raises(ConfigError, match="no label 'HAPPY'"):
        load_reward(str(tmp_path), label="HAPPY")


def test_unknown_reward_source_fails_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="neither 'vader'"):
        load_reward(str(tmp_path / "nothing-here"))


def test_chat_preferences_hold_the_templates_text_and_train_on_the_sampled_ids(review_model, review_tokenizer,
                                                                               tmp_path):
    """Frontier data with chat on: prompts rendered with the generation prompt, replies as the template renders
    them; tokenized for training they give the sampled prompt ids, and one end of turn per response."""
    from dpokit.data import load_examples
    from dpokit.data.chat import render_prompt
    from dpokit.data.tokenize import TokenizeSettings, tokenize_examples
    from dpokit.rewards.preferences import build_preferences
    from dpokit.rewards.sources import Reward

    prompts = ["the plot", "what a"]
    length = Reward("length", lambda p, c: [float(len(x)) for x in c])
    settings = SamplingSettings(max_new_tokens=6)
    files = build_preferences(review_model, review_tokenizer, prompts, length, 3, settings, tmp_path, seed=0,
                              progress=False, chat=True)
    examples = load_examples(str(files.pairs_path), format="explicit").examples
    assert examples and {ex.prompt for ex in examples} <= {render_prompt(review_tokenizer, p) for p in prompts}
    sampled = sample(review_model, review_tokenizer, prompts, settings, seed=0, chat=True)
    tokenized = tokenize_examples(examples, review_tokenizer, TokenizeSettings()).examples
    ids_of = {render_prompt(review_tokenizer, p): ids for p, ids in zip(prompts, sampled.prompt_ids, strict=True)}
    eos = review_tokenizer.eos_token_id
    for ex, tok in zip(examples, tokenized, strict=True):
        assert list(tok.prompt_ids) == ids_of[ex.prompt]
        assert all(list(r).count(eos) == 1 for r in tok.response_ids)
