"""--tokenizer specs: tiktoken encodings and models, a Hugging Face directory, the embedded one."""

from __future__ import annotations

import sys

import pytest

from maas_tune.errors import ConfigurationError, MissingDependencyError
from maas_tune.providers import load_tokenizer


@pytest.fixture()
def byte_encoding(monkeypatch):
    """A real tiktoken Encoding (byte-level ranks, no download) under the name 'toy'."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {bytes([i]): i for i in range(256)} | {b" positive": 256}
    toy = tiktoken.Encoding(
        "toy", pat_str=r"\s?\S+|\s+", mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 300}
    )
    real = tiktoken.get_encoding

    def get_encoding(name: str):
        return toy if name == "toy" else real(name)

    monkeypatch.setattr(tiktoken, "get_encoding", get_encoding)
    return toy


def test_a_tiktoken_encoding_by_name(byte_encoding):
    encode = load_tokenizer("tiktoken:toy")
    assert encode(" positive") == [256]  # one token: forcible with logit_bias
    assert encode("<|endoftext|>") == byte_encoding.encode("<|endoftext|>", disallowed_special=())


def test_an_unknown_tiktoken_name_says_what_to_pass(byte_encoding):
    with pytest.raises(ConfigurationError, match="tiktoken knows no encoding or model named"):
        load_tokenizer("tiktoken:no-such-encoding")


@pytest.mark.model
def test_a_hugging_face_directory_and_the_embedded_tokenizer(gemma):
    from maas_tune._constants import DEFAULT_MODEL_NAME
    from maas_tune.providers._model_files import resolve_model

    directory = resolve_model(DEFAULT_MODEL_NAME).directory
    for spec in (str(directory), "embedded"):
        encode = load_tokenizer(spec)
        assert (
            list(encode(" positive"))
            == gemma.tokenizer(" positive", add_special_tokens=False)["input_ids"]
        )


@pytest.mark.parametrize("spec", ["", "nowhere/at/all", "tiktok:x"])
def test_anything_else_lists_the_accepted_forms(spec):
    with pytest.raises(ConfigurationError, match="tiktoken:NAME"):
        load_tokenizer(spec)


def test_missing_tiktoken_names_the_package_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # `import tiktoken` now fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'maas-tune\[hosted\]'") as err:
        load_tokenizer("tiktoken:o200k_base")
    assert err.value.package == "tiktoken"


def test_missing_transformers_names_the_package_and_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'maas-tune\[local\]'") as err:
        load_tokenizer(str(tmp_path))
    assert err.value.package == "transformers"
