"""Prompt templates: parsing ``{text}`` / ``{text_b}`` placeholders with strict brace checks."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TypeAlias

from .._constants import LABEL_WORD_PREFIX
from ..errors import TaskError

__all__ = ["PLACEHOLDERS", "Segment", "Slot", "parse_template", "validate_template"]

#: Placeholders a template may use; ``{text}`` is required.
PLACEHOLDERS = ("text", "text_b")


@dataclass(frozen=True)
class Slot:
    """A placeholder in a parsed template."""

    name: str


# A parsed template: literal text alternating with placeholders.
Segment: TypeAlias = str | Slot


def parse_template(template: str) -> tuple[Segment, ...]:
    """Split a template into literal text and placeholders, validating every brace."""
    segments: list[Segment] = []
    literal: list[str] = []
    i = 0
    while i < len(template):
        char = template[i]
        if char in "{}" and template[i + 1 : i + 2] == char:
            literal.append(char)  # an escaped literal brace: '{{' or '}}'
            i += 2
        elif char == "}":
            raise TaskError(
                f"template has a stray '}}' at position {i}: {template!r}; "
                "write '}}' for a literal closing brace"
            )
        elif char == "{":
            end = template.find("}", i + 1)
            inner = template[i + 1 : end] if end != -1 else ""
            if end == -1 or "{" in inner:
                raise TaskError(
                    f"template has an unbalanced '{{' at position {i}: {template!r}; "
                    "close the placeholder with '}' or write '{{' for a literal opening brace"
                )
            if inner not in PLACEHOLDERS:
                close = difflib.get_close_matches(
                    inner.strip().lower(), PLACEHOLDERS, n=1, cutoff=0.5
                )
                raise TaskError(
                    f"template has an unknown placeholder '{{{inner}}}'; "
                    + (f"did you mean '{{{close[0]}}}'? " if close else "")
                    + "valid placeholders are '{text}' and '{text_b}'; "
                    + "write '{{' and '}}' for literal braces"
                )
            segments.extend(["".join(literal), Slot(inner)])
            literal = []
            i = end + 1
        else:
            literal.append(char)
            i += 1
    segments.append("".join(literal))
    return tuple(s for s in segments if s != "")


def validate_template(template: object) -> tuple[Segment, ...]:
    if not isinstance(template, str):
        raise TaskError(
            f"template must be a string, got {type(template).__name__}; write the prompt as "
            "text with '{text}' where the input goes"
        )
    if not template.strip():
        raise TaskError(
            "template is empty; write a prompt containing '{text}', "
            "e.g. 'Review: {text}\\nSentiment:'"
        )
    segments = parse_template(template)
    if Slot("text") not in segments:
        raise TaskError(
            f"template {template!r} has no '{{text}}' placeholder; "
            "add '{text}' where the input goes"
        )
    if template[-1].isspace():
        raise TaskError(
            f"template {template!r} ends with whitespace; remove it: label words are appended "
            f"with the prefix {LABEL_WORD_PREFIX!r} automatically"
        )
    return segments
