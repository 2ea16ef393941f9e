"""Local tokenizers for APIs that have no tokenizer endpoint (OpenAI and most hosts).

A tokenizer gives the label words' token ids, which ``logit_bias`` needs to force a word
outside the top-k (exact scores), and exact prompt-token counts for the budget. Specs:

- ``"tiktoken:NAME"`` — OpenAI models: an encoding (``o200k_base``) or a model name
  (``gpt-4o-mini``); needs ``tiktoken`` (``pip install 'maas-tune[hosted]'``), which
  reads its BPE files from ``$TIKTOKEN_CACHE_DIR`` when offline;
- a directory holding a Hugging Face tokenizer (``tokenizer.json`` …), the served
  model's own;
- ``"embedded"`` — the tokenizer of the embedded Gemma 3 270M (for ``maas-tune serve``
  behind a strict proxy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, MissingDependencyError

__all__ = ["TIKTOKEN_PREFIX", "Tokenizer", "load_tokenizer"]

#: Maps a text to its token ids, without special tokens.
Tokenizer = Callable[[str], Sequence[int]]
#: Prefix of a tiktoken spec.
TIKTOKEN_PREFIX = "tiktoken:"
_FORMS = ("tiktoken:NAME (an encoding or an OpenAI model name), a directory holding a "
          "Hugging Face tokenizer, or 'embedded'")


def load_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer ``spec`` names (see the module docstring).

    Raises
    ------
    ConfigurationError
        ``spec`` names nothing loadable; the message lists the accepted forms.
    MissingDependencyError
        The library it needs is not installed (with the ``pip install`` hint).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigurationError(f"a tokenizer spec must be one of: {_FORMS}; got {spec!r}")
    spec = spec.strip()
    if spec.startswith(TIKTOKEN_PREFIX):
        return _tiktoken(spec[len(TIKTOKEN_PREFIX):])
    if spec == "embedded":
        from .._constants import DEFAULT_MODEL_NAME
        from ._model_files import resolve_model

        return _huggingface(resolve_model(DEFAULT_MODEL_NAME).directory, spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _huggingface(path, spec)
    raise ConfigurationError(f"--tokenizer {spec!r} is none of: {_FORMS}")


def _tiktoken(name: str) -> Tokenizer:
    try:
        import tiktoken
    except ImportError as exc:
        raise MissingDependencyError("tiktoken", "hosted") from exc
    try:
        encoding = _encoding(tiktoken, name)
    except (KeyError, ValueError) as exc:
        raise ConfigurationError(
            f"tiktoken knows no encoding or model named {name!r}; use e.g. "
            "'tiktoken:o200k_base' or 'tiktoken:gpt-4o-mini'"
        ) from exc
    except OSError as exc:  # the BPE file is downloaded on first use
        raise ConfigurationError(
            f"tiktoken could not load {name!r} ({type(exc).__name__}); it downloads its BPE "
            "file once: run it online once, or point $TIKTOKEN_CACHE_DIR at a folder holding it"
        ) from exc
    return lambda text: encoding.encode(text, disallowed_special=())


def _encoding(tiktoken: Any, name: str) -> Any:
    try:
        return tiktoken.encoding_for_model(name)
    except KeyError:
        return tiktoken.get_encoding(name)


def _huggingface(path: Path, spec: str) -> Tokenizer:
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError("transformers", "local") from exc
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"--tokenizer {spec!r}: no Hugging Face tokenizer could be loaded from {path} "
            f"({type(exc).__name__}); the directory needs tokenizer.json or the files of "
            "the served model's tokenizer"
        ) from exc
    return lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])
