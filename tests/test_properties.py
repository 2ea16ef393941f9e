"""Property-based tests (hypothesis): the template renderer and the data loader, on any
text and any bytes, are correct or refuse with a maas-tune error (see test_bad_input.py for
the catalogue of single bad inputs)."""

from __future__ import annotations

import csv
import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maas_tune.data import Example, parse_examples
from maas_tune.errors import DataError, TaskError
from maas_tune.task import Task
from maas_tune.task._template import Slot

WORDS = {"pos": ["positive"], "neg": ["negative"]}
LABELS = ["pos", "neg"]
#: Hypothesis examples per property (the properties are cheap: a few seconds in all).
PROPERTY_EXAMPLES = 300
PROPERTIES = settings(
    max_examples=PROPERTY_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- property-based: the template renderer ------------------------------------------------
_values = st.text(max_size=40)
_segments = st.lists(
    st.one_of(_values, st.sampled_from([Slot("text"), Slot("text_b")])), max_size=8
)


def _escape(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


@given(segments=_segments, text=_values, text_b=_values)
@PROPERTIES
def test_rendering_puts_the_texts_verbatim_between_the_unescaped_literals(
    segments: list[str | Slot], text: str, text_b: str
) -> None:
    segments = [*segments, Slot("text"), "Label:"]  # {text} present, no trailing space
    template = "".join(f"{{{s.name}}}" if isinstance(s, Slot) else _escape(s) for s in segments)
    task = Task("t", template, WORDS)
    values = {"text": text, "text_b": text_b}
    expected = "".join(values[s.name] if isinstance(s, Slot) else s for s in segments)
    assert task.render(Example(text=text, label=None, text_b=text_b)) == expected
    assert task.is_pair == (Slot("text_b") in segments)


@given(template=st.text(alphabet=st.sampled_from("{}text_b :\nRé"), max_size=30) | st.text())
@PROPERTIES
def test_any_template_is_accepted_or_refused_with_a_task_error(template: str) -> None:
    try:
        task = Task("t", template, WORDS)
    except TaskError as exc:
        assert str(exc)  # refused, with a message
        return
    assert "{text}" in template  # accepted only with the placeholder
    prompt = task.render(Example(text="{x} }{", label=None, text_b="{y}"))
    assert "{x} }{" in prompt


# -- property-based: the data loader --------------------------------------------------------
_records = st.lists(
    st.tuples(
        st.text(max_size=30), st.sampled_from(LABELS), st.none() | st.text(min_size=1, max_size=30)
    ),
    min_size=1,
    max_size=6,
)


def _as_examples(records: list[tuple[str, str, str | None]]) -> list[Example]:
    return [Example(text=t, label=label, text_b=b) for t, label, b in records]


@given(records=_records, ascii_only=st.booleans())
@PROPERTIES
def test_any_json_lines_file_round_trips(
    records: list[tuple[str, str, str | None]], ascii_only: bool
) -> None:
    lines = [
        json.dumps(
            {"text": t, "label": label, **({"text_b": b} if b is not None else {})},
            ensure_ascii=ascii_only,
        )
        for t, label, b in records
    ]
    raw = "\n".join(lines).encode("utf-8")
    assert parse_examples(raw, fmt="jsonl", labels=LABELS) == _as_examples(records)


@given(records=_records)
@PROPERTIES
def test_any_csv_file_round_trips(records: list[tuple[str, str, str | None]]) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["text", "label", "text_b"])
    writer.writerows([t, label, "" if b is None else b] for t, label, b in records)
    raw = out.getvalue().encode("utf-8")
    assert parse_examples(raw, fmt="csv", labels=LABELS) == _as_examples(records)


@given(
    raw=st.binary(max_size=300) | st.text(max_size=200).map(str.encode),
    fmt=st.sampled_from(["jsonl", "csv"]),
)
@PROPERTIES
def test_any_bytes_load_or_give_a_data_error(raw: bytes, fmt: str) -> None:
    try:
        examples = parse_examples(raw, fmt=fmt, labels=LABELS, require_label=False)
    except DataError as exc:
        assert "<bytes>" in str(exc)  # names the source
        return
    assert examples and all(isinstance(e.text, str) for e in examples)
    assert all(e.label is None or e.label in LABELS for e in examples)
