"""A real HTTP server on 127.0.0.1 that speaks OpenAI's chat-completions API, scripted for judge tests.

`POST /v1/chat/completions` answers with the documented `chat.completion` object (id, object, created, model,
choices[{index, message{role, content}, finish_reason}], usage). What it answers is a `rule(prompt) -> text` over the
last user message: `prefers("Paris")` picks the response that contains a keyword, `always("A")` is a judge with
pure position bias, `garbage()` never names a letter. It can fail the first `fail_first` requests with an HTTP
status (500, 429, ...), fail every request (`fail_always`), sleep (`delay`, to force timeouts or overlap) and check a
bearer key. It counts requests, and the most that were in flight at once.

    with OpenAIServer(prefers("Paris")) as server:
        config = JudgeConfig(source="openai:judge", base_url=server.url)
        ...
        assert server.requests == 2
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Rule = Callable[[str], str]
_SECTIONS = re.compile(r"(?:Response|Summary) A:\s*(.*?)\s*(?:Response|Summary) B:\s*(.*?)\s*"
                       r"(?:FIRST|State only|$)", re.S)


def responses(prompt: str) -> tuple[str, str]:
    """The two responses shown in a judging prompt of the built-in templates (A first)."""
    found = _SECTIONS.search(prompt)
    if found is None:
        raise ValueError(f"no 'Response A: ... Response B:' in the prompt: {prompt[:200]!r}")
    return found.group(1), found.group(2)


def answer(letter: str, label: str = "More helpful") -> str:
    """A well-formed answer naming `letter`, as GPT-4 writes them for the DPO paper's prompts."""
    return f"Comparison: Response {letter} addresses the query more directly.\n{label}: {letter}"


def prefers(keyword: str, label: str = "More helpful") -> Rule:
    """A fair judge: the response containing `keyword` is better (A when both or neither do)."""
    def rule(prompt: str) -> str:
        a, b = responses(prompt)
        return answer("B" if keyword in b and keyword not in a else "A", label)
    return rule


def always(letter: str, label: str = "More helpful") -> Rule:
    """A judge with pure position bias: names `letter` whatever it is shown."""
    return lambda prompt: answer(letter, label)


def garbage() -> Rule:
    """A judge whose answers name no response."""
    return lambda prompt: "I cannot decide; both responses have merits and flaws."


class OpenAIServer:
    """The scripted chat-completions server, in a thread; a context manager (`url` is its base URL, .../v1).

    Args:
        rule: the answer's content from the last user message.
        fail_first: how many requests (the first ones) fail with `fail_status`.
        fail_status: the HTTP status of a failure (500, 429, 401, ...).
        fail_always: every request fails with `fail_status`.
        delay: seconds each request waits before answering (failures included).
        slow_first: how many requests (the first ones) wait `slow_delay` seconds instead (to cause client timeouts).
        api_key: when set, a request without "Authorization: Bearer <api_key>" gets 401.
        retry_after_ms: sent with failures as `retry-after-ms` (the client waits that long before its retry); None
            leaves the client to its own exponential backoff.
        unsupported: request fields the "model" refuses with HTTP 400 the way OpenAI's reasoning models do (e.g.
            "max_tokens": `Unsupported parameter: 'max_tokens' is not supported with this model. Use
            'max_completion_tokens' instead.`, param "max_tokens", code "unsupported_parameter").
    """

    def __init__(self, rule: Rule, *, fail_first: int = 0, fail_status: int = 500, fail_always: bool = False,
                 delay: float = 0.0, slow_first: int = 0, slow_delay: float = 0.0, api_key: str | None = None,
                 retry_after_ms: int | None = 1, unsupported: tuple[str, ...] = ()):
        self.rule, self.fail_first, self.fail_status, self.fail_always = rule, fail_first, fail_status, fail_always
        self.delay, self.slow_first, self.slow_delay = delay, slow_first, slow_delay
        self.api_key, self.retry_after_ms, self.unsupported = api_key, retry_after_ms, unsupported
        self.requests = 0  # POSTs received, failed ones included
        self.in_flight = 0
        self.max_in_flight = 0
        self.times: list[float] = []  # when each request arrived (time.monotonic)
        self.bodies: list[dict[str, Any]] = []  # each request's JSON body
        self.authorizations: list[str | None] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def prompts(self) -> list[str]:
        """The last user message of every request received, in arrival order."""
        return [body["messages"][-1]["content"] for body in self.bodies]

    def reply(self, body: dict[str, Any], authorization: str | None) -> tuple[int, dict[str, Any]]:
        """(status, JSON) for one request; counts it."""
        with self.lock:
            self.requests += 1
            number = self.requests
            self.times.append(time.monotonic())
            self.bodies.append(body)
            self.authorizations.append(authorization)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.slow_delay if number <= self.slow_first else self.delay)
            if self.api_key is not None and authorization != f"Bearer {self.api_key}":
                return 401, _error("Incorrect API key provided.", "invalid_request_error")
            refused = [name for name in self.unsupported if name in body]
            if refused:
                return 400, _unsupported(refused[0])
            if self.fail_always or number <= self.fail_first:
                kind = "rate_limit_exceeded" if self.fail_status == 429 else "server_error"
                return self.fail_status, _error(f"scripted failure of request {number}", kind)
            return 200, _completion(number, body, self.rule(body["messages"][-1]["content"]))
        finally:
            with self.lock:
                self.in_flight -= 1


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


# what OpenAI answers a reasoning model's request with a field it does not take (HTTP 400)
INSTEAD = {"max_tokens": " Use 'max_completion_tokens' instead.", "max_completion_tokens": ""}


def _unsupported(name: str) -> dict[str, Any]:
    message = f"Unsupported parameter: '{name}' is not supported with this model.{INSTEAD.get(name, '')}"
    return {"error": {"message": message, "type": "invalid_request_error", "param": name,
                      "code": "unsupported_parameter"}}


def _completion(number: int, body: dict[str, Any], content: str) -> dict[str, Any]:
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion_tokens = len(content.split())
    return {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def _handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, _error(f"no route {self.path}", "invalid_request_error"))
                return
            status, payload = server.reply(body, self.headers.get("Authorization"))
            self._send(status, payload)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status != 200 and server.retry_after_ms is not None:
                self.send_header("retry-after-ms", str(server.retry_after_ms))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client timed out and left
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read counters, not logs
            pass

    return Handler
