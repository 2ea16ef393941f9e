"""Decoders: small models trained locally on label scores and hidden states.

Every decoder follows the scikit-learn estimator contract of :class:`BaseDecoder`
(:mod:`maas_tune.estimator`); :func:`~maas_tune.persistence.save_decoder` /
:func:`~maas_tune.persistence.load_decoder` persist them as safetensors + JSON.
The names load on first use (PEP 562): the decoders need torch, and importing this
package alone should not cost torch's import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

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


__getattr__, __dir__ = lazy_attributes(globals(), _LAZY)
