"""Methods that query the model while they learn or predict: ICL, BDPL and prompt tuning.

Unlike the decoders, which learn from scores computed once through the task's template,
these change the prompt itself, so ``fit`` and ``predict`` take the
:class:`~maas_tune.client.Client` (every black-box query cached and budgeted).
:func:`save_method` / :func:`load_method` persist them as safetensors + JSON.
"""

from __future__ import annotations

from .base import PromptMethod
from .bdpl import BDPL
from .icl import InContextLearning, TruncationReport, TruncationWarning
from .io import METHOD_CLASSES, is_saved_method, load_method, save_method
from .prompt_tuning import PromptTuning, require_white_box

__all__ = [
    "BDPL",
    "METHOD_CLASSES",
    "InContextLearning",
    "PromptMethod",
    "PromptTuning",
    "TruncationReport",
    "TruncationWarning",
    "is_saved_method",
    "load_method",
    "require_white_box",
    "save_method",
]
