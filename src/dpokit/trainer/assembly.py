"""Config -> the pieces a run needs: examples fitted to the objective, token ids, batches, models, reference.

Shared by `dpokit train`, `sft` and `eval`, so each command is only parse -> build -> run.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from dpokit.core.errors import ConfigError
from dpokit.core.sections import ModelConfig
from dpokit.data import cache as data_cache
from dpokit.data.batching import PLAIN, Layout, batches
from dpokit.data.collate import Batch
from dpokit.data.packing import PackedBatch
from dpokit.data.prepare import Prepared, Wants, prepare
from dpokit.data.store import max_index
from dpokit.data.tokenize import TokenizedExample
from dpokit.lm.logprobs import sequence_logps
from dpokit.lm.reference import AdapterOff, Cached, FrozenModel, Reference, cache_key, load_cached, precompute
from dpokit.losses import Objective
from dpokit.models.loading import apply_lora, load_model, tokenizer_of
from dpokit.trainer.config import Config


def wants_of(objective: Objective) -> Wants:
    """What the data layer must know of the loss: the shape of examples it consumes."""
    return Wants(str(objective), chosen_only=objective.chosen_only, unpaired=objective.unpaired,
                 ranked=objective.ranked, responses=objective.num_responses)


def prepare_data(cfg: Config, tokenizer, objective: Objective) -> Prepared:
    """Loads, validates, splits, fits to the objective (pairs / ranked / unpaired) and tokenizes, streamed into flat
    arrays (data/prepare.py); or, for local files seen before with the same tokenizer and settings (`data.cache`),
    reads the result back from the cache."""
    key, root = _cache_key(cfg, tokenizer, objective), data_cache.root_of(cfg.data.cache_dir)
    entry = data_cache.load(root, key) if key else data_cache.Entry(None, [], None)
    if entry.splits is not None:
        return Prepared(entry.splits["train"], entry.splits["eval"], [*entry.notes, entry.message])
    data = prepare(cfg.data, tokenizer, wants_of(objective), cfg.train.seed, progress=cfg.train.progress)
    if key:
        data_cache.save(root, key, {"train": data.train, "eval": data.eval}, data.notes)
    if entry.message:
        data.notes.append(entry.message)
    return data


def _cache_key(cfg: Config, tokenizer, objective: Objective) -> str | None:
    """The tokenization cache key of this run's data: every input of `prepare` that can change its examples or
    ids. None (no caching) when `data.cache` is off or a source is not a local file (a hub dataset, a directory)."""
    sources = [p for p in (cfg.data.path, cfg.data.eval_path) if p]
    if not cfg.data.cache or not all(Path(p).expanduser().is_file() for p in sources):
        return None
    data = cfg.data
    return data_cache.key_of({
        "files": [data_cache.file_digest(Path(p).expanduser()) for p in sources], "has_eval_file": bool(data.eval_path),
        "tokenizer": data_cache.tokenizer_digest(tokenizer),
        "data": {k: getattr(data, k) for k in ("format", "split", "limit", "eval_fraction", "prompt_marker",
                                                "on_bad_record", "max_length", "max_prompt_length",
                                                "prompt_truncation")},
        "seed": cfg.train.seed, "objective": asdict(replace(wants_of(objective), name="")),  # its shape, not its name
    })


def layout_of(cfg: Config) -> Layout:
    """The batch layout `train.packing`, `train.shared_prompt` and `train.row_length` ask for."""
    return Layout(cfg.train.packing, cfg.train.shared_prompt, cfg.train.row_length or cfg.data.max_length)


@torch.no_grad()
def check_layout(model: torch.nn.Module, examples: list[TokenizedExample], layout: Layout, pad_id: int,
                 unpaired: bool, chunk_size: int,
                 outputs: Callable[[torch.nn.Module, Batch | PackedBatch], torch.Tensor] | None = None,
                 ) -> tuple[Layout, str | None]:
    """Runs a few examples through the fast and the plain path; falls back to plain if they disagree.

    Packing relies on the architecture honouring `position_ids` and a 4D attention mask, and on the LM head being
    the whole map from hidden states to logits. Llama-family models do; this check catches one that does not.
    `outputs(model, batch)` is what is compared, (B, K): by default the response log-probs (a reward model's
    rewards in `dpokit rm`).
    """
    if layout.plain:
        return layout, None
    outputs = outputs or (lambda m, batch: sequence_logps(m, batch, chunk_size).logps)
    sample = examples[:2] if not unpaired else examples[:3]
    was_training = model.training
    model.eval()
    try:
        plain = outputs(model, Layout()(sample, pad_id, unpaired))
        try:
            fast = outputs(model, layout(sample, pad_id, unpaired))
        except Exception as err:  # any architecture-specific refusal of position_ids / 4D masks means: use plain
            return Layout(), (f"packed/shared-prompt forward failed for this model ({type(err).__name__}: {err}); "
                              "using plain padded batches")
    finally:
        model.train(was_training)
    tolerance = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    error = ((fast - plain).abs() / (1 + plain.abs())).max().item()
    if error <= tolerance:
        return layout, None
    return Layout(), (f"packed/shared-prompt outputs differ from the plain forward by {error:.2g} (relative) for "
                      f"this model; using plain padded batches (set train.packing=false train.shared_prompt=false "
                      "to silence this)")


def autocast_for(precision: str, device: torch.device):
    if precision == "bf16":
        return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def check_training_attention(attention: str, device: torch.device) -> None:
    """Refuses `train.attention=flex` for training off CUDA, before anything loads: torch has no FlexAttention
    backward on CPU (its forward runs there, so `dpokit eval` may use it)."""
    if attention == "flex" and device.type != "cuda":
        raise ConfigError(f"train.attention=flex trains on CUDA only (torch {torch.__version__} has no FlexAttention "
                          f"backward on {device.type}); use train.attention=dense")


def build_policy(cfg: ModelConfig, device: torch.device, head: str = "causal-lm",
                 attention: str = "dense") -> torch.nn.Module:
    """The model being trained (`model.*` of any command), on `device`: loaded with `head` (models.HEADS) and
    `attention` (`train.attention`: dense, or flex for FlexAttention), checkpointing and LoRA as set."""
    model = load_model(cfg.name_or_path, cfg, cfg.gguf_file, head, attention)
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, head)
    return model.to(device)


@dataclass(frozen=True)
class ReferencePlan:
    """Which reference a run uses, decided from `reference.mode` alone, before any model loads.

    Attributes:
        live: "copy" (a frozen model), "adapter" (the LoRA policy with its adapter off), or None (no reference).
        weights: with "copy", the weights to load; None means a copy of the policy's starting weights.
        cached: log-probs computed once by the live reference and read from disk (`reference.mode=precomputed`).
    """

    live: str | None
    weights: str | None = None
    cached: bool = False


def plan_reference(cfg: Config, objective: Objective) -> ReferencePlan:
    """`reference.mode` -> the reference, refusing settings that contradict it (ConfigError, before any load).

    - auto: with LoRA, the adapter switched off (a copy of reference.name_or_path when that is set); else copy.
    - copy: a frozen copy of reference.name_or_path, or of the policy's starting weights.
    - adapter: the LoRA policy with its adapter off; refused without LoRA or with reference.name_or_path.
    - precomputed: log-probs of what auto picks, computed once and cached on disk (not for unpaired losses, nor for
      a loss that needs the reference's token distributions: `kl`).
    - none: no reference; refused with reference.name_or_path or with a loss that needs a reference.
    A loss that needs no reference (or loss.reference_free=true) takes auto or none only.
    """
    mode, name, lora = cfg.reference.mode, cfg.reference.name_or_path, cfg.model.lora.enabled
    if name and mode in ("adapter", "none"):
        raise ConfigError(f"reference.mode={mode} contradicts reference.name_or_path={name!r}: the reference is "
                          + ("the LoRA policy with its adapter off" if mode == "adapter" else "switched off")
                          + "; use reference.mode=copy to load it, or unset reference.name_or_path")
    if mode == "adapter" and not lora:
        raise ConfigError("reference.mode=adapter needs model.lora.enabled=true (the reference is the policy with its "
                          "LoRA adapter switched off)")
    if not objective.needs_reference:
        if cfg.reference.sync.mode != "none":
            raise ConfigError(f"reference.sync.mode={cfg.reference.sync.mode} (TR-DPO) updates a reference, but loss "
                              f"'{objective}' uses none")
        if mode not in ("auto", "none"):
            why = "loss.reference_free=true" if objective.reference_free else f"loss '{objective}' uses none"
            raise ConfigError(f"reference.mode={mode}, but {why}: leave reference.mode at auto or set it to none")
        return ReferencePlan(None)
    if mode == "none":
        raise ConfigError(f"loss '{objective}' needs a reference model; set reference.mode (auto, copy, adapter, "
                          "precomputed) or loss.reference_free=true")
    if mode == "precomputed" and objective.needs_reference_distributions:
        raise ConfigError(f"reference.mode=precomputed caches the reference's log-probs only, but loss '{objective}' "
                          "needs its next-token distributions at every response token (the kl term): use "
                          "reference.mode=auto, copy or adapter")
    if mode == "precomputed" and objective.needs_reference_token_logps:
        raise ConfigError("reference.mode=precomputed caches each response's summed log-probs, but loss.ld_alpha "
                          "re-weights the reference's tokens past each pair's shared length: use reference.mode=auto, "
                          "copy or adapter, or unset loss.ld_alpha")
    if mode == "precomputed" and objective.unpaired:
        raise ConfigError("reference.mode=precomputed does not support unpaired (KTO) losses: their mismatched "
                          "completions change with every batch")
    adapter = mode == "adapter" or (mode in ("auto", "precomputed") and lora and not name)
    plan = ReferencePlan("adapter" if adapter else "copy", None if adapter else name, cached=mode == "precomputed")
    _check_sync(cfg, plan)
    return plan


def _check_sync(cfg: Config, plan: ReferencePlan) -> None:
    """TR-DPO (reference.sync) moves a separate frozen copy toward the policy: refuses every reference it cannot."""
    if cfg.reference.sync.mode == "none":
        return
    why = None
    if plan.cached:
        why = "reference.mode=precomputed caches the starting reference's log-probs once"
    elif plan.live == "adapter":
        why = "the reference is the LoRA policy with its adapter off: its base weights are the policy's own"
    elif cfg.model.lora.enabled:
        why = "a LoRA policy's parameters (base + adapter) do not map onto a full reference copy one to one"
    elif cfg.train.fsdp:
        why = "with train.fsdp each process holds a shard of the policy and of the reference; mixing them is not done"
    elif cfg.train.resume:
        why = "checkpoints do not hold the updated reference yet, so a resumed run would restart from the first one"
    if why:
        raise ConfigError(f"reference.sync.mode={cfg.reference.sync.mode} (TR-DPO) cannot work here: {why}; set "
                          "reference.sync.mode=none or change that setting")


def build_reference(cfg: Config, policy: torch.nn.Module, objective: Objective, data: Prepared,
                    pad_id: int, device: torch.device, layout: Layout = PLAIN,
                    ) -> tuple[Reference | None, Reference | None]:
    """The reference for training and for evaluation data (they differ only when log-probs are cached)."""
    plan = plan_reference(cfg, objective)
    if plan.live is None:
        return None, None
    autocast, chunk = autocast_for(cfg.train.precision, device), cfg.train.logps_chunk_size
    if plan.live == "adapter":
        live: Reference = AdapterOff(policy, autocast, chunk)
    elif plan.weights is not None or cfg.model.lora.enabled:  # a LoRA policy is no copy of its starting weights
        model = (load_model(plan.weights, cfg.model, attention=cfg.train.attention) if plan.weights
                 else load_model(cfg.model.name_or_path, cfg.model, cfg.model.gguf_file, attention=cfg.train.attention))
        live = FrozenModel(model.to(device), autocast, chunk)
    else:
        live = FrozenModel(copy.deepcopy(policy), autocast, chunk)
    if not plan.cached:
        return live, live
    return tuple(_cached(cfg, live, examples, pad_id, layout) if examples else None
                 for examples in (data.train, data.eval))


def _cached(cfg: Config, live: Reference, examples: list[TokenizedExample], pad_id: int, layout: Layout) -> Cached:
    key, shape = cache_key(live.model, examples, cfg.train.precision), (max_index(examples) + 1,
                                                                         len(examples[0].response_ids))
    path = data_cache.root_of(cfg.reference.cache_dir, "reference") / f"{key}.safetensors"
    cached = load_cached(path, shape)
    if cached is not None:
        return cached
    size = cfg.train.eval_batch_size or cfg.train.batch_size
    rows = batches(examples, size, pad_id, False, layout=layout)
    return precompute(live, rows, path, *shape, progress=cfg.train.progress)


@dataclass
class Loaded:
    """What every command that runs models builds first, in the same way."""

    tokenizer: object
    data: Prepared
    policy: torch.nn.Module
    layout: Layout
    train_ref: Reference | None
    eval_ref: Reference | None


def load_all(cfg: Config, objective: Objective, device: torch.device, say,
             reference_first=contextlib.nullcontext) -> Loaded:
    """Tokenizer, data, policy, the batch layout this model supports, and the reference, telling `say` the notes.

    `reference_first`: a context for building the reference (with several processes, the main one first, so a
    precomputed reference is computed once and then loaded by the others).
    """
    plan_reference(cfg, objective)  # contradictory reference settings fail now, before anything loads
    tokenizer = tokenizer_of(cfg.model)
    data = prepare_data(cfg, tokenizer, objective)
    for note in data.notes:
        say(note)
    policy = build_policy(cfg.model, device, attention=cfg.train.attention)
    pad, chunk = tokenizer.pad_token_id, cfg.train.logps_chunk_size
    layout, warning = check_layout(policy, data.train, layout_of(cfg), pad, objective.unpaired, chunk)
    if warning:
        say(f"warning: {warning}")
    with reference_first():
        train_ref, eval_ref = build_reference(cfg, policy, objective, data, pad, device, layout)
    return Loaded(tokenizer, data, policy, layout, train_ref, eval_ref)
