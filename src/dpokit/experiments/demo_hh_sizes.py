"""The HH demo's sizes: how big each stage is, and how long the default is expected to take (`HHSize`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class HHSize:
    """How big each stage is.

    FULL is sized for under an hour on 2 CPU cores. Measured whole (2026-12-05, seed 0, 2 cores, 2 torch threads):
    1,504 s (25 min), stage by stage: GGUF 15 s; judge reward model 172 s; Best-of-N's reward model 137 s;
    Preferred-FT 84 s; DPO from πref 152 s; DPO from instruct 136 s; online DPO 353 s; judge agreement 89 s;
    implicit rewards 57 s; win rates 169 s; Best-of-N 139 s (docs/commands/demo.md, HH results). The estimate made
    before that run, kept for how it was obtained (it came out ~2x high, mostly in sampling), per stage (2 idle
    cores, 2 torch threads), came from two sources.
    Training is scaled by steps and tokens from the last measured full run
    of the earlier protocol (docs/commands/demo.md: reward model 871 s for 60 steps of 8 pairs ≤ 1,000 characters,
    ~250 s of it the centring pass over 1,280 responses; Preferred-FT 482 s / 60 steps; DPO 947 s / 60 steps; pairs
    ≤ 600 characters here have 0.76 of those pairs' characters). Sampling and judging were timed on this machine at
    their real per-item cost, under load, by CPU time / 2: reward-model judge 0.27 s per response, SmolLM2 judge
    0.5 s per judging prompt, sampling 0.8–1.7 s per reply of ≤ 48 tokens (the earlier run's Best-of-4, 640 replies
    with scores in 990 s idle, agrees: ~1.2 s at 64 tokens); 0.8 s per reply of ≤ 40 tokens is used below.

        GGUF -> safetensors 20 s; judge reward model (16 steps + centring 256 responses) ~180 s; Best-of-N's
        reward model ~180 s; Preferred-FT (16 steps) ~110 s; DPO from πref ~210 s; DPO from instruct ~210 s;
        online DPO (2 rounds: 256 replies ~205 s, 256 reward calls ~70 s, before-round evaluations ~50 s,
        2 x 8 steps ~100 s, loads and saves ~40 s) ~465 s;
        judge agreement on 128 pairs (reward model 256 responses ~70 s; SmolLM2 256 prompts ~130 s) ~200 s;
        implicit rewards (5 arms x 32 pairs, each with πref) ~80 s;
        win rates (5 arms x 3 temperatures x 32 prompts = 480 replies ~385 s, KL ~40 s, judging: reward model
        ~140 s | SmolLM2 960 prompts ~480 s) ~565 s | ~905 s;
        Best-of-N (32 prompts x 16 = 512 replies ~410 s, 512 reward calls ~140 s, judging 96: ~25 s | ~95 s)
        ~575 s | ~645 s;
        total ~2,800 s (47 min) when the reward-model judge agrees best, ~3,200 s (53 min) when SmolLM2 does.
    The sampling figure is the least certain: at 1.2 s per reply the total grows by ~8 minutes; a profiled call at a
    quieter moment (4 replies x 8 tokens in 0.69 s) suggests it may be nearer 0.3 s at batch 32.

    QUICK: the test suite's run took 20 min wall on 2 cores shared with other jobs (load ~5; 630-690 s of CPU in two
    runs): fixed costs (model loads and saves, one per stage and arm) dominate at that size; ~5-8 min on 2 idle cores
    (an estimate).

    GPU is a preset for a machine with a CUDA GPU (closer to the paper: more pairs and steps, every temperature, N up
    to 128, 128 new tokens); it has not been run. Its expected time on one H100, ~40-60 minutes, is an estimate, not
    a measurement: six trainings of 144 steps of 16 short sequences (~2 min each), Best-of-128's 32,768 replies and
    reward calls in batches of 256 (~15 min), the win rates' 6,400 replies and the judges (~10 min), online DPO's
    2,304 replies (~3 min).
    """

    held_out: int = 128  # single-turn pairs held out: each judge's agreement is measured on all of them
    winrate_prompts: int = 32  # the first held-out prompts each arm answers at each temperature (and Best-of-N)
    accuracy_pairs: int = 32  # the first held-out pairs the implicit rewards are measured on
    judge_pairs: int = 128  # the judge reward model's training pairs
    pref_pairs: int = 128  # preference-training pairs: Preferred-FT, DPO, Best-of-N's reward model, online prompts
    max_chars: int = 600  # pairs whose chosen dialogue is longer are left out (sequence length on CPU)
    max_length: int = 256  # tokens per sequence in training (a few long rejected replies are cut)
    batch_size: int = 8
    sft_steps: int = 16  # Preferred-FT
    dpo_steps: int = 16  # each DPO arm; online DPO spends the same steps over its rounds
    rm_steps: int = 16  # each reward model (judge, Best-of-N's)
    online_rounds: int = 2  # online DPO: pref_pairs / rounds new prompts per round, K = 2 samples each
    lr: float = 3e-6  # DPO and Preferred-FT (AdamW, 5 warmup steps): 2e-5 garbles SmolLM2's answers within steps
    rm_lr: float = 2e-5
    beta: float = 0.1  # the paper's β for HH
    temperatures: tuple[float, ...] = (0.0, 0.5, 1.0)  # 1.0 must be among them: KL and Best-of-N are measured there
    max_new_tokens: int = 40
    bon_ns: tuple[int, ...] = (1, 4, 16)  # one draw of max N per prompt; each N takes the first N samples
    sample_batch_size: int = 32
    lm_judge: bool = True  # also measure SmolLM2 as a local-LM judge (both orders)
    label: str = field(default="full", compare=False)

    def __post_init__(self) -> None:
        if 1.0 not in self.temperatures:
            raise ValueError(f"HHSize.temperatures {self.temperatures} must include 1.0 (KL and Best-of-N use it)")
        if self.dpo_steps % self.online_rounds or self.pref_pairs % self.online_rounds:
            raise ValueError("HHSize: dpo_steps and pref_pairs must divide by online_rounds (equal budgets)")


FULL = HHSize()
QUICK = replace(FULL, held_out=6, winrate_prompts=4, accuracy_pairs=4, judge_pairs=8, pref_pairs=8, max_chars=400,
                max_length=128, batch_size=2, sft_steps=2, dpo_steps=2, rm_steps=2, temperatures=(0.0, 1.0),
                max_new_tokens=8, bon_ns=(1, 2), online_rounds=1, label="quick")
GPU = replace(FULL, held_out=500, winrate_prompts=256, accuracy_pairs=256, judge_pairs=600, pref_pairs=1152,
              max_chars=3000, max_length=768, batch_size=16, sft_steps=144, dpo_steps=144, rm_steps=144,
              online_rounds=4, temperatures=(0.0, 0.25, 0.5, 0.75, 1.0), max_new_tokens=128,
              bon_ns=(1, 4, 16, 64, 128), sample_batch_size=256, label="gpu")
SIZES = {"full": FULL, "quick": QUICK, "gpu": GPU}
