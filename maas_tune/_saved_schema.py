"""The schemas a saved estimator's JSON is checked against: the headers of each family, and
the learned JSON values and tensor dtypes of each bundled class (see :mod:`maas_tune.persistence`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, create_model

from ._artefact_schema import STRICT, ArtefactHeader
from .decoders import DecT
from .estimator import Estimator
from .methods import BDPL, InContextLearning, PromptTuning
from .registry import METHODS

__all__ = ["STATE_MODELS", "TENSOR_DTYPES", "DecoderHeader", "MethodHeader"]

_LOSSES = Annotated[list[float], Field(max_length=10_000)]
_LIST = Field(max_length=1_000_000)


class _Demonstration(BaseModel):
    """One saved in-context demonstration."""

    model_config = STRICT

    text: str
    text_b: str | None
    label: str


#: The learned JSON values (``_meta_attrs``) of the bundled classes that have any (the
#: others have none); a decoder class registered with
#: :func:`~maas_tune.registry.register_decoder` is checked by its ``_restore``.
_STATE_FIELDS: dict[type[Estimator], dict[str, Any]] = {
    DecT: {
        "lam_": (Annotated[float, Field(ge=0, le=1e6)], ...),
        "cv_loss_": (_LOSSES, ...),
        "uses_hidden_": (bool, ...),
    },
    BDPL: {
        "candidates_": (Annotated[list[str], _LIST], ...),
        "best_loss_": (float | None, ...),
        "history_": (Annotated[list[dict[str, Any]], _LIST], ...),
        "stopped_by_budget_": (bool, ...),
    },
    InContextLearning: {"demonstrations_": (Annotated[list[_Demonstration], _LIST], ...)},
    PromptTuning: {
        "loss_history_": (Annotated[list[float], _LIST], ...),
        "model_fingerprint_": (dict[str, Any], ...),
    },
}
#: The schema of each bundled class's learned JSON values: every class of
#: :data:`~maas_tune.registry.METHODS`.
STATE_MODELS: dict[type[Estimator], type[BaseModel]] = {
    cls: create_model(f"{cls.__name__}State", __config__=STRICT, **_STATE_FIELDS.get(cls, {}))
    for cls in dict.fromkeys(spec.cls for spec in METHODS.values())
}
#: The dtype of each learned tensor of a bundled class, where it is not float32.
TENSOR_DTYPES: dict[type[Estimator], dict[str, str]] = {
    BDPL: {"probs_": "float32", "prompt_indices_": "int64"},
    PromptTuning: {"soft_prompt_": "float32"},
}


class DecoderHeader(ArtefactHeader):
    """``decoder.json``: the common fields and the class names."""

    classes: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=10_000)]],
        Field(min_length=1, max_length=100_000),
    ]


class MethodHeader(ArtefactHeader):
    """``method.json``: the common fields and the task."""

    task: dict[str, Any]
