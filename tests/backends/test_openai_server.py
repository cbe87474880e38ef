"""The loopback OpenAI-compatible server itself, spoken to over plain HTTP."""

from __future__ import annotations

import http.client
import json
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from tests.support.openai_server import (
    OpenAIServer,
    default_responder,
    delay,
    drop,
    malformed,
    ok,
    requested_output_fields,
    sample_value,
    status,
    truncated,
)

DSPY_PROMPT = (
    "Your input fields are:\n1. `question` (str): q\n"
    "Your output fields are:\n1. `answer` (str): a\n2. `tag` (Literal['x', 'y']): \n"
    "3. `n` (int): \n4. `items` (list[str]):\n"
    "All interactions will be structured in the following way, [[ ## completed ## ]]"
)


def _post_raw(
    server: OpenAIServer, body: Any, path: str = "/v1/chat/completions"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _post(
    server: OpenAIServer, body: Any, path: str = "/v1/chat/completions"
) -> tuple[int, dict[str, str], dict[str, Any]]:
    code, headers, raw = _post_raw(server, body, path)
    return code, headers, json.loads(raw)


def _chat(content: str = DSPY_PROMPT) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "system", "content": content}]}


def test_answers_the_fields_the_prompt_asks_for(openai_server: OpenAIServer) -> None:
    code, _, body = _post(openai_server, _chat())
    assert code == 200
    content = body["choices"][0]["message"]["content"]
    assert "[[ ## answer ## ]]\nanswer answer" in content
    assert "[[ ## tag ## ]]\nx" in content
    assert content.endswith("[[ ## completed ## ]]")


def test_reports_usage_as_word_counts(openai_server: OpenAIServer) -> None:
    openai_server.script(ok("four five six"))
    _, _, body = _post(openai_server, _chat("one two three"))
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_serves_the_path_without_v1_too(openai_server: OpenAIServer) -> None:
    assert _post(openai_server, _chat(), "/chat/completions")[0] == 200


def test_unknown_path_is_404_and_not_counted(openai_server: OpenAIServer) -> None:
    assert _post(openai_server, _chat(), "/v1/embeddings")[0] == 404
    assert openai_server.request_count == 0


def test_body_that_is_not_json_is_400(openai_server: OpenAIServer) -> None:
    assert _post(openai_server, b"{nope")[0] == 400


def test_scripted_outcomes_are_used_in_order_then_ok(openai_server: OpenAIServer) -> None:
    openai_server.script(status(429, retry_after=2), status(500), ok("fixed"))
    first = _post(openai_server, _chat())
    assert (first[0], first[1]["Retry-After"]) == (429, "2")
    assert first[2]["error"]["type"] == "rate_limit_error"
    assert _post(openai_server, _chat())[2]["error"]["type"] == "server_error"
    assert _post(openai_server, _chat())[2]["choices"][0]["message"]["content"] == "fixed"
    assert _post(openai_server, _chat())[0] == 200
    assert openai_server.request_count == 4
    assert openai_server.pending_outcomes == 0


def test_delay_then_answers(openai_server: OpenAIServer) -> None:
    openai_server.script(delay(0.01, status(503)))
    assert _post(openai_server, _chat())[0] == 503


def test_drop_closes_without_a_response(openai_server: OpenAIServer) -> None:
    openai_server.script(drop())
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        _post(openai_server, _chat())


def test_records_requests_and_reset_forgets_them(openai_server: OpenAIServer) -> None:
    openai_server.script(status(500), status(500))
    _post(openai_server, _chat())
    assert openai_server.requests[0].json["model"] == "m"
    openai_server.reset()
    assert openai_server.request_count == 0
    assert openai_server.pending_outcomes == 0


def test_custom_responder_decides_the_content() -> None:
    with OpenAIServer(lambda request: f"echo {request['model']}", model="fixed-model") as server:
        _, _, body = _post(server, _chat())
    assert body["choices"][0]["message"]["content"] == "echo m"
    assert body["model"] == "fixed-model"


def test_stopped_server_has_no_port() -> None:
    server = OpenAIServer()
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.port


def test_default_responder_answers_json_when_asked() -> None:
    request = _chat(DSPY_PROMPT.replace("[[ ## completed ## ]]", "")) | {
        "response_format": {"type": "json_object"}
    }
    assert json.loads(default_responder(request)) == {
        "answer": "answer answer",
        "tag": "x",
        "n": 1,
        "items": [],
    }


def test_requested_output_fields_reads_names_and_types() -> None:
    assert requested_output_fields(_chat()) == [
        ("answer", "str"),
        ("tag", "Literal['x', 'y']"),
        ("n", "int"),
        ("items", "list[str]"),
    ]
    assert requested_output_fields({"messages": []}) == []


@pytest.mark.parametrize(
    ("type_text", "value"),
    [
        ("float", 0.5),
        ("bool", True),
        ("dict[str, int]", {}),
        ("Literal[3, 4]", 3),
        ("SomeModel", "f answer"),
    ],
)
def test_sample_value_fits_the_printed_type(type_text: str, value: object) -> None:
    assert sample_value(type_text, "f") == value


def test_malformed_answers_200_with_a_body_that_is_not_json(openai_server: OpenAIServer) -> None:
    openai_server.script(malformed("<html>bad gateway</html>"))
    code, headers, raw = _post_raw(openai_server, _chat())
    assert (code, headers["Content-Type"], raw) == (
        200,
        "application/json",
        b"<html>bad gateway</html>",
    )


def test_truncated_answers_200_with_json_cut_off_halfway(openai_server: OpenAIServer) -> None:
    openai_server.script(truncated())
    code, headers, raw = _post_raw(openai_server, _chat())
    assert code == 200
    assert int(headers["Content-Length"]) == len(raw)
    assert raw.startswith(b'{"id": "chatcmpl-')
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)


def test_retry_after_can_be_sent_as_an_http_date(openai_server: OpenAIServer) -> None:
    openai_server.script(status(429, retry_after_date=30))
    before = datetime.now(UTC).replace(microsecond=0)
    code, headers, _ = _post(openai_server, _chat())
    assert code == 429
    when = parsedate_to_datetime(headers["Retry-After"])
    assert before + timedelta(seconds=29) <= when <= datetime.now(UTC) + timedelta(seconds=30)


def _injected_sequence(seed: int) -> list[int]:
    with OpenAIServer() as server:
        server.inject(0.5, [status(500), status(503)], seed=seed)
        return [_post(server, _chat())[0] for _ in range(20)]


def test_injected_faults_follow_the_seed() -> None:
    first = _injected_sequence(seed=3)
    assert first == _injected_sequence(seed=3)
    assert {200, 500, 503} <= set(first)
    assert first != _injected_sequence(seed=4)


def test_injection_counts_faults_by_name_and_scripted_outcomes_come_first(
    openai_server: OpenAIServer,
) -> None:
    openai_server.inject(1.0, [status(503, label="down")], seed=0)
    openai_server.script(ok("scripted"))
    assert _post(openai_server, _chat())[0] == 200
    assert [_post(openai_server, _chat())[0] for _ in range(3)] == [503] * 3
    assert openai_server.injected == {"down": 3}
    openai_server.inject(0.0, [])
    assert _post(openai_server, _chat())[0] == 200


def test_injection_needs_a_rate_in_range_and_faults_to_choose_from(
    openai_server: OpenAIServer,
) -> None:
    with pytest.raises(ValueError, match="rate"):
        openai_server.inject(1.5, [status(500)])
    with pytest.raises(ValueError, match="faults"):
        openai_server.inject(0.3, [])
