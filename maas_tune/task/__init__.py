"""A classification task: a prompt template plus a verbalizer (label words for each class)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias

from .._constants import LABEL_WORD_PREFIX
from .._files import file_errors
from ..errors import TaskError
from ._file import parse_task_text, refuse_surrogates
from ._template import PLACEHOLDERS, Segment, Slot, validate_template

if TYPE_CHECKING:
    from ..data import Example

__all__ = ["Task"]

#: Keys of a task file / ``Task.to_dict()``.
TASK_KEYS = ("name", "description", "template", "verbalizer")
#: File suffixes understood by :meth:`Task.from_file`.
TASK_FORMATS = {".toml": "toml", ".json": "json"}

#: What a verbalizer may be given as: label -> words (a lone string is one word).
VerbalizerLike: TypeAlias = Mapping[str, Sequence[str]]


def _validate_words(label: str, words: object) -> tuple[str, ...]:
    if isinstance(words, str):
        words = (words,)
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
        raise TaskError(f"label words of {label!r} must be a list of strings, got {words!r}")
    if not words:
        raise TaskError(f"label {label!r} has no label words; give it at least one word")
    for word in words:
        if not word.strip():
            raise TaskError(
                f"label {label!r} has an empty or whitespace-only label word {word!r}; remove it"
            )
        if word != word.strip():
            raise TaskError(
                f"label word {word!r} of label {label!r} has leading or trailing whitespace; "
                f"write {word.strip()!r}: the prefix {LABEL_WORD_PREFIX!r} is added automatically"
            )
    return tuple(words)


def _validate_verbalizer(verbalizer: object) -> MappingProxyType[str, tuple[str, ...]]:
    if not isinstance(verbalizer, Mapping):
        raise TaskError(
            f"verbalizer must map each label to its label words, got {type(verbalizer).__name__}; "
            "e.g. {'negative': ['negative'], 'positive': ['positive']}"
        )
    result: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for label, words in verbalizer.items():
        if not isinstance(label, str) or not label.strip():
            raise TaskError(
                f"verbalizer has an empty or non-string label name {label!r}; name every label"
            )
        result[label] = _validate_words(label, words)
        for word in result[label]:
            if word in owner:
                raise TaskError(
                    f"label word {word!r} is listed twice (under {owner[word]!r} and {label!r}); "
                    "each word must belong to one label"
                )
            owner[word] = label
    if len(result) < 2:
        raise TaskError(f"verbalizer has {len(result)} label(s); a task needs at least two")
    return MappingProxyType(result)


@dataclass(frozen=True)
class Task:
    """A prompt template and a verbalizer: how examples become prompts and which words are scored.

    Parameters
    ----------
    name : str
        Short identifier, e.g. ``"sst2"``.
    template : str
        Prompt with a ``{text}`` placeholder and optionally ``{text_b}`` (pair tasks).
        Literal braces are written ``{{`` and ``}}``. The label word follows the
        prompt directly, with :data:`~maas_tune._constants.LABEL_WORD_PREFIX` before it.
    verbalizer : mapping of str to sequence of str
        Ordered ``label -> label words``; the order is the class order. A single
        string is accepted as a one-word list. Stored as a read-only mapping of
        label to tuple of words.
    description : str, optional
        Free text for humans; does not affect prompts.

    Raises
    ------
    TaskError
        If the template or verbalizer is invalid; the message says what to fix.
    """

    name: str
    template: str
    verbalizer: Mapping[str, Sequence[str]]  # stored as a read-only mapping of tuples
    description: str = ""
    _segments: tuple[Segment, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TaskError(f"task name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.description, str):
            raise TaskError(f"description must be a string, got {self.description!r}")
        object.__setattr__(self, "_segments", validate_template(self.template))
        object.__setattr__(self, "verbalizer", _validate_verbalizer(self.verbalizer))

    def _key(self) -> tuple[Any, ...]:
        # The verbalizer as ordered pairs: class order is part of a task's identity.
        return (self.name, self.template, tuple(self.verbalizer.items()), self.description)

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Task):
            return NotImplemented
        return self._key() == other._key()

    def __repr__(self) -> str:
        return (
            f"Task(name={self.name!r}, template={self.template!r}, "
            f"verbalizer={dict(self.verbalizer)!r}, description={self.description!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy cannot be pickled; rebuild (and re-validate) from plain data.
        return (Task, (self.name, self.template, dict(self.verbalizer), self.description))

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names in class order, shape (K,)."""
        return tuple(self.verbalizer)

    @property
    def label_words(self) -> tuple[str, ...]:
        """Every label word, flattened in class order, shape (W,)."""
        return tuple(word for words in self.verbalizer.values() for word in words)

    @property
    def word_class(self) -> tuple[int, ...]:
        """Class index of each entry of :attr:`label_words`, shape (W,)."""
        return tuple(k for k, words in enumerate(self.verbalizer.values()) for _ in words)

    @property
    def is_pair(self) -> bool:
        """Whether the template uses ``{text_b}`` (sentence-pair task)."""
        return Slot("text_b") in self._segments

    def render(self, example: Example | Mapping[str, Any]) -> str:
        """Fill the template with an example's text; braces in the text are kept verbatim.

        Parameters
        ----------
        example : Example or mapping
            Needs ``text``, and ``text_b`` when :attr:`is_pair`.

        Returns
        -------
        str
            The prompt; the label word is scored as the token right after it.
        """
        values = {slot: _field(example, slot) for slot in PLACEHOLDERS}
        parts: list[str] = []
        for segment in self._segments:
            if isinstance(segment, str):
                parts.append(segment)
                continue
            value = values[segment.name]
            if not isinstance(value, str):
                hint = (
                    "a pair template needs both texts"
                    if segment.name == "text_b"
                    else "check the data"
                )
                raise TaskError(
                    f"task {self.name!r} needs a string {segment.name!r} in every example, "
                    f"got {value!r}; {hint}"
                )
            parts.append(value)
        return "".join(parts)

    def with_template(self, template: str) -> Task:
        """Return a copy with another template (validated)."""
        return Task(self.name, template, self.verbalizer, self.description)

    def with_verbalizer(self, verbalizer: VerbalizerLike) -> Task:
        """Return a copy with another verbalizer (validated)."""
        return Task(self.name, self.template, verbalizer, self.description)

    def fingerprint(self) -> dict[str, Any]:
        """JSON-serialisable identity of everything that shapes prompts and scored tokens.

        The verbalizer is a list of ``[label, [words]]`` pairs so that class order
        survives key-sorting serialisers. Name and description are left out.
        """
        return {
            "template": self.template,
            "verbalizer": [[label, list(words)] for label, words in self.verbalizer.items()],
            "label_word_prefix": LABEL_WORD_PREFIX,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (the task file layout); inverse of :meth:`from_dict`."""
        return {
            "name": self.name,
            "description": self.description,
            "template": self.template,
            "verbalizer": {label: list(words) for label, words in self.verbalizer.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        """Build a task from :meth:`to_dict` output or a parsed task file."""
        if not isinstance(data, Mapping):
            raise TaskError(
                f"a task must be a table/object with keys {list(TASK_KEYS)}, "
                f"got {type(data).__name__}"
            )
        unknown = sorted(set(data) - set(TASK_KEYS))
        if unknown:
            raise TaskError(f"unknown task key(s) {unknown}; allowed keys are {list(TASK_KEYS)}")
        missing = [key for key in ("name", "template", "verbalizer") if key not in data]
        if missing:
            raise TaskError(
                f"task is missing required key(s) {missing}; "
                "a task needs name, template and verbalizer"
            )
        return cls(data["name"], data["template"], data["verbalizer"], data.get("description", ""))

    @classmethod
    def from_text(cls, text: str, *, fmt: str, source: str = "<string>") -> Task:
        """Parse a task from TOML or JSON text (``fmt`` is ``"toml"`` or ``"json"``).

        Raises
        ------
        TaskError
            Naming ``source``: invalid syntax, nesting too deep to parse (with the line),
            a number too long to read, a lone UTF-16 surrogate, or an invalid task.
        """
        data = parse_task_text(text, fmt, source)
        try:
            refuse_surrogates(data)
            return cls.from_dict(data)
        except TaskError as exc:
            raise TaskError(f"{source}: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> Task:
        """Read a task from a ``.toml`` or ``.json`` file."""
        path = Path(path)
        fmt = TASK_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise TaskError(
                f"task file {str(path)!r} has unsupported suffix {path.suffix!r}; "
                f"use one of {sorted(TASK_FORMATS)}"
            )
        try:
            with file_errors(path, "task", TaskError):
                text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TaskError(f"task file {str(path)!r} is not valid UTF-8; save as UTF-8") from exc
        return cls.from_text(text, fmt=fmt, source=str(path))

    def save(self, path: str | Path) -> None:
        """Write the task to a ``.json`` file, readable by :meth:`from_file`."""
        path = Path(path)
        if path.suffix.lower() != ".json":
            raise TaskError(
                f"cannot save a task to {str(path)!r}: tasks are saved as JSON; use a '.json' path"
            )
        path.write_text(
            json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )


def _field(example: object, name: str) -> object:
    if isinstance(example, Mapping):
        return example.get(name)
    return getattr(example, name, None)
