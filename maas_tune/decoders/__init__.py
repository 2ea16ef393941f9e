"""Decoders: small models trained locally on label scores and hidden states.

Every decoder follows the scikit-learn estimator contract of :class:`BaseDecoder`;
:func:`save_decoder` / :func:`load_decoder` persist them as safetensors + JSON.
"""

from __future__ import annotations

from .base import BaseDecoder
from .dect import DecT
from .io import DECODERS, load_decoder, register_decoder, save_decoder
from .linear import LinearProbe, ScoreLogisticRegression
from .ytuning import YTuning
from .zero_shot import ContextualCalibration, ZeroShot

__all__ = [
    "DECODERS",
    "BaseDecoder",
    "ContextualCalibration",
    "DecT",
    "LinearProbe",
    "ScoreLogisticRegression",
    "YTuning",
    "ZeroShot",
    "load_decoder",
    "register_decoder",
    "save_decoder",
]
