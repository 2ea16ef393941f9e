"""The argparse value types of ``maas-tune``: bounded integers, rates, durations, money.

Each raises :class:`argparse.ArgumentTypeError` with what was wrong (argparse names the flag).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..errors import ConfigurationError, MaasTuneError
from ..pricing import Price
from ..providers.ratelimit import RateLimit, parse_rate
from ..storage.budget import MAX_COUNT

__all__ = ["MAX_SEED", "count", "positive", "price", "ranged", "rate", "seconds", "seed", "usd"]

#: Largest seed: numpy's and scikit-learn's ``random_state`` take 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # argparse would name the type function: "invalid positive value"
        shown = text if len(text) <= 40 else text[:30] + "..."  # not 5,000 digits back
        raise argparse.ArgumentTypeError(f"invalid int value: {shown!r}") from None


def ranged(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high`` (argparse names the flag)."""

    def parse(text: str) -> int:
        value = _int(text)
        if not low <= value <= high:
            bound = f">= {low}" if value < low else f"<= {high}"
            shown = str(value) if len(str(value)) <= 40 else str(value)[:30] + "..."
            raise argparse.ArgumentTypeError(
                f"must be {bound}, got {shown}; give an integer from {low} to {high}"
            )
        return value

    return parse


#: A count of examples, prompts or log-probs: 1 up to what the ledger's BIGINT holds.
positive = ranged(1, MAX_COUNT)
#: A cap: 0 (nothing may be sent) up to what the ledger's BIGINT holds.
count = ranged(0, MAX_COUNT)
#: A seed, as numpy and scikit-learn accept it.
seed = ranged(0, MAX_SEED)


def rate(text: str) -> RateLimit:
    """A request rate such as ``3000/min`` or ``50/s``."""
    try:
        return parse_rate(text)
    except MaasTuneError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds(text: str) -> float:
    """A duration in seconds, > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def usd(text: str) -> float:
    """An amount of US dollars, finite and >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be an amount of US dollars >= 0, got {text!r}")
    return value


def price(text: str) -> Price:
    """``INPUT,OUTPUT``: US dollars per million input and output tokens."""
    try:
        return Price.parse(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
