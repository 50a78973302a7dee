"""Tables for compare_trl.py's result: aligned plain text for the terminal, Markdown for README.md.

One function builds the rows, so the terminal and the README never disagree about what was measured.
"""

from __future__ import annotations

COLUMNS = ("system", "mode", "s/step (median)", "pairs/s", "non-pad tokens/s", "peak RSS GiB", "setup s",
           "first-batch loss")


def table_rows(result: dict) -> list[list[str]]:
    """Per comparison: a TRL row, a dpokit row, and a ratio row (dpokit / TRL)."""
    rows = []
    for comp in result["comparisons"]:
        trl, dpokit, ratio = comp["trl"], comp["dpokit"], comp["ratios_dpokit_over_trl"]
        for name, sys_ in (("TRL " + result["versions"].get("trl", "?"), trl), ("dpokit", dpokit)):
            rows.append([name, sys_["mode"], f"{sys_['median_s_per_step']:.2f}", f"{sys_['pairs_per_s']:.2f}",
                         f"{sys_['tokens_per_s']:,.0f}", f"{sys_['peak_rss_gib']:.2f}", f"{sys_['setup_s']:.1f}",
                         _loss(sys_["first_batch_loss"])])
        rows.append(["dpokit / TRL", "", f"{ratio['median_s_per_step']:.2f}×", f"**{ratio['pairs_per_s']:.2f}×**",
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
    return (f"Llama {fix['num_params'] / 1e6:.1f}M parameters (random init), BPE vocab 8192; "
            f"{first['config'].get('train_pairs', '?')} HH pairs after truncation; batch {first['batch_size']} pairs; "
            f"max_length {dpo.get('max_length')}; β {dpo.get('beta')}; lr {dpo.get('learning_rate')} "
            f"({dpo.get('optim')}); {first['steps']} steps, step 1 excluded; fp32 on CPU, "
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
            f"{c['max_loadavg_1m']:.1f}, other jobs were competing for the CPU; rerun these before quoting them"
            for c in result["comparisons"] if c.get("contended")]


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
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    lines += ["", f"{versions}; run {result['started']}.", "",
              f"Rerun: `.venv/bin/python benchmarks/compare_trl.py {' '.join(result['argv'])}`".replace("  ", " "),
              ""]
    return "\n".join(lines)
