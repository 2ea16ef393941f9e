"""The one place httpx is called and its failures are translated into maas-tune errors."""

from __future__ import annotations

import json as jsonlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from ..errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    ProviderConnectionError,
    ProviderResponseError,
    ProviderStatusError,
    ProviderTimeoutError,
    RateLimitError,
    UnprocessableEntityError,
)
from ._retry import RETRYABLE_STATUSES, parse_retry_after

__all__ = [
    "BODY_EXCERPT_CHARS",
    "STATUS_ERRORS",
    "AnswerDeadline",
    "is_secret_name",
    "json_answer",
    "public_url",
    "redact",
    "request_json",
    "status_error",
    "transport_failure",
    "whole_answer",
]

_LOG = logging.getLogger("maas_tune.providers")
#: A whole answer must arrive within this many read timeouts (a total deadline).
TOTAL_TIMEOUT_FACTOR = 3

#: Longest body excerpt carried by an error, in characters.
BODY_EXCERPT_CHARS = 500
# Only this much of a body is scanned for secrets before it is cut to an excerpt.
_REDACT_SCAN_CHARS = 8 * BODY_EXCERPT_CHARS
_REDACTED = "[REDACTED]"
# OpenAI-style keys (sk-..., sk-proj-..., sk-ant-...) and bearer tokens of any shape.
_KEY_PATTERN = re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}")
_BEARER_PATTERN = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]+")
# Request headers whose values are credentials, scrubbed from anything we report.
_SECRET_HEADERS = ("authorization", "api-key", "x-api-key")
# A header or query parameter whose name holds one of these is taken for a credential.
_SECRET_NAME_PARTS = ("auth", "key", "token", "secret", "password", "cookie", "signature")
#: The error class of each status (openai-python's names); >= 500 is InternalServerError.
STATUS_ERRORS: dict[int, type[ProviderStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}
# Transport failures raised before any byte of the request left this machine.
_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.LocalProtocolError,
)

_STATUS_HINTS = {
    400: "fix the request (model name, prompt, logprobs/max_tokens) per the provider's API docs",
    401: "check that the API key is set and valid for this provider",
    403: "check that this API key may use this model and endpoint",
    404: "check the base URL and the model name",
    408: "the provider timed out; retried automatically, try again later if it persists",
    409: "the provider reported a conflict; retried automatically, try again later",
    413: "shorten the prompt or send fewer prompts per request",
    422: "fix the request (model name, prompt, logprobs/max_tokens) per the provider's API docs",
    429: "rate limit or quota reached; retried automatically after the requested delay — "
    "lower the request rate or check the account's quota",
}


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Remove credentials from text meant for messages and logs.

    Parameters
    ----------
    text : str
        Text that may contain a key, e.g. a response body echoing the request.
    secrets : Sequence[str]
        Exact strings to remove as well (the API key actually in use); empty ones
        are ignored.

    Returns
    -------
    str
        ``text`` with each secret, each ``sk-...`` key and each ``Bearer`` token
        replaced by ``[REDACTED]``.
    """
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    text = _BEARER_PATTERN.sub(f"Bearer {_REDACTED}", text)
    return _KEY_PATTERN.sub(_REDACTED, text)


def is_secret_name(name: str) -> bool:
    """Whether a header or query parameter called ``name`` likely carries a credential
    (``Authorization``, Azure's ``api-key``, ``X-Goog-Api-Key``, ``?key=``, ``access_token``)."""
    lowered = name.lower()
    return lowered in _SECRET_HEADERS or any(part in lowered for part in _SECRET_NAME_PARTS)


def _secrets_of(request: httpx.Request) -> list[str]:
    found = []
    for name, value in request.headers.items():
        if value and is_secret_name(name):
            found.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                found.append(token.strip())
    found += [v for n, v in request.url.params.multi_items() if v and is_secret_name(n)]
    return found


def _safe_url(url: httpx.URL) -> str:
    # Drop the query and userinfo: some providers take the key as ?key=... or user:pass@.
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}{url.path}"


def public_url(url: str) -> str:
    """``url`` without what may be a credential: no ``user:key@`` and no ``?key=...`` query.

    Providers show this form in messages and ``repr`` and use it in the facts they keep
    in the cache; their requests go to the full URL.
    """
    return _safe_url(httpx.URL(url)).rstrip("/")


def _excerpt(text: str, secrets: Sequence[str]) -> str:
    # Redact before cutting, so a key split by the cut cannot slip through half-masked.
    cleaned = redact(text[:_REDACT_SCAN_CHARS], secrets)
    if len(cleaned) <= BODY_EXCERPT_CHARS:
        return cleaned
    return cleaned[: BODY_EXCERPT_CHARS - 3] + "..."


def _error_fields(response: httpx.Response) -> tuple[str | None, str | None]:
    """The provider's error message and type from an OpenAI-style error body."""
    try:
        body = response.json()
    except ValueError:
        return None, None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return error, None
    if not isinstance(error, dict):
        return None, None
    message = error.get("message")
    error_type = error.get("type") or error.get("code")
    return (
        str(message) if message is not None else None,
        str(error_type) if error_type is not None else None,
    )


def _hint(status: int) -> str:
    if status in _STATUS_HINTS:
        return _STATUS_HINTS[status]
    if status >= 500:
        retried = "retried automatically; " if status in RETRYABLE_STATUSES else ""
        return f"the provider failed on its side; {retried}try again later"
    return "check the request and the provider's API docs"


def status_error(response: httpx.Response) -> ProviderStatusError:
    """Build the error for an HTTP error response (the one status → error factory).

    Parameters
    ----------
    response : httpx.Response
        A read response with status >= 400 and its request attached.

    Returns
    -------
    ProviderStatusError
        Of the class :data:`STATUS_ERRORS` names for the status (``RateLimitError`` for
        429, ``InternalServerError`` for any 5xx, plain ``ProviderStatusError`` for
        the rest), with ``status`` (alias ``status_code``), ``error_type`` (from an OpenAI ``{"error": {...}}`` body),
        ``request_id`` (``x-request-id``), a redacted ``body_excerpt`` of at most
        :data:`BODY_EXCERPT_CHARS` characters, ``retry_after`` (seconds or None) and
        ``request_sent`` (True for 5xx, 408 and 409: the provider may have done
        the work and billed it).
    """
    request = response.request
    secrets = _secrets_of(request)
    status = response.status_code
    provider_message, error_type = _error_fields(response)
    request_id = response.headers.get("x-request-id")
    excerpt = _excerpt(response.text, secrets)
    detail = redact(provider_message, secrets) if provider_message else excerpt or "empty body"
    kind = f" {error_type}" if error_type else ""
    rid = f" (request id {request_id})" if request_id else ""
    message = (
        f"{request.method} {_safe_url(request.url)} failed with HTTP {status} "
        f"{response.reason_phrase}{kind}{rid}: {detail}; {_hint(status)}"
    )
    cls = STATUS_ERRORS.get(status, InternalServerError if status >= 500 else ProviderStatusError)
    err = cls(
        message, status=status, error_type=error_type, request_id=request_id, body_excerpt=excerpt
    )
    err.request_sent = status >= 500 or status in (408, 409)
    # Read by RetryPolicy's wait; an attribute rather than a constructor argument
    # so errors.py stays the plain exception tree.
    err.retry_after = parse_retry_after(response.headers)
    return err


def _transport_error(exc: httpx.TransportError, method: str, url: str) -> Exception:
    """Translate an httpx transport failure into the most specific maas-tune error."""
    cause = redact(str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ConfigurationError(
            f"cannot send {method} {url}: {cause}; use an http:// or https:// base URL"
        )
    err: ProviderConnectionError
    if isinstance(exc, httpx.TimeoutException):
        err = ProviderTimeoutError(
            f"{method} {url} timed out ({type(exc).__name__}: {cause}); retried automatically — "
            "if it persists, raise the client timeout or check the provider's status"
        )
    elif isinstance(exc, _NOT_SENT):
        err = ProviderConnectionError(
            f"{method} {url} failed: cannot reach the provider ({type(exc).__name__}: {cause}); "
            "check the base URL, network and proxy settings, or try again later"
        )
    else:  # reset, or the answer cut short: the provider was reached, its answer was lost
        err = ProviderConnectionError(
            f"{method} {url} failed: the connection broke before the provider's answer was "
            f"complete ({type(exc).__name__}: {cause}); retried automatically — if it persists, "
            "check the base URL, network and proxy settings, or try again later"
        )
    err.request_sent = not isinstance(exc, _NOT_SENT)
    return err


def _json_object(response: httpx.Response, method: str, url: str) -> dict[str, Any]:
    """Decode a 2xx body, raising ProviderResponseError unless it is a JSON object."""
    try:
        body = jsonlib.loads(response.content)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        body = None
        problem = "is not valid JSON"
    except RecursionError:  # valid JSON nested past the parser's depth: no API answers so
        body = None
        problem = "is nested too deeply to be an API answer"
    else:
        problem = f"is a JSON {type(body).__name__}, not an object"
    if isinstance(body, dict):
        return body
    excerpt = _excerpt(response.text, _secrets_of(response.request)) or "empty body"
    err = ProviderResponseError(
        f"{method} {url} answered HTTP {response.status_code} but the body {problem}: {excerpt!r}; "
        "check that the base URL points at an OpenAI-compatible API"
    )
    err.request_sent = True  # a 2xx means the provider did the work
    raise err


def request_json(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    json: Any = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], httpx.Headers]:
    """Send one request and return its JSON object body, or raise a maas-tune error.

    Parameters
    ----------
    client : httpx.Client
        Carries the base URL, auth headers, timeout and transport.
    method, url : str
        HTTP method and URL (relative to the client's base URL, or absolute).
    json : Any, optional
        Request body, serialised as JSON.
    headers : Mapping[str, str], optional
        Extra request headers.

    Returns
    -------
    body : dict[str, Any]
        The decoded JSON object.
    headers : httpx.Headers
        Response headers (rate-limit counters, request id).

    Raises
    ------
    ProviderTimeoutError, ProviderConnectionError
        The provider did not answer; ``request_sent`` says whether it may have
        received (and billed) the request.
    ProviderStatusError
        Status >= 400; see :func:`status_error`.
    ProviderResponseError
        A 2xx answer whose body is not a JSON object.
    ConfigurationError
        The URL's scheme is not HTTP(S).
    """
    try:
        response = _send_within_deadline(client, method, url, json=json, headers=headers)
    except httpx.TransportError as exc:
        raise transport_failure(exc, method, url) from exc
    return json_answer(response, method), response.headers


def transport_failure(exc: httpx.TransportError, method: str, url: str) -> Exception:
    """The maas-tune error for a transport failure of ``method url`` (sync and async alike)."""
    shown = _safe_url(exc.request.url) if _has_request(exc) else redact(url)
    return _transport_error(exc, method, shown)


def json_answer(response: httpx.Response, method: str) -> dict[str, Any]:
    """The JSON object of a read answer, or the error its status or body calls for
    (sync and async alike)."""
    shown = _safe_url(response.request.url)
    _LOG.debug("%s %s -> HTTP %d", method, shown, response.status_code)
    if response.status_code >= 400:
        raise status_error(response)
    return _json_object(response, method, shown)


def _send_within_deadline(
    client: httpx.Client, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    """Send and read the whole answer, which must arrive within ``TOTAL_TIMEOUT_FACTOR`` x
    the client's read timeout: a server that dribbles bytes, each just inside the read
    timeout, cannot hold a request open for ever.

    Raises
    ------
    httpx.ReadTimeout
        When the deadline passes mid-body (handled like any read timeout).
    """
    request = client.build_request(method, url, **kwargs)
    check = AnswerDeadline(client.timeout.read, request)
    response = client.send(request, stream=True)
    if response.is_stream_consumed:  # already read in full (e.g. by a mock transport)
        return response
    try:
        parts = []
        for part in response.iter_raw():
            parts.append(part)
            check()
    finally:
        response.close()
    return whole_answer(response, parts)


class AnswerDeadline:
    """Raises :class:`httpx.ReadTimeout` once ``TOTAL_TIMEOUT_FACTOR`` x ``read_timeout``
    seconds have passed since it was made (never for a None read timeout); called as
    each part of an answer arrives (sync and async readers alike)."""

    def __init__(self, read_timeout: float | None, request: httpx.Request) -> None:
        self.read_timeout, self.request = read_timeout, request
        self.deadline = (
            None if read_timeout is None else time.monotonic() + TOTAL_TIMEOUT_FACTOR * read_timeout
        )

    def __call__(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise httpx.ReadTimeout(
                f"the whole answer took longer than {TOTAL_TIMEOUT_FACTOR} x the "
                f"{self.read_timeout:g} s read timeout",
                request=self.request,
            )


def whole_answer(response: httpx.Response, parts: list[bytes]) -> httpx.Response:
    """The raw (still encoded) ``parts`` of ``response`` under its headers, decoded once
    as usual."""
    whole = httpx.Response(
        response.status_code,
        headers=response.headers,
        content=b"".join(parts),
        request=response.request,
    )
    whole.read()
    return whole


def _has_request(exc: httpx.TransportError) -> bool:
    try:
        exc.request  # noqa: B018  # raises RuntimeError when httpx did not attach one
    except RuntimeError:
        return False
    return True
