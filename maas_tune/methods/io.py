"""Save and load fitted prompt methods as safetensors + JSON, never pickle.

The layout is that of :mod:`maas_tune.decoders.io`, with its own format name::

    <path>/
      method.json           format version, package version, class, hyper-parameters,
                            task, learned JSON values, tensor shapes + SHA-256, metadata
      tensors.safetensors   the learned tensors (none for in-context learning)

As for decoders, :func:`load_method` checks the whole artefact (schema of the JSON,
tensors' names, shapes, dtypes, finiteness and checksum) before building anything.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, Field, create_model
from safetensors.torch import save as save_safetensors

from .._artefact import (
    TENSORS_NAME,
    check_saveable,
    check_version,
    jsonable,
    package_version,
    read_bytes,
    read_json,
    read_tensors,
    saved_metadata,
    write_artefact,
)
from .._artefact_schema import (
    STRICT,
    ArtefactHeader,
    Layout,
    check_model,
    clip_text,
    params_model,
    show_value,
)
from .._constants import DECODER_FORMAT_VERSION
from ..errors import ConfigurationError, SerializationError
from ..task import Task
from .base import PromptMethod
from .bdpl import BDPL
from .icl import InContextLearning
from .prompt_tuning import PromptTuning

__all__ = ["METHOD_CLASSES", "is_saved_method", "load_method", "save_method"]

JSON_NAME = "method.json"
FORMAT_NAME = "maas-tune-method"
LAYOUT = Layout("method", JSON_NAME, FORMAT_NAME, "save_method")

#: Method classes by name: what :func:`load_method` may rebuild.
METHOD_CLASSES: dict[str, type[PromptMethod]] = {
    cls.__name__: cls for cls in (BDPL, InContextLearning, PromptTuning)
}

_LIST = Field(max_length=1_000_000)


class _Demonstration(BaseModel):
    """One saved in-context demonstration."""

    model_config = STRICT

    text: str
    text_b: str | None
    label: str


#: Learned JSON values of each class (its ``_meta_attrs``).
_STATE_FIELDS: dict[type[PromptMethod], dict[str, Any]] = {
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
STATE_MODELS: dict[type[PromptMethod], type[BaseModel]] = {
    cls: create_model(f"{cls.__name__}State", __config__=STRICT, **fields)
    for cls, fields in _STATE_FIELDS.items()
}
#: The dtype of each learned tensor.
TENSOR_DTYPES: dict[type[PromptMethod], dict[str, str]] = {
    BDPL: {"probs_": "float32", "prompt_indices_": "int64"},
    InContextLearning: {},
    PromptTuning: {"soft_prompt_": "float32"},
}


class MethodHeader(ArtefactHeader):
    """``method.json``: the common fields and the task."""

    task: dict[str, Any]


def is_saved_method(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory written by :func:`save_method`."""
    return (Path(path) / JSON_NAME).is_file()


def save_method(
    method: PromptMethod, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write a fitted method to the directory ``path`` (created if needed).

    Parameters
    ----------
    method : PromptMethod
        Fitted, of a class in :data:`METHOD_CLASSES`.
    path : path-like
    metadata : dict, optional
        JSON-serialisable information kept with it, returned by :func:`load_method`.
        maas-tune reads ``metadata["model"]`` as a model name: if given, a string.

    Raises
    ------
    NotFittedError
        If the method is not fitted.
    ConfigurationError
        If the class is unknown, a parameter is out of the range :func:`load_method`
        accepts, or something is not JSON-serialisable.
    """
    name = type(method).__name__
    if METHOD_CLASSES.get(name) is not type(method):
        raise ConfigurationError(f"{name} is not a known method class; cannot save it")
    tensors = method._state_tensors()
    params = jsonable(method.get_params())
    check_saveable(type(method), params, metadata or {})
    blob = save_safetensors(tensors)
    doc = {
        "format": FORMAT_NAME,
        "format_version": DECODER_FORMAT_VERSION,
        "maas_tune_version": package_version(),
        "class": name,
        "params": params,
        "task": _task_doc(method.task_),
        "state": jsonable(method._state_meta()),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()},
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        "metadata": jsonable(metadata or {}),
    }
    return write_artefact(path, name, doc, blob, JSON_NAME)


def load_method(path: str | os.PathLike[str]) -> tuple[PromptMethod, dict[str, Any]]:
    """Read a method written by :func:`save_method`; returns (method, metadata).

    Indexing a key the metadata lacks raises a SerializationError (also a KeyError).

    Raises
    ------
    SerializationError
        If a file is missing, corrupt, of another format or version, a field has the
        wrong type or is out of range, or the tensors do not match the JSON (names,
        shapes, dtypes, checksum) or are not finite. The message names file and field.
    """
    directory = Path(path)
    json_path = directory / JSON_NAME
    doc = read_json(json_path, LAYOUT)
    check_version(doc, json_path, LAYOUT)
    cls = _method_class(doc, json_path)
    header = check_model(MethodHeader, doc, json_path, LAYOUT)
    context = f"the saved {cls.__name__} is inconsistent: "
    check_model(params_model(cls), header.params, json_path, LAYOUT, prefix="params",
                context=context)
    check_model(STATE_MODELS[cls], header.state, json_path, LAYOUT, prefix="state",
                context=context)
    blob = read_bytes(directory / TENSORS_NAME, LAYOUT)
    tensors = read_tensors(blob, header, directory, LAYOUT, TENSOR_DTYPES[cls])
    method = _build(cls, header, tensors, json_path)
    return method, saved_metadata(header.metadata, json_path, LAYOUT)


def _method_class(doc: dict[str, Any], path: Path) -> type[PromptMethod]:
    name = doc.get("class")
    if not isinstance(name, str) or name not in METHOD_CLASSES:
        raise SerializationError(
            f"{path}: unknown method class {show_value(name)}; known: {sorted(METHOD_CLASSES)}"
        )
    return METHOD_CLASSES[name]


def _build(
    cls: type[PromptMethod], header: MethodHeader, tensors: dict[str, torch.Tensor], where: Path
) -> PromptMethod:
    """The method from checked parts; what only the class can check is its own rules."""
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in header.params.items()}
    try:
        method = cls(**params)
        check = getattr(method, "_check_params", None)
        if callable(check):
            check()
        method._restore(tensors, {**header.state, "task": _task_from_doc(header.task)})
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError) as exc:
        raise SerializationError(
            f"{where}: the saved {cls.__name__} is inconsistent: {clip_text(str(exc), 400)}; "
            f"{LAYOUT.fix}"
        ) from exc
    return method


def _task_doc(task: Task) -> dict[str, Any]:
    """The task as JSON, its verbalizer as ``[label, words]`` pairs: class order survives
    key-sorting (a JSON object's keys are sorted when written)."""
    doc = task.to_dict()
    doc["verbalizer"] = [[label, list(words)] for label, words in task.verbalizer.items()]
    return doc


def _task_from_doc(doc: dict[str, Any]) -> Task:
    pairs = doc.get("verbalizer")
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise ValueError("the saved task's verbalizer must be a list of [label, words] pairs")
    return Task.from_dict({**doc, "verbalizer": dict(pairs)})
