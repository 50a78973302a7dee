"""`dpokit rm` end to end: it recovers a known Bradley–Terry reward, centres it, saves a model transformers loads,
and runs from the CLI on HH pairs with train's data checks."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

import dpokit
from dpokit.cli import main
from dpokit.core.settings import describe_keys
from dpokit.data import load_examples, split_examples
from dpokit.models.loading import load_tokenizer
from dpokit.models.tiny import tiny_llama
from dpokit.rewards.reward_model import MARKER, tokenize_for_scoring
from dpokit.rewards.sources import load_reward

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ITEMS = [f"w{i}" for i in range(8)]  # the responses: one token each
TRUE = torch.tensor([0.2857, -2.0, 2.0, -0.2857, -0.8571, 0.8571, -1.4286, 1.4286])  # r*(y), spaced 4/7 apart


def sample_pairs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs of distinct items, the winner drawn with P(yw ≻ yl) = σ(r*(yw) − r*(yl)): (winners, losers)."""
    i = torch.randint(0, 8, (n,), generator=generator)
    j = (i + torch.randint(1, 8, (n,), generator=generator)) % 8
    first_wins = torch.rand(n, generator=generator) < torch.sigmoid(TRUE[i] - TRUE[j])
    return torch.where(first_wins, i, j), torch.where(first_wins, j, i)


def write_pairs(path: Path, winners: torch.Tensor, losers: torch.Tensor) -> None:
    rows = [{"prompt": "Q", "chosen": " " + ITEMS[w], "rejected": " " + ITEMS[v]}
            for w, v in zip(winners.tolist(), losers.tolist(), strict=True)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def bradley_terry_mle(winners: torch.Tensor, losers: torch.Tensor) -> torch.Tensor:
    """The tabular maximum-likelihood rewards of the same pairs, centred: what a perfect learner would find."""
    theta = torch.zeros(8, requires_grad=True)
    optimizer = torch.optim.LBFGS([theta], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -torch.nn.functional.logsigmoid(theta[winners] - theta[losers]).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return (theta - theta.mean()).detach()


@pytest.fixture(scope="module")
def known_reward(tmp_path_factory) -> dict:
    """A reward model trained on 1,600 pairs sampled from r* (400 more held out), through `dpokit.rm`: ~4 s."""
    return train_known(tmp_path_factory.mktemp("known-bt"), lora=False)


def train_known(root: Path, lora: bool) -> dict:
    """With `lora`: adapters on every linear layer, the score head trained in full (10 epochs: the embeddings stay
    frozen, so it learns slower), saved merged plus the adapter."""
    vocab = {token: i for i, token in enumerate(["<|endoftext|>", "<|pad|>", "Q", *ITEMS])}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="<|endoftext|>", pad_token="<|pad|>")
    tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=0).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    generator = torch.Generator().manual_seed(0)
    train, held_out = sample_pairs(1600, generator), sample_pairs(400, generator)
    write_pairs(root / "train.jsonl", *train)
    write_pairs(root / "held_out.jsonl", *held_out)
    cfg = dpokit.RewardModelConfig()
    cfg.model.name_or_path, cfg.train.output_dir = str(root / "base"), str(root / "rm")
    cfg.data.path, cfg.data.eval_path, cfg.data.max_length = str(root / "train.jsonl"), str(root / "held_out.jsonl"), 8
    cfg.train.batch_size, cfg.train.epochs, cfg.train.lr = 50, 5, 1e-2
    cfg.train.optimizer, cfg.train.schedule, cfg.train.progress = "adamw", "cosine", False
    if lora:
        cfg.model.lora.enabled, cfg.model.lora.target_modules, cfg.train.epochs = True, "all-linear", 10
    summary = dpokit.rm(cfg)
    return {"dir": root / "rm", "summary": summary, "train": train, "held_out": held_out,
            "score": load_reward(str(root / "rm"))}


def test_recovers_the_known_reward_up_to_a_constant(known_reward):
    """Learned rewards of the 8 responses, centred, against r* (centred): differences within 0.35 (the sampling
    error of 1,600 pairs: their tabular MLE is itself 0.30 off), and within 0.25 of that MLE (0.16 here).
    Untrained rewards are ≈ 0 (off by up to 2), and rewards right in order but half the scale are off by 1."""
    learned = torch.tensor(known_reward["score"](["Q"] * 8, [" " + item for item in ITEMS]))
    learned, truth = learned - learned.mean(), TRUE - TRUE.mean()
    assert torch.corrcoef(torch.stack([learned, truth]))[0, 1] > 0.99
    assert (learned - truth).abs().max() < 0.35
    assert (learned - bradley_terry_mle(*known_reward["train"])).abs().max() < 0.25
    assert learned.argsort().tolist() == truth.argsort().tolist()


def test_a_lora_reward_model_learns_the_order_and_saves_its_head_merged(tmp_path):
    """LoRA on every linear layer plus the score head in full: r*'s order recovered (correlation 0.995 measured;
    frozen embeddings cap it below full training's 0.999); the saved directory is the merged model, which
    transformers' own forward scores as dpokit's scorer does, plus the adapter alone."""
    known = train_known(tmp_path, lora=True)
    learned = torch.tensor(known["score"](["Q"] * 8, [" " + item for item in ITEMS]))
    assert torch.corrcoef(torch.stack([learned, TRUE]))[0, 1] > 0.99
    assert learned.argsort().tolist() == TRUE.argsort().tolist()
    assert (known["dir"] / "adapter" / "adapter_config.json").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(known["dir"]).eval()
    assert not any("lora" in name for name, _ in model.named_parameters())
    offset = getattr(model.config, MARKER)["offset"]
    examples = tokenize_for_scoring(load_tokenizer(str(known["dir"])), getattr(model.config, MARKER), ["Q"] * 8,
                                    [" " + i for i in ITEMS])
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor([ex.prompt_ids + ex.response_ids[0] for ex in examples])).logits[:, 0]
    torch.testing.assert_close(theirs - offset, learned, atol=1e-5, rtol=1e-5)


def test_held_out_metrics_are_those_of_the_true_order(known_reward):
    """With r*'s order recovered, the model picks r*'s winner on every held-out pair: its held-out accuracy is
    exactly the accuracy r* itself has on these sampled labels, and its margin about r*'s mean margin."""
    winners, losers = known_reward["held_out"]
    final = known_reward["summary"].final_eval
    assert final["num_pairs"] == 400
    assert final["rewards/accuracies"] == pytest.approx((TRUE[winners] > TRUE[losers]).float().mean().item())
    assert final["rewards/margins"] == pytest.approx((TRUE[winners] - TRUE[losers]).mean().item(), abs=0.15)


def test_rewards_are_centred_and_transformers_loads_the_same_model(known_reward):
    """dpokit's scorer averages 0 over the training responses; transformers' own forward of the saved directory
    gives the same rewards plus the stored offset, which metrics.jsonl also records."""
    winners, losers = known_reward["train"]
    responses = [" " + ITEMS[i] for i in winners.tolist() + losers.tolist()]
    assert sum(known_reward["score"](["Q"] * len(responses), responses)) / len(responses) == pytest.approx(0, abs=1e-5)

    model = AutoModelForSequenceClassification.from_pretrained(known_reward["dir"]).eval()
    offset = getattr(model.config, MARKER)["offset"]
    callback = [json.loads(line) for line in (known_reward["dir"] / "metrics.jsonl").read_text().splitlines()
                if '"callback"' in line]
    assert callback == [{"step": known_reward["summary"].steps, "split": "callback", "reward_offset": offset}]
    tokenizer = load_tokenizer(str(known_reward["dir"]))
    examples = tokenize_for_scoring(tokenizer, getattr(model.config, MARKER), ["Q"] * 8, [" " + i for i in ITEMS])
    ids = torch.tensor([ex.prompt_ids + ex.response_ids[0] for ex in examples])  # Q w eos: 3 tokens each
    with torch.no_grad():
        theirs = model(input_ids=ids).logits[:, 0] - offset
    ours = torch.tensor(known_reward["score"](["Q"] * 8, [" " + i for i in ITEMS]))
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert abs(offset) > 1e-3  # centring really moved something


def test_cli_rm_on_hh_pairs(model_dir, hh_path, tmp_path, capsys):
    """12 HH pairs, 4 held out: the run directory, metrics, a reward `load_reward` scores centred on the training
    pairs, and transformers' forward of padded rows of dpokit's ids equal to it (plus the offset). max_length 600 cuts
    none of them: scoring one completion tokenizes it as training did when its pair was not cut."""
    out = tmp_path / "rm"
    data = tmp_path / "hh16.jsonl"
    with gzip.open(hh_path, "rt") as f:
        data.write_text("".join(line for _, line in zip(range(16), f, strict=False)))
    code = main(["rm", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--max-steps", "3",
                 "--batch-size", "4", "--max-length", "600", "--lr", "1e-3", "data.on_bad_record=skip",
                 "data.eval_fraction=0.25", "train.optimizer=adamw", "train.progress=false"])
    assert code == 0 and "rm finished: 3 steps" in capsys.readouterr().out
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = {"loss", "rewards/accuracies", "rewards/margins", "rewards/mean", "rewards/std", "grad_norm"}
    assert [r["split"] for r in lines] == ["train"] * 3 + ["callback", "eval"] and keys <= set(lines[0])
    assert "logps/chosen" not in lines[0] and lines[-1]["num_pairs"] > 0
    notes = " ".join(json.loads((out / "summary.json").read_text())["notes"])
    assert "prompts truncated: 0; examples with responses truncated: 0" in notes and "rewards centred" in notes
    assert "loss:" not in (out / "config.yaml").read_text()  # the rm config: model, data, train

    examples = load_examples(str(data), on_bad_record="skip").examples
    train = split_examples(examples, 0.25, seed=0).train  # the training pairs, as the run split them
    prompts = [ex.prompt for ex in train for _ in ex.responses]
    responses = [r for ex in train for r in ex.responses]
    score = load_reward(str(out))
    ours = torch.tensor(score(prompts, responses))
    assert ours.std() > 1e-2 and ours.mean().abs() < 1e-4

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    settings = getattr(model.config, MARKER)
    tokenized = tokenize_for_scoring(load_tokenizer(str(out)), settings, prompts, responses)
    rows = [ex.prompt_ids + ex.response_ids[0] for ex in tokenized]
    ids = torch.full((len(rows), max(map(len, rows))), model.config.pad_token_id)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    with torch.no_grad():
        theirs = model(input_ids=ids, attention_mask=(ids != model.config.pad_token_id).long()).logits[:, 0]
    torch.testing.assert_close(theirs - settings["offset"], ours, atol=1e-4, rtol=1e-4)


def test_cli_rm_names_a_bad_record_and_lists_its_keys(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    code = main(["rm", "--model", str(model_dir), "--data", str(bad), "--output-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:2" in err and "'rejected'" in err

    with pytest.raises(SystemExit) as stop:
        main(["rm", "--help"])
    printed = capsys.readouterr().out
    assert stop.value.code == 0
    for line in describe_keys(dpokit.RewardModelConfig).splitlines():
        assert line.split()[0] in printed
    assert "loss.beta" not in printed and "reference.mode" not in printed


LORA = ["model.lora.enabled=true"]


@pytest.mark.parametrize(("two_extra", "one_extra"), [([], []), (["train.fsdp=true"], []), (LORA, LORA),
                                                      (["train.fsdp=true", *LORA], LORA)],
                         ids=["ddp", "fsdp", "ddp-lora", "fsdp-lora"])
def test_two_processes_equal_one_process_with_accumulation(model_dir, hh_path, tmp_path, two_extra, one_extra):
    """DDP or FSDP2 over 2 CPU processes (torchrun, gloo), full or LoRA, trains the weights one process trains with
    grad_accum=2, and centres them by the same offset (every process scores the training set through the wrapped
    engine: sharded weights are gathered as in training)."""
    data = tmp_path / "hh24.jsonl"
    with gzip.open(hh_path, "rt") as f:
        data.write_text("".join(line for _, line in zip(range(24), f, strict=False)))
    args = ["rm", "--model", str(model_dir), "--data", str(data), "--max-steps", "3", "--lr", "1e-3", "--batch-size",
            "2", "--max-length", "128", "data.on_bad_record=skip", "data.eval_fraction=0.2", "train.optimizer=adamw",
            "train.progress=false"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(port), "-m", "dpokit", *args, *two_extra, "--output-dir",
                          str(tmp_path / "two")], capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert main([*args, *one_extra, "--output-dir", str(tmp_path / "one"), "train.grad_accum=2"]) == 0
    weights = [load_file(str(tmp_path / run / "model.safetensors")) for run in ("two", "one")]
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], atol=1e-5, rtol=1e-5)
    offsets = [json.loads((tmp_path / run / "config.json").read_text())[MARKER]["offset"] for run in ("two", "one")]
    assert offsets[0] == pytest.approx(offsets[1], abs=1e-5)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["sharded"] == ("train.fsdp=true" in two_extra)
