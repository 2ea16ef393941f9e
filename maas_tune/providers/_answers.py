"""Checks on a completions answer before it is trusted: the model it names, and readable fields."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..errors import MaasTuneError, ProviderResponseError
from ._script import Script

__all__ = ["check_model", "reading", "same_model", "usage_tokens"]

T = TypeVar("T")

# What may follow the asked-for name in a reply's model: a dated snapshot ("gpt-4o-2024-08-06"),
# a version tag ("name:v2", "name@3") or a file name ("gemma-3-270m.gguf").
_SUFFIX_SEPARATORS = "-:@._"
# Failures of float()/int()/np.asarray on a field of the wrong type, e.g. float("high").
_UNREADABLE = (TypeError, ValueError, ArithmeticError)


#: Largest token count believed from a server: beyond it a report is garbage, not usage.
_MAX_REPORTED_TOKENS = 2**40


def usage_tokens(body: Mapping[str, Any]) -> int:
    """``usage.prompt_tokens`` of an answer (0 when the server reports no usage).

    Raises
    ------
    ProviderResponseError
        The count is negative, not finite or absurdly large (a broken server; the
        ledger must never hold such a number).
    """
    usage = body.get("usage")
    value = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if not 0 <= value <= _MAX_REPORTED_TOKENS:
        raise ProviderResponseError(
            f"the answer reports usage.prompt_tokens = {value!r}, which is not a token count; "
            "the server is misbehaving — report it to the provider"
        )
    return int(value)


def _tail(model: str) -> str:
    # "org/name", "/models/name" and "name" name the same model.
    return re.split(r"[/\\]", model.strip().lower())[-1]


def same_model(asked: str, answered: str) -> bool:
    """Whether a reply naming ``answered`` comes from the model ``asked`` for.

    Parameters
    ----------
    asked, answered : str
        The request's ``model`` and the reply's.

    Returns
    -------
    bool
        True when, ignoring case and any ``org/`` or directory prefix, ``answered`` is
        ``asked`` or ``asked`` followed by a snapshot, version or file suffix (one of
        ``- : @ . _`` and more); ``"gpt-4"`` does not match ``"gpt-4o"``.
    """
    a, b = _tail(asked), _tail(answered)
    return b == a or (len(b) > len(a) and b.startswith(a) and b[len(a)] in _SUFFIX_SEPARATORS)


def check_model(body: Mapping[str, Any], asked: str) -> None:
    """Refuse a reply that names a model other than the one asked for.

    A reply without a ``model`` string passes: many servers omit it.

    Raises
    ------
    ProviderResponseError
        The reply names another model (a router or alias sent the request elsewhere);
        caching it under ``asked`` would poison the cache.
    """
    answered = body.get("model")
    if isinstance(answered, str) and answered and not same_model(asked, answered):
        raise ProviderResponseError(
            f"the provider answered for model {answered!r}, not the {asked!r} that was asked for "
            "(a router, alias or fallback sent the request elsewhere), so the answer is not "
            "cached; check the model name and the server's model routing"
        )


def reading(
    fn: Callable[[str], Script[T]], what: str, route: str = "/completions"
) -> Callable[[str], Script[T]]:
    """Wrap a scorer so that a field of the wrong type is a ProviderResponseError.

    Parameters
    ----------
    fn : Callable[[str], Script[T]]
        Scores one prompt, parsing the answers it gets (a script of its requests).
    what : str
        The strategy, named in the error.
    route : str, default "/completions"
        The API route the answers come from, named in the error.

    Returns
    -------
    Callable[[str], Script[T]]
        ``fn``, raising :class:`ProviderResponseError` (chained to the original) where
        it raised ``TypeError``, ``ValueError`` or ``ArithmeticError`` while reading an
        answer; maas-tune's own errors pass unchanged.
    """

    def read(prompt: str) -> Script[T]:
        try:
            return (yield from fn(prompt))
        except MaasTuneError:
            raise
        except _UNREADABLE as exc:
            raise ProviderResponseError(
                f"the {what} answer has a field of the wrong type ({type(exc).__name__}: {exc}); "
                f"check that the base URL points at an OpenAI-compatible {route} API"
            ) from exc

    return read
