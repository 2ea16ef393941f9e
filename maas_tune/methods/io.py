"""Save and load fitted prompt methods as safetensors + JSON, never pickle.

The layout is that of :mod:`maas_tune.decoders.io`, with its own format name::

    <path>/
      method.json           format version, package version, class, hyper-parameters,
                            task, learned JSON values, tensor shapes + SHA-256, metadata
      tensors.safetensors   the learned tensors (none for in-context learning)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .._constants import DECODER_FORMAT_VERSION
from ..decoders.io import (
    _jsonable,
    _package_version,
    _read_bytes,
    _read_json,
    _write_artefact,
)
from ..errors import ConfigurationError, SerializationError
from ..task import Task
from .base import PromptMethod
from .bdpl import BDPL
from .icl import InContextLearning
from .prompt_tuning import PromptTuning

__all__ = ["METHOD_CLASSES", "is_saved_method", "load_method", "save_method"]

JSON_NAME = "method.json"
TENSORS_NAME = "tensors.safetensors"
FORMAT_NAME = "maas-tune-method"

#: Method classes by name: what :func:`load_method` may rebuild.
METHOD_CLASSES: dict[str, type[PromptMethod]] = {
    cls.__name__: cls for cls in (BDPL, InContextLearning, PromptTuning)
}


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

    Raises
    ------
    NotFittedError
        If the method is not fitted.
    ConfigurationError
        If the class is unknown or something is not JSON-serialisable.
    """
    name = type(method).__name__
    if METHOD_CLASSES.get(name) is not type(method):
        raise ConfigurationError(f"{name} is not a known method class; cannot save it")
    tensors = method._state_tensors()
    blob = save_safetensors(tensors)
    doc = {
        "format": FORMAT_NAME,
        "format_version": DECODER_FORMAT_VERSION,
        "maas_tune_version": _package_version(),
        "class": name,
        "params": _jsonable(method.get_params()),
        "task": _task_doc(method.task_),
        "state": _jsonable(method._state_meta()),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()},
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        "metadata": _jsonable(metadata or {}),
    }
    return _write_artefact(path, name, doc, blob, json_name=JSON_NAME)


def load_method(path: str | os.PathLike[str]) -> tuple[PromptMethod, dict[str, Any]]:
    """Read a method written by :func:`save_method`; returns (method, metadata).

    Raises
    ------
    SerializationError
        If a file is missing, corrupt, of another format or version, or the tensors do
        not match the JSON (names, shapes, checksum).
    """
    directory = Path(path)
    doc = _read_doc(directory / JSON_NAME)
    blob = _read_bytes(directory / TENSORS_NAME)
    if hashlib.sha256(blob).hexdigest() != doc.get("tensors_sha256"):
        raise SerializationError(
            f"{directory / TENSORS_NAME} does not match the checksum in {JSON_NAME} "
            "(modified, or the two files come from different saves)"
        )
    try:
        tensors: dict[str, torch.Tensor] = load_safetensors(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise SerializationError(f"{directory / TENSORS_NAME} is corrupt ({exc})") from exc
    declared = doc.get("tensors", {})
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    if {k: s.get("shape") for k, s in declared.items()} != shapes:
        raise SerializationError(f"{directory}: tensors {shapes} do not match the JSON {declared}")
    cls = METHOD_CLASSES[doc["class"]]
    try:
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in doc["params"].items()}
        method = cls(**params)
        method._restore(tensors, {**doc["state"], "task": _task_from_doc(doc["task"])})
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise SerializationError(
            f"{directory}: the saved {doc['class']} is inconsistent: {exc}"
        ) from exc
    return method, dict(doc.get("metadata", {}))


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


def _read_doc(path: Path) -> dict[str, Any]:
    doc = _read_json(path, "method", FORMAT_NAME, "save_method")
    version = doc.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= DECODER_FORMAT_VERSION:
        raise SerializationError(
            f"{path}: format version {version!r} is not one this maas-tune "
            f"({_package_version()}) reads; upgrade maas-tune"
        )
    if doc.get("class") not in METHOD_CLASSES:
        raise SerializationError(
            f"{path}: unknown method class {doc.get('class')!r}; known: {sorted(METHOD_CLASSES)}"
        )
    for field, kind in (("params", dict), ("state", dict), ("task", dict), ("tensors", dict)):
        if not isinstance(doc.get(field), kind):
            raise SerializationError(f"{path}: field {field!r} is missing or not a {kind.__name__}")
    return doc
