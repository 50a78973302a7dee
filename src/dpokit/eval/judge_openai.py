"""An LLM judge behind an OpenAI-compatible chat-completions API (OpenAI, vLLM, llama.cpp's server, Ollama, ...).

Each comparison is asked twice, the model's response shown first (as "A") and then the baseline's, with the DPO
paper's judging prompt (`judge_prompts`); each answer's last line names the better response, and `judges.combine`
turns the two orders into a verdict. Requests run `judge.concurrency` at a time; the official `openai` client
retries rate limits (429), server errors (5xx), timeouts and dropped connections `judge.max_retries` times with
exponential backoff (0.5 s doubling to 8 s, or the server's Retry-After). A request that still fails stops the run
with a `JudgeError`; an answer that arrives but names neither response is kept as unparsed (p = None), never guessed.
The answer budget goes as `max_tokens`, or as `max_completion_tokens` (OpenAI's reasoning models refuse the former):
`judge.max_tokens_param` says which, and `auto` switches once, for the rest of the run, when the API refuses
`max_tokens` as an unsupported parameter (HTTP 400).

Answers are cached on disk (`AnswerCache`, JSON lines) as they arrive, keyed by a hash of everything that decides
them (base URL, model, messages, temperature, max_tokens): a rerun, or a run resumed after an error, asks only what
the cache lacks.

The key is read from the environment variable `judge.api_key_env` (OPENAI_API_KEY), and a missing key is refused
before any request, except for a server on this machine (localhost, 127.0.0.1, ::1), which is sent the placeholder
key "EMPTY" (local servers such as vLLM's accept any key unless started with one).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dpokit.core.errors import ConfigError, DataError, DpokitError
from dpokit.core.progress import progress, say
from dpokit.eval.judge_prompts import Choice, load_prompt
from dpokit.eval.judges import Comparison, JudgeConfig, Judgment, Order, combine

OPENAI_BASE_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
LOCAL_KEY = "EMPTY"
INSTALL = "pip install 'dpokit[judge]'"


class JudgeError(DpokitError):
    """A judge could not be asked (its API failed after all retries, or refused the request)."""


def p_model(choice: Choice | None, model_first: bool) -> float | None:
    """The probability that the model's response is better, from the letter a judge named in one order.

    >>> p_model("A", True), p_model("A", False), p_model(None, True)
    (1.0, 0.0, None)
    """
    if choice is None:
        return None
    return 1.0 if (choice == "A") == model_first else 0.0


class AnswerCache:
    """Judge answers on disk, one JSON object a line ({"key", "model", "answer"}), appended as they arrive.

    Safe to share between threads (one lock around each append). A line torn by a crash at the end of the file is
    skipped; a bad line elsewhere is an error naming file and line.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path).expanduser() if path else None
        self.answers: dict[str, str] = {}
        self._lock = threading.Lock()
        if self.path is not None and self.path.is_file():
            self._read(self.path)

    def _read(self, path: Path) -> None:
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                self.answers[row["key"]] = row["answer"]
            except (json.JSONDecodeError, KeyError, TypeError):
                if number == len(lines) and not text.endswith("\n"):
                    continue  # the last append was cut short: ask that one again
                raise DataError("not a judge-cache line ({\"key\", \"answer\"})", source=str(path), line=number,
                                hint="delete the file to start the cache afresh") from None
        if text and not text.endswith("\n"):
            with path.open("a", encoding="utf-8") as f:
                f.write("\n")

    def get(self, key: str) -> str | None:
        return self.answers.get(key)

    def put(self, key: str, model: str, answer: str) -> None:
        with self._lock:
            self.answers[key] = answer
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "model": model, "answer": answer}, ensure_ascii=False) + "\n")


class OpenAIJudge:
    """A chat model behind an OpenAI-compatible API as a pairwise judge ("openai:MODEL").

    Args:
        config: the `judge.*` settings (model after "openai:", base URL, key variable, template, sampling, retries,
            timeout, concurrency).
        cache: where answers are cached (JSON lines); None keeps them in memory only.

    Raises:
        ConfigError: the openai package is missing, the template cannot be loaded, or no API key is set for a
            server that is not on this machine.
    """

    def __init__(self, config: JudgeConfig, cache: str | None = None):
        self.config = config
        self.model = config.source.partition(":")[2].strip()
        self.prompt = load_prompt(config.template)
        self.base_url = (config.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL).rstrip("/")
        self.name = f"openai {self.model}"
        self.cache = AnswerCache(cache)
        self.show_progress = True
        self.client = _client(config, self.base_url, _api_key(config, self.base_url))
        # the request field of the answer budget; `auto` switches it once the API refuses max_tokens (`_create`)
        self.limit_param = "max_completion_tokens" if config.max_tokens_param == "max_completion_tokens" \
            else "max_tokens"

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgment]:
        """One judgment per comparison, each asked in both orders (model first, then baseline first).

        Raises:
            JudgeError: a request failed after all retries (answers received so far stay in the cache).
        """
        asked = [(model_first, self._messages(c, model_first)) for c in comparisons for model_first in (True, False)]
        keys = [self.key(messages) for _, messages in asked]
        todo = {key: messages for key, (_, messages) in zip(keys, asked, strict=True) if self.cache.get(key) is None}
        self._ask_all(todo)
        orders = []
        for key, (model_first, _) in zip(keys, asked, strict=True):
            answer = self.cache.get(key)
            orders.append(Order(model_first, p_model(self.prompt.parse(answer), model_first), answer))
        return [combine(orders[i:i + 2]) for i in range(0, len(orders), 2)]

    def _messages(self, c: Comparison, model_first: bool) -> list[dict[str, str]]:
        a, b = (c.completion, c.baseline) if model_first else (c.baseline, c.completion)
        return [{"role": "user", "content": self.prompt.render(c.prompt, a, b)}]

    def key(self, messages: list[dict[str, str]]) -> str:
        """The cache key: a hash of everything that decides the answer."""
        what = {"base_url": self.base_url, "model": self.model, "messages": messages,
                "temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        return hashlib.sha256(json.dumps(what, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _ask_all(self, todo: dict[str, list[dict[str, str]]]) -> None:
        """Asks every request in `todo`, `concurrency` at a time, caching each answer as it arrives."""
        if not todo:
            return
        bar = progress(range(len(todo)), len(todo), desc=f"judge {self.model}", enabled=self.show_progress)
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="dpokit-judge")
        futures: dict[Future, str] = {}
        try:
            futures.update({pool.submit(self._ask, msgs): key for key, msgs in todo.items()})
            for _, future in zip(bar, as_completed(futures), strict=False):
                self.cache.put(futures[future], self.model, future.result())
        finally:  # on an error: no new requests; answers that arrive meanwhile are kept for the rerun
            pool.shutdown(wait=True, cancel_futures=True)
            for future, key in futures.items():
                if not future.cancelled() and future.exception() is None and self.cache.get(key) is None:
                    self.cache.put(key, self.model, future.result())

    def _ask(self, messages: list[dict[str, str]]) -> str:
        import openai

        try:
            response = self._create(messages)
        except openai.APIStatusError as err:
            retried = f" after {self.config.max_retries} retries" if _retryable(err.status_code) else ""
            raise JudgeError(f"judge {self.model} at {self.base_url}: HTTP {err.status_code}{retried}: "
                             f"{_message(err)}{_param_hint(err)}{self._resume_hint()}") from None
        except openai.APIConnectionError as err:  # timeouts included
            raise JudgeError(f"judge {self.model} at {self.base_url}: {err.__class__.__name__} after "
                             f"{self.config.max_retries} retries (timeout {self.config.timeout:g} s): {err}"
                             f"{self._resume_hint()}") from None
        if not response.choices:
            raise JudgeError(f"judge {self.model} at {self.base_url}: an answer with no choices")
        return response.choices[0].message.content or ""

    def _create(self, messages: list[dict[str, str]]) -> Any:
        """One chat completion. With `max_tokens_param: auto`, a 400 refusing `max_tokens` as unsupported (OpenAI's
        reasoning models) is asked once more with `max_completion_tokens`, which every later request then sends."""
        import openai

        param = self.limit_param
        try:
            return self._request(messages, param)
        except openai.BadRequestError as err:
            if not (self.config.max_tokens_param == "auto" and param == "max_tokens"
                    and _refuses(err, "max_tokens")):
                raise
        if self.limit_param == "max_tokens":  # the first thread to learn it says so; the others just switch
            self.limit_param = "max_completion_tokens"
            say(f"judge {self.model}: the API refuses max_tokens; sending max_completion_tokens from now on "
                "(judge.max_tokens_param=max_completion_tokens skips the first try)")
        return self._request(messages, "max_completion_tokens")

    def _request(self, messages: list[dict[str, str]], param: str) -> Any:
        sampling = {} if self.config.temperature is None else {"temperature": self.config.temperature}
        return self.client.chat.completions.create(model=self.model, messages=messages, **sampling,
                                                   **{param: self.config.max_tokens})

    def _resume_hint(self) -> str:
        path = self.cache.path
        return f"; answers so far are cached in {path}, a rerun asks only the rest" if path else ""


def _retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def _error_body(err: Any) -> dict[str, Any]:
    body = getattr(err, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    return inner if isinstance(inner, dict) else {}


def _refuses(err: Any, param: str) -> bool:
    """Whether an API error refuses the request field `param` as unsupported by the model, as OpenAI does:
    {"param": "max_tokens", "code": "unsupported_parameter", "message": "Unsupported parameter: 'max_tokens' is
    not supported with this model. Use 'max_completion_tokens' instead."}."""
    body = _error_body(err)
    message = str(body.get("message") or err)
    return (body.get("param") == param or f"'{param}'" in message) and "unsupported" in message.lower()


def _param_hint(err: Any) -> str:
    """What to set when the model refuses a field dpokit sends (a reasoning model's fixed temperature, ...)."""
    if _error_body(err).get("param") == "temperature":
        return " (set judge.temperature=null to send no temperature: the model then uses its own default)"
    if _refuses(err, "max_tokens"):
        return " (set judge.max_tokens_param=max_completion_tokens)"
    if _refuses(err, "max_completion_tokens"):
        return " (set judge.max_tokens_param=max_tokens)"
    return ""


def _message(err: Any) -> str:
    return str(_error_body(err).get("message") or err)[:300]


def is_local(base_url: str) -> bool:
    """Whether the API is served on this machine (then it may go without a key)."""
    return (urlparse(base_url).hostname or "") in LOCAL_HOSTS


def _api_key(config: JudgeConfig, base_url: str) -> str:
    key = os.environ.get(config.api_key_env, "").strip()
    if key:
        return key
    if is_local(base_url):
        return LOCAL_KEY
    raise ConfigError(f"judge.source {config.source!r}: no API key for {base_url}: set the environment variable "
                      f"{config.api_key_env} (judge.api_key_env names another)")


def _client(config: JudgeConfig, base_url: str, key: str) -> Any:
    try:
        import openai
    except ImportError:
        raise ConfigError(f"judge.source {config.source!r} needs the openai package: {INSTALL}") from None
    return openai.OpenAI(api_key=key, base_url=base_url, max_retries=config.max_retries, timeout=config.timeout)
