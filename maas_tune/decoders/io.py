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
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .._constants import DECODER_FORMAT_VERSION
from ..errors import ConfigurationError, SerializationError
from .base import BaseDecoder
from .dect import DecT
from .linear import LinearProbe, ScoreLogisticRegression
from .ytuning import YTuning
from .zero_shot import ContextualCalibration, ZeroShot

__all__ = ["DECODERS", "load_decoder", "register_decoder", "save_decoder"]

#: File names inside a saved decoder directory.
JSON_NAME = "decoder.json"
TENSORS_NAME = "tensors.safetensors"
#: Value of the ``format`` field, to recognise our JSON.
FORMAT_NAME = "maas-tune-decoder"
# What a damaged save calls for (every SerializationError says what to do).
_RESAVE = "the save is damaged: fit and save the decoder again"

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


def register_decoder(cls: type[BaseDecoder]) -> type[BaseDecoder]:
    """Make a decoder class loadable by :func:`load_decoder` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, BaseDecoder)):
        raise ConfigurationError(f"{cls!r} is not a BaseDecoder subclass")
    DECODERS[cls.__name__] = cls
    return cls


def _package_version() -> str:
    try:
        from .._version import __version__
    except ImportError:  # pragma: no cover - the version module ships with the package
        return "0.0.0"
    return str(__version__)


def _jsonable(value: Any) -> Any:
    """Tuples become lists (JSON has no tuples); everything else must already be JSON."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _write_artefact(
    path: str | os.PathLike[str], name: str, doc: dict[str, Any], blob: bytes,
    json_name: str = JSON_NAME,
) -> Path:
    """Write ``doc`` as JSON and the safetensors ``blob`` into directory ``path``, each atomically."""
    try:
        # Not sort_keys: it would reorder the caller's metadata, e.g. the labels of a task's
        # verbalizer, whose order is the class order.
        text = json.dumps(doc, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot save {name}: parameters or metadata are not JSON-serialisable ({exc})"
        ) from exc
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / TENSORS_NAME, blob)
    _write_atomic(directory / json_name, text.encode("utf-8"))
    return directory


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
        fingerprint, ...); returned as is by :func:`load_decoder`.

    Returns
    -------
    Path
        The directory.

    Raises
    ------
    NotFittedError
        If the decoder is not fitted.
    ConfigurationError
        If the class is not registered or a parameter or the metadata is not JSON-serialisable.
    """
    name = type(decoder).__name__
    if DECODERS.get(name) is not type(decoder):
        raise ConfigurationError(
            f"{name} is not a registered decoder; call register_decoder({name}) first"
        )
    tensors = decoder._state_tensors()
    blob = save_safetensors(tensors)
    doc = {
        "format": FORMAT_NAME,
        "format_version": DECODER_FORMAT_VERSION,
        "maas_tune_version": _package_version(),
        "class": name,
        "params": _jsonable(decoder.get_params()),
        "classes": [str(c) for c in decoder.classes_.tolist()],
        "state": _jsonable(decoder._state_meta()),
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in tensors.items()
        },
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        "metadata": _jsonable(metadata or {}),
    }
    return _write_artefact(path, name, doc, blob)


def load_decoder(path: str | os.PathLike[str]) -> tuple[BaseDecoder, dict[str, Any]]:
    """Read a decoder written by :func:`save_decoder`.

    Parameters
    ----------
    path : path-like
        The directory given to :func:`save_decoder`.

    Returns
    -------
    decoder : BaseDecoder
        Fitted, predicting exactly as the saved one did.
    metadata : dict
        The caller's metadata given at save time.

    Raises
    ------
    SerializationError
        If a file is missing, the JSON is invalid or not ours, the format is newer
        than this package reads, the class is unknown, the tensors are truncated,
        corrupt, of unexpected names or shapes, or do not match the JSON's checksum.
    """
    directory = Path(path)
    doc = _read_json(directory / JSON_NAME)
    blob = _read_bytes(directory / TENSORS_NAME)
    cls = _check_header(doc, directory)
    tensors = _read_tensors(blob, doc, directory)
    try:
        decoder = cls(**doc["params"])
        decoder._restore(tensors, {"classes": doc["classes"], **doc["state"]})
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise SerializationError(
            f"{directory}: the saved {doc['class']} is inconsistent: {exc}; {_RESAVE} with "
            "this maas-tune"
        ) from exc
    return decoder, dict(doc["metadata"])


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SerializationError(
            f"{path} is missing; a saved decoder is a directory with {JSON_NAME} and {TENSORS_NAME}"
        ) from None
    except OSError as exc:
        raise SerializationError(
            f"cannot read {path}: {exc}; check that it exists and is readable"
        ) from exc


def _read_json(
    path: Path, what: str = "decoder", format_name: str = FORMAT_NAME, saver: str = "save_decoder"
) -> dict[str, Any]:
    """The JSON object of a saved artefact, checked to carry ``format == format_name``."""
    raw = _read_bytes(path)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(
            f"{path} is not valid JSON ({exc}); save the {what} again"
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != format_name:
        raise SerializationError(
            f"{path} is not a maas-tune {what} file (no format={format_name!r}); pass the "
            f"directory that {saver} or `maas-tune fit --out` wrote"
        )
    return doc


def _check_header(doc: dict[str, Any], directory: Path) -> type[BaseDecoder]:
    """Validate version, class and field types; return the decoder class."""
    version = doc.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise SerializationError(f"{directory}: invalid format_version {version!r}; {_RESAVE}")
    if version > DECODER_FORMAT_VERSION:
        raise SerializationError(
            f"{directory} was written in decoder format {version} by maas-tune "
            f"{doc.get('maas_tune_version', '?')}; this maas-tune ({_package_version()}) reads "
            f"format {DECODER_FORMAT_VERSION} at most: upgrade maas-tune"
        )
    name = doc.get("class")
    if name not in DECODERS:
        raise SerializationError(
            f"{directory}: unknown decoder class {name!r}; known: {', '.join(sorted(DECODERS))} "
            "(register custom classes with register_decoder before loading)"
        )
    for field, kind in (
        ("params", dict),
        ("state", dict),
        ("tensors", dict),
        ("metadata", dict),
        ("classes", list),
        ("tensors_sha256", str),
    ):
        if not isinstance(doc.get(field), kind):
            raise SerializationError(
                f"{directory}: field {field!r} is missing or not a {kind.__name__}; {_RESAVE}"
            )
    params = dict(doc["params"])
    # JSON turned tuples into lists; give sequence parameters back as tuples
    doc["params"] = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return DECODERS[name]


def _read_tensors(blob: bytes, doc: dict[str, Any], directory: Path) -> dict[str, torch.Tensor]:
    """Parse the safetensors bytes and check names, shapes and checksum against the JSON."""
    try:
        tensors = load_safetensors(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise SerializationError(
            f"{directory / TENSORS_NAME} is truncated or corrupt ({exc}); save the decoder again"
        ) from exc
    declared = doc["tensors"]
    if set(declared) != set(tensors):
        raise SerializationError(
            f"{directory}: tensors {sorted(tensors)} do not match the declared "
            f"{sorted(declared)}; {_RESAVE}"
        )
    for name, spec in declared.items():
        shape = list(tensors[name].shape)
        if not isinstance(spec, dict) or spec.get("shape") != shape:
            raise SerializationError(
                f"{directory}: tensor {name!r} has shape {shape}, the JSON declares {spec!r}; "
                f"{_RESAVE}"
            )
    if hashlib.sha256(blob).hexdigest() != doc["tensors_sha256"]:
        raise SerializationError(
            f"{directory / TENSORS_NAME} does not match the checksum in {JSON_NAME} "
            f"(modified, or the two files come from different saves); {_RESAVE}"
        )
    return tensors
