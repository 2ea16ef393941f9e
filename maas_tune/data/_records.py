"""Records of JSON Lines and CSV text, each with its line number; every way a file can be
malformed becomes a :class:`~maas_tune.errors.DataError` naming the line."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .._constants import MAX_RECORD_CHARS
from ..errors import DataError

__all__ = ["LABEL_FIELD", "PAIR_FIELD", "TEXT_FIELD", "records_csv", "records_jsonl"]

#: Fields read from every record; other fields are ignored.
TEXT_FIELD, PAIR_FIELD, LABEL_FIELD = "text", "text_b", "label"


def records_jsonl(text: str, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if text.lstrip().startswith("["):
        raise DataError(
            f"{source}: holds a JSON array; write JSON Lines instead, one object per line"
        )
    # Split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 and others,
    # which may occur raw inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_RECORD_CHARS:
            raise _too_long(source, number, f"the record is {len(line)} characters long")
        record = _parse_line(line, f"{source}, line {number}")
        if not isinstance(record, dict):
            raise DataError(
                f"{source}, line {number}: expected a JSON object like "
                f'{{"text": ..., "label": ...}}, '
                f"got {type(record).__name__}"
            )
        yield number, record


def _parse_line(line: str, where: str) -> Any:
    """One JSON Lines record; every way ``json.loads`` fails becomes a DataError at ``where``."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where}: invalid JSON ({exc.msg}); write one JSON object per line"
        ) from exc
    except RecursionError:  # the parser recurses once per '[' or '{'
        raise DataError(
            f"{where}: JSON nested too deeply to read; a record is a flat object like "
            '{"text": ..., "label": ...}'
        ) from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise DataError(
            f"{where}: invalid JSON (a number with too many digits to read); quote it or remove it"
        ) from exc


def _too_long(source: str, number: int, what: str) -> DataError:
    return DataError(
        f"{source}, line {number}: {what}; the limit is {MAX_RECORD_CHARS} characters "
        "per record (some 32k tokens, more than a prompt holds): "
        "shorten the text or split it into several records"
    )


@contextmanager
def _csv_errors(reader: csv.DictReader[str], source: str) -> Iterator[None]:
    """Turn the csv module's errors (a field past its size limit, ...) into DataError."""
    try:
        yield
    except csv.Error as exc:
        number = reader.line_num + 1  # the line being parsed was not counted yet
        if "field larger than field limit" in str(exc):
            raise _too_long(source, number, "a field is longer than the limit") from exc
        raise DataError(
            f"{source}, line {number}: not valid CSV ({exc}); check the quoting"
        ) from exc


def records_csv(
    text: str, source: str, text_column: str = TEXT_FIELD
) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    with _csv_errors(reader, source):
        header = reader.fieldnames or []
    if text_column not in header:
        advice = (
            f"name the columns {TEXT_FIELD!r}, {LABEL_FIELD!r} and optionally {PAIR_FIELD!r}, "
            "or say which column holds the text (text='COLUMN', --text-column COLUMN)"
            if text_column == TEXT_FIELD
            else "check the column name"
        )
        raise DataError(
            f"{source}, line 1: the CSV header {header} has no {text_column!r} column; {advice}"
        )
    rows = iter(reader)
    while True:
        with _csv_errors(reader, source):
            row = next(rows, None)
        if row is None:
            return
        # An empty optional cell means "absent"; a short row gives None, also absent.
        record = {
            key: value for key, value in row.items() if key is not None and value not in (None, "")
        }
        if row.get(text_column) == "":
            record[text_column] = ""
        yield reader.line_num, record
