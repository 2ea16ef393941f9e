"""The server's tokenizer as an API session asks it (``/extras/tokenize``), with a
bound for servers that have none."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import ProviderConnectionError, ProviderResponseError, ProviderStatusError
from ._batch import bound_tokens
from .http import public_url

__all__ = ["TokenizerAccess"]

# Statuses meaning "no tokenizer endpoint here".
_NO_TOKENIZER = frozenset({400, 404, 405, 422, 501})


class TokenizerAccess:
    """The tokenizer of an :class:`~maas_tune.providers.session.APISession` (a mixin)."""

    max_concurrency: int
    _tokenize_url: str
    _shown_url: str
    _tokenizer: bool | None  # None: not tried yet
    _special_prefix: list[int] | None  # what tokenize adds to any text (BOS)

    def post(self, path: str, payload: dict[str, Any], *, limited: bool = True) -> dict[str, Any]:
        """Send one request (the session's :meth:`~maas_tune.providers.session.APISession.post`)."""
        raise NotImplementedError

    def tokenize(self, text: str) -> list[int] | None:
        """Token ids of ``text`` (no BOS), or None when the server has no tokenizer.

        Some servers (llama.cpp) always prepend BOS: what they return for the empty
        string is learnt once and stripped from every answer.
        """
        if self._special_prefix is None and self._tokenizer is not False:
            raw = self._tokenize_raw("")
            self._special_prefix = raw or []
        tokens = self._tokenize_raw(text)
        prefix = self._special_prefix or []
        if tokens is not None and prefix and tokens[: len(prefix)] == prefix:
            tokens = tokens[len(prefix) :]
        return tokens

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text plus BOS through the server's tokenizer; without one, a
        bound no tokenizer can exceed (:func:`~maas_tune.providers._batch.bound_tokens`:
        UTF-8 bytes plus special tokens), so a prompt-token cap is never passed."""
        if texts and self.tokenize(texts[0]) is not None:
            with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
                # +1: the tokenizer endpoint omits the BOS token that requests add.
                return [len(ids or []) + 1 for ids in pool.map(self.tokenize, texts)]
        return [bound_tokens(t) for t in texts]

    @property
    def has_tokenizer(self) -> bool:
        """Whether the server's tokenizer endpoint answers (asks it once)."""
        if self._tokenizer is None:
            self.tokenize("")
        return bool(self._tokenizer)

    def _tokenize_raw(self, text: str) -> list[int] | None:
        if self._tokenizer is False:
            return None
        try:
            body = self.post(self._tokenize_url, {"input": text}, limited=False)
        except ProviderStatusError as exc:
            if exc.status not in _NO_TOKENIZER:
                raise
            body = {}
        except ProviderConnectionError as exc:  # name the URL the user gave, not ours
            shown = f"POST {public_url(self._tokenize_url)}"
            raise type(exc)(str(exc).replace(shown, f"the API at {self._shown_url}")) from exc
        except ProviderResponseError:  # e.g. an HTML page: not a tokenizer
            body = {}
        tokens = body.get("tokens")
        ok = isinstance(tokens, list) and all(isinstance(t, int) for t in tokens)
        self._tokenizer = ok
        return [int(t) for t in tokens] if ok else None  # type: ignore[union-attr]
