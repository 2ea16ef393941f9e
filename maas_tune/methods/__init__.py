"""Methods that query the model while they learn or predict: ICL, BDPL and prompt tuning.

Unlike the decoders, which learn from scores computed once through the task's template,
these change the prompt itself, so ``fit`` and ``predict`` take the
:class:`~maas_tune.client.Client` (every black-box query cached and budgeted).
:func:`~maas_tune.persistence.save_method` / :func:`~maas_tune.persistence.load_method`
persist them as safetensors + JSON.
"""

from __future__ import annotations

from .base import PromptMethod
from .bdpl import BDPL
from .icl import InContextLearning, TruncationReport, TruncationWarning
from .prompt_tuning import PromptTuning, require_white_box

__all__ = [
    "BDPL",
    "InContextLearning",
    "PromptMethod",
    "PromptTuning",
    "TruncationReport",
    "TruncationWarning",
    "require_white_box",
]
