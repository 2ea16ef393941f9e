"""A cheap, deterministic stand-in for the server's :class:`Engine`, for tests of the HTTP layer.

It answers every route of ``maas-tune serve`` (scoring, echo, generation, tokenizing)
without a model, in microseconds, so that floods, disconnects, kill -9 and schemathesis
can run in seconds. Served from a process of its own::

    python -m tests._fake_engine PORT [--log FILE] [--delay SECONDS]

``--log`` appends every prompt the engine scores, one JSON string a line (what the
server did work for, which survives a kill -9); ``--delay`` makes each forward pass slow.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from maas_tune.scores import ProviderAnswer
from maas_tune.server.engine import (
    Completion,
    Engine,
    GenerationParams,
    empty_completion,
    needs_forward,
)

__all__ = ["HIDDEN_SIZE", "FakeEngine", "expected_logprobs"]

MODEL = "fake-model"
#: Size of the fake vocabulary (token ids lie in [0, VOCAB_SIZE)).
VOCAB_SIZE = 50_000
#: Hidden-state width of the fake model.
HIDDEN_SIZE = 4
BOS = 1
_PIECE = re.compile(r"\s?\S+|\s+")
# What the fake model generates, in turn.
_GENERATED = (" the", " a", " film", ".")


def _token_id(piece: str) -> int:
    return 2 + zlib.crc32(piece.encode("utf-8", "surrogatepass")) % (VOCAB_SIZE - 2)


def expected_logprobs(prompt: str, token_ids: Sequence[int]) -> np.ndarray:
    """The fake model's label log-probs after ``prompt``, shape (t,): finite and < 0."""
    seed = zlib.crc32(prompt.encode("utf-8", "surrogatepass"))
    return np.array([-(1 + (seed + int(t)) % 97) / 10 for t in token_ids], dtype=np.float32)


class FakeEngine(Engine):
    """An :class:`Engine` with no model behind it (see the module docstring).

    Parameters
    ----------
    delay_s : float
        Seconds each :meth:`score` or :meth:`complete` call (one forward pass) takes.
    context_length : int
        Tokens the fake model's context holds.
    log_path : Path, optional
        File to which each scored prompt is appended (JSON string, one a line).
    """

    def __init__(
        self, delay_s: float = 0.0, context_length: int = 256, log_path: Path | None = None
    ) -> None:  # no super().__init__: there is no provider to read the config from
        self.model_id = MODEL
        self.context_length = context_length
        self.vocab_size = VOCAB_SIZE
        self.returns_hidden = True
        self.delay_s = delay_s
        self.log_path = log_path
        self.passes: list[int] = []
        self._lock = threading.Lock()
        self._texts: dict[int, str] = {}
        # What the chat route reads: a tokenizer without a chat template (the plain one is used).
        self.provider = SimpleNamespace(
            tokenizer=SimpleNamespace(chat_template=None, bos_token=None)
        )

    @property
    def max_pass_size(self) -> int:
        return 16

    @property
    def max_pass_tokens(self) -> int | None:
        return None  # pads its passes, packs nothing

    def tokenize(self, text: str) -> list[int]:
        ids = []
        for piece in _PIECE.findall(text):
            ids.append(_token_id(piece))
            self._texts.setdefault(ids[-1], piece)
        return ids

    def encode_prompt(self, text: str) -> list[int]:
        return [BOS, *self.tokenize(text)]

    def token_text(self, token_id: int) -> str:
        return self._texts.get(token_id, f"<{token_id}>")

    def score(
        self, prompts: Sequence[str], token_ids: Sequence[int], token_features: int = 0
    ) -> list[ProviderAnswer]:
        """As the real engine's; ``token_features``: the last N of a prompt's tokens get
        deterministic 4-wide states (float16)."""
        with self._lock:
            time.sleep(self.delay_s)
            self.passes.append(len(prompts))
            if self.log_path is not None:
                with self.log_path.open("a", encoding="utf-8") as log:
                    log.write("".join(json.dumps(p) + "\n" for p in prompts))
        return [
            ProviderAnswer(
                logprobs=expected_logprobs(p, token_ids),
                hidden=np.array([len(p), 1.0, -1.0, 0.5], dtype=np.float32),
                prompt_tokens=len(self.encode_prompt(p)),
                token_features=_token_states(self.encode_prompt(p), token_features),
            )
            for p in prompts
        ]

    def complete(self, prompt: str, params: GenerationParams) -> Completion:
        ids = self.encode_prompt(prompt)
        self.check_context(len(ids), params.max_tokens)
        result = empty_completion(prompt, len(ids), params)
        if not needs_forward(params):
            return result
        with self._lock:  # one forward pass at a time, as the real engine
            time.sleep(self.delay_s)
        if params.echo and params.logprobs is not None:
            offset = 0
            for pos, token in enumerate(ids[1:]):
                text = self.token_text(token)
                result.tokens.append(text)
                result.token_logprobs.append(None if pos == 0 else -1.0)
                result.top_logprobs.append(None if pos == 0 else self._top(params.logprobs))
                result.text_offset.append(offset)
                offset += len(text)
        forced = [t for t, bias in params.logit_bias.items() if bias > 0]
        text = ""
        for step in range(params.max_tokens):
            piece = self.token_text(forced[0]) if forced else _GENERATED[step % len(_GENERATED)]
            result.completion_tokens += 1
            if params.stop and any(s and s in text + piece for s in params.stop):
                result.finish_reason = "stop"
                break
            if params.logprobs is not None:
                result.tokens.append(piece)
                result.token_logprobs.append(-0.5)
                result.top_logprobs.append(self._top(params.logprobs))
                result.text_offset.append(len(prompt) + len(text))
            text += piece
        result.text += text
        return result

    @staticmethod
    def _top(k: int) -> dict[str, float]:
        return {piece: -0.5 - i for i, piece in enumerate(_GENERATED[:k])}


def main() -> None:
    """Serve a :class:`FakeEngine` on ``127.0.0.1:PORT`` until killed."""
    import uvicorn

    from maas_tune.server import create_app

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    engine = FakeEngine(delay_s=args.delay, log_path=args.log)
    app = create_app(engine, max_wait_ms=1)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()


def _token_states(ids: list[int], n_last: int) -> np.ndarray | None:
    """States of the last ``n_last`` of ``ids`` (None for 0): row i is (id, i, 1, -1)."""
    if not n_last:
        return None
    last = ids[-n_last:]
    return np.array([[t % 997, i, 1.0, -1.0] for i, t in enumerate(last)], dtype=np.float16)
