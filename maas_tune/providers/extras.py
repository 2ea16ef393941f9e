"""openai-python's client conventions at the edge: the base URL from the environment, and
extra headers and query parameters (``default_headers``, ``default_query``), checked, with
credentials among them masked in every log record.

Azure OpenAI wants ``?api-version=...`` and an ``api-key`` header, OpenRouter an
``HTTP-Referer`` and ``X-Title``, OpenAI ``OpenAI-Organization`` / ``OpenAI-Project``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import ConfigurationError
from .http import is_secret_name
from .secrets import check_api_key, register_secret

__all__ = ["BASE_URL_ENV", "extra_headers", "extra_query", "parse_pairs", "resolve_base_url"]

#: Environment variables read for the base URL when none is given, first match wins.
BASE_URL_ENV = ("MAAS_TUNE_BASE_URL", "OPENAI_BASE_URL")

# A header name is an RFC 9110 token.
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def resolve_base_url(base_url: str | None) -> str:
    """``base_url``, or when it is None the first of :data:`BASE_URL_ENV` that is set
    (openai-python reads ``OPENAI_BASE_URL`` the same way).

    Raises
    ------
    ConfigurationError
        ``base_url`` is None and no variable is set: there is no default API to call.
    """
    if base_url is not None:
        return base_url
    for name in BASE_URL_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    raise ConfigurationError(
        f"no base_url given and {' and '.join('$' + n for n in BASE_URL_ENV)} are unset; pass "
        "base_url='http://127.0.0.1:8000/v1' (the API root, version included) or set one of them"
    )


def extra_headers(headers: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs to send, checked; credential-like values are registered
    with :func:`~maas_tune.providers.secrets.register_secret` (masked in logs).

    Raises
    ------
    ConfigurationError
        Not a mapping of strings, a name that is not an HTTP token, or a value holding a
        character a header cannot carry (a line break); a credential's value is never shown.
    """
    pairs = _pairs("default_headers", headers)
    for name, value in pairs:
        if not name or not set(name) <= _TOKEN_CHARS:
            raise ConfigurationError(
                f"default_headers: {name!r} is not a valid HTTP header name; use letters, "
                "digits and '-' (e.g. 'OpenAI-Organization')"
            )
        if is_secret_name(name):  # the API key's check (no CR/LF, ASCII); masks the value too
            check_api_key(value, f"the {name!r} header")
        else:
            _check_plain(name, value)
    return [(n, v.strip()) for n, v in pairs]


def extra_query(query: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """The ``(name, value)`` query parameters to add to every URL, checked; values of
    credential-like names (``key``, ``access_token``) are masked in logs."""
    pairs = _pairs("default_query", query)
    for name, value in pairs:
        if not name:
            raise ConfigurationError("default_query: a parameter name is empty")
        if is_secret_name(name):
            register_secret(value)
    return pairs


def parse_pairs(items: list[str] | None, sep: str, flag: str) -> dict[str, str]:
    """``["NAME<sep>VALUE", ...]`` from a repeatable CLI flag as a dict (the last one of a
    name wins).

    Raises
    ------
    ConfigurationError
        An item without ``sep`` or with an empty name; a credential's value is not shown.
    """
    found: dict[str, str] = {}
    for item in items or ():
        name, found_sep, value = item.partition(sep)
        if not found_sep or not name.strip():
            shown = "..." if is_secret_name(name) else repr(item[:40])
            raise ConfigurationError(
                f"{flag} {shown}: expected NAME{sep}VALUE (e.g. {flag} "
                f"{'api-version=2024-10-21' if sep == '=' else 'OpenAI-Organization:org-123'})"
            )
        found[name.strip()] = value.strip() if sep == ":" else value
    return found


def _pairs(what: str, given: Mapping[str, str] | None) -> list[tuple[str, str]]:
    if given is None:
        return []
    if not isinstance(given, Mapping):
        raise ConfigurationError(
            f"{what} must be a mapping of names to strings, got {type(given).__name__}"
        )
    pairs = []
    for name, value in given.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigurationError(
                f"{what}: names and values must be strings, got {type(name).__name__} -> "
                f"{type(value).__name__} for {name!r}"
            )
        pairs.append((name, value))
    return pairs


def _check_plain(name: str, value: str) -> None:
    for position, char in enumerate(value):
        if not (0x20 <= ord(char) < 0x7F or char == "\t"):
            raise ConfigurationError(
                f"default_headers: the {name!r} header holds a character an HTTP header cannot "
                f"carry (U+{ord(char):04X} at position {position}); remove line breaks and "
                "non-ASCII characters"
            )
