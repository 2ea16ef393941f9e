"""In-memory data in the shapes users have: pandas DataFrames, Hugging Face datasets, records.

:func:`as_examples` turns a ``pandas.DataFrame``, a ``datasets.Dataset``, a list of dicts, a
list of strings or a 1-D array of strings into :class:`~maas_tune.data.Example` objects, and
refuses anything else with one :class:`~maas_tune.errors.DataError` naming what was given.

Which column holds what is said the way SetFit says it, ``column_mapping={"review": "text",
"stars": "label"}`` (data column -> maas-tune field), or with one keyword per field,
``text="review", label="stars"``. Neither pandas nor ``datasets`` is imported here: an object
can only be one of their types if the user's program already imported the library.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

from .data import LABEL_FIELD, PAIR_FIELD, TEXT_FIELD, Example, _to_example
from .errors import ConfigurationError, DataError, MissingDependencyError

__all__ = ["Columns", "as_examples", "load_table", "resolve_columns"]

#: The fields of an :class:`Example` a column can be mapped to.
FIELDS = (TEXT_FIELD, PAIR_FIELD, LABEL_FIELD)
#: What every refusal says to pass instead.
ACCEPTED = (
    "pass a pandas DataFrame, a datasets.Dataset, a list of dicts, a list of str or a list of "
    "Example"
)


class Columns(NamedTuple):
    """The data column of each field, and which of them the user named explicitly."""

    text: str = TEXT_FIELD
    text_b: str = PAIR_FIELD
    label: str = LABEL_FIELD
    explicit: frozenset[str] = frozenset()

    def of(self, field: str) -> str:
        """The column that holds ``field``."""
        return str(getattr(self, field))

    def renamed(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        """A file's ``record`` keyed by field instead of by its own column names."""
        if self.text not in record:
            raise DataError(f"{where}: missing field {self.text!r} (the text); every record "
                            f"needs {self.text!r}")  # fmt: skip
        return {field: record[self.of(field)] for field in FIELDS if self.of(field) in record}


def resolve_columns(
    *,
    text: str | None = None,
    text_b: str | None = None,
    label: str | None = None,
    column_mapping: Mapping[str, str] | None = None,
) -> Columns:
    """The column of each field from keywords and/or a SetFit-style ``column_mapping``.

    Raises
    ------
    ConfigurationError
        A mapping target that is not a field, a field mapped twice, or a non-str name.
    """
    chosen: dict[str, str] = {}
    for column, field in (column_mapping or {}).items():
        if field not in FIELDS:
            raise ConfigurationError(
                f"column_mapping maps {column!r} to {field!r}, which is not a field; map data "
                f"columns to {list(FIELDS)}, e.g. column_mapping={{'review': 'text'}}"
            )
        if field in chosen:
            raise ConfigurationError(
                f"column_mapping maps both {chosen[field]!r} and {column!r} to {field!r}; "
                "map one column to each field"
            )
        chosen[field] = column
    for field, named in ((TEXT_FIELD, text), (PAIR_FIELD, text_b), (LABEL_FIELD, label)):
        if named is None:
            continue
        if field in chosen and chosen[field] != named:
            raise ConfigurationError(
                f"{field}={named!r} contradicts column_mapping, which maps {chosen[field]!r} "
                f"to {field!r}; give the column once"
            )
        chosen[field] = named
    for field, column in chosen.items():
        if not isinstance(column, str) or not column:
            raise ConfigurationError(
                f"the column of {field!r} must be a non-empty column name (str), got {column!r}"
            )
    return Columns(**chosen, explicit=frozenset(chosen))


def as_examples(
    data: Any,
    *,
    text: str | None = None,
    text_b: str | None = None,
    label: str | None = None,
    column_mapping: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
    require_label: bool = False,
) -> list[Example]:
    """Examples from a DataFrame, a Hugging Face Dataset, records, texts or Examples.

    Parameters
    ----------
    data : pandas.DataFrame, datasets.Dataset, pandas.Series or 1-D numpy array of str, or a
        list of dict / str / Example
        Rows to score. Strings are unlabelled texts; Examples are taken as they are.
    text, text_b, label : str, optional
        The column (or record key) holding each field; default ``"text"``, ``"text_b"``,
        ``"label"``.
    column_mapping : mapping of str to str, optional
        SetFit's spelling of the same: data column -> field, e.g.
        ``{"review": "text", "stars": "label"}``.
    labels : sequence of str, optional
        Allowed label names; another label is an error.
    require_label : bool, default False
        Whether every row needs a label.

    Returns
    -------
    list of Example
        In row order.

    Raises
    ------
    DataError
        For an unsupported type (a bare str, a dict, a DatasetDict, an array of numbers...),
        a missing text column, or a bad value, naming the row and column.
    """
    columns = resolve_columns(text=text, text_b=text_b, label=label, column_mapping=column_mapping)
    table = _table(data)
    if table is not None:
        return _from_table(table, columns, labels, require_label)
    _refuse_scalars(data)
    return [_from_item(item, i, columns, labels, require_label) for i, item in enumerate(data)]


def load_table(
    data: Any, *, labels: Sequence[str] | None = None, require_label: bool = True, **columns: Any
) -> list[Example]:
    """What :func:`maas_tune.data.load_examples` does for a ``.parquet`` path or an in-memory
    table: :func:`as_examples`, refusing a table without rows."""
    source = str(data) if isinstance(data, (str, Path)) else type(data).__name__
    if isinstance(data, (str, Path)):
        data = read_parquet(Path(data))
    examples = as_examples(data, labels=labels, require_label=require_label, **columns)
    if not examples:
        raise DataError(f"{source}: holds no rows; add examples")
    return examples


def read_parquet(path: Path) -> list[dict[str, Any]]:
    """The rows of a Parquet file as dicts (pyarrow, imported only here).

    Raises
    ------
    MissingDependencyError
        Without pyarrow, with the ``pip install`` line.
    DataError
        A missing file or one that is not Parquet.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("pyarrow", "frames") from None
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist or is not a file; check the path")
    try:
        return cast("list[dict[str, Any]]", pq.read_table(path).to_pylist())
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(
            f"{str(path)!r}: cannot read it as Parquet ({exc}); check that it is a Parquet file"
        ) from exc


# -- tables: DataFrame and datasets.Dataset -----------------------------------------------
class _Table(NamedTuple):
    kind: str
    column_names: list[str]
    values: Any  # column name -> list of Python values
    decode: dict[str, Any]  # column name -> int -> label name (datasets.ClassLabel)


def _table(data: Any) -> _Table | None:
    """``data`` as named columns if it is a DataFrame or a Dataset, else None."""
    pandas: Any = sys.modules.get("pandas")
    if pandas is not None and isinstance(data, pandas.DataFrame):
        lookup = {str(c): c for c in data.columns}  # names shown and mapped as str
        return _Table("DataFrame", list(lookup), lambda c: data[lookup[c]].tolist(), {})
    hf: Any = sys.modules.get("datasets")
    if hf is not None and isinstance(data, hf.Dataset):
        decode = {
            name: feature.int2str
            for name, feature in data.features.items()
            if isinstance(feature, hf.ClassLabel)
        }
        return _Table("Dataset", list(data.column_names), lambda c: list(data[c]), decode)
    return None


def _from_table(
    table: _Table, columns: Columns, labels: Sequence[str] | None, require_label: bool
) -> list[Example]:
    present: dict[str, str] = {}
    for field in FIELDS:
        column = columns.of(field)
        if column in table.column_names:
            present[field] = column
        elif (
            field == TEXT_FIELD
            or field in columns.explicit
            or (field == LABEL_FIELD and require_label)
        ):
            raise DataError(
                f"the {table.kind} has no column {column!r} for the {field} (its columns: "
                f"{table.column_names}); name it with {field}='COLUMN' or "
                f"column_mapping={{'COLUMN': '{field}'}}"
            )
    values = {field: table.values(column) for field, column in present.items()}
    for field, column in present.items():
        if column in table.decode:  # a ClassLabel column holds class indices
            values[field] = [_decoded(v, table.decode[column]) for v in values[field]]
    n = len(values[TEXT_FIELD])
    return [
        _checked({f: _missing_to_none(values[f][i]) for f in present}, f"row {i}", columns,
                 labels, require_label)
        for i in range(n)
    ]  # fmt: skip


def _decoded(value: Any, int2str: Any) -> Any:
    return int2str(value) if isinstance(value, int) and value >= 0 else value


def _missing_to_none(value: Any) -> Any:
    """pandas' missing values (NaN, None, pd.NA, NaT) as None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return None if type(value).__name__ in ("NAType", "NaTType") else value


# -- iterables of items -------------------------------------------------------------------
def _refuse_scalars(data: Any) -> None:
    """Refuse what iterates into the wrong things: a str (characters), a dict (its keys), a
    DatasetDict (split names), an array of numbers; and what does not iterate at all."""
    given = f"{type(data).__module__}.{type(data).__qualname__}".removeprefix("builtins.")
    if isinstance(data, (str, bytes)):
        raise DataError(f"got a single {given}, not a collection of rows; {ACCEPTED} "
                        "(one text: [text])")  # fmt: skip
    if type(data).__name__ in ("DatasetDict", "IterableDatasetDict"):
        raise DataError(f"got a {given} of splits {list(data)}; pass one split, "
                        f"e.g. data[{next(iter(data), 'train')!r}]")  # fmt: skip
    if isinstance(data, Mapping):
        raise DataError(
            f"got a {given}; {ACCEPTED} (a dict of columns: pandas.DataFrame(data) or "
            "datasets.Dataset.from_dict(data); one record: [record])"
        )
    dtype = getattr(data, "dtype", None)
    if dtype is not None and (getattr(data, "ndim", 1) != 1 or dtype.kind not in "OUS"):
        raise DataError(
            f"got a {given} of {dtype} with shape {getattr(data, 'shape', '?')}; "
            f"{ACCEPTED} (an array must be 1-D and hold str)"
        )
    if not isinstance(data, Iterable):
        raise DataError(f"got a value of type {given}, which holds no rows; {ACCEPTED}")


def _from_item(
    item: Any, i: int, columns: Columns, labels: Sequence[str] | None, require_label: bool
) -> Example:
    where = f"item {i}"
    if isinstance(item, Example):
        if require_label and item.label is None:
            raise DataError(f"{where}: the Example has no label; every example needs one")
        return _to_example(
            {TEXT_FIELD: item.text, PAIR_FIELD: item.text_b, LABEL_FIELD: item.label},
            where, labels, require_label,
        )  # fmt: skip
    if isinstance(item, str):
        return _checked({TEXT_FIELD: item}, where, columns, labels, require_label)
    if isinstance(item, Mapping):
        if TEXT_FIELD not in columns.explicit and TEXT_FIELD not in item and len(item) > 0:
            keys = list(item)[:10]
            raise DataError(
                f"{where}: the record has no key {TEXT_FIELD!r} (its keys: {keys}); name the "
                "text's key with text='KEY' or column_mapping={'KEY': 'text'}"
            )
        record = {field: item.get(columns.of(field)) for field in FIELDS}
        return _checked(record, where, columns, labels, require_label)
    raise DataError(
        f"{where} is a {type(item).__qualname__} ({_excerpt(item)}); each item must be a "
        "dict, a str or an Example; " + ACCEPTED
    )


def _checked(
    record: dict[str, Any],
    where: str,
    columns: Columns,
    labels: Sequence[str] | None,
    require_label: bool,
) -> Example:
    """The Example of one row, naming the data's own column in every complaint."""
    for field, value in record.items():
        if value is not None and not isinstance(value, str):
            advice = (
                f"map them to the task's label names first, e.g. "
                f"df[{columns.of(field)!r}].map({{0: 'negative', 1: 'positive'}})"
                if field == LABEL_FIELD
                else "convert it to str"
            )
            raise DataError(
                f"{where}: column {columns.of(field)!r} ({field}) holds "
                f"{type(value).__name__} {_excerpt(value)}, not a str; {advice}"
            )
    if record.get(TEXT_FIELD) is None:
        raise DataError(f"{where}: column {columns.of(TEXT_FIELD)!r} (text) is missing or empty "
                        "(None/NaN); every row needs a text")  # fmt: skip
    if require_label and record.get(LABEL_FIELD) is None:
        raise DataError(f"{where}: column {columns.of(LABEL_FIELD)!r} (label) is missing "
                        "(None/NaN); every row needs a label here")  # fmt: skip
    plain = {field: None if value is None else str(value) for field, value in record.items()}
    return _to_example(plain, where, labels, require_label)  # numpy.str_ -> str, as the files


def _excerpt(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:50] + "..."
