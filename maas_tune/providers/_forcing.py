"""Label log-probs read off a top-k list, each missing word forced once with ``logit_bias``.

Shared by the completions and chat providers: how a top-k list becomes label scores, the
check that a forced word's reported log-prob is the model's own, and the bound given to a
word that is neither shown nor forced.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .._constants import LABEL_WORD_PREFIX
from ..errors import ProviderResponseError
from ._script import Script

__all__ = [
    "FORCE_BIAS",
    "BiasError",
    "Force",
    "Label",
    "LabelReading",
    "Resolve",
    "bias_problem",
    "force_resolver",
    "missing_bound",
    "read_labels",
    "synthetic_token_id",
]

#: logit_bias that makes a token the one generated (the API maximum).
FORCE_BIAS = 100
#: A forced token reported above ``min(top-k) + this`` (or above ``-this``) was biased.
BIAS_TOLERANCE = 1e-3
# Probability mass treated as "everything" when bounding a missing word (keeps log finite).
_MASS_EPS = 1e-7


@dataclass(frozen=True)
class Label:
    """A label token as a strategy needs it.

    Attributes
    ----------
    token_id : int
        Vocabulary id; negative when synthetic (no tokenizer known).
    word : str
        The label word without prefix.
    prefix : str, default " "
        What comes before the word in the generated text: a space after a completions
        prompt, usually nothing at the start of a chat answer.
    """

    token_id: int
    word: str
    prefix: str = LABEL_WORD_PREFIX

    @property
    def text(self) -> str:
        """The token's text as the API reports it (prefix included)."""
        return self.prefix + self.word


#: Sends the request that forces ``label`` (bias +100 on its id) and returns what came back:
#: (the generated token's text or None when not reported, its reported log-prob, prompt tokens).
Force = Callable[[Label], "Script[tuple[str | None, float, int]]"]
#: Reads one label missing from the top-k exactly: (its log-prob, prompt tokens, requests sent).
Resolve = Callable[[Label], "Script[tuple[float, int, int]]"]


class BiasError(ProviderResponseError):
    """A forced label's reported log-prob is not the model's own (bias ignored, or applied
    before reporting); ``problem`` is ``"ignored"`` or ``"after"``, ``prompt_tokens`` what
    the forced request cost."""

    def __init__(self, message: str, problem: str, prompt_tokens: int) -> None:
        super().__init__(message)
        self.problem, self.prompt_tokens = problem, prompt_tokens


@dataclass(frozen=True)
class LabelReading:
    """Label log-probs of one prompt and how they were obtained.

    Attributes
    ----------
    values : np.ndarray, shape (t,)
        Log-prob of each label, in label order.
    forced : int
        Extra requests sent to read labels missing from the top-k (forced or echoed).
    floored : int
        Labels neither in the top-k nor forced: given :func:`missing_bound`.
    prompt_tokens : int
        Prompt tokens of the forced requests.
    """

    values: np.ndarray
    forced: int
    floored: int
    prompt_tokens: int


def synthetic_token_id(word: str) -> int:
    """A stable negative id for a word whose real id is unknown (never collides with a real one)."""
    return -1 - (zlib.crc32(word.encode("utf-8")) & 0x7FFFFFFF)


def missing_bound(top: Mapping[str, float]) -> float:
    """The largest log-prob a token missing from ``top`` can have.

    It is below every listed token and below the mass outside the list:
    ``min(min(top), log(1 - sum(exp(top))))``.
    """
    mass = min(sum(math.exp(v) for v in top.values()), 1.0 - _MASS_EPS)
    return min(min(top.values()), math.log1p(-mass))


def read_labels(
    labels: Sequence[Label], top: Mapping[str, float], resolve: Resolve | None
) -> Script[LabelReading]:
    """Read each label from ``top``; resolve each missing one (or bound it when ``resolve`` is None).

    Parameters
    ----------
    labels : sequence of Label, length t
    top : mapping of token text to log-prob
        The first generated position's top-k (non-empty).
    resolve : Resolve or None
        Reads one missing label exactly (forcing it, or echoing it); None gives missing
        labels :func:`missing_bound` instead.

    Raises
    ------
    ProviderResponseError
        ``resolve`` could not read a label exactly.
    """
    found: dict[str, float] = {}
    extra = floored = tokens = 0
    for label in labels:
        if label.text in found:
            continue
        if label.text in top:
            found[label.text] = top[label.text]
        elif resolve is None:
            found[label.text], floored = missing_bound(top), floored + 1
        else:
            found[label.text], used, sent = yield from resolve(label)
            extra, tokens = extra + sent, tokens + used
    values = np.asarray([found[label.text] for label in labels], dtype=np.float32)  # (t,)
    return LabelReading(values, extra, floored, tokens)


def force_resolver(force: Force, top: Mapping[str, float], remedy: str) -> Resolve:
    """A :data:`Resolve` that forces the label and checks the value is the model's own."""
    floor = min(top.values())

    def resolve(label: Label) -> Script[tuple[float, int, int]]:
        _check_id(label, len(top), remedy)
        token, value, used = yield from force(label)
        return _check_forced(label, token, value, floor, remedy, used), used, 1

    return resolve


def _check_id(label: Label, k: int, remedy: str) -> None:
    if label.token_id < 0:
        raise ProviderResponseError(
            f"label word {label.word!r} is not in the top {k} log-probs and cannot be forced "
            f"without its token id (no tokenizer is known for this model); {remedy}"
        )


def bias_problem(label: Label, token: str | None, value: float, floor: float) -> str | None:
    """What is wrong with a forced answer: ``"ignored"``, ``"after"`` or None (exact).

    ``"ignored"``: another token was generated, so the bias did not force the label.
    ``"after"``: the reported log-prob is not below the top-k the word was missing from
    (``floor``), so the server reported the biased distribution, not the model's.
    """
    if token is not None and token != label.text:
        return "ignored"
    if value > -BIAS_TOLERANCE or value > floor + BIAS_TOLERANCE:
        return "after"
    return None


def _check_forced(
    label: Label, token: str | None, value: float, floor: float, remedy: str, used: int
) -> float:
    """The forced label's log-prob, refused unless it is the model's own (before the bias)."""
    problem = bias_problem(label, token, value, floor)
    if problem == "ignored":
        raise BiasError(
            f"logit_bias did not force label word {label.word!r}: the server generated "
            f"{token!r}; check that it supports logit_bias (chat: and that label_prefix "
            f"matches how the model writes the word); {remedy}",
            problem,
            used,
        )
    if problem == "after":
        raise BiasError(
            f"the server reported log-prob {value:.4g} for the forced label word {label.word!r}, "
            "which is not below the top-k it was missing from: it reports log-probs after "
            f"logit_bias, so they are not the model's; {remedy}",
            problem,
            used,
        )
    return float(value)
