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

from .._constants import LABEL_WORD_PREFIX
from ..errors import ConfigurationError, MissingDependencyError, TaskError

__all__ = ["TIKTOKEN_PREFIX", "Tokenizer", "check_single_tokens", "load_tokenizer"]

#: Maps a text to its token ids, without special tokens.
Tokenizer = Callable[[str], Sequence[int]]
#: Prefix of a tiktoken spec.
TIKTOKEN_PREFIX = "tiktoken:"
_FORMS = (
    "tiktoken:NAME (an encoding or an OpenAI model name), a directory holding a "
    "Hugging Face tokenizer, or 'embedded'"
)


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
        return _tiktoken(spec[len(TIKTOKEN_PREFIX) :])
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


def check_single_tokens(
    words: Sequence[str], tokenize: Callable[[str], list[str]], prefix: str = LABEL_WORD_PREFIX
) -> None:
    """Check that every label word is exactly one token as it follows the prompt.

    Parameters
    ----------
    words : sequence of str
        Label words without prefix (e.g. ``task.label_words``).
    tokenize : callable
        Maps a string to its token strings, without special tokens (no BOS).
        It is called on ``prefix + word``.
    prefix : str, default " "
        What precedes the word: a space after a completions prompt, often nothing at
        the start of a chat answer.

    Raises
    ------
    TaskError
        Naming every word that is not a single token, with its tokenization.
    """
    problems = []
    for word in words:
        tokens = list(tokenize(prefix + word))
        if len(tokens) != 1:
            problems.append(
                f"label word {word!r} is {len(tokens)} tokens for this model ({tokens!r})"
            )
    if problems:
        raise TaskError("; ".join(problems) + "; choose a single-token word")
