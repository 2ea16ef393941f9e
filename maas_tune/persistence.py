"""Save and load fitted estimators — decoders and prompt methods — as safetensors + JSON, never pickle.

A saved estimator is a directory holding two files::

    <path>/
      decoder.json          format version, package version, class, hyper-parameters,
      (or method.json)      classes (a decoder) or task (a prompt method), learned JSON
                            values, tensor shapes + SHA-256, metadata
      tensors.safetensors   the learned tensors (none for in-context learning)

A directory keeps the pair together under one name and lets a reader see at once
what belongs to what. Each file is written to a temporary name and moved into
place, the JSON last, so a crash leaves either the old pair or a pair whose JSON
checksum exposes the mismatch. The JSON's name and ``format`` field say whether the
directory holds a decoder or a prompt method.

A saved estimator is untrusted input. :func:`load_decoder` and :func:`load_method` check
the whole of it before building anything (the JSON against a schema: every field's type
and range; each tensor's name, shape, dtype and finiteness; the checksum) and refuse
with one :class:`~maas_tune.errors.SerializationError` naming the file and the field.
Only the classes of :mod:`maas_tune.registry` are rebuilt.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from ._artefact import (
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
from ._artefact_schema import (
    ArtefactHeader,
    Layout,
    check_model,
    clip_text,
    params_model,
    show_value,
)
from ._constants import DECODER_FORMAT_VERSION
from ._saved_schema import STATE_MODELS, TENSOR_DTYPES, DecoderHeader, MethodHeader
from .decoders import BaseDecoder
from .errors import ConfigurationError, SerializationError
from .estimator import Estimator
from .methods import PromptMethod
from .registry import decoder_classes, method_classes
from .task import Task

__all__ = [
    "DECODER_JSON_NAME",
    "METHOD_JSON_NAME",
    "TENSORS_NAME",
    "is_saved_method",
    "load_decoder",
    "load_estimator",
    "load_method",
    "save_decoder",
    "save_estimator",
    "save_method",
]

#: The JSON file of a saved decoder, and of a saved prompt method.
DECODER_JSON_NAME = "decoder.json"
METHOD_JSON_NAME = "method.json"
DECODER = Layout("decoder", DECODER_JSON_NAME, "maas-tune-decoder", "save_decoder")
METHOD = Layout("method", METHOD_JSON_NAME, "maas-tune-method", "save_method")

#: Learned standardisation scales of a decoder: a prediction divides by them.
_POSITIVE_TENSORS = ("feature_scale_", "scale_")
#: Methods a class may define to check its hyper-parameters (choices, divisibility).
_PARAM_CHECKS = ("_validate_params", "_check_params")


# -- saving ---------------------------------------------------------------------
def save_decoder(
    decoder: BaseDecoder, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write a fitted decoder to the directory ``path`` (created if needed).

    Parameters
    ----------
    decoder : BaseDecoder
        A fitted decoder of a registered class.
    path : path-like
        Directory to write ``decoder.json`` and ``tensors.safetensors`` into;
        existing files of a previous save are replaced.
    metadata : dict, optional
        JSON-serialisable information kept with the decoder (task, provider
        fingerprint, ...); returned as is by :func:`load_decoder`. maas-tune reads
        ``metadata["model"]`` as a model name: if given, a string.

    Returns
    -------
    Path
        The directory.

    Raises
    ------
    NotFittedError
        If the decoder is not fitted.
    ConfigurationError
        If the class is not registered, a parameter is out of the range
        :func:`load_decoder` accepts, or a parameter or the metadata is not
        JSON-serialisable.
    """
    name = type(decoder).__name__
    if decoder_classes().get(name) is not type(decoder):
        raise ConfigurationError(
            f"{name} is not a registered decoder; call register_decoder({name}) first"
        )
    tensors = decoder._state_tensors()
    fields = {"classes": [str(c) for c in decoder.classes_.tolist()]}
    return _save(decoder, tensors, path, metadata, DECODER, fields)


def save_method(
    method: PromptMethod, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write a fitted prompt method to the directory ``path`` (created if needed).

    Parameters
    ----------
    method : PromptMethod
        Fitted, of a class in :func:`~maas_tune.registry.method_classes`.
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
    if method_classes().get(name) is not type(method):
        raise ConfigurationError(f"{name} is not a known method class; cannot save it")
    tensors = method._state_tensors()
    return _save(method, tensors, path, metadata, METHOD, {"task": _task_doc(method.task_)})


def save_estimator(
    est: BaseDecoder | PromptMethod,
    path: str | os.PathLike[str],
    *,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """:func:`save_decoder` or :func:`save_method`, whichever ``est`` is."""
    if isinstance(est, PromptMethod):
        return save_method(est, path, metadata=metadata)
    return save_decoder(est, path, metadata=metadata)


def _save(
    est: BaseDecoder | PromptMethod,
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: dict[str, Any] | None,
    layout: Layout,
    fields: dict[str, Any],
) -> Path:
    """Write ``est``'s JSON (the common fields and the family's ``fields``) and tensors."""
    params = jsonable(est.get_params())
    check_saveable(type(est), params, metadata or {})
    blob = save_safetensors(tensors)
    # A decoder's JSON names dtypes as "float32", a method's as "torch.float32": kept as
    # they were written (both load).
    strip = "torch." if layout is DECODER else ""
    doc = {
        "format": layout.format_name,
        "format_version": DECODER_FORMAT_VERSION,
        "maas_tune_version": package_version(),
        "class": type(est).__name__,
        "params": params,
        **fields,
        "state": jsonable(est._state_meta()),
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix(strip)}
            for k, v in tensors.items()
        },
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        "metadata": jsonable(metadata or {}),
    }
    return write_artefact(path, type(est).__name__, doc, blob, layout.json_name)


# -- loading --------------------------------------------------------------------
def is_saved_method(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory written by :func:`save_method`."""
    return (Path(path) / METHOD_JSON_NAME).is_file()


def load_estimator(
    path: str | os.PathLike[str],
) -> tuple[BaseDecoder | PromptMethod, dict[str, Any]]:
    """:func:`load_method` or :func:`load_decoder`, whichever the directory ``path`` holds."""
    if is_saved_method(path):
        return load_method(path)
    return load_decoder(path)


def load_decoder(path: str | os.PathLike[str]) -> tuple[BaseDecoder, dict[str, Any]]:
    """Read a decoder written by :func:`save_decoder`, checking all of it first.

    Parameters
    ----------
    path : path-like
        The directory given to :func:`save_decoder`.

    Returns
    -------
    decoder : BaseDecoder
        Fitted, predicting exactly as the saved one did.
    metadata : dict
        The caller's metadata given at save time. Indexing a key it lacks raises a
        SerializationError (also a KeyError) naming the file.

    Raises
    ------
    SerializationError
        If a file is missing, the JSON is invalid or not ours, the format is newer
        than this package reads, the class is unknown, a field has the wrong type or
        is out of range, the tensors are truncated, corrupt, of unexpected names,
        shapes or dtypes, not finite, or do not match the JSON's checksum. The
        message names the file and the field.
    """
    directory = Path(path)
    json_path, doc = _read_doc(directory, DECODER)
    known = decoder_classes()
    name = doc.get("class")
    if not isinstance(name, str) or name not in known:
        raise SerializationError(
            f"{directory}: unknown decoder class {show_value(name)}; known: "
            f"{', '.join(sorted(known))} (register custom classes with register_decoder "
            "before loading)"
        )
    cls = known[name]
    header = check_model(DecoderHeader, doc, json_path, DECODER)
    _check_params_and_state(cls, header, json_path, DECODER)
    if len(set(header.classes)) != len(header.classes):
        raise SerializationError(f"{json_path}: classes are not unique; {DECODER.fix}")
    blob = read_bytes(directory / TENSORS_NAME, DECODER)
    # A bundled class's tensors are all float32 (read_tensors' default); a custom one's must
    # be what its JSON declares.
    dtypes = TENSOR_DTYPES.get(cls, {}) if cls in STATE_MODELS else None
    tensors = read_tensors(blob, header, directory, DECODER, dtypes)
    _check_scales(tensors, directory)
    fix = f"{DECODER.fix} with this maas-tune"
    decoder = _build(
        cls,
        header,
        tensors,
        lambda: {"classes": list(header.classes), **header.state},
        json_path,
        fix,
    )
    return decoder, saved_metadata(header.metadata, json_path, DECODER)


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
    json_path, doc = _read_doc(directory, METHOD)
    known = method_classes()
    name = doc.get("class")
    if not isinstance(name, str) or name not in known:
        raise SerializationError(
            f"{json_path}: unknown method class {show_value(name)}; known: {sorted(known)}"
        )
    cls = known[name]
    header = check_model(MethodHeader, doc, json_path, METHOD)
    _check_params_and_state(cls, header, json_path, METHOD)
    blob = read_bytes(directory / TENSORS_NAME, METHOD)
    tensors = read_tensors(blob, header, directory, METHOD, TENSOR_DTYPES.get(cls, {}))
    meta = lambda: {**header.state, "task": _task_from_doc(header.task)}
    method = _build(cls, header, tensors, meta, json_path, METHOD.fix)
    return method, saved_metadata(header.metadata, json_path, METHOD)


def _read_doc(directory: Path, layout: Layout) -> tuple[Path, dict[str, Any]]:
    """The path and parsed JSON of a saved estimator, its format version checked."""
    json_path = directory / layout.json_name
    doc = read_json(json_path, layout)
    check_version(doc, json_path, layout)
    return json_path, doc


def _check_params_and_state(
    cls: type[Estimator], header: ArtefactHeader, json_path: Path, layout: Layout
) -> None:
    """The saved hyper-parameters and learned JSON values against ``cls``'s schemas."""
    context = f"the saved {cls.__name__} is inconsistent: "
    check_model(
        params_model(cls), header.params, json_path, layout, prefix="params", context=context
    )
    if cls in STATE_MODELS:  # a bundled class
        check_model(
            STATE_MODELS[cls], header.state, json_path, layout, prefix="state", context=context
        )


def _check_scales(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    for name in _POSITIVE_TENSORS:
        if name in tensors and not bool((tensors[name] > 0).all()):
            raise SerializationError(
                f"{directory / TENSORS_NAME}: tensor {name!r} (a standardisation scale) must be "
                f"positive; {DECODER.fix}"
            )


def _build(
    cls: Any,
    header: ArtefactHeader,
    tensors: dict[str, torch.Tensor],
    meta: Callable[[], dict[str, Any]],
    where: Path,
    fix: str,
) -> Any:
    """The estimator from checked parts; what only the class can check is its own rules."""
    # JSON turned tuples into lists; give sequence parameters back as tuples
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in header.params.items()}
    try:
        est = cls(**params)
        for hook in _PARAM_CHECKS:
            check = getattr(est, hook, None)
            if callable(check):
                check()
        est._restore(tensors, meta())
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError) as exc:
        raise _inconsistent(where, cls, exc, fix) from exc
    return est


def _inconsistent(where: Path, cls: type, exc: Exception, fix: str) -> SerializationError:
    return SerializationError(
        f"{where}: the saved {cls.__name__} is inconsistent: {clip_text(str(exc), 400)}; {fix}"
    )


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
