"""The schema of saved artefacts: pydantic models of the JSON document, the ranges a saved
hyper-parameter may take, and pydantic errors turned into one line that names the field."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from .errors import SerializationError

__all__ = [
    "MAX_THREADS",
    "PARAM_BOUNDS",
    "STRICT",
    "ArtefactHeader",
    "Layout",
    "TensorSpec",
    "check_model",
    "clip_text",
    "describe",
    "params_model",
    "show_value",
]

#: Most dimensions a saved tensor may declare, and the largest size of one dimension.
MAX_TENSOR_DIMS, MAX_DIM_SIZE = 8, 2**40
#: Most torch threads a saved artefact may ask for: torch kills the process (SIGSEGV) on
#: absurd counts such as 1,000,000, and no machine this runs on has more cores.
MAX_THREADS = 256

M = TypeVar("M", bound=BaseModel)

_COUNT = Field(ge=1, le=1_000_000)
_WEIGHT = Field(ge=0, le=1e6)
_RATE = Field(gt=0, le=1e3)
#: Ranges of saved hyper-parameters, by name: a name means the same in every decoder and
#: method. A Field bounds the int / float members of the parameter's annotated type; a type
#: replaces it. Ranges are loose (what the code can run), not advice.
PARAM_BOUNDS: dict[str, Any] = {
    "n_threads": Field(ge=1, le=MAX_THREADS),
    "random_state": Field(ge=-(2**63), lt=2**64),  # what torch's and numpy's seeds take
    "epochs": _COUNT,
    "max_iter": _COUNT,
    "batch_size": _COUNT,
    "sample_size": _COUNT,
    "n_candidates": _COUNT,
    "max_prompt_tokens": Field(ge=1, le=10_000_000),
    "n_folds": Field(ge=1, le=1000),
    "demos_per_class": Field(ge=1, le=1000),
    "proto_dim": Field(ge=1, le=65_536),
    "d_model": Field(ge=1, le=65_536),
    "n_heads": Field(ge=1, le=1024),
    "n_layers": Field(ge=1, le=64),  # names n_layers x 9 tensors: bounded before they are listed
    "prompt_length": Field(ge=1, le=4096),
    "max_n": Field(ge=1, le=64),
    "min_count": _COUNT,
    "dev_fraction": Field(ge=0, lt=1),
    "n_tokens": Field(ge=1, le=4096),
    "alpha": _RATE,
    "lr": _RATE,
    "learning_rate": _RATE,
    "weight_decay": _WEIGHT,
    "lam": _WEIGHT,
    "lam_fallback": _WEIGHT,
    "lam_grid": Annotated[list[Annotated[float, _WEIGHT]], Field(max_length=1000)],
    "dropout": Field(ge=0, lt=1),
}


@dataclass(frozen=True)
class Layout:
    """What kind of artefact a directory holds: names used on disk and in messages."""

    what: str  # "decoder" or "method"
    json_name: str
    format_name: str
    saver: str  # the function that writes it, named in "not ours" messages

    @property
    def fix(self) -> str:
        """What every 'damaged' message tells the user to do."""
        return f"the save is damaged or was edited: fit and save the {self.what} again"


# -- documents ----------------------------------------------------------------------------
#: Schemas are strict (no "1" for 1, no 1 for True) and refuse non-finite floats.
STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", frozen=True)


class TensorSpec(BaseModel):
    """One tensor as the JSON declares it."""

    model_config = STRICT

    shape: Annotated[
        list[Annotated[int, Field(ge=0, le=MAX_DIM_SIZE)]], Field(max_length=MAX_TENSOR_DIMS)
    ]
    dtype: str


class ArtefactHeader(BaseModel):
    """The fields every saved artefact has (unknown top-level fields are ignored)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore", frozen=True)

    format_version: int
    maas_tune_version: str = "?"
    params: dict[str, Any]
    state: dict[str, Any]
    tensors: dict[str, TensorSpec]
    tensors_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    metadata: dict[str, Any]


_PHRASES = {
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "less_than_equal": "must be <= {le}",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than": "must be < {lt}",
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
    "string_too_short": "must have at least {min_length} character(s)",
    "string_too_long": "must have at most {max_length} character(s)",
}


def describe(error: Mapping[str, Any], prefix: str = "") -> str:
    """One pydantic error as ``field.path must be ..., got VALUE``."""
    loc = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "") or "the document"
    phrase = _PHRASES.get(error["type"])
    if phrase is None:
        phrase = error["msg"][:1].lower() + error["msg"][1:]
        phrase = phrase.removeprefix("input ").removeprefix("value ")
    else:
        phrase = phrase.format(**error.get("ctx", {}))
    if error["type"] in ("missing", "extra_forbidden"):
        return f"{loc} {phrase}"
    return f"{loc} {phrase}, got {show_value(error['input'])}"


def check_model(
    model: type[M], data: Any, path: Path, layout: Layout, *, prefix: str = "", context: str = ""
) -> M:
    """``model.model_validate(data)``; the first error as one SerializationError naming ``path``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = describe(exc.errors(include_url=False)[0], prefix)
        raise SerializationError(f"{path}: {context}{detail}; {layout.fix}") from None


def clip_text(text: str, limit: int = 160) -> str:
    """``text`` cut to ``limit`` characters (a third-party error can quote a whole file)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show_value(value: Any) -> str:
    """A value as shown in a message: its repr, clipped (a hostile file's values can be huge)."""
    try:
        return clip_text(repr(value), 60)
    except ValueError:  # an int past Python's digit limit cannot even be printed
        return "a huge integer"


# -- hyper-parameters -----------------------------------------------------------------------
#: One params model per class, built on first use (a dict, not ``functools.cache``: mypy
#: does not see class objects as ``Hashable``).
_PARAMS_MODELS: dict[type, type[BaseModel]] = {}


def params_model(cls: type[object]) -> type[BaseModel]:
    """A strict model of ``cls``'s keyword hyper-parameters, from its ``__init__`` signature.

    Each parameter keeps its annotated type (``int | None``, ``Sequence[float]``...), bounded
    by :data:`PARAM_BOUNDS`; a parameter missing from a saved document takes its default
    (older saves lack newer parameters); an unknown one is refused.
    """
    if cls not in _PARAMS_MODELS:
        _PARAMS_MODELS[cls] = _build_params_model(cls)
    return _PARAMS_MODELS[cls]


def _build_params_model(cls: type[object]) -> type[BaseModel]:
    try:
        hints = typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):  # a custom class with unresolvable annotations
        hints = {}
    fields: dict[str, Any] = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = _bounded(hints.get(name, Any), PARAM_BOUNDS.get(name))
        fields[name] = (hint, ... if p.default is p.empty else p.default)
    return create_model(f"{cls.__name__}Params", __config__=STRICT, **fields)


def _bounded(hint: Any, bound: Any) -> Any:
    """``hint`` with the int and float members of its union constrained by ``bound``."""
    if bound is None or hint is Any:
        return hint if bound is None or isinstance(bound, FieldInfo) else bound
    if not isinstance(bound, FieldInfo):
        return bound
    union = typing.get_origin(hint) in (Union, types.UnionType)
    members = typing.get_args(hint) if union else (hint,)
    bounded = tuple(Annotated[m, bound] if m in (int, float) else m for m in members)
    return Union[bounded] if len(bounded) > 1 else bounded[0]  # noqa: UP007 - built at runtime
