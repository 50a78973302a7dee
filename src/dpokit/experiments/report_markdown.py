"""The Markdown report of a frontier run: setup, figures, tables, what the runs show, and sample completions."""

from __future__ import annotations

from dpokit.experiments.frontier import Evaluation, FrontierResult
from dpokit.experiments.frontier_analysis import FrontierComparison, best_within, headline, verdict
from dpokit.experiments.frontier_config import KINDS


def markdown_report(result: FrontierResult, task: str, comparisons: list[FrontierComparison], budgets: list[float],
                    examples: int) -> str:
    sections = [
        "# Reward–KL frontier: DPO and baselines\n",
        "Reproduces in miniature the controlled sentiment-generation experiment of Rafailov et al. 2023 (DPO, "
        "arXiv 2305.18290, §6.1, Fig. 2 left): every method starts from the same SFT model πref and is trained on "
        "preferences between πref's own samples, judged by a known ground-truth reward. A better method buys more "
        "reward for less divergence KL(π‖πref) from the reference.\n",
        "## Task\n", task.strip() + "\n",
        _setup(result),
        "## What the runs show\n", _findings(result, comparisons),
        "## Frontier\n", "![reward vs KL](frontier.png)\n",
        "Each marker is one evaluation on the held-out prompts during a run (lines join a run's evaluations in "
        "training order); the star is πref. Up and to the left is better.\n",
        "## Final evaluation of each run\n", _headline_table(result),
        "## Best reward within a KL budget\n", _budget_table(result, budgets),
        "## Training curves\n", "![training curves](curves.png)\n", _curves_note(result),
        "## Sample completions (held-out prompts, final models)\n", _examples(result, examples),
        "## Files\n", _files(),
    ]
    return "\n".join(sections)


def _setup(result: FrontierResult) -> str:
    cfg, prefs = result.config, result.preferences
    run = ", ".join(f"{k}={v}" for k, v in cfg.run.items()) or "dpokit defaults"
    first = result.runs[0] if result.runs else None
    batch = f"; batch of {2 * int(cfg.run.get('train.batch_size', 8))} sequences per step for every method" \
        if first else ""
    return "\n".join([
        "## Setup\n",
        f"- Reference πref (and every run's starting point): `{cfg.model}`",
        f"- Ground-truth reward: `{result.reward_name}`",
        f"- Preference data: {cfg.samples_per_prompt} samples from πref for each of {prefs.prompts} training prompts "
        f"(temperature 1, up to {cfg.max_new_tokens} new tokens); {prefs.kept_prompts} prompts kept (the others had "
        f"an empty or repeated completion), giving {prefs.pairs} ordered pairs ({prefs.tied_pairs} tied pairs left "
        f"out) and {prefs.kept_prompts} ranked lists ({prefs.lists_with_ties} containing a tie, kept in sampled "
        f"order). Mean reward of these samples {prefs.mean_reward:+.3f}; best of {cfg.samples_per_prompt} "
        f"{prefs.mean_best:+.3f}, worst {prefs.mean_worst:+.3f}.",
        f"- Evaluation: {cfg.eval_samples_per_prompt} sample(s) for each of {len(cfg.eval_prompts)} held-out prompts "
        "at temperature 1, the same seed at every evaluation; KL(π‖πref) is the sum over the generated tokens "
        "(eos included) of the exact per-token KL between the two next-token distributions, averaged over samples.",
        f"- Training (dpokit `train()`, same for every run unless noted; nothing tuned per method): {run}{batch}. "
        "DPO (the pairwise `sigmoid` loss) and Unlikelihood train on the pairs; Preferred-FT on the best of the K "
        "samples; Plackett–Luce, DPO's own loss generalised to rankings (the paper's App. A.3), on the ranked "
        "K-lists.",
        *_rlhf_setup(result),
        f"- Wall time of the whole protocol: {result.seconds / 60:.1f} min.\n",
    ])


def _rlhf_setup(result: FrontierResult) -> list[str]:
    """Setup lines for the RL arms that ran: the learned reward model, PPO, online DPO, Best-of-N."""
    cfg, kinds, lines = result.config, {run.method.kind for run in result.runs}, []
    if result.reward_model:
        rm = result.reward_model
        lines.append(f"- Learned reward model (for `reward: learned` arms): a Bradley–Terry model from πref (`dpokit "
                     f"rm`, {rm.steps} steps, {rm.seconds:.0f} s) on {rm.train_pairs} pairs; the pairs of "
                     f"{rm.eval_prompts} training prompts ({rm.eval_pairs} pairs) were held out of its training, and "
                     f"on them it ranks chosen above rejected for **{rm.accuracy:.1%}** of pairs. DPO and the other "
                     "losses train on all the pairs.")
    if "ppo" in kinds:
        ppo = ", ".join(f"{k}={v}" for k, v in cfg.ppo.items()) or "dpokit ppo defaults"
        lines.append(f"- PPO (`dpokit ppo`, from πref on the training prompts; {ppo}; β as listed): PPO optimises the "
                     "learned reward model, PPO-GT the ground-truth reward itself. Evaluated like the losses, every "
                     f"{cfg.ppo_eval_every} iterations and after the last; its 'steps' are iterations.")
    if "online" in kinds:
        online = [run for run in result.runs if run.method.kind == "online"]
        offline = next((run.label_calls for run in result.runs if run.method.kind == "loss"), None)
        budget = ", ".join(f"{run.method.label} {run.label_calls}" for run in online)
        same = f" (the offline runs' preference data: {offline})" if offline is not None else ""
        keys = ", ".join(f"{k}={v}" for k, v in cfg.online.items()) or "rounds and steps matched to the offline runs"
        lines.append(f"- Online DPO (`dpokit online`, from πref on the training prompts, labelled by its reward; {keys}"
                     f"): each round samples {cfg.samples_per_prompt} completions of new training prompts from the "
                     f"current policy and trains on them; evaluated after every round. Reward calls: {budget}{same}.")
    if "bon" in kinds:
        lines.append("- Best-of-N: one draw of max(N) samples of πref per held-out prompt (seed + 3), the best of "
                     "the first N by the learned reward model kept, scored by the ground-truth reward. Its x is the "
                     "analytic KL log N − (N−1)/N (exact without reward ties, an upper bound with them), as the "
                     "paper plots it, not a sampled estimate.")
    return lines


def _curves_note(result: FrontierResult) -> str:
    untrained = sorted({r.method.label for r in result.runs if not KINDS[r.method.kind].trains})
    if not untrained:
        return ""
    return f"{', '.join(untrained)} trains nothing, so it has no curve: its points are on the frontier only.\n"


def _findings(result: FrontierResult, comparisons: list[FrontierComparison]) -> str:
    lines = [f"- {line}" for line in verdict(comparisons)]
    ref = result.reference
    best = max((p for run in result.runs for p in run.points), key=lambda p: p.reward, default=None)
    if best is not None:
        when = f" at step {best.step}," if best.step else ""  # Best-of-N has no steps
        lines.append(f"- Highest reward reached: {best.reward:+.3f} ± {best.reward_se:.3f} by {best.label} "
                     f"{best.setting}{when} at KL {best.kl:.2f} (πref: {ref.reward:+.3f}).")
    if any(KINDS[run.method.kind].reward for run in result.runs):
        lines.append("- Not a like-for-like budget: the losses learn offline from a fixed set of πref samples, while "
                     "PPO scores fresh samples of its own policy at every iteration and Best-of-N scores N samples "
                     "per prompt at test time; PPO-GT queries the ground-truth reward itself, the other arms learn "
                     "it from pairs. The paper's comparison is the same in kind.")
    lines.append("- These are single runs with one seed on a toy task; differences smaller than the standard errors "
                 "shown are not evidence either way.")
    return "\n".join(lines) + "\n"


def _headline_table(result: FrontierResult) -> str:
    lines = ["| method | setting | steps | final reward | final KL (nats) | mean tokens |",
             "|---|---|---:|---:|---:|---:|"]
    for r in headline(result):
        lines.append(f"| {r['method']} | {r['setting']} | {r['steps']} | {r['reward']:+.3f} ± {r['reward_se']:.3f} | "
                     f"{r['kl']:.2f} ± {r['kl_se']:.2f} | {r['mean_tokens']:.1f} |")
    return "\n".join(lines) + "\n"


def _budget_table(result: FrontierResult, budgets: list[float]) -> str:
    table = best_within(result, budgets)
    lines = ["| family | " + " | ".join(f"KL ≤ {b:g}" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for label, values in table.items():
        cells = [f"{v:+.3f}" if v is not None else "–" for v in values]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "Best mean reward among a family's evaluations (πref included) with KL at most the budget.\n\n" + \
        "\n".join(lines) + "\n"


def _examples(result: FrontierResult, count: int) -> str:
    per_prompt = result.config.eval_samples_per_prompt
    evaluations: list[tuple[str, Evaluation]] = [("πref (SFT)", result.reference)]
    evaluations += [(f"{run.method.label} {run.method.setting}".strip(), run.final) for run in result.runs]
    blocks = []
    for i in range(min(count, len(result.config.eval_prompts))):
        index = i * per_prompt
        prompt = result.reference.samples.prompts[index]
        rows = ["| model | completion | reward | KL |", "|---|---|---:|---:|"]
        for name, ev in evaluations:
            text = ev.samples.completions[index].replace("|", "\\|").replace("\n", " ")
            rows.append(f"| {name} | {text} | {ev.rewards[index]:+.3f} | {ev.kls[index]:.2f} |")
        blocks.append(f"**Prompt:** `{prompt}`\n\n" + "\n".join(rows) + "\n")
    return "\n".join(blocks)


def _files() -> str:
    return "\n".join([
        "- `frontier.png`, `curves.png`: the figures above.",
        "- `points.csv`: every evaluation (run, step, reward, KL, standard errors).",
        "- `final.csv`: the final-evaluation table.",
        "- `results.json`: settings, preference-data counts, every point, budgets and the comparisons above.",
        "- `samples.json`: every held-out completion of πref and of each final model, with reward and KL.",
        "- `data/pairs.jsonl`, `data/ranked.jsonl`: the preference data; `runs/<method>/`: each trained model "
        "(try `dpokit generate --model runs/<method> --prompt ...`), its config.yaml and metrics.jsonl (PPO too).",
        "- With RL arms: `reward_model/` (the learned reward model; `data/rm_train.jsonl`, `data/rm_eval.jsonl` its "
        "split), `data/bon_<reward>.jsonl` (Best-of-N's draw: every sample with its selection score).",
    ]) + "\n"
