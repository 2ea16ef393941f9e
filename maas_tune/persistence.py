"""Save and load fitted decoders as safetensors + JSON, never pickle.

A saved decoder is a directory holding two files::

    <path>/
      decoder.json          format version, package version, class, hyper-parameters,
                            classes, learned scalars, tensor shapes + SHA-256, metadata
      tensors.safetensors   the learned tensors

A directory keeps the pair together under one name and lets a reader see at once
what belongs to what. Each file is written to a temporary name and moved into
place, the JSON last, so a crash leaves either the old pair or a pair whose JSON
checksum exposes the mismatch.

A saved decoder is untrusted input. :func:`load_decoder` checks the whole of it before
building anything (the JSON against a schema: every field's type and range; each
tensor's name, shape, dtype and finiteness; the checksum) and refuses with one
:class:`~maas_tune.errors.SerializationError` naming the file and the field.
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
from ._label_attention import init_label_network
from .base import BaseDecoder
from .dect import DecT
from .linear import LinearProbe, ScoreLogisticRegression
from .ytuning import PARAM_PREFIX, YTuning
from .zero_shot import ContextualCalibration, ZeroShot

__all__ = ["DECODERS", "load_decoder", "register_decoder", "save_decoder"]

#: File names inside a saved decoder directory.
JSON_NAME = "decoder.json"
#: Value of the ``format`` field, to recognise our JSON.
FORMAT_NAME = "maas-tune-decoder"
LAYOUT = Layout("decoder", JSON_NAME, FORMAT_NAME, "save_decoder")

#: Decoder classes by name: what ``load_decoder`` may rebuild.
DECODERS: dict[str, type[BaseDecoder]] = {
    cls.__name__: cls
    for cls in (
        ContextualCalibration,
        DecT,
        LinearProbe,
        ScoreLogisticRegression,
        YTuning,
        ZeroShot,
    )
}

_LOSSES = Annotated[list[float], Field(max_length=10_000)]
#: The learned JSON values (``_meta_attrs``) of each bundled class; their tensors are all
#: float32. A class registered with :func:`register_decoder` is checked by its ``_restore``.
_STATE_FIELDS: dict[type[BaseDecoder], dict[str, Any]] = {
    ContextualCalibration: {},
    DecT: {
        "lam_": (Annotated[float, Field(ge=0, le=1e6)], ...),
        "cv_loss_": (_LOSSES, ...),
        "uses_hidden_": (bool, ...),
    },
    LinearProbe: {},
    ScoreLogisticRegression: {},
    YTuning: {},
    ZeroShot: {},
}
STATE_MODELS: dict[type[BaseDecoder], type[BaseModel]] = {
    cls: create_model(f"{cls.__name__}State", __config__=STRICT, **fields)
    for cls, fields in _STATE_FIELDS.items()
}
#: Learned standardisation scales: a prediction divides by them.
_POSITIVE_TENSORS = ("feature_scale_", "scale_")
#: Methods a decoder class may define to check its hyper-parameters (choices, divisibility).
_PARAM_CHECKS = ("_validate_params", "_check_params")


class DecoderHeader(ArtefactHeader):
    """``decoder.json``: the common fields and the class names."""

    classes: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=10_000)]],
        Field(min_length=1, max_length=100_000),
    ]


def register_decoder(cls: type[BaseDecoder]) -> type[BaseDecoder]:
    """Make a decoder class loadable by :func:`load_decoder` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, BaseDecoder)):
        raise ConfigurationError(f"{cls!r} is not a BaseDecoder subclass")
    DECODERS[cls.__name__] = cls
    return cls


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
    if DECODERS.get(name) is not type(decoder):
        raise ConfigurationError(
            f"{name} is not a registered decoder; call register_decoder({name}) first"
        )
    tensors = decoder._state_tensors()
    params = jsonable(decoder.get_params())
    check_saveable(type(decoder), params, metadata or {})
    blob = save_safetensors(tensors)
    doc = {
        "format": FORMAT_NAME,
        "format_version": DECODER_FORMAT_VERSION,
        "maas_tune_version": package_version(),
        "class": name,
        "params": params,
        "classes": [str(c) for c in decoder.classes_.tolist()],
        "state": jsonable(decoder._state_meta()),
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in tensors.items()
        },
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        "metadata": jsonable(metadata or {}),
    }
    return write_artefact(path, name, doc, blob, JSON_NAME)


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
    json_path = directory / JSON_NAME
    doc = read_json(json_path, LAYOUT)
    check_version(doc, json_path, LAYOUT)
    cls = _decoder_class(doc, directory)
    header = check_model(DecoderHeader, doc, json_path, LAYOUT)
    context = f"the saved {cls.__name__} is inconsistent: "
    check_model(params_model(cls), header.params, json_path, LAYOUT, prefix="params",
                context=context)
    if cls in STATE_MODELS:
        check_model(STATE_MODELS[cls], header.state, json_path, LAYOUT, prefix="state",
                    context=context)
    if len(set(header.classes)) != len(header.classes):
        raise SerializationError(f"{json_path}: classes are not unique; {LAYOUT.fix}")
    blob = read_bytes(directory / TENSORS_NAME, LAYOUT)
    # A bundled class's tensors are all float32 (read_tensors' default); a custom one's must
    # be what its JSON declares.
    dtypes: dict[str, str] | None = {} if cls in STATE_MODELS else None
    tensors = read_tensors(blob, header, directory, LAYOUT, dtypes)
    _check_scales(tensors, directory)
    decoder = _build(cls, header, tensors, json_path)
    return decoder, saved_metadata(header.metadata, json_path, LAYOUT)


def _decoder_class(doc: dict[str, Any], directory: Path) -> type[BaseDecoder]:
    name = doc.get("class")
    if not isinstance(name, str) or name not in DECODERS:
        raise SerializationError(
            f"{directory}: unknown decoder class {show_value(name)}; known: "
            f"{', '.join(sorted(DECODERS))} (register custom classes with register_decoder "
            "before loading)"
        )
    return DECODERS[name]


def _check_scales(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    for name in _POSITIVE_TENSORS:
        if name in tensors and not bool((tensors[name] > 0).all()):
            raise SerializationError(
                f"{directory / TENSORS_NAME}: tensor {name!r} (a standardisation scale) must be "
                f"positive; {LAYOUT.fix}"
            )


def _build(
    cls: type[BaseDecoder], header: DecoderHeader, tensors: dict[str, torch.Tensor], where: Path
) -> BaseDecoder:
    """The decoder from checked parts; what only the class can check is its own rules."""
    # JSON turned tuples into lists; give sequence parameters back as tuples
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in header.params.items()}
    try:
        decoder = cls(**params)
        for hook in _PARAM_CHECKS:
            check = getattr(decoder, hook, None)
            if callable(check):
                check()
        decoder._restore(tensors, {"classes": list(header.classes), **header.state})
        if isinstance(decoder, YTuning):
            _check_label_network(decoder)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError) as exc:
        raise SerializationError(
            f"{where}: the saved {cls.__name__} is inconsistent: {clip_text(str(exc), 400)}; "
            f"{LAYOUT.fix} with this maas-tune"
        ) from exc
    return decoder


def _check_label_network(decoder: YTuning) -> None:
    """Every tensor of a restored YTuning label network has the shape a fresh one would.

    ``YTuning._check_state`` checks the outer tensors only; a wrong layer tensor would
    fail inside torch at the first prediction. The reference is built on the meta
    device: shapes without memory, whatever ``d_model`` claims.
    """
    d, k = decoder.mean_.shape[0], len(decoder.classes_)
    with torch.device("meta"):
        expected = init_label_network(d, decoder.d_model, k, decoder.n_layers, torch.Generator())
    for name, reference in expected.items():
        got = tuple(decoder.params_[name].shape)
        if got != tuple(reference.shape):
            raise ValueError(
                f"{PARAM_PREFIX}{name} has shape {got}, expected {tuple(reference.shape)}"
            )
