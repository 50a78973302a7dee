"""The reference policy πref behind one interface: `logps(batch) -> (B, K)` log-probs, never with gradients.

Three implementations, interchangeable (tests check they agree):
- `FrozenModel`: a separate frozen copy of the starting weights (eval mode, no grad).
- `AdapterOff`: with LoRA, the policy itself with its adapter disabled: no second copy in memory.
Both compute through `engine`, a `PolicyLogps` over their model; under FSDP it is the sharded (root) module, whose
forward every process must join, so it is swapped in after sharding.
- `Cached`: log-probs computed once over the whole dataset and stored on disk, keyed by the reference weights, the
  token ids (so data and tokenization settings) and the precision; a β sweep or a second epoch never recomputes them.

The two live ones also give `states(batch)`: their hidden states at the response tokens and their LM head, from which
the policy's chunked head computes the token KL of the `kl` loss term (`dpokit.lm.token_kl`). A cache holds log-probs
only, so `trainer.assembly.plan_reference` refuses it for that term.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from dpokit.core.progress import say, transient
from dpokit.data.collate import Batch
from dpokit.data.packing import PackedBatch
from dpokit.data.store import TokenStore
from dpokit.data.tokenize import TokenizedExample
from dpokit.lm.logprobs import PolicyLogps, SequenceLogps, head_logits, softcap
from dpokit.lm.token_kl import ReferenceStates, final_logits

CACHE_FORMAT = "dpokit-reference-logps-v1"


class Reference(Protocol):
    def logps(self, batch: Batch) -> Tensor:
        """(B, K) summed response log-probs under πref."""
        ...


class _LiveModel:
    """A reference computed by a model at each batch: what `FrozenModel` and `AdapterOff` share. They differ only in
    what turns the model into πref for the duration of a forward (`_as_reference`)."""

    def __init__(self, model: torch.nn.Module, autocast=contextlib.nullcontext, chunk_size: int = 1024):
        self.model = model
        self.autocast = autocast
        self.engine: torch.nn.Module = PolicyLogps(model, chunk_size)
        self.head: torch.nn.Module | None = None  # a whole copy of the LM head, kept before sharding (`keep_head`)

    def keep_head(self) -> None:
        """Keeps a whole frozen copy of the LM head for the `kl` term, taken while the weights are still whole (of
        the base layer, i.e. the head with its adapter off, when LoRA adapts the head).

        The term's chunked head runs πref's head inside the policy's forward (and again in its backward, which
        recomputes each chunk), where a sharded reference's head cannot be gathered: FSDP gathers a module's
        weights in that module's own forward, ZeRO-3 in its engine's. Costs one (V, H) matrix per process."""
        self.head = whole_head(self.model)

    def _as_reference(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @torch.no_grad()
    def logps(self, batch: Batch) -> Tensor:
        return self.sequence(batch).logps

    @torch.no_grad()
    def sequence(self, batch: Batch | PackedBatch) -> SequenceLogps:
        """Summed and per-token log-probs of every response (LD-DPO re-weights the tokens)."""
        with self._as_reference(), self.autocast():
            return self.engine(batch)

    @torch.no_grad()
    def states(self, batch: Batch | PackedBatch) -> ReferenceStates:
        """Hidden states at `batch`'s response tokens, (M, H), through the engine (so sharded weights are
        gathered), and the head that turns them into logits (the kept copy, if any)."""
        with self._as_reference(), self.autocast():
            hidden = self.engine(batch, hidden_only=True)
        if self.head is not None:
            return ReferenceStates(hidden, functools.partial(final_logits, self.head, softcap=softcap(self.model)))
        return ReferenceStates(hidden, self._head_logits)

    @torch.no_grad()
    def _head_logits(self, hidden: Tensor) -> Tensor:
        with self._as_reference():
            return head_logits(self.model, hidden)


class FrozenModel(_LiveModel):
    """A frozen copy of the starting weights (eval mode, no grad)."""

    def __init__(self, model: torch.nn.Module, autocast=contextlib.nullcontext, chunk_size: int = 1024):
        super().__init__(model.eval().requires_grad_(False), autocast, chunk_size)


class AdapterOff(_LiveModel):
    """The peft policy with its adapter disabled (and in eval mode) for the duration of the forward; the head too
    runs with the adapter off (LoRA may target it)."""

    @contextlib.contextmanager
    def _as_reference(self):
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                yield
        finally:
            self.model.train(was_training)


def whole_head(model: torch.nn.Module) -> torch.nn.Linear:
    """A frozen copy of `model`'s LM head as a plain linear layer (of its base layer when LoRA adapts the head)."""
    head = model.get_output_embeddings()
    head = getattr(head, "base_layer", head)
    weight, bias = head.weight.detach(), getattr(head, "bias", None)
    copy = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype,
                           device=weight.device)
    with torch.no_grad():
        copy.weight.copy_(weight)
        if bias is not None:
            copy.bias.copy_(bias.detach())
    return copy.requires_grad_(False)


class Cached:
    """Looks reference log-probs up by dataset index in a (N, K) table."""

    def __init__(self, table: Tensor):
        self.table = table

    def logps(self, batch: Batch) -> Tensor:
        rows = self.table[batch.indices]
        if torch.isnan(rows).any():
            missing = batch.indices[torch.isnan(rows).any(-1)].tolist()
            raise KeyError(f"no cached reference log-probs for dataset indices {missing}")
        return rows.to(batch.input_ids.device)


def cache_key(model: torch.nn.Module, examples: Iterable[TokenizedExample], precision: str) -> str:
    """Hash of everything the cached numbers depend on: weights, token ids (data + tokenization), precision."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{CACHE_FORMAT}|{precision}".encode())
    for name, tensor in sorted((_base_name(n), t) for n, t in model.state_dict().items() if "lora_" not in n):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    if isinstance(examples, TokenStore):  # its arrays, hashed whole: seconds for a million pairs
        h.update(examples.digest().encode())
    else:
        for ex in examples:
            h.update(repr((ex.index, ex.prompt_ids, ex.response_ids)).encode())
    return h.hexdigest()


def _base_name(name: str) -> str:
    """A parameter's name in the plain model: peft prefixes `base_model.model.` and wraps layers in `base_layer`.

    LoRA weights are skipped by the caller: a LoRA policy's reference is its base weights (adapter off).
    """
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def precompute(
    reference: Reference,
    batches: Iterable[Batch],
    cache_path: str | Path,
    num_examples: int,
    num_responses: int,
    progress: bool = True,
) -> Cached:
    """Runs `reference` over every batch once and writes the (N, K) table atomically (temp file + rename)."""
    table = torch.full((num_examples, num_responses), float("nan"))
    for batch in transient(batches, "reference log-probs", progress):
        table[batch.indices] = reference.logps(batch).float().cpu()
    path = Path(cache_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"logps": table}, str(tmp), metadata={"format": CACHE_FORMAT})
    os.replace(tmp, path)
    return Cached(table)


def load_cached(cache_path: str | Path, shape: tuple[int, int] | None = None) -> Cached | None:
    """The table written by `precompute`, or None when there is none; one that cannot be read (a truncated or
    altered file) or is not of `shape` is removed with a message, so the caller computes it afresh."""
    path = Path(cache_path)
    if not path.is_file():
        return None
    try:
        table = load_file(str(path))["logps"]
        if shape is not None and tuple(table.shape) != tuple(shape):
            raise ValueError(f"a table of shape {tuple(table.shape)}, expected {tuple(shape)}")
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        say(f"the reference log-prob cache {path} was unusable ({err}): removed, computing it again")
        path.unlink(missing_ok=True)
        return None
    return Cached(table)
