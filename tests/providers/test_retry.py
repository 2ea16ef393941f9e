"""Tests for maas_tune.providers._retry: Retry-After parsing, backoff and the retry loop."""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable

import httpx
import pytest

from maas_tune.errors import (
    ConfigurationError,
    ProviderConnectionError,
    ProviderResponseError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from maas_tune.providers._retry import (
    INITIAL_RETRY_DELAY_S,
    MAX_RETRIES,
    MAX_RETRY_AFTER_S,
    MAX_RETRY_DELAY_S,
    RETRY_JITTER_FRACTION,
    RetryPolicy,
    is_retryable,
    parse_retry_after,
    retry_delay,
)
from maas_tune.providers.http import request_json

KEY = "sk-test-SECRET123"
NOW = 1_700_000_000.0

Step = Callable[[httpx.Request], httpx.Response]


# --- parse_retry_after -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.25"}, 1.25),
        ({"Retry-After": " 4 "}, 4.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"RETRY-AFTER-MS": "2000", "retry-after": "9"}, 2.0),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "0"}, 0.0),
        ({}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "-1"}, None),
        ({"retry-after-ms": "-5"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "tomorrow-ish"}, None),
        ({"retry-after": "Mon, 99 Foo 2023 25:61:00 GMT"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


def test_parse_retry_after_http_date() -> None:
    future = email.utils.formatdate(NOW + 30, usegmt=True)
    assert parse_retry_after({"Retry-After": future}, now=NOW) == pytest.approx(30.0)
    past = email.utils.formatdate(NOW - 30, usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=NOW) is None


def test_parse_retry_after_accepts_httpx_headers() -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After-Ms": "100"})) == pytest.approx(0.1)


# --- retry_delay -------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 4, 5, 10, 10_000])
def test_backoff_is_exponential_capped_and_jittered(attempt: int) -> None:
    ceiling = min(INITIAL_RETRY_DELAY_S * 2 ** min(attempt, 64), MAX_RETRY_DELAY_S)
    rng = random.Random(attempt)
    delays = [retry_delay(attempt, None, rng=rng) for _ in range(200)]
    assert all((1 - RETRY_JITTER_FRACTION) * ceiling <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1  # jitter actually varies


def test_backoff_extremes_of_jitter() -> None:
    class Fixed(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def random(self) -> float:
            return self.value

    assert retry_delay(0, None, rng=Fixed(0.0)) == INITIAL_RETRY_DELAY_S
    assert retry_delay(2, None, rng=Fixed(0.0)) == 4 * INITIAL_RETRY_DELAY_S
    assert retry_delay(9, None, rng=Fixed(0.0)) == MAX_RETRY_DELAY_S
    assert retry_delay(9, None, rng=Fixed(1.0)) == MAX_RETRY_DELAY_S * (1 - RETRY_JITTER_FRACTION)


def test_backoff_is_deterministic_with_a_seeded_rng() -> None:
    first = [retry_delay(a, None, rng=random.Random(7)) for a in range(6)]
    second = [retry_delay(a, None, rng=random.Random(7)) for a in range(6)]
    assert first == second


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(0.0, 0.0), (2.5, 2.5), (MAX_RETRY_AFTER_S, MAX_RETRY_AFTER_S), (3600.0, MAX_RETRY_AFTER_S)],
)
def test_server_delay_is_honoured_up_to_the_cap(retry_after: float, expected: float) -> None:
    assert retry_delay(3, retry_after, rng=random.Random(0)) == expected


def test_invalid_server_delay_falls_back_to_backoff() -> None:
    assert retry_delay(0, -1.0, rng=random.Random(0)) <= INITIAL_RETRY_DELAY_S
    assert retry_delay(0, float("nan"), rng=random.Random(0)) <= INITIAL_RETRY_DELAY_S


# --- is_retryable ------------------------------------------------------------------------------


def _status(status: int) -> ProviderStatusError:
    return ProviderStatusError("x", status=status)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ProviderConnectionError("down"), True),
        (ProviderTimeoutError("slow"), True),
        *[(_status(s), True) for s in (408, 409, 429, 500, 502, 503, 504)],
        *[(_status(s), False) for s in (400, 401, 403, 404, 422, 501)],
        (ProviderResponseError("bad json"), False),
        (ValueError("bug"), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_is_retryable(exc: BaseException, expected: bool) -> None:
    assert is_retryable(exc) is expected


# --- RetryPolicy over a scripted transport -----------------------------------------------------


class Script:
    """An httpx transport handler that plays one step per request and counts requests."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        step = self.steps[min(self.requests, len(self.steps) - 1)]
        self.requests += 1
        return step(request)


def status(code: int, headers: dict[str, str] | None = None) -> Step:
    body = {"error": {"message": f"status {code}", "type": "server_error"}}
    return lambda request: httpx.Response(code, json=body, headers=headers)


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"choices": [{"text": "yes"}]})


def raising(exc_type: type[httpx.TransportError]) -> Step:
    def step(request: httpx.Request) -> httpx.Response:
        raise exc_type("transient", request=request)

    return step


def run(script: Script, max_retries: int = MAX_RETRIES) -> tuple[dict, list[float]]:
    slept: list[float] = []
    policy = RetryPolicy(max_retries=max_retries, sleep=slept.append, rng=random.Random(0))
    client = httpx.Client(
        base_url="https://api.example.test/v1",
        transport=httpx.MockTransport(script),
        headers={"Authorization": f"Bearer {KEY}"},
    )
    with client:
        body, _ = policy.call(lambda: request_json(client, "POST", "/completions", json={}))
    return body, slept


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "600"}, MAX_RETRY_AFTER_S),
    ],
)
def test_429_honours_retry_after_then_succeeds(headers: dict[str, str], expected: float) -> None:
    script = Script(status(429, headers), ok)
    body, slept = run(script)
    assert body == {"choices": [{"text": "yes"}]}
    assert slept == [expected]
    assert script.requests == 2


def test_429_with_http_date() -> None:
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    script = Script(status(429, {"Retry-After": when}), ok)
    _, slept = run(script)
    assert len(slept) == 1 and 18.0 < slept[0] <= 20.0


def test_429_without_retry_after_uses_backoff() -> None:
    script = Script(status(429), status(429), ok)
    _, slept = run(script)
    assert script.requests == 3
    for attempt, delay in enumerate(slept):
        ceiling = INITIAL_RETRY_DELAY_S * 2**attempt
        assert (1 - RETRY_JITTER_FRACTION) * ceiling <= delay <= ceiling


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_persistent_5xx_is_bounded_and_reraised(code: int) -> None:
    script = Script(status(code))
    with pytest.raises(ProviderStatusError) as info:
        run(script, max_retries=3)
    assert script.requests == 4
    assert info.value.status == code and info.value.request_sent is True
    assert KEY not in str(info.value)


def test_backoff_grows_and_caps_across_attempts() -> None:
    script = Script(status(503))
    slept: list[float] = []
    policy = RetryPolicy(max_retries=6, sleep=slept.append, rng=random.Random(1))
    with (
        httpx.Client(transport=httpx.MockTransport(script)) as client,
        pytest.raises(ProviderStatusError),
    ):
        policy.call(lambda: request_json(client, "GET", "https://api.example.test/v1/models"))
    assert script.requests == 7 and len(slept) == 6
    for attempt, delay in enumerate(slept):
        ceiling = min(INITIAL_RETRY_DELAY_S * 2**attempt, MAX_RETRY_DELAY_S)
        assert (1 - RETRY_JITTER_FRACTION) * ceiling <= delay <= ceiling


@pytest.mark.parametrize("code", [400, 401, 404])
def test_client_errors_are_not_retried(code: int) -> None:
    script = Script(status(code), ok)
    with pytest.raises(ProviderStatusError) as info:
        run(script)
    assert script.requests == 1 and info.value.status == code


def test_malformed_body_is_not_retried() -> None:
    script = Script(lambda request: httpx.Response(200, text='{"choices": ['), ok)
    with pytest.raises(ProviderResponseError):
        run(script)
    assert script.requests == 1


def test_transient_transport_failures_then_success() -> None:
    script = Script(raising(httpx.ConnectError), raising(httpx.ReadTimeout), status(502), ok)
    body, slept = run(script)
    assert body["choices"][0]["text"] == "yes"
    assert script.requests == 4 and len(slept) == 3


def test_persistent_timeout_raises_the_maas_tune_error() -> None:
    script = Script(raising(httpx.ReadTimeout))
    with pytest.raises(ProviderTimeoutError) as info:
        run(script, max_retries=2)
    assert script.requests == 3 and info.value.request_sent is True


def test_zero_retries_sends_once() -> None:
    script = Script(status(503, {"retry-after": "1"}), ok)
    with pytest.raises(ProviderStatusError):
        run(script, max_retries=0)
    assert script.requests == 1


def test_non_provider_exceptions_pass_through_untouched() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        RetryPolicy(sleep=lambda s: None).call(broken)
    assert calls == [1]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_invalid_max_retries(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_retries"):
        RetryPolicy(max_retries=bad)  # type: ignore[arg-type]


def test_each_retry_is_logged_at_info_without_the_key(caplog: pytest.LogCaptureFixture) -> None:
    # INFO, so that --verbose shows retries (they are normal on hosted APIs, but not free).
    caplog.set_level(logging.DEBUG, logger="maas_tune.providers")
    script = Script(status(429, {"retry-after": "2"}))
    with pytest.raises(ProviderStatusError):
        run(script, max_retries=2)
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2 and all(r.levelno == logging.INFO for r in retries)
    assert "attempt 1 of 3" in retries[0].getMessage() and "2.00 s" in retries[0].getMessage()
    assert any("giving up after 3 attempts" in r.getMessage() for r in caplog.records)
    assert KEY not in caplog.text
