"""Capability retention: per-token NLL and perplexity of models on held-out text, before and after training.

DPO moves a policy away from its reference; the DeepSeek LLM report (arXiv 2401.02954) asks what that costs in
general ability, with a before/after table. The cheapest exact measure: the mean negative log-likelihood per token
of held-out text under the starting model (before) and the trained policy (after), and its exponential, perplexity.

    held_out = read_held_out("hh_test.jsonl.gz", field="chosen", limit=50)
    result = perplexity(model, tokenizer, held_out.documents)   # PerplexityResult(nll=2.31, perplexity=10.1, ...)
    report = score_models({"reference": ModelSpec("runs/sft"), "policy": ModelSpec("runs/dpo")}, [held_out])

Tokens are training's (`data.tokenize.encode_documents`): a document is a response to an empty prompt, `start +
ids(text) + [eos]`, where start is bos when the tokenizer adds one and eos (a document boundary) otherwise; every
token after the start is scored, eos included. Per-token figures compare models only when they share a tokenizer
(`score_models` can give all of them one).

Documents longer than `max_length` tokens are scored in consecutive windows of at most `max_length` tokens that
overlap by exactly one token: the last token of a window is the first of the next, where it is context only. So
every token is scored exactly once (none twice, none skipped), and each window starts afresh, with no context from
before it (no strided sliding window: a token near a window's start sees less context than in one long forward).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

import torch
from torch import Tensor

from dpokit.core.errors import ConfigError, DataError
from dpokit.core.progress import transient
from dpokit.core.sections import ModelConfig
from dpokit.data import chat
from dpokit.data.formats import BadRecord, messages
from dpokit.data.sources import RawRecord, json_type, read_records
from dpokit.data.tokenize import encode_documents
from dpokit.lm.logprobs import chunked_token_logps
from dpokit.models.loading import default_device, load_model, load_tokenizer

Messages = list[dict[str, Any]]
WINDOWS = ("documents longer than max_length are scored in windows of max_length tokens that overlap by one token: "
           "every token after a document's first is scored once, each window without context from before it")


# --- reading held-out text -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One held-out document and where it came from (for messages that name file, line and field).

    Attributes:
        content: the text, or {role, content} messages that the scoring tokenizer's chat template renders.
        source: the file or dataset it came from.
        line: its 1-based line (a `.txt` or JSONL line, a CSV editor line, a JSON item or dataset row).
        field: the record field it was read from; None for a `.txt` line.
    """

    content: str | Messages
    source: str = "<texts>"
    line: int = 0
    field: str | None = None


@dataclass(frozen=True)
class HeldOut:
    """The documents read from one source, in source order."""

    source: str
    field: str | None
    documents: list[Document]


def read_held_out(path: str, field: str = "text", limit: int | None = None, split: str = "train") -> HeldOut:
    """Reads held-out documents: a `.txt` file holds one per non-blank line; any source `read_records` reads
    (JSONL/.jsonl.gz, JSON, Parquet, CSV, a dataset directory or hub name) holds one per record in `field`, a
    string or a list of {role, content} messages.

    Args:
        path: the file or dataset.
        field: the record field holding the text (ignored for `.txt`).
        limit: read at most this many documents (reading stops there).
        split: the split of a dataset.

    Raises:
        ConfigError: `limit` is not a positive integer.
        DataError: the source cannot be read, or a record has no usable text (naming file, line and field).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"the perplexity limit must be a positive integer, got {limit!r}")
    path = str(path)
    if path.lower().endswith(".txt"):
        documents = list(islice(_txt_documents(path), limit))
        field = None
    else:
        with closing(read_records(path, split=split)) as records:
            documents = list(islice((_document(raw, field) for raw in records), limit))
    if not documents:
        raise DataError("no documents to score", source=path)
    return HeldOut(source=path, field=field, documents=documents)


def _txt_documents(path: str) -> Iterator[Document]:
    try:
        with open(path, "rb") as f:
            for line, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8-sig" if line == 1 else "utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise DataError(f"invalid UTF-8 (byte {e.start + 1} of the line)", source=path, line=line) from None
                if text.strip():
                    yield Document(text, source=path, line=line)
    except FileNotFoundError:
        raise DataError("no such file", source=path) from None


def _document(raw: RawRecord, field: str) -> Document:
    where = {"source": raw.source, "line": raw.line}
    if raw.error is not None:
        raise DataError(raw.error, field=raw.field, **where)
    if field not in raw.record:
        keys = ", ".join(map(str, raw.record))[:200]
        raise DataError("missing field", field=field, hint=f"the record's fields are: {keys}", **where)
    value = raw.record[field]
    if isinstance(value, list):
        try:
            return Document(messages(raw.record, field), field=field, **where)
        except BadRecord as bad:
            raise DataError(bad.reason, field=bad.field, **where) from None
    if not isinstance(value, str):
        raise DataError(f"expected a string or a list of {{role, content}} messages, got {json_type(value)}",
                        field=field, **where)
    doc = Document(value, field=field, **where)
    _check_text(value, doc)
    return doc


def _check_text(text: str, doc: Document) -> str:
    """`text` if it can be scored: not blank, and valid Unicode (JSON can spell a lone surrogate, no tokenizer
    takes one)."""
    where = {"source": doc.source, "line": doc.line, "field": doc.field}
    if not text.strip():
        raise DataError("empty or whitespace-only text: nothing to score", **where)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"invalid Unicode: lone surrogate at character {e.start + 1}", **where) from None
    return text


def document_text(tokenizer: Any, doc: Document) -> str:
    """The document's text; messages rendered whole by the tokenizer's chat template (no generation prompt).

    Raises:
        DataError: the text is blank, or messages cannot be rendered (no template, or the template raised).
    """
    where = {"source": doc.source, "line": doc.line, "field": doc.field}
    if isinstance(doc.content, str):
        return _check_text(doc.content, doc)
    if not chat.has_template(tokenizer):
        raise DataError("a list of messages needs a chat template, and the tokenizer has none", **where)
    try:
        return _check_text(chat.render(tokenizer, doc.content, add_generation_prompt=False), doc)
    except chat.TemplateError as e:
        raise DataError(str(e), **where) from None


# --- scoring one model ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerplexitySettings:
    max_length: int = 1024  # tokens per forward; longer documents are split into windows (module docstring)
    batch_size: int = 8  # windows per forward

    def check(self) -> None:
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2:
            raise ConfigError(f"max_length must be an integer >= 2 to score text, got {self.max_length!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")


@dataclass(frozen=True)
class PerplexityResult:
    """One model on one set of documents.

    Attributes:
        nll: mean negative log-likelihood per scored token, in nats: Σ NLL / tokens over all documents together.
        perplexity: exp(nll).
        tokens: tokens scored (every token of every document after its first).
        documents: documents scored.
        windowed: documents longer than max_length, scored in several windows.
    """

    nll: float
    perplexity: float
    tokens: int
    documents: int
    windowed: int


def windows(ids: Sequence[int], max_length: int) -> list[list[int]]:
    """Splits one document's ids into windows of at most `max_length` that overlap by one token, so that scoring
    every token after each window's first scores every token after the document's first exactly once.

    >>> windows([0, 1, 2, 3, 4, 5, 6], 3)
    [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
    >>> windows([0, 1, 2, 3, 4, 5], 3)
    [[0, 1, 2], [2, 3, 4], [4, 5]]
    >>> windows([0, 1], 3)
    [[0, 1]]
    """
    return [list(ids[s:s + max_length]) for s in range(0, max(len(ids) - 1, 1), max_length - 1)]


def perplexity(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str | Messages | Document],
               max_length: int = 1024, batch_size: int = 8, progress: bool = False) -> PerplexityResult:
    """Per-token NLL and perplexity of `model` on `texts`, tokenized as training does (module docstring).

    Windows (see `windows`) of all documents are batched longest first, right-padded with an attention mask, on the
    model's device, in eval mode (restored after) without gradients; the LM head runs only where a token is scored.

    Args:
        model: a causal LM (a transformers `*ForCausalLM`).
        tokenizer: its tokenizer; renders message lists with its chat template.
        texts: strings, message lists, or `Document`s (which name where they came from in errors).
        max_length: tokens per window, >= 2.
        batch_size: windows per forward.
        progress: show a bar on a terminal.

    Raises:
        ConfigError: a bad setting, or no texts.
        DataError: a text is blank or cannot be rendered.
    """
    PerplexitySettings(max_length, batch_size).check()
    docs = [t if isinstance(t, Document) else Document(t, line=i) for i, t in enumerate(texts, 1)]
    if not docs:
        raise ConfigError("no texts to score")
    ids = encode_documents(tokenizer, [document_text(tokenizer, d) for d in docs])
    rows = [w for row in ids for w in windows(row, max_length)]
    was_training = model.training
    model.eval()
    try:
        total = _total_nll(model, rows, batch_size, progress)
    finally:
        model.train(was_training)
    tokens = sum(len(row) - 1 for row in ids)
    if tokens == 0:
        raise DataError("no tokens to score: every text is a single start token", source=docs[0].source)
    nll = total / tokens
    return PerplexityResult(nll=nll, perplexity=math.exp(nll), tokens=tokens, documents=len(docs),
                            windowed=sum(len(row) > max_length for row in ids))


@torch.no_grad()
def _total_nll(model: torch.nn.Module, rows: list[list[int]], batch_size: int, progress: bool) -> float:
    """Σ over windows of the NLL of every token after the window's first, in nats (float64 sums)."""
    device = next(model.parameters()).device
    rows = sorted(rows, key=len, reverse=True)  # like lengths together: little padding
    batches = range(0, len(rows), batch_size)
    return sum(_batch_nll(model, rows[i:i + batch_size], device).sum().item()
               for i in transient(batches, "perplexity", progress))


def _batch_nll(model: torch.nn.Module, rows: list[list[int]], device: torch.device) -> Tensor:
    """(B,) float64 NLL per right-padded row: the backbone over (B, T), the LM head only at the positions t whose
    next token t+1 is real (position t's logits predict token t+1)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    row, col = mask[:, 1:].nonzero(as_tuple=True)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    logps = chunked_token_logps(hidden[row, col], model.get_output_embeddings(), ids[row, col + 1], 1024, softcap)
    return torch.zeros(len(rows), dtype=torch.float64, device=device).index_add(0, row, -logps.double()).cpu()


# --- several models ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A model to score, loaded when its turn comes and freed after.

    Attributes:
        path: a directory, hub name, `.gguf` path or packaged short name (`model_source.resolve_model`).
        gguf_file: a `.gguf` file inside the directory or hub repo `path`.
        settings: dtype and loading safety (`trust_remote_code`, `allow_pickle`); its name_or_path is not read.
    """

    path: str
    gguf_file: str | None = None
    settings: ModelConfig = field(default_factory=ModelConfig)

    def load(self) -> torch.nn.Module:

        return load_model(self.path, self.settings, gguf_file=self.gguf_file)

    def load_tokenizer(self) -> Any:

        return load_tokenizer(self.path, self.settings.trust_remote_code, self.gguf_file)


def score_models(models: Mapping[str, ModelSpec], held_out: Sequence[HeldOut], tokenizer: Any = None,
                 settings: PerplexitySettings | None = None, progress: bool = False) -> dict[str, Any]:
    """Scores every named model on every source, one model in memory at a time; JSON-ready.

    The first model is the baseline ("before"); each source's `change` gives every other model's difference from it
    ("after" − "before": nll and perplexity, and the perplexity ratio after / before).

    Args:
        models: name -> model, in report order (e.g. {"reference": ..., "policy": ...}).
        held_out: the sources' documents (`read_held_out`).
        tokenizer: one tokenizer for all models (per-token figures are comparable only then); None: each its own.
        settings: window length and batch size (default `PerplexitySettings()`).
        progress: show a bar on a terminal.

    Returns:
        {"settings", "models": {name: path}, "baseline", "sources": [{"source", "field", "documents", "results":
        {name: PerplexityResult as a dict}, "change": {name: {"nll", "perplexity", "perplexity_ratio"}}}]}.
    """
    settings = settings or PerplexitySettings()
    settings.check()
    if not models:
        raise ConfigError("no models to score")

    device = default_device()
    results: dict[str, list[PerplexityResult]] = {}
    for name, spec in models.items():
        tok = tokenizer if tokenizer is not None else spec.load_tokenizer()
        model = spec.load().to(device)
        results[name] = [perplexity(model, tok, h.documents, settings.max_length, settings.batch_size, progress)
                         for h in held_out]
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    baseline = next(iter(models))
    return {
        "settings": {"max_length": settings.max_length, "batch_size": settings.batch_size, "windows": WINDOWS},
        "models": {name: str(spec.path) for name, spec in models.items()},
        "baseline": baseline,
        "sources": [_source_report(h, {name: r[i] for name, r in results.items()}, baseline)
                    for i, h in enumerate(held_out)],
    }


def _source_report(held_out: HeldOut, results: dict[str, PerplexityResult], baseline: str) -> dict[str, Any]:
    before = results[baseline]
    change = {name: {"nll": r.nll - before.nll, "perplexity": r.perplexity - before.perplexity,
                     "perplexity_ratio": r.perplexity / before.perplexity}
              for name, r in results.items() if name != baseline}
    return {"source": held_out.source, "field": held_out.field, "documents": len(held_out.documents),
            "results": {name: asdict(r) for name, r in results.items()}, "change": change}


def table(report: dict[str, Any]) -> str:
    """The report of `score_models` as lines for a person: one block per source, one line per model.

        perplexity on hh.jsonl.gz (field chosen, 50 documents; before = reference)
          reference   nll 2.3410  ppl 10.39  (12,345 tokens)
          policy      nll 2.3702  ppl 10.70  (12,345 tokens)  change: nll +0.0292, ppl ×1.030
    """
    lines, baseline = [], report["baseline"]
    width = max(len(name) for name in report["models"])
    for source in report["sources"]:
        field_note = f"field {source['field']}, " if source["field"] else ""
        before = f"; before = {baseline}" if len(report["models"]) > 1 else ""
        lines.append(f"perplexity on {source['source']} ({field_note}{source['documents']:,} documents{before})")
        for name, r in source["results"].items():
            line = f"  {name:<{width}}  nll {r['nll']:.4f}  ppl {r['perplexity']:.2f}  ({r['tokens']:,} tokens)"
            if name in source["change"]:
                c = source["change"][name]
                line += f"  change: nll {c['nll']:+.4f}, ppl ×{c['perplexity_ratio']:.3f}"
            lines.append(line)
    return "\n".join(lines)
