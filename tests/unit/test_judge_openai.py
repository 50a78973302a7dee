"""The OpenAI-compatible judge against a real HTTP server on 127.0.0.1 (tests/openai_server.py) through the official
openai client: both orders asked, position bias cancelled into ties, unparsed answers counted, retries after 500s,
429s and timeouts, a clear error when they run out, the disk cache, the concurrency limit, determinism."""

from __future__ import annotations

import json
import re

import pytest

from dpokit.core.errors import ConfigError, DataError
from dpokit.eval.judge_openai import JudgeError, OpenAIJudge
from dpokit.eval.judges import Comparison, JudgeConfig
from dpokit.eval.judging import load_judge
from openai_server import OpenAIServer, always, garbage, prefers, responses

pytest.importorskip("openai")

QUESTIONS = [
    Comparison("What is the capital of France?", "Paris.", "I like turtles."),
    Comparison([{"role": "user", "content": "Name the French capital."}], "Rome, I think.", "It is Paris."),
    Comparison("\n\nHuman: Where is the Eiffel tower?\n\nAssistant:", "In Paris, France.", "No idea."),
]


def judge_for(server: OpenAIServer, cache=None, **settings) -> OpenAIJudge:
    config = JudgeConfig(source="openai:judge-model", base_url=server.url, **settings)
    judge = load_judge(config, cache=cache)
    judge.show_progress = False
    return judge


def test_each_comparison_is_asked_in_both_orders_and_a_fair_judge_decides():
    with OpenAIServer(prefers("Paris")) as server:
        judgments = judge_for(server).judge(QUESTIONS)
    assert [j.verdict for j in judgments] == ["model", "baseline", "model"]
    assert server.requests == 6 and all(j.parsed and j.position_biased is False for j in judgments)
    assert [[o.model_first for o in j.orders] for j in judgments] == [[True, False]] * 3
    pairs = [(c.completion, c.baseline) for c in QUESTIONS]
    assert sorted(responses(p) for p in server.prompts()) == sorted(pairs + [(b, a) for a, b in pairs])
    body = server.bodies[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0 and body["max_tokens"] == 256
    assert body["messages"][0]["role"] == "user" and body["messages"][0]["content"].startswith(
        "For the following query to a chatbot, which response is more helpful?")
    order = judgments[0].orders[0]
    assert order.p == 1.0 and order.raw.endswith("More helpful: A")  # model first, and the judge named A


def test_a_judge_that_always_says_A_ties_and_its_bias_shows_in_the_orders():
    with OpenAIServer(always("A")) as server:
        judgments = judge_for(server).judge(QUESTIONS)
    assert [j.verdict for j in judgments] == ["tie"] * 3
    assert all(j.position_biased and j.parsed for j in judgments)
    assert all([o.p for o in j.orders] == [1.0, 0.0] and all(o.picked_first for o in j.orders) for j in judgments)


def test_unparseable_answers_are_unparsed_ties_not_guesses():
    with OpenAIServer(garbage()) as server:
        judgments = judge_for(server).judge(QUESTIONS[:2])
    assert [(j.verdict, j.parsed, j.position_biased) for j in judgments] == [("tie", False, None)] * 2
    assert all(o.p is None and "cannot decide" in o.raw for j in judgments for o in j.orders)


def test_the_summarization_template_and_its_label():
    with OpenAIServer(prefers("Paris", label="Preferred")) as server:
        judgments = judge_for(server, template="summarization").judge(QUESTIONS[:1])
    assert judgments[0].verdict == "model" and server.prompts()[0].startswith("Which of the following summaries")


@pytest.mark.parametrize("status", [500, 429])
def test_failed_requests_are_retried_until_they_succeed(status):
    with OpenAIServer(prefers("Paris"), fail_first=3, fail_status=status) as server:
        judgments = judge_for(server, max_retries=3, concurrency=1).judge(QUESTIONS[:1])
    assert judgments[0].verdict == "model" and server.requests == 3 + 2


def test_retries_back_off_exponentially_without_a_retry_after():
    with OpenAIServer(prefers("Paris"), fail_first=2, retry_after_ms=None) as server:
        judge_for(server, max_retries=2, concurrency=1).judge([QUESTIONS[0]])
    waits = [later - earlier for earlier, later in zip(server.times[:2], server.times[1:3], strict=True)]
    # the client waits 0.5 s, then 1 s, each less up to 25% jitter: the second wait is >= 0.25 s longer
    assert 0.3 < waits[0] < 1.5 and waits[1] - waits[0] > 0.1, waits


def test_a_timeout_is_retried():
    with OpenAIServer(prefers("Paris"), slow_first=1, slow_delay=2.0) as server:
        judgments = judge_for(server, timeout=0.5, max_retries=1, concurrency=1).judge(QUESTIONS[:1])
    assert judgments[0].verdict == "model" and server.requests == 3


def test_exhausted_retries_are_a_clear_error_and_answers_so_far_stay_cached(tmp_path):
    cache = tmp_path / "cache.jsonl"
    with OpenAIServer(prefers("Paris"), fail_always=True) as server, \
            pytest.raises(JudgeError, match=r"judge judge-model at http://127.0.0.1:\d+/v1: HTTP 500 after 2 retries: "
                                            r"scripted failure of request \d; answers so far are cached in"):
        judge_for(server, cache=str(cache), max_retries=2, concurrency=1).judge(QUESTIONS[:1])
    assert server.requests in (3, 6)  # both orders' requests may have started before the first gave up
    with OpenAIServer(prefers("Paris"), fail_first=2) as server:  # 2 failures then answers: one order fails
        with pytest.raises(JudgeError):
            judge_for(server, cache=str(cache), max_retries=1, concurrency=1).judge(QUESTIONS[:1])
        kept = len(cache.read_text().splitlines())
        assert kept == (1 if server.requests == 3 else 0)
        judgments = judge_for(server, cache=str(cache), concurrency=1).judge(QUESTIONS[:1])  # resumes
    assert judgments[0].verdict == "model" and len(cache.read_text().splitlines()) == 2


def test_a_reasoning_model_refusing_max_tokens_is_asked_with_max_completion_tokens_from_then_on(capsys):
    """OpenAI's reasoning models answer `max_tokens` with HTTP 400 (param "max_tokens", "Unsupported parameter: ...
    Use 'max_completion_tokens' instead."): the refused request is asked once more with max_completion_tokens, and
    every later request sends that field only."""
    with OpenAIServer(prefers("Paris"), unsupported=("max_tokens",)) as server:
        judgments = judge_for(server, max_tokens=1000, concurrency=1).judge(QUESTIONS)
    assert [j.verdict for j in judgments] == ["model", "baseline", "model"]
    fields = [("max_tokens" in b, b.get("max_completion_tokens")) for b in server.bodies]
    assert fields == [(True, None)] + [(False, 1000)] * 6 and server.requests == 7  # one refusal, 6 answers
    assert "sending max_completion_tokens from now on" in capsys.readouterr().err


def test_max_tokens_param_names_the_field_and_refusals_say_what_to_set():
    with OpenAIServer(prefers("Paris"), unsupported=("max_tokens",)) as server:
        judge_for(server, max_tokens_param="max_completion_tokens", concurrency=1).judge(QUESTIONS[:1])
    assert server.requests == 2 and all(b["max_completion_tokens"] == 256 for b in server.bodies)
    with OpenAIServer(prefers("Paris"), unsupported=("max_tokens",)) as server, pytest.raises(
            JudgeError, match=r"HTTP 400: Unsupported parameter: 'max_tokens' is not supported with this model\. "
                              r"Use 'max_completion_tokens' instead\. \(set judge.max_tokens_param="
                              r"max_completion_tokens\)"):
        judge_for(server, max_tokens_param="max_tokens", concurrency=1).judge(QUESTIONS[:1])
    assert server.requests in (1, 2)  # a 400 is not retried
    with OpenAIServer(prefers("Paris"), unsupported=("max_completion_tokens",)) as server:  # an older server
        judgments = judge_for(server, concurrency=1).judge(QUESTIONS[:1])
    assert judgments[0].verdict == "model" and all("max_completion_tokens" not in b for b in server.bodies)


def test_temperature_null_sends_none():
    with OpenAIServer(prefers("Paris"), unsupported=("temperature",)) as server, pytest.raises(
            JudgeError, match=r"'temperature' is not supported.*set judge.temperature=null"):
        judge_for(server, concurrency=1).judge(QUESTIONS[:1])
    with OpenAIServer(prefers("Paris"), unsupported=("temperature",)) as server:
        judgments = judge_for(server, temperature=None, concurrency=1).judge(QUESTIONS[:1])
    assert judgments[0].verdict == "model" and all("temperature" not in b for b in server.bodies)


def test_a_wrong_key_is_not_retried_and_says_so():
    with OpenAIServer(prefers("Paris"), api_key="sk-right") as server, \
            pytest.raises(JudgeError, match="HTTP 401: Incorrect API key provided"):
        judge_for(server, max_retries=3, concurrency=1).judge(QUESTIONS[:1])
    assert server.requests in (1, 2)


def test_the_key_comes_from_the_named_environment_variable(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-right")
    with OpenAIServer(prefers("Paris"), api_key="sk-right") as server:
        judgments = judge_for(server, api_key_env="MY_JUDGE_KEY").judge(QUESTIONS[:1])
    assert judgments[0].verdict == "model" and set(server.authorizations) == {"Bearer sk-right"}


def test_a_remote_api_without_a_key_is_refused_before_any_request(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    config = JudgeConfig(source="openai:gpt-4", base_url="https://api.example.com/v1", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(ConfigError, match="no API key for https://api.example.com/v1: set the environment variable "
                                          "NO_SUCH_KEY_VAR"):
        load_judge(config)


def test_the_base_url_defaults_to_OPENAI_BASE_URL(monkeypatch):
    with OpenAIServer(prefers("Paris")) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        judge = load_judge(JudgeConfig(source="openai:judge-model"))
        judge.show_progress = False
        assert judge.judge(QUESTIONS[:1])[0].verdict == "model" and server.requests == 2


def test_a_rerun_with_the_cache_sends_no_request_and_judges_the_same(tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    with OpenAIServer(prefers("Paris")) as server:
        first = judge_for(server, cache=str(cache)).judge(QUESTIONS)
        rows = [json.loads(line) for line in cache.read_text().splitlines()]
        assert server.requests == 6 and len(rows) == 6 and all(re.fullmatch(r"[0-9a-f]{64}", r["key"]) for r in rows)
        server.rule = always("B")  # a different judge now: an answer asked again would show
        again = judge_for(server, cache=str(cache)).judge(QUESTIONS)
        assert server.requests == 6 and again == first
        judge_for(server, cache=str(cache), temperature=0.7).judge(QUESTIONS[:1])  # another setting: asked anew
        assert server.requests == 8


def test_a_torn_last_cache_line_is_asked_again_and_a_bad_line_elsewhere_is_an_error(tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    with OpenAIServer(prefers("Paris")) as server:
        judge_for(server, cache=str(cache)).judge(QUESTIONS[:1])
        cache.write_text(cache.read_text()[:-20])  # the last append cut short
        assert judge_for(server, cache=str(cache)).judge(QUESTIONS[:1])[0].verdict == "model"
        assert server.requests == 3 and cache.read_text().endswith("\n")
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"judge_cache.jsonl:2: not a judge-cache line"):
        load_judge(JudgeConfig(source="openai:m", base_url="http://127.0.0.1:9/v1"), cache=str(cache))


def test_no_more_requests_in_flight_than_the_concurrency():
    many = [Comparison(f"Question {i}: capital of France?", "Paris.", f"Turtles {i}.") for i in range(12)]
    with OpenAIServer(prefers("Paris"), delay=0.05) as server:
        judgments = judge_for(server, concurrency=3).judge(many)
    assert server.requests == 24 and 2 <= server.max_in_flight <= 3
    assert all(j.verdict == "model" for j in judgments)


def test_the_same_questions_get_the_same_judgments():
    with OpenAIServer(prefers("Paris")) as server:  # two judges, no cache: every answer asked twice
        first = judge_for(server, concurrency=4).judge(QUESTIONS)
        assert judge_for(server, concurrency=2).judge(QUESTIONS[::-1])[::-1] == first and server.requests == 12


def test_identical_requests_are_asked_once():
    same = Comparison("Say hi.", "Hi!", "Hi!")  # both orders show the same text
    with OpenAIServer(always("A")) as server:
        judgment = judge_for(server).judge([same, same])[0]
    assert server.requests == 1 and judgment.verdict == "tie"
