"""Tests for maas_tune.providers.http: httpx faults become specific, key-free maas-tune errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import httpx
import pytest

from maas_tune.errors import (
    ConfigurationError,
    ProviderConnectionError,
    ProviderError,
    ProviderResponseError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from maas_tune.providers._retry import is_retryable
from maas_tune.providers.http import BODY_EXCERPT_CHARS, redact, request_json, status_error

KEY = "sk-test-SECRET123"
BASE = "https://api.example.test/v1"

Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler) -> httpx.Client:
    return httpx.Client(
        base_url=BASE,
        transport=httpx.MockTransport(handler),
        headers={"Authorization": f"Bearer {KEY}"},
    )


def fail_with(status: int, body: object = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def raise_(exc_type: type[httpx.TransportError], text: str = "boom") -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(text, request=request)

    return handler


def send(handler: Handler) -> tuple[dict, httpx.Headers]:
    with make_client(handler) as client:
        return request_json(client, "POST", "/completions", json={"prompt": "hi"})


def catch(handler: Handler, exc_type: type[BaseException] = ProviderError) -> BaseException:
    with pytest.raises(exc_type) as info:
        send(handler)
    assert_no_key(info.value)
    return info.value


def assert_no_key(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), str(getattr(exc, "body_excerpt", ""))):
        assert KEY not in text
        assert "SECRET123" not in text


OPENAI_400 = {
    "error": {
        "message": "logprobs must be <= 5",
        "type": "invalid_request_error",
        "param": "logprobs",
        "code": None,
    }
}


def test_success_returns_body_and_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [1]}, headers={"x-request-id": "req_1"})

    body, headers = send(handler)
    assert body == {"choices": [1]}
    assert headers["x-request-id"] == "req_1"
    assert json.loads(seen[0].content) == {"prompt": "hi"}
    assert str(seen[0].url) == f"{BASE}/completions"


def test_400_openai_body_gives_type_message_and_hint() -> None:
    err = catch(fail_with(400, OPENAI_400, {"x-request-id": "req_abc"}), ProviderStatusError)
    assert err.status == 400
    assert err.error_type == "invalid_request_error"
    assert err.request_id == "req_abc"
    assert "logprobs must be <= 5" in str(err)
    assert "HTTP 400" in str(err) and "req_abc" in str(err)
    assert "fix the request" in str(err)
    assert "/v1/completions" in str(err)
    assert err.body_excerpt is not None and "invalid_request_error" in err.body_excerpt
    assert err.request_sent is False
    assert err.retry_after is None
    assert not is_retryable(err)


def test_401_echoing_the_key_never_leaks_it() -> None:
    body = {
        "error": {
            "message": f"Incorrect API key provided: {KEY}. Header was 'Bearer {KEY}'",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    err = catch(fail_with(401, body), ProviderStatusError)
    assert err.status == 401
    assert "Incorrect API key provided" in str(err)
    assert "[REDACTED]" in str(err) and "[REDACTED]" in err.body_excerpt
    assert "API key" in str(err) and "check" in str(err)
    assert err.request_sent is False


def test_custom_key_shape_is_scrubbed_via_the_request_header() -> None:
    odd_key = "zz-custom-token-999"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, text=f"forbidden for key {odd_key}")

    client = httpx.Client(
        base_url=BASE, transport=httpx.MockTransport(handler), headers={"api-key": odd_key}
    )
    with client, pytest.raises(ProviderStatusError) as info:
        request_json(client, "GET", "/models")
    assert odd_key not in str(info.value) and odd_key not in info.value.body_excerpt
    assert "forbidden for key [REDACTED]" in str(info.value)


def test_key_in_query_string_is_not_shown() -> None:
    with (
        make_client(fail_with(404, {"error": {"message": "no such model"}})) as client,
        pytest.raises(ProviderStatusError) as info,
    ):
        request_json(client, "GET", f"/models?key={KEY}")
    assert_no_key(info.value)
    assert "/v1/models" in str(info.value) and "base URL" in str(info.value)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({}, None),
    ],
)
def test_429_carries_retry_after(headers: dict[str, str], expected: float | None) -> None:
    body = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit"}}
    err = catch(fail_with(429, body, headers), ProviderStatusError)
    assert err.status == 429 and err.error_type == "requests"
    assert err.retry_after == expected
    assert err.request_sent is False
    assert is_retryable(err)
    assert "rate limit" in str(err).lower() and "quota" in str(err)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_sent_and_retryable(status: int) -> None:
    err = catch(fail_with(status, "<html>upstream exploded</html>"), ProviderStatusError)
    assert err.status == status
    assert err.error_type is None
    assert err.request_sent is True
    assert is_retryable(err)
    assert "upstream exploded" in str(err) and "try again later" in str(err)


@pytest.mark.parametrize("status", [408, 409])
def test_408_409_count_as_sent(status: int) -> None:
    err = catch(fail_with(status, {"error": {"message": "busy"}}), ProviderStatusError)
    assert err.request_sent is True and is_retryable(err)


def test_501_is_not_retried() -> None:
    err = catch(fail_with(501, "not implemented"), ProviderStatusError)
    assert err.request_sent is True and not is_retryable(err)


def test_body_excerpt_is_bounded_and_redacted_before_cutting() -> None:
    # The key straddles the cut point: cutting first would leave "sk-test-SEC" behind.
    text = "x" * (BODY_EXCERPT_CHARS - 10) + KEY + "y" * 5000
    err = catch(fail_with(500, text), ProviderStatusError)
    assert len(err.body_excerpt) <= BODY_EXCERPT_CHARS
    assert "sk-test" not in err.body_excerpt and "sk-test" not in str(err)
    assert len(str(err)) < 2 * BODY_EXCERPT_CHARS


def test_status_error_factory_directly() -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    request = httpx.Request("POST", f"{BASE}/completions", headers=auth)
    response = httpx.Response(
        503, json={"error": "overloaded"}, headers={"Retry-After": "2"}, request=request
    )
    err = status_error(response)
    assert isinstance(err, ProviderStatusError)
    assert err.status == 503 and err.retry_after == 2.0 and "overloaded" in str(err)
    assert err.request_sent is True


@pytest.mark.parametrize(
    ("exc_type", "sent"),
    [
        (httpx.ReadTimeout, True),
        (httpx.WriteTimeout, True),
        (httpx.ConnectTimeout, False),
        (httpx.PoolTimeout, False),
    ],
)
def test_timeouts(exc_type: type[httpx.TransportError], sent: bool) -> None:
    err = catch(raise_(exc_type, "timed out"), ProviderTimeoutError)
    assert err.request_sent is sent
    assert exc_type.__name__ in str(err) and "timeout" in str(err)
    assert is_retryable(err)
    assert isinstance(err.__cause__, exc_type)


@pytest.mark.parametrize(
    ("exc_type", "sent"),
    [(httpx.ConnectError, False), (httpx.RemoteProtocolError, True), (httpx.ReadError, True)],
)
def test_connection_errors(exc_type: type[httpx.TransportError], sent: bool) -> None:
    err = catch(raise_(exc_type, "[Errno 111] Connection refused"), ProviderConnectionError)
    assert not isinstance(err, ProviderTimeoutError)
    assert err.request_sent is sent
    assert "Connection refused" in str(err) and "check the base URL" in str(err)
    assert is_retryable(err)


def test_transport_error_text_is_redacted() -> None:
    err = catch(raise_(httpx.ConnectError, f"proxy rejected Bearer {KEY}"), ProviderConnectionError)
    assert "Bearer [REDACTED]" in str(err)


def test_non_http_scheme_is_a_configuration_error() -> None:
    err = catch(
        raise_(httpx.UnsupportedProtocol, "Request URL has an unsupported protocol"),
        ConfigurationError,
    )
    assert "http:// or https://" in str(err)
    assert not is_retryable(err)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"choices": [{"text": "a"', "not valid JSON"),
        ("<html>gateway</html>", "not valid JSON"),
        ("", "not valid JSON"),
        ('[{"choices": []}]', "JSON list, not an object"),
        ('"just a string"', "JSON str, not an object"),
    ],
)
def test_malformed_2xx_body(text: str, problem: str) -> None:
    err = catch(fail_with(200, text), ProviderResponseError)
    assert problem in str(err)
    assert f"{BASE}/completions" in str(err)
    assert "OpenAI-compatible" in str(err)
    assert (text[:10] or "empty body") in str(err)
    assert err.request_sent is True
    assert not is_retryable(err)


def test_debug_log_has_no_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="maas_tune.providers")
    send(fail_with(200, {"ok": True}))
    assert "HTTP 200" in caplog.text and KEY not in caplog.text


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        (f"key={KEY}!", (), "key=[REDACTED]!"),
        ("sk-proj-abcDEF123_456-xyz end", (), "[REDACTED] end"),
        (f"Authorization: Bearer {KEY}", (), "Authorization: Bearer [REDACTED]"),
        ("bearer eyJhbGciOi.abc.def", (), "Bearer [REDACTED]"),
        ("token hunter2 here", ("hunter2", ""), "token [REDACTED] here"),
        ("the task-level risk is low", (), "the task-level risk is low"),
    ],
)
def test_redact(text: str, secrets: tuple[str, ...], expected: str) -> None:
    assert redact(text, secrets) == expected
