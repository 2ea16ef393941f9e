"""load_tokenizer: a missing optional library is a MissingDependencyError with the install line."""

from __future__ import annotations

import sys

import pytest

from maas_tune.errors import MissingDependencyError
from maas_tune.providers.tokenizers import load_tokenizer


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
