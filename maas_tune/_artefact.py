"""Saved artefacts (decoders, prompt methods): one JSON document plus one safetensors file in a
directory, written atomically and checked whole on load before anything is built from them.

A saved artefact is untrusted input: it may be truncated, edited by hand or crafted. Loading
therefore validates every field of the JSON against a schema (types, ranges, required keys),
checks each tensor's name, shape, dtype and finiteness against the JSON and the checksum, and
turns every failure into one :class:`~maas_tune.errors.SerializationError` that names the file
and the field. Nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load as load_safetensors

from ._artefact_schema import (
    ArtefactHeader,
    Layout,
    TensorSpec,
    clip_text,
    describe,
    params_model,
    show_value,
)
from ._constants import DECODER_FORMAT_VERSION
from .errors import ConfigurationError, SerializationError

__all__ = [
    "TENSORS_NAME",
    "SavedMetadata",
    "check_saveable",
    "check_version",
    "jsonable",
    "metadata_problem",
    "package_version",
    "read_bytes",
    "read_json",
    "read_tensors",
    "saved_metadata",
    "write_artefact",
]

#: File name of the tensors in every saved artefact.
TENSORS_NAME = "tensors.safetensors"
#: Largest JSON document read: a saved artefact's JSON is kilobytes (an ICL method's
#: demonstrations are the biggest); anything near this is not one of ours.
MAX_JSON_BYTES = 16 * 2**20
#: Longest integer literal read (a 64-bit seed has 20 digits).
MAX_INT_DIGITS = 100


# -- writing ----------------------------------------------------------------------------
def package_version() -> str:
    """This package's version, written into every artefact."""
    try:
        from ._version import __version__
    except ImportError:  # pragma: no cover - the version module ships with the package
        return "0.0.0"
    return str(__version__)


def jsonable(value: Any) -> Any:
    """Tuples become lists (JSON has no tuples); everything else must already be JSON."""
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def write_artefact(
    path: str | os.PathLike[str], name: str, doc: dict[str, Any], blob: bytes, json_name: str
) -> Path:
    """Write ``doc`` as JSON and the safetensors ``blob`` into directory ``path``, each atomically.

    The tensors go first and the JSON last, so a crash leaves either the old pair or a pair
    whose checksum exposes the mismatch.
    """
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


# -- reading the files --------------------------------------------------------------------
def read_bytes(path: Path, layout: Layout, limit: int | None = None) -> bytes:
    """The file's bytes; a SerializationError if it is missing, unreadable or over ``limit``."""
    try:
        if limit is not None and path.stat().st_size > limit:
            raise SerializationError(
                f"{path} is {path.stat().st_size} bytes, more than the {limit} a saved "
                f"{layout.what} holds; {layout.fix}"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise SerializationError(
            f"{path} is missing; a saved {layout.what} is a directory with {layout.json_name} "
            f"and {TENSORS_NAME}"
        ) from None
    except OSError as exc:
        raise SerializationError(
            f"cannot read {path}: {exc}; check that it exists and is readable"
        ) from exc


def _strict_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:  # also spares int() its own 4,300-digit refusal
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise ValueError(f"the number {text[:20]} is too large for a float")
    return value


def read_json(path: Path, layout: Layout) -> dict[str, Any]:
    """The JSON object of a saved artefact, checked to carry ``format == layout.format_name``.

    Strict JSON only: NaN, Infinity, overflowing floats, integers of more than
    :data:`MAX_INT_DIGITS` digits, nesting deeper than the parser's recursion limit and lone UTF-16 surrogates (``"\\ud800"``,
    which no UTF-8 writer can write back) are all refused with the file named.
    """
    raw = read_bytes(path, layout, MAX_JSON_BYTES)
    try:
        doc = json.loads(
            raw.decode("utf-8"),
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_strict_int,
        )
        json.dumps(doc, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    except RecursionError:
        raise SerializationError(
            f"{path} is not valid JSON (nested too deeply to read); {layout.fix}"
        ) from None
    except UnicodeEncodeError as exc:
        escape = f"\\u{ord(exc.object[exc.start]):04x}"
        raise SerializationError(
            f"{path} is not valid JSON (it holds a lone UTF-16 surrogate {escape}, which is not "
            f"a character); {layout.fix}"
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and ours
        raise SerializationError(
            f"{path} is not valid JSON ({clip_text(str(exc))}); save the {layout.what} again"
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != layout.format_name:
        raise SerializationError(
            f"{path} is not a maas-tune {layout.what} file (no format={layout.format_name!r}); "
            f"pass the directory that {layout.saver} or `maas-tune fit --out` wrote"
        )
    return doc


def check_version(doc: Mapping[str, Any], path: Path, layout: Layout) -> None:
    """Refuse a format version that is invalid or newer than this package reads."""
    version = doc.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SerializationError(
            f"{path}: invalid format_version {show_value(version)}; {layout.fix}"
        )
    if version > DECODER_FORMAT_VERSION:
        raise SerializationError(
            f"{path.parent} was written in {layout.what} format {version} by maas-tune "
            f"{clip_text(str(doc.get('maas_tune_version', '?')), 40)}; this maas-tune "
            f"({package_version()}) reads format {DECODER_FORMAT_VERSION} at most: "
            "upgrade maas-tune"
        )


# -- tensors ------------------------------------------------------------------------------
def read_tensors(
    blob: bytes,
    header: ArtefactHeader,
    directory: Path,
    layout: Layout,
    dtypes: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Parse the safetensors bytes; check names, shapes, dtypes, checksum and finiteness.

    ``dtypes`` maps each tensor name to the dtype its class expects (``"float32"``); None
    (a custom class) only requires the dtype the JSON declares.
    """
    try:
        tensors = load_safetensors(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise SerializationError(
            f"{directory / TENSORS_NAME} is truncated or corrupt ({clip_text(str(exc))}); "
            f"save the {layout.what} again"
        ) from exc
    declared = header.tensors
    if set(declared) != set(tensors):
        raise SerializationError(
            f"{directory}: tensors {sorted(tensors)} do not match the declared "
            f"{sorted(declared)}; {layout.fix}"
        )
    for name, spec in declared.items():
        _check_tensor(name, tensors[name], spec, directory, layout, dtypes)
    if hashlib.sha256(blob).hexdigest() != header.tensors_sha256:
        raise SerializationError(
            f"{directory / TENSORS_NAME} does not match the checksum in {layout.json_name} "
            f"(modified, or the two files come from different saves); {layout.fix}"
        )
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SerializationError(
                f"{directory / TENSORS_NAME}: tensor {name!r} holds NaN or infinite values; "
                f"{layout.fix}"
            )
    return tensors


def _check_tensor(
    name: str,
    tensor: torch.Tensor,
    spec: TensorSpec,
    directory: Path,
    layout: Layout,
    dtypes: Mapping[str, str] | None,
) -> None:
    shape = list(tensor.shape)
    if spec.shape != shape:
        raise SerializationError(
            f"{directory / TENSORS_NAME}: tensor {name!r} has shape {shape}, {layout.json_name} "
            f"declares {spec.shape}; {layout.fix}"
        )
    actual = str(tensor.dtype).removeprefix("torch.")
    declared = spec.dtype.removeprefix("torch.")
    expected = declared if dtypes is None else dtypes.get(name, "float32")
    if actual != expected or declared != expected:
        raise SerializationError(
            f"{directory / TENSORS_NAME}: tensor {name!r} is {actual}, expected {expected} "
            f"({layout.json_name} declares {show_value(spec.dtype)}); {layout.fix}"
        )


# -- metadata -----------------------------------------------------------------------------
class _MissingMetadata(SerializationError, KeyError):
    """A key the reader needs is not in the saved metadata (also a KeyError, as for a dict)."""

    def __str__(self) -> str:
        return str(self.args[0])  # KeyError's own __str__ would quote the message


class SavedMetadata(dict[str, Any]):
    """The caller's metadata of a saved artefact; a missing key raises one clear error.

    ``meta["task"]`` on an artefact saved without a task raises a SerializationError (that is
    also a KeyError) naming the file, instead of a bare ``KeyError: 'task'``.
    """

    def __init__(self, items: Mapping[str, Any], source: Path, what: str) -> None:
        super().__init__(items)
        self.source = source
        self.what = what

    def __missing__(self, key: str) -> Any:
        raise _MissingMetadata(
            f"{self.source}: the metadata has no {key!r} (saved without it, or edited); fit "
            f"and save the {self.what} again with `maas-tune fit --out`, which records it"
        )


def metadata_problem(meta: Mapping[str, Any]) -> str | None:
    """What is wrong with the keys maas-tune itself reads from metadata, or None.

    ``model`` is read as the model name (``maas-tune predict`` loads it): a string or null.
    """
    model = meta.get("model")
    if model is not None and not isinstance(model, str):
        return (
            f"metadata.model must be a string (the name of the model fitted with) or null, "
            f"got {show_value(model)}"
        )
    return None


def check_saveable(cls: type, params: dict[str, Any], metadata: Mapping[str, Any]) -> None:
    """Refuse to write what loading would refuse to read: a hyper-parameter out of range (as
    JSON, ``params``) or a metadata key maas-tune reads of the wrong type.

    Raises
    ------
    ConfigurationError
        Naming the class and the field.
    """
    try:
        params_model(cls).model_validate(params)
    except ValidationError as exc:
        detail = describe(exc.errors(include_url=False)[0], "params")
        raise ConfigurationError(
            f"cannot save {cls.__name__}: {detail}; set the hyper-parameter within range"
        ) from None
    problem = metadata_problem(metadata)
    if problem is not None:
        raise ConfigurationError(f"cannot save {cls.__name__}: {problem}")


def saved_metadata(raw: Mapping[str, Any], path: Path, layout: Layout) -> SavedMetadata:
    """The saved metadata, its maas-tune keys checked (:func:`metadata_problem`)."""
    problem = metadata_problem(raw)
    if problem is not None:
        raise SerializationError(f"{path}: {problem}; {layout.fix}")
    return SavedMetadata(raw, path, layout.what)
