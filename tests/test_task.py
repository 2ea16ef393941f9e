"""Tests of maas_tune.task: validation, rendering, files, fingerprint, single-token check."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from maas_tune._constants import LABEL_WORD_PREFIX
from maas_tune.data import Example
from maas_tune.errors import ConfigurationError, TaskError
from maas_tune.providers.tokenizers import check_single_tokens
from maas_tune.task import Task

TEMPLATE = "Review: {text}\nSentiment:"
VERBALIZER = {"negative": ["negative", "bad"], "positive": ["positive"]}


def make(template: str = TEMPLATE, verbalizer: object = None, **kwargs: object) -> Task:
    return Task("sst2", template, VERBALIZER if verbalizer is None else verbalizer, **kwargs)  # type: ignore[arg-type]


def test_properties() -> None:
    task = make()
    assert task.labels == ("negative", "positive")
    assert task.label_words == ("negative", "bad", "positive")
    assert task.word_class == (0, 0, 1)
    assert not task.is_pair
    assert make("{text} / {text_b}:").is_pair
    assert isinstance(task.verbalizer["negative"], tuple)


def test_single_string_word_is_a_one_word_list() -> None:
    assert make(verbalizer={"a": "yes", "b": "no"}).label_words == ("yes", "no")


def test_task_is_immutable_and_verbalizer_is_a_copy() -> None:
    verbalizer = {"negative": ["negative"], "positive": ["positive"]}
    task = make(verbalizer=verbalizer)
    verbalizer["neutral"] = ["neutral"]
    assert task.labels == ("negative", "positive")
    with pytest.raises(AttributeError):
        task.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        task.verbalizer["x"] = ("y",)  # type: ignore[index]


def test_equality_hash_pickle_and_class_order() -> None:
    task = make()
    assert task == make() and hash(task) == hash(make())
    assert pickle.loads(pickle.dumps(task)) == task
    reordered = make(verbalizer={"positive": ["positive"], "negative": ["negative", "bad"]})
    assert reordered != task
    assert "negative" in repr(task)


def test_render_plain_and_mapping() -> None:
    task = make()
    assert task.render(Example("great film", "positive")) == "Review: great film\nSentiment:"
    assert task.render({"text": "great film"}) == "Review: great film\nSentiment:"


@pytest.mark.parametrize("text", ["a {b} c", "{text}", "}{", "{{x}}", "{0} %s {text_b}", "{"])
def test_render_keeps_braces_in_text(text: str) -> None:
    assert make().render({"text": text}) == f"Review: {text}\nSentiment:"


def test_render_pair_and_literal_braces() -> None:
    task = make("{{premise}} {text}\nQ: {text_b} {{yes}}?")
    assert task.render(Example("A {x}", "positive", "B }")) == "{premise} A {x}\nQ: B } {yes}?"
    assert task.render({"text": "t", "text_b": "u"}) == "{premise} t\nQ: u {yes}?"


def test_render_repeated_placeholder() -> None:
    assert make("{text} | {text}:").render({"text": "x"}) == "x | x:"


def test_render_pair_without_text_b() -> None:
    with pytest.raises(TaskError, match="text_b"):
        make("{text} / {text_b}:").render(Example("only one", "positive"))


def test_render_missing_text() -> None:
    with pytest.raises(TaskError, match="'text'"):
        make().render({"txt": "x"})


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("Review: {text_b}\nSentiment:", "no '{text}'"),
        ("Review:", "no '{text}'"),
        ("Review: {{text}}:", "no '{text}'"),
        ("Review: {txt}:", "{txt}"),
        ("Review: {label} {text}:", "{label}"),
        ("Review: {} {text}:", "{}"),
        ("Review: {text} }", "stray '}'"),
        ("Review: {text} {", "unbalanced '{'"),
        ("Review: {te{xt}:", "unbalanced '{'"),
        ("Review: {text}\nSentiment: ", "ends with whitespace"),
    ],
)
def test_template_errors(template: str, fragment: str) -> None:
    with pytest.raises(TaskError) as info:
        make(template)
    assert fragment in str(info.value)


def test_unknown_placeholder_suggests_closest() -> None:
    with pytest.raises(TaskError, match=r"did you mean '\{text\}'"):
        make("Review: {txt}:")
    with pytest.raises(TaskError, match=r"did you mean '\{text_b\}'"):
        make("{text} {textb}:")


def test_brace_errors_say_how_to_write_literals() -> None:
    with pytest.raises(TaskError, match=r"'\}\}'"):
        make("{text} }:")
    with pytest.raises(TaskError, match=r"'\{\{'"):
        make("{text} {:")


def test_task_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        make("no placeholder")


@pytest.mark.parametrize(
    ("verbalizer", "fragments"),
    [
        ({}, ["0 label(s)", "at least two"]),
        ({"only": ["word"]}, ["1 label(s)", "at least two"]),
        ({"": ["x"], "b": ["y"]}, ["empty", "label name"]),
        ({"a": [], "b": ["y"]}, ["'a'", "no label words"]),
        ({"a": ["x"], "b": [""]}, ["'b'", "empty or whitespace-only"]),
        ({"a": ["x"], "b": ["  "]}, ["'b'", "empty or whitespace-only"]),
        ({"a": ["good"], "b": ["good"]}, ["'good'", "'a'", "'b'"]),
        ({"a": ["x", "x"], "b": ["y"]}, ["'x'", "twice"]),
        ({"a": [" good"], "b": ["bad"]}, ["' good'", "whitespace", "added automatically"]),
        ({"a": ["good "], "b": ["bad"]}, ["'good '", "whitespace", "added automatically"]),
        ({"a": [1], "b": ["bad"]}, ["'a'", "strings"]),
        (["a", "b"], ["verbalizer must map"]),
    ],
)
def test_verbalizer_errors(verbalizer: object, fragments: list[str]) -> None:
    with pytest.raises(TaskError) as info:
        make(verbalizer=verbalizer)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_duplicate_label_in_json_file(tmp_path: Path) -> None:
    path = tmp_path / "task.json"
    path.write_text(
        '{"name": "t", "template": "{text}:", "verbalizer": {"a": ["x"], "a": ["y"], "b": ["z"]}}',
        encoding="utf-8",
    )
    with pytest.raises(TaskError, match=r"task\.json.*'a'"):
        Task.from_file(path)


def test_duplicate_label_in_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "task.toml"
    path.write_text(
        'name = "t"\ntemplate = "{text}:"\n[verbalizer]\na = ["x"]\na = ["y"]\n', encoding="utf-8"
    )
    with pytest.raises(TaskError, match=r"task\.toml"):
        Task.from_file(path)


def test_name_must_be_non_empty() -> None:
    with pytest.raises(TaskError, match="name"):
        Task("", TEMPLATE, VERBALIZER)


def test_with_template_and_with_verbalizer() -> None:
    task = make(description="d")
    other = task.with_template("Text: {text}\nLabel:")
    assert other.template == "Text: {text}\nLabel:" and other.verbalizer == task.verbalizer
    assert other.description == "d"
    assert task.with_verbalizer({"bad": "no", "good": "yes"}).labels == ("bad", "good")
    with pytest.raises(TaskError):
        task.with_template("{txt}")


def test_fingerprint_covers_prompt_inputs_only() -> None:
    task = make()
    fingerprint = task.fingerprint()
    assert fingerprint == {
        "template": TEMPLATE,
        "verbalizer": [["negative", ["negative", "bad"]], ["positive", ["positive"]]],
        "label_word_prefix": LABEL_WORD_PREFIX,
    }
    json.dumps(fingerprint)
    assert Task("other", TEMPLATE, VERBALIZER, "text").fingerprint() == fingerprint
    assert task.with_template("R: {text}\nS:").fingerprint() != fingerprint
    assert (
        task.with_verbalizer({"negative": "bad", "positive": "positive"}).fingerprint()
        != fingerprint
    )


def test_dict_round_trip() -> None:
    task = make(description="movie reviews")
    assert Task.from_dict(task.to_dict()) == task
    assert list(task.to_dict()["verbalizer"]) == ["negative", "positive"]


def test_from_dict_errors() -> None:
    with pytest.raises(TaskError, match="'templte'"):
        Task.from_dict({"name": "t", "templte": "{text}:", "verbalizer": VERBALIZER})
    with pytest.raises(TaskError, match="'template'"):
        Task.from_dict({"name": "t", "verbalizer": VERBALIZER})
    with pytest.raises(TaskError, match="list"):
        Task.from_dict(["not", "a", "table"])  # type: ignore[arg-type]


def test_json_file_round_trip(tmp_path: Path) -> None:
    task = make("{{x}} {text} \u00e9 {text_b}:", description='quotes " and \\ and \u00e9')
    path = tmp_path / "task.json"
    task.save(path)
    assert Task.from_file(path) == task


def test_toml_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "task.toml"
    path.write_text(
        'name = "sst2"\ndescription = "movie reviews"\ntemplate = "Review: {text}\\nSentiment:"\n\n'
        '[verbalizer]\nnegative = ["negative", "bad"]\npositive = ["positive"]\n',
        encoding="utf-8",
    )
    task = Task.from_file(path)
    assert task == make(description="movie reviews")
    task.save(tmp_path / "copy.json")
    assert Task.from_file(tmp_path / "copy.json") == task


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"'\.yaml'"):
        Task.from_file(tmp_path / "task.yaml")
    with pytest.raises(TaskError, match="does not exist"):
        Task.from_file(tmp_path / "missing.toml")
    with pytest.raises(TaskError, match="JSON"):
        make().save(tmp_path / "task.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "t\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"bad\.toml"):
        Task.from_file(bad)
    invalid = tmp_path / "invalid.json"
    invalid.write_text(
        '{"name": "t", "template": "{txt}", "verbalizer": {"a": "x", "b": "y"}}', encoding="utf-8"
    )
    with pytest.raises(TaskError, match=r"invalid\.json.*\{txt\}"):
        Task.from_file(invalid)


def fake_tokenize(text: str) -> list[str]:
    """Whitespace-prefixed words of up to 5 characters are one token; longer ones split."""
    assert text.startswith(LABEL_WORD_PREFIX)
    word = "\u2581" + text[len(LABEL_WORD_PREFIX) :]
    return [word[i : i + 6] for i in range(0, len(word), 6)]


def test_check_single_tokens_passes() -> None:
    check_single_tokens(["good", "bad", "great"], fake_tokenize)


def test_check_single_tokens_lists_every_offender() -> None:
    with pytest.raises(TaskError) as info:
        check_single_tokens(["good", "terrific", "awesome"], fake_tokenize)
    message = str(info.value)
    assert "label word 'terrific' is 2 tokens for this model (['\u2581terri', 'fic'])" in message
    assert "'awesome'" in message and "'good'" not in message
    assert "choose a single-token word" in message


def test_check_single_tokens_zero_tokens() -> None:
    with pytest.raises(TaskError, match="'x' is 0 tokens"):
        check_single_tokens(["x"], lambda text: [])
