"""`dpokit online` end to end on tiny models: the rounds' files and figures, the fixed point of Bradley–Terry labels,
a stopped run resumed, judges, and one-line errors."""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path

import pytest
import torch
from interrupt import sigterm_after
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import dpokit
from dpokit.cli import main
from dpokit.data import load_examples
from dpokit.data.tokenize import encode_prompts
from dpokit.eval.judges import Judgment

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PROMPTS = ["Human: How do I bake bread?", "Human: What is a good movie?", "Human: Tell me a joke.",
           "Human: How far away is the moon?"]
TIMINGS = ("seconds_sample", "seconds_score", "seconds_eval", "seconds_train")


@pytest.fixture()
def task(tmp_path, model_dir):
    """Prompts, and a reward in a file: the completion's length in characters."""
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / "rew.py").write_text("def length(prompts, completions):\n"
                                     "    return [float(len(c)) for c in completions]\n")
    return tmp_path


def args(task: Path, model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["online", "--model", str(model_dir), "--prompts", str(task / "prompts.txt"), "--reward",
            f"{task / 'rew.py'}:length", "--output-dir", str(out), "--samples-per-prompt", "3", "--max-new-tokens",
            "8", "--batch-size", "4", "--lr", "1e-4", "train.progress=false", *extra]


def rounds(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def test_two_rounds_write_their_data_figures_and_the_final_policy(task, model_dir):
    out = task / "run"
    assert main(args(task, model_dir, out, "--rounds", "2", "--steps-per-round", "2", "--labels", "all_pairs")) == 0
    first, second = rounds(out)
    assert [first["round"], second["round"]] == [1, 2]
    for record, r in ((first, 1), (second, 2)):
        assert record["prompts"] == 4 and record["samples"] == 12
        assert record["label_calls"] == 12 * r  # a reward scores every completion once
        written = load_examples(str(out / f"round_{r}.jsonl")).examples  # dpokit preference JSONL: retrainable
        assert len(written) == record["pairs"]
        assert record["pairs"] + record["tied_pairs"] == 3 * (4 - record["dropped_prompts"])  # K(K-1)/2 per prompt
        assert record["reward_worst"] <= record["reward_mean"] <= record["reward_best"]
        assert (out / f"round_{r}" / "summary.json").is_file()
        assert json.loads((out / f"round_{r}" / "summary.json").read_text())["steps"] == 2
    # round 1 samples the starting model, which is also the reference: KL 0, every log-ratio 0, loss log 2
    assert first["kl"] == 0.0
    assert first["loss_before"] == pytest.approx(math.log(2), abs=1e-6)
    assert second["kl"] > 0  # round 2 samples the trained policy
    assert second["loss_before"] < math.log(2)  # it has learned to prefer the longer completions round 1 showed it
    final = LlamaForCausalLM.from_pretrained(out)  # the final policy loads from the output directory itself
    trained = LlamaForCausalLM.from_pretrained(out / "round_2")
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), trained.state_dict().values(),
                                                 strict=True))


def test_a_run_stopped_mid_round_resumes_to_the_unbroken_runs_rounds(task, model_dir):
    steps = ["--rounds", "2", "--steps-per-round", "30", "train.save_every=0"]
    whole = task / "whole"
    assert main(args(task, model_dir, whole, *steps)) == 0

    cut = task / "cut"
    code, err = sigterm_after([sys.executable, "-m", "dpokit", *args(task, model_dir, cut, *steps)],
                              cut / "round_2", lines=3)
    assert code == 128 + signal.SIGTERM, err
    assert "--resume" in err.strip().splitlines()[-1]
    assert (cut / "round_2.jsonl").is_file() and not (cut / "round_2" / "round.json").is_file()  # stopped mid-round
    assert main(args(task, model_dir, cut, *steps, "--resume")) == 0

    def deterministic(out):
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rounds(out)]
    assert deterministic(cut) == deterministic(whole)
    assert (cut / "round_2.jsonl").read_text() == (whole / "round_2.jsonl").read_text()


def test_two_processes_share_the_sampling_and_train_identical_replicas(task, model_dir):
    """torchrun, 2 processes (gloo): each labels half of the prompts, the main one writes the round, both train it;
    every round ends with the same weights in both processes and one report."""
    import subprocess

    out = task / "ddp"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", "29561", "-m", "dpokit",
                           *args(task, model_dir, out, "--rounds", "2", "--steps-per-round", "2")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("online finished") == 1
    for record in rounds(out):
        assert record["label_calls"] == 12 * record["round"]  # 4 prompts x K = 3, counted over both processes
        assert record["pairs"] == len(load_examples(str(out / f"round_{record['round']}.jsonl")).examples)
        summary = json.loads((out / f"round_{record['round']}" / "summary.json").read_text())
        assert summary["processes"] == 2 and len(set(summary["replica_digests"])) == 1


def test_a_judge_compares_each_completion_with_the_first(task, model_dir):
    """K = 3: two comparisons per prompt; the judge prefers the longer text, so the pivot's wins and losses order
    the group and every kept pair has the longer completion chosen."""

    class LongerWins:
        name = "longer"

        def __init__(self):
            self.asked = 0

        def judge(self, comparisons):
            self.asked += len(comparisons)
            return [Judgment("model" if len(c.completion) > len(c.baseline) else
                             "baseline" if len(c.completion) < len(c.baseline) else "tie") for c in comparisons]

    judge = LongerWins()
    cfg = dpokit.OnlineConfig(prompts=str(task / "prompts.txt"), samples_per_prompt=3, rounds=1, steps_per_round=1,
                              labels="all_pairs", max_new_tokens=8)
    cfg.model.name_or_path, cfg.train.output_dir, cfg.train.progress = str(model_dir), str(task / "judged"), False
    summary = dpokit.online(cfg, judge=judge)
    assert judge.asked == 4 * 2 == summary.rounds[0]["label_calls"]
    for ex in load_examples(str(task / "judged" / "round_1.jsonl")).examples:
        assert len(ex.responses[0]) >= len(ex.responses[1])


def test_bad_input_fails_in_one_line(task, model_dir, capsys):
    (task / "empty.txt").write_text("\n")
    assert main(args(task, model_dir, task / "e", "--prompts", str(task / "empty.txt"))) == 2
    assert "no prompt" in capsys.readouterr().err.lower()
    (task / "nan.py").write_text("def nan(prompts, completions):\n    return [float('nan')] * len(completions)\n")
    assert main(args(task, model_dir, task / "n", "--reward", f"{task / 'nan.py'}:nan")) == 2
    err = capsys.readouterr().err
    assert "not a finite number" in err and "How do I bake bread" in err and "nan.py:nan" in err
    (task / "boom.py").write_text("def boom(prompts, completions):\n    raise RuntimeError('the scorer is down')\n")
    assert main(args(task, model_dir, task / "b", "--reward", f"{task / 'boom.py'}:boom")) == 2
    assert "round 1: " in (err := capsys.readouterr().err) and "RuntimeError: the scorer is down" in err
    assert main(args(task, model_dir, task / "j", "--judge", "lm:x", "--labels", "sampled")) == 2
    assert "labels=sampled" in capsys.readouterr().err
    assert main(args(task, model_dir, task / "twice", "--rounds", "1", "--steps-per-round", "1")) == 0
    assert main(args(task, model_dir, task / "twice", "--rounds", "1", "--steps-per-round", "1")) == 2
    assert "add --resume" in capsys.readouterr().err


# --- the fixed point of Bradley–Terry labels, on a one-step task with a known reward ------------------------------

VOCAB = 9  # eos + t1..t8: every completion is one word


def word_model(tmp_path: Path) -> tuple[Path, LlamaForCausalLM, PreTrainedTokenizerFast]:
    vocab = {"<eos>": 0, **{f"t{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, eos_token_id=0,
                                         pad_token_id=0, bos_token_id=None)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(4)  # πref far from uniform
    path = tmp_path / "start"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


def completion_logps(model, tokenizer) -> torch.Tensor:
    """(8,) log π(y_t | "t1 t2") of the completions y_t = (t, eos) that training scores, t = t1..t8."""
    prompt = encode_prompts(tokenizer, ["t1 t2"])[0]
    out = []
    with torch.no_grad():
        for t in range(1, VOCAB):
            logps = model(torch.tensor([[*prompt, t]])).logits[0].double().log_softmax(-1)
            out.append(logps[len(prompt) - 1, t] + logps[len(prompt), 0])
    return torch.stack(out)


def fixed_point_run(tmp_path: Path, labels: str) -> dict[str, float]:
    """30 rounds, 256 draws of K = 2 one-word completions each, 8 AdamW steps per round, β = 1, fixed reference.
    Returns TV and reward/KL figures over the 8 completions (each distribution renormalised over them)."""
    start, reference, tokenizer = word_model(tmp_path)
    (tmp_path / "p.txt").write_text("t1 t2\n")
    reward_of = {f"t{i}": i / 2 for i in range(1, VOCAB)}

    def reward(prompts, completions):
        return [reward_of.get(c.strip(), -5.0) for c in completions]

    cfg = dpokit.OnlineConfig(prompts=str(tmp_path / "p.txt"), samples_per_prompt=2, rounds=30, prompts_per_round=256,
                              steps_per_round=8, labels=labels, max_new_tokens=1, sample_batch_size=256, max_length=8)
    cfg.model.name_or_path, cfg.train.output_dir = str(start), str(tmp_path / labels)
    cfg.train.batch_size, cfg.train.lr, cfg.train.optimizer, cfg.train.progress = 32, 1e-2, "adamw", False
    cfg.loss.beta = 1.0
    dpokit.online(cfg, reward=reward)
    ref = completion_logps(reference, tokenizer)
    policy = completion_logps(LlamaForCausalLM.from_pretrained(tmp_path / labels).eval(), tokenizer)
    r = torch.tensor([reward_of[f"t{i}"] for i in range(1, VOCAB)], dtype=torch.float64)
    q_ref, q, q_star = ref.softmax(0), policy.softmax(0), (ref + r / cfg.loss.beta).softmax(0)

    def kl(p):
        return float((p * (p / q_ref).log()).sum())

    return {"tv": 0.5 * float((q - q_star).abs().sum()), "tv_ref": 0.5 * float((q_ref - q_star).abs().sum()),
            "reward": float((q * r).sum()), "reward_star": float((q_star * r).sum()),
            "kl": kl(q), "kl_star": kl(q_star)}


def test_sampled_labels_converge_to_the_dpo_optimum(tmp_path):
    """π* ∝ πref·exp(r/β): TV(πref, π*) = 0.35 here; after 30 rounds TV(π, π*) is a noisy figure (the last rounds'
    sampled labels move the policy around π* at lr 1e-2): measured 0.055-0.158 over train.seed 0-3 with AdamW's
    for-loop and fused kernels (0.15 for the fused kernel at seed 0, 0.055 for the for-loop one), so the bound is 0.2:
    well under TV(πref, π*) and far from best_worst's policy, which moves past π* (TV 0.84)."""
    found = fixed_point_run(tmp_path, "sampled")
    assert found["tv_ref"] > 0.3
    assert found["tv"] < 0.2


def test_best_worst_labels_move_past_the_optimum(tmp_path):
    """Deterministic labels have no finite DPO optimum: the policy heads for the best completion, far past π*
    (measured: reward 4.00 vs π*'s 3.04, KL 3.2 vs 0.36 nats)."""
    found = fixed_point_run(tmp_path, "best_worst")
    assert found["reward"] > found["reward_star"] + 0.5
    assert found["kl"] > 3 * found["kl_star"]


def test_rounds_go_to_the_trackers(task, model_dir):
    """train.report_to=[tensorboard]: each round's figures at step = round, read back from the event file."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = task / "tracked"
    assert main(args(task, model_dir, out, "--rounds", "2", "--steps-per-round", "1",
                     "train.report_to=[tensorboard]")) == 0
    (run_dir,) = (out / "tracking" / "tensorboard").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    kl = [(e.step, e.value) for e in events.Scalars("kl")]
    assert kl == [(r["round"], pytest.approx(r["kl"], rel=1e-6)) for r in rounds(out)]


@pytest.mark.parametrize("update", ["fixed", "round"])
def test_lora_rounds_train_against_the_reference_the_setting_names(task, model_dir, update):
    """With LoRA each round saves a merged model plus its adapter and the next round starts from the merged one.
    A fixed reference is the starting model in every round: round 2's policy is not, so its loss before training is
    no longer log 2. A per-round reference is round 2's own starting policy: every log-ratio is 0 again, loss = log 2
    exactly."""
    out = task / f"lora-{update}"
    assert main(args(task, model_dir, out, "--rounds", "2", "--steps-per-round", "2", "--lr", "1e-2",
                     "model.lora.enabled=true", "model.lora.r=4", f"reference.update={update}")) == 0
    first, second = rounds(out)
    assert (out / "round_1" / "adapter").is_dir() and second["kl"] > 0
    assert first["loss_before"] == pytest.approx(math.log(2), abs=1e-6)
    if update == "round":
        assert second["loss_before"] == pytest.approx(math.log(2), abs=1e-6)
    else:
        assert abs(second["loss_before"] - math.log(2)) > 1e-4
