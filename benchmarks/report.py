"""Tables for compare_trl.py's result: aligned plain text for the terminal, Markdown for README.md.

One function builds the rows of each table, so the terminal and the README never disagree about what was measured.
"""

from __future__ import annotations

COLUMNS = ("system", "mode", "s/step (mean)", "pairs/s", "non-pad tokens/s", "peak RSS GiB", "setup s",
           "first-batch loss")


def table_rows(result: dict) -> list[list[str]]:
    """Per comparison: a TRL row, a dpokit row, and a ratio row (dpokit / TRL)."""
    rows = []
    for comp in result["comparisons"]:
        trl, dpokit, ratio = comp["trl"], comp["dpokit"], comp["ratios_dpokit_over_trl"]
        for name, sys_ in (("TRL " + result["versions"].get("trl", "?"), trl), ("dpokit", dpokit)):
            rows.append([name, sys_["mode"], f"{sys_['mean_s_per_step']:.2f}", f"{sys_['pairs_per_s']:.2f}",
                         f"{sys_['tokens_per_s']:,.0f}", f"{sys_['peak_rss_gib']:.2f}", f"{sys_['setup_s']:.1f}",
                         _loss(sys_["first_batch_loss"])])
        rows.append(["dpokit / TRL", "", f"{ratio['mean_s_per_step']:.2f}×", f"**{ratio['pairs_per_s']:.2f}×**",
                     f"{ratio['tokens_per_s']:.2f}×", f"**{ratio['peak_rss_gib']:.2f}×**", "", ""])
    return rows


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.6f}"


def parity_table(result: dict) -> list[list[str]]:
    parity = result["parity"]
    return [[key, f"{parity['trl'][key]:.6f}", f"{parity['dpokit'][key]:.6f}", f"{parity['abs_diff'][key]:.2e}"]
            for key in parity["abs_diff"]]


def setup_line(result: dict) -> str:
    fix, first = result["fixture"], next(r for r in result["runs"] if r["system"] == "trl")
    cfg = first["config"]
    dpo = cfg.get("dpo_config", {})
    model = (f"SmolLM2-135M-Instruct ({fix['num_params'] / 1e6:.1f}M parameters, pretrained: dpokit's packaged GGUF, "
             "Q4_1 unpacked to fp32 and saved as safetensors, the same directory for both), vocab 49,152"
             if result.get("model") == "smollm2" else
             f"Llama {fix['num_params'] / 1e6:.1f}M parameters (random init), BPE vocab 8192")
    return (f"{model}; "
            f"{first['config'].get('train_pairs', '?')} HH pairs after truncation; batch {first['batch_size']} pairs; "
            f"max_length {dpo.get('max_length')}; β {dpo.get('beta')}; lr {dpo.get('learning_rate')} "
            f"({dpo.get('optim')}); {first['steps']} steps, step 1 excluded; rates are the measured steps' work over "
            f"their total time (the same batches in every run), median over {result['comparisons'][0]['trl']['runs']} "
            "round(s) of alternating runs; fp32 on CPU, "
            f"{cfg.get('torch_threads')} torch threads; gradient checkpointing "
            f"{'on' if dpo.get('activation_checkpointing') else 'off'} in both.")


def summary_rows(result: dict) -> list[str]:
    """The table as aligned plain text."""
    rows = [list(COLUMNS)] + [[c.replace("**", "") for c in r] for r in table_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    for comp in result["comparisons"]:
        if not comp["same_tokens_every_step"]:
            lines.append(f"warning: {comp['trl']['mode']} vs {comp['dpokit']['mode']}: the systems saw different "
                         "token counts, so their batches differ")
        if comp["wraps_epoch"]:
            lines.append("warning: steps × batch exceeds the pairs left after truncation; raise --limit")
    return [setup_line(result), *lines, *contention_notes(result)]


def contention_notes(result: dict) -> list[str]:
    """Flags comparisons whose runs shared the CPU with other jobs: their times say little about either system."""
    return [f"note: {c['trl']['mode']} vs {c['dpokit']['mode']}: 1-min load average reached "
            f"{c['max_loadavg_1m']:.1f}{_others(c)}, other jobs were competing for the CPU; rerun these before "
            "quoting them" for c in result["comparisons"] if c.get("contended")]


def _others(comp: dict) -> str:
    cores = comp.get("max_other_cores")
    return "" if cores is None else f" and other processes kept {cores:.2f} cores busy on average during a run"


def parity_rows(result: dict) -> list[str]:
    parity = result["parity"]
    if parity is None:
        return ["loss parity: not run"]
    verdict = "PASS" if parity["passed"] else "FAIL"
    lines = [f"loss parity (first batch, reference = a second random model): {verdict}, "
             f"|Δ loss| {parity['abs_diff']['loss']:.2e} (tolerance {parity['tolerance']:.0e}); "
             f"tokens in the batch: TRL {parity['tokens']['trl']}, dpokit {parity['tokens']['dpokit']}"]
    lines += [f"  {k:<16} TRL {t:>14}  dpokit {d:>14}  |Δ| {x}" for k, t, d, x in parity_table(result)]
    return lines


def markdown(result: dict) -> str:
    """The README's Performance table, with the setup and the command that produced it."""
    lines = [setup_line(result), "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(result)]
    if result["parity"] is not None:
        lines += ["", "| first batch, reference ≠ policy | TRL | dpokit | abs diff |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in parity_table(result)]
    lines += [f"\n{note}" for note in contention_notes(result)]
    lines += flop_markdown(result) if "flops" in result else []
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    lines += ["", f"{versions}; run {result['started']}.", "",
              f"Rerun: `.venv/bin/python benchmarks/compare_trl.py {' '.join(result['argv'])}`".replace("  ", " "),
              ""]
    return "\n".join(lines)


FLOP_COLUMNS = ("system", "mode", "tokens/step (prompt once)", "minimal TFLOP/step", "floor s/step at peak",
                "s/step", "GFLOP/s on the minimal work", "share of matmul peak")
KIND_NAMES = {"attention": "attention (SDPA, dense 4D mask), fwd + bwd", "lm_head": "LM head / logits, fwd + bwd",
              "other_matmul": "other matmuls (projections, MLP), fwd + bwd", "optimizer": "optimizer (clip + AdamW)",
              "collate": "collation / packing", "other": "other ops (elementwise, norms, RoPE, autograd)",
              "untraced": "untraced (interpreter between ops)"}


def flop_rows(result: dict) -> list[list[str]]:
    return [[("TRL " + result["versions"].get("trl", "?")) if r["system"] == "trl" else "dpokit", r["mode"],
             f"{r['pair_tokens_per_step']:,.0f}", f"{r['minimal_tflop_per_step']:.3f}",
             f"{r['floor_s_per_step']:.2f}", f"{r['mean_s_per_step']:.2f}", f"{r['achieved_gflops']:.1f}",
             f"{r['peak_fraction']:.1%}"] for r in result["flops"]["rows"]]


def peak_line(result: dict) -> str:
    peak, runs = result["matmul_peak"], result["matmul_peak"]["runs"]
    sizes = "/".join(runs[0]["gflops_by_size"])
    each = ", ".join(f"{r['peak_gflops']:.1f} (other processes {r['other_cores']:.2f} cores)"
                     if r.get("other_cores") is not None else f"{r['peak_gflops']:.1f}" for r in runs)
    return (f"fp32 matmul peak: **{peak['gflops']:.1f} GFLOP/s** (torch.matmul of n×n fp32 matrices, n = {sizes}, "
            f"best of {runs[0]['repeats']} each, {runs[0]['torch_threads']} torch threads, fresh process; the higher "
            f"of the runs before and after the timed runs: {each}).")


def work_line(result: dict) -> str:
    f = result["flops"]
    same = "" if f["same_pair_tokens_every_step"] else " WARNING: the runs counted different tokens per step."
    return (f"Minimal work per step = {f['per_param_token']} FLOPs × N × T: N = {f['num_params'] / 1e6:.1f}M, all "
            "parameters (the tied embedding / LM head once); 8 = policy forward + backward (6) + reference forward "
            "(2); T = the step's real tokens with each prompt counted once per pair, from the actual batches (the "
            "same in every run). Attention scores are not counted. Rate = minimal FLOPs of steps 2..N / their total "
            f"time (median over repeats), whatever work the mode really does.{same}")


def target_rows(result: dict) -> list[list[str]]:
    return [[t["target"], t["value"], "met" if t["met"] else "**missed**"] for t in result.get("targets", [])]


def profile_rows(result: dict) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """Phases, operator kinds and top ops of the profile, in seconds per step and shares of the step."""
    prof = result["profile"]
    wall = prof["wall_s_per_step"]
    phases = [[k.replace("_", " "), f"{v:.2f}", f"{v / wall:.0%}"] for k, v in prof["phases_s_per_step"].items()]
    kinds = [[KIND_NAMES[k], f"{v:.2f}", f"{v / wall:.0%}"] for k, v in prof["kinds_s_per_step"].items()]
    ops = [[o["op"], KIND_NAMES[o["kind"]].split(" (")[0].split(",")[0], f"{o['s_per_step']:.2f}",
            f"{o['s_per_step'] / wall:.0%}", f"{o['calls_per_step']:.0f}"] for o in prof["top_ops"]]
    return phases, kinds, ops


def _aligned(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    rows = [list(header)] + [[c.replace("**", "") for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]


def _md(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _profile_intro(result: dict) -> str:
    prof = result["profile"]
    return (f"Profile: dpokit {prof['mode']}, {prof['profiled_steps']} step(s) after a warm-up step under "
            f"torch.profiler (CPU, {prof['torch_threads']} threads): {prof['wall_s_per_step']:.2f} s per profiled "
            f"step (the profiler adds overhead){_profile_load(prof)}. Operator kinds add up the ops' self time.")


def _profile_load(prof: dict) -> str:
    cores = prof.get("other_cores")
    return "" if cores is None else f"; other processes kept {cores:.2f} cores busy on average meanwhile"


PROFILE_HEADERS = (("phase", "s/step", "share"), ("operator kind", "s/step", "share"),
                   ("top ops by self time", "kind", "s/step", "share", "calls/step"))


def flop_lines(result: dict) -> list[str]:
    """The FLOP accounting, targets and profile as plain text for the terminal."""
    lines = [peak_line(result).replace("**", ""), work_line(result), *_aligned(FLOP_COLUMNS, flop_rows(result))]
    if result.get("targets"):
        lines += ["", *_aligned(("issue 10 target", "measured", "verdict"), target_rows(result))]
    if result.get("profile"):
        lines += ["", _profile_intro(result)]
        for header, rows in zip(PROFILE_HEADERS, profile_rows(result), strict=True):
            lines += _aligned(header, rows)
    return lines


def flop_markdown(result: dict) -> list[str]:
    lines = ["", peak_line(result), "", work_line(result), "", *_md(FLOP_COLUMNS, flop_rows(result))]
    if result.get("targets"):
        lines += ["", *_md(("issue 10 target", "measured", "verdict"), target_rows(result))]
    if result.get("profile"):
        lines += ["", _profile_intro(result)]
        for header, rows in zip(PROFILE_HEADERS, profile_rows(result), strict=True):
            lines += ["", *_md(header, rows)]
    return lines
