"""The named methods: what ``--method NAME`` builds, and the classes a saved file may name.

One table, :data:`METHODS`, maps a method name to a :class:`MethodSpec`: the estimator's
class, the factory ``build(shots, seed)`` and whether it needs the content-free query.
Evaluation runs, the command line and the benchmark grid build estimators from it;
:mod:`maas_tune.persistence` rebuilds only the classes it lists (and the decoder classes
added with :func:`register_decoder`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .decoders import (
    BaseDecoder,
    ContextualCalibration,
    DecT,
    LinearProbe,
    ScoreLogisticRegression,
    YTuning,
    ZeroShot,
)
from .errors import ConfigurationError
from .methods import BDPL, InContextLearning, PromptMethod, PromptTuning

__all__ = [
    "METHODS",
    "AnyEstimator",
    "MethodSpec",
    "decoder_classes",
    "is_white_box",
    "make_decoder",
    "method_classes",
    "needs_content_free",
    "register_decoder",
]

#: A decoder (fitted on cached scores) or a prompt method (fitted through the client).
AnyEstimator = BaseDecoder | PromptMethod


@dataclass(frozen=True)
class MethodSpec:
    """One named method.

    Attributes
    ----------
    cls : type
        The class ``build`` returns (a :class:`~maas_tune.decoders.BaseDecoder` or
        :class:`~maas_tune.methods.PromptMethod` subclass).
    build : callable (shots, seed) -> estimator
        A fresh, unfitted estimator; ``seed`` is its ``random_state``.
    needs_content_free : bool
        Whether the built estimator's ``fit`` uses the content-free scores (what its
        ``needs_content_free`` says; declared here so that no estimator is built to ask).
    """

    cls: type[BaseDecoder | PromptMethod]
    build: Callable[[int, int | None], AnyEstimator]
    needs_content_free: bool = False

    def __call__(self, shots: int, seed: int | None) -> AnyEstimator:
        """``build(shots, seed)``."""
        return self.build(shots, seed)


#: Method name → :class:`MethodSpec`.
METHODS: dict[str, MethodSpec] = {
    "zero-shot": MethodSpec(ZeroShot, lambda shots, seed: ZeroShot()),
    "calibrated": MethodSpec(
        ContextualCalibration, lambda shots, seed: ContextualCalibration(), needs_content_free=True
    ),
    "lr": MethodSpec(
        ScoreLogisticRegression,
        lambda shots, seed: ScoreLogisticRegression(random_state=seed),
        needs_content_free=True,
    ),
    "linear-probe": MethodSpec(LinearProbe, lambda shots, seed: LinearProbe(random_state=seed)),
    "dect": MethodSpec(DecT, lambda shots, seed: DecT(random_state=seed)),
    "dect-logprobs": MethodSpec(
        DecT, lambda shots, seed: DecT(use_hidden=False, random_state=seed)
    ),
    "dect-paper": MethodSpec(
        DecT,
        lambda shots, seed: DecT.paper(shots=shots, random_state=seed),
        needs_content_free=True,
    ),
    "ytuning": MethodSpec(YTuning, lambda shots, seed: YTuning(random_state=seed)),
    "icl": MethodSpec(InContextLearning, lambda shots, seed: InContextLearning(random_state=seed)),
    "bdpl": MethodSpec(BDPL, lambda shots, seed: BDPL(random_state=seed)),
    "bdpl-paper": MethodSpec(BDPL, lambda shots, seed: BDPL.paper(random_state=seed)),
    "prompt-tuning": MethodSpec(PromptTuning, lambda shots, seed: PromptTuning(random_state=seed)),
    "prompt-tuning-paper": MethodSpec(
        PromptTuning, lambda shots, seed: PromptTuning.paper(random_state=seed)
    ),
}

#: Decoder classes made loadable by :func:`register_decoder`, by class name.
_REGISTERED: dict[str, type[BaseDecoder]] = {}


def _spec(method: str) -> MethodSpec:
    try:
        return METHODS[method]
    except KeyError:
        raise ConfigurationError(
            f"unknown method {method!r}; choose one of: {', '.join(METHODS)}"
        ) from None


def make_decoder(method: str, *, shots: int, random_state: int | None = 0) -> AnyEstimator:
    """A fresh, unfitted decoder or prompt method for a method name in :data:`METHODS`."""
    return _spec(method)(shots, random_state)


def needs_content_free(methods: Iterable[str]) -> bool:
    """Whether any of ``methods`` (names in :data:`METHODS`) uses the content-free query."""
    return any(_spec(m).needs_content_free for m in methods)


def is_white_box(method: str) -> bool:
    """Whether ``method`` (a name in :data:`METHODS`) needs the model's weights (prompt
    tuning), read from its class (nothing is built)."""
    return bool(getattr(_spec(method).cls, "white_box", False))


def decoder_classes() -> dict[str, type[BaseDecoder]]:
    """Class name → decoder class that a saved decoder may name (bundled and registered)."""
    out = {s.cls.__name__: s.cls for s in METHODS.values() if issubclass(s.cls, BaseDecoder)}
    return {**out, **_REGISTERED}


def method_classes() -> dict[str, type[PromptMethod]]:
    """Class name → prompt method class that a saved method may name."""
    return {s.cls.__name__: s.cls for s in METHODS.values() if issubclass(s.cls, PromptMethod)}


def register_decoder(cls: type[BaseDecoder]) -> type[BaseDecoder]:
    """Make a decoder class loadable by :func:`~maas_tune.persistence.load_decoder`
    (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, BaseDecoder)):
        raise ConfigurationError(f"{cls!r} is not a BaseDecoder subclass")
    _REGISTERED[cls.__name__] = cls
    return cls
