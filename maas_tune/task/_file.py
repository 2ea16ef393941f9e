"""Reading task files: TOML or JSON text parsed into plain data, every way a parser can fail
(syntax, nesting too deep, numbers too long, lone UTF-16 surrogates) turned into a TaskError
that names the file."""

from __future__ import annotations

import json
import sys
from typing import Any

from ..errors import TaskError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["parse_task_text", "refuse_surrogates"]


def parse_task_text(text: str, fmt: str, source: str) -> Any:
    """The parsed TOML or JSON; every way the parser fails becomes a TaskError naming ``source``."""
    try:
        if fmt == "toml":
            return tomllib.loads(text)
        if fmt == "json":
            return json.loads(text, object_pairs_hook=_no_duplicate_keys)
        raise TaskError(f"unknown task format {fmt!r}; use 'toml' or 'json'")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise TaskError(f"{source}: invalid {fmt.upper()}: {exc}; fix the syntax") from exc
    except RecursionError:  # both parsers recurse once per '[' or '{'
        depth, line = _deepest(text, fmt)
        raise TaskError(
            f"{source}, line {line}: invalid {fmt.upper()}: nested {depth} levels deep, too deep "
            "to read; a task needs two levels (the verbalizer's table of word lists)"
        ) from None
    except TaskError as exc:
        raise TaskError(f"{source}: {exc}") from exc
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise TaskError(
            f"{source}: invalid {fmt.upper()}: a number with too many digits to read; remove it"
        ) from exc


def _deepest(text: str, fmt: str) -> tuple[int, int]:
    """(deepest bracket nesting, first line where it is reached), skipping strings and, in
    TOML, comments and literal strings. Only locates an error the parser already found."""
    quotes = "\"'" if fmt == "toml" else '"'
    depth = best = 0
    line = best_line = 1
    quote, escaped, comment = "", False, False
    for char in text:
        if char == "\n":
            line, comment = line + 1, False
        elif comment or escaped:
            escaped = False
        elif quote:
            escaped = char == "\\" and quote == '"'
            quote = "" if char == quote else quote
        elif char in quotes:
            quote = char
        elif char == "#" and fmt == "toml":
            comment = True
        elif char in "[{":
            depth += 1
            if depth > best:
                best, best_line = depth, line
        elif char in "]}":
            depth -= 1
    return best, best_line


def refuse_surrogates(data: Any) -> None:
    """Refuse a lone UTF-16 surrogate (a JSON escape like "\\ud800"): it is not a character,
    and every prompt, cache key or output built from it would fail to encode as UTF-8.

    Iterative: parsed data may be nested nearly as deep as the recursion limit.
    """
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            bad = next((c for c in value if "\ud800" <= c <= "\udfff"), None)
            if bad is not None:
                raise TaskError(
                    f"{path or 'the document'} holds a lone UTF-16 surrogate \\u{ord(bad):04x}, which "
                    "is not a character; fix the escape (a surrogate pair is fine) or remove it"
                )
        elif isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
            stack.extend((f"a key of {path}" if path else "a key", k) for k in value)
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads silently keeps the last of two equal keys; a repeated label is a mistake.
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise TaskError(
            f"key(s) {duplicates} appear twice in one JSON object (a duplicate label?); keep one"
        )
    return dict(pairs)
