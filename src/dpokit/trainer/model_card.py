"""The model card (`README.md`) of a training run's output directory, as the Hugging Face Hub reads one: YAML front
matter (`base_model`, `library_name`, `pipeline_tag`, `tags`, `datasets`), then what was trained from what, on what
data, with which loss, β and steps, the final metrics, and how to load it. A LoRA run also gets one in `adapter/`
(`library_name: peft`), in place of peft's empty template.

`base_model` must be a Hub id: a hub name is kept as it is, a packaged model (`smollm2-135m-instruct`) gives the id
of the model its GGUF was converted from, and a local directory gives none (the card still names it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dpokit.core.model_source import PACKAGED
from dpokit.core.paths import looks_local
from dpokit.losses import objective_from_config
from dpokit.trainer.config import Config
from dpokit.trainer.summary import RunSummary

# the metrics a card shows, in this order, where the run has them
SHOWN = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
         "logps/rejected", "num_pairs")
REFERENCES = {"copy": "a frozen copy of {}", "adapter": "the base with the LoRA adapter switched off",
              "precomputed": "log-probs of {} computed once before training", "none": "none"}


def write_model_cards(cfg: Config, summary: RunSummary, out_dir: Path) -> None:
    """`README.md` in `out_dir`, and in `out_dir/adapter` when the run saved a LoRA adapter there."""
    (out_dir / "README.md").write_text(model_card(cfg, summary, "transformers"), encoding="utf-8")
    if (out_dir / "adapter" / "adapter_config.json").is_file():
        (out_dir / "adapter" / "README.md").write_text(model_card(cfg, summary, "peft"), encoding="utf-8")


def model_card(cfg: Config, summary: RunSummary, library: str = "transformers") -> str:
    """The card's text: front matter for `library` ("transformers": the merged weights; "peft": the adapter)."""
    objective, _ = objective_from_config(cfg.loss)
    kind = "sft" if objective.chosen_only else "dpo"
    meta: dict[str, Any] = {}
    if hub_base(cfg.model.name_or_path):
        meta["base_model"] = hub_base(cfg.model.name_or_path)
    meta.update(library_name=library, pipeline_tag="text-generation",
                tags=["dpokit", kind, *(["lora"] if cfg.model.lora.enabled else []), *([] if library == "peft" else
                                                                                      ["transformers"])])
    if not looks_local(cfg.data.path) and not Path(cfg.data.path).exists():
        meta["datasets"] = [cfg.data.path]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    title = Path(summary.output_dir).name + (" (LoRA adapter)" if library == "peft" else "")
    what = "Preferred-FT (supervised fine-tuning on the chosen responses)" if kind == "sft" else \
        "preference optimization"
    intro = (f"`{cfg.model.name_or_path}` trained by {what} with dpokit: loss "
             f"`{objective}`, β = {cfg.loss.beta:g}, {summary.steps} optimizer steps on {summary.train_pairs:,} "
             "examples.")
    return "\n\n".join([f"---\n{front}---", f"# {title}", intro, "## Training", _training_table(cfg, summary),
                        "## Final metrics", _metrics_table(summary), "## Use", _use(cfg, library),
                        "Every setting of the run is in `config.yaml`, every step's metrics in `metrics.jsonl`, the "
                        "summary in `summary.json`."]) + "\n"


def hub_base(name: str) -> str | None:
    """The Hub id of the base model named `name`, for `base_model`; None for a local directory or file."""
    if name in PACKAGED and not Path(name).exists():
        return PACKAGED[name].origin
    if not name or looks_local(name) or Path(name).expanduser().exists():
        return None
    return name


def _training_table(cfg: Config, summary: RunSummary) -> str:
    objective, _ = objective_from_config(cfg.loss)
    t, m, lora = cfg.train, cfg.model, cfg.model.lora
    base = f"`{m.name_or_path}`" + (f" (`{m.gguf_file}`)" if m.gguf_file else "")
    if m.name_or_path in PACKAGED and not Path(m.name_or_path).exists():
        base += f" ({PACKAGED[m.name_or_path].file} from the {PACKAGED[m.name_or_path].module} package, " \
                f"unpacked to {m.dtype})"
    terms = "; ".join(f"{spec.name}: {spec.description}" for _, spec in objective.terms)
    rows = [
        ("base model", base),
        ("data", f"`{cfg.data.path}` ({cfg.data.format}): {summary.train_pairs:,} training examples, "
                 f"{summary.eval_pairs:,} held out; max_length {cfg.data.max_length}"),
        ("loss", f"`{objective}` ({terms}), β = {cfg.loss.beta:g}"
                 + (f", label smoothing {cfg.loss.label_smoothing:g}" if cfg.loss.label_smoothing else "")),
        ("reference", _reference(cfg) if objective.needs_reference else "none (the loss uses no reference)"),
        ("steps", f"{summary.steps} optimizer steps of {t.batch_size} × {t.grad_accum} examples × "
                  f"{summary.processes} process{'es' if summary.processes > 1 else ''}; {t.optimizer}, lr {t.lr:g} "
                  f"({t.schedule}, {t.warmup_steps} warmup steps), {t.precision}, seed {t.seed}"),
    ]
    if lora.enabled:
        rows.append(("LoRA", f"r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout:g}, targets "
                             f"{lora.target_modules}; the adapter is in `adapter/`, merged into the weights here"))
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _reference(cfg: Config) -> str:
    mode = cfg.reference.mode
    if mode == "auto":
        mode = "adapter" if cfg.model.lora.enabled and not cfg.reference.name_or_path else "copy"
    return REFERENCES[mode].format(f"`{cfg.reference.name_or_path or cfg.model.name_or_path}`")


def _metrics_table(summary: RunSummary) -> str:
    final_eval = summary.final_eval or {}
    shown = [k for k in SHOWN if k in summary.final_train or k in final_eval]
    rows = [f"| {k} | {_number(summary.final_train.get(k))} | {_number(final_eval.get(k))} |" for k in shown]
    return "\n".join([f"| metric | last training step ({summary.steps}) | held out |", "|---|---|---|", *rows])


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _use(cfg: Config, library: str) -> str:
    """How to load the card's model: the merged weights with transformers, the adapter with dpokit's loader + peft
    (which also reads GGUF and packaged bases), or with peft alone when the base is a Hub id."""
    if library == "transformers":
        return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")\n'
                'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")\n```\n\n'
                "or as a model wherever dpokit takes one (`--model path/to/this/directory`).")
    base = cfg.model.name_or_path
    text = ("```python\nfrom peft import PeftModel\n\nfrom dpokit.core.sections import ModelConfig\n"
            "from dpokit.models.loading import load_model\n\n"
            f"base = load_model({base!r}, ModelConfig(), {cfg.model.gguf_file!r})\n"
            'model = PeftModel.from_pretrained(base, "path/to/this/adapter")\n```')
    if hub_base(base) == base:
        text += ("\n\nor with peft alone, which loads the base named in adapter_config.json:\n\n```python\n"
                 "from peft import AutoPeftModelForCausalLM\n\n"
                 'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/adapter")\n```')
    return text
