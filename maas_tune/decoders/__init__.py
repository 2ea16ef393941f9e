"""Decoders: small models trained locally on label scores and hidden states.

Every decoder follows the scikit-learn estimator contract of :class:`BaseDecoder`
(:mod:`maas_tune.estimator`); :func:`~maas_tune.persistence.save_decoder` /
:func:`~maas_tune.persistence.load_decoder` persist them as safetensors + JSON.
The names load on first use (PEP 562): the decoders need torch, and importing this
package alone should not cost torch's import time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type checkers and IDEs see the lazy names as ordinary imports
    from .base import BaseDecoder
    from .dect import DecT
    from .linear import LinearProbe, ScoreLogisticRegression
    from .ytuning import YTuning
    from .zero_shot import ContextualCalibration, ZeroShot

#: Public name -> module (relative to this package) that defines it.
_LAZY = {
    "BaseDecoder": ".base",
    "ContextualCalibration": ".zero_shot",
    "DecT": ".dect",
    "LinearProbe": ".linear",
    "ScoreLogisticRegression": ".linear",
    "YTuning": ".ytuning",
    "ZeroShot": ".zero_shot",
}

__all__ = [
    "BaseDecoder",
    "ContextualCalibration",
    "DecT",
    "LinearProbe",
    "ScoreLogisticRegression",
    "YTuning",
    "ZeroShot",
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'maas_tune.decoders' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
