"""The FastAPI application: OpenAI-compatible routes, auth, error mapping and the version header."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import MissingDependencyError

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(exc.name or "fastapi", "server") from exc

from ._chat import install_chat_route
from ._completions import (
    DEFAULT_MAX_GENERATED_TOKENS,
    check_model,
    create_completion,
    encode_hidden,
)
from ._middleware import (
    DEFAULT_MAX_BODY_BYTES,
    LOOPBACK_HOST_NAMES,
    VERSION_HEADER,
    BodyLimit,
    Gate,
    HostCheck,
)
from ._slot import ModelSlot
from .batching import QueueFull, ScoreBatcher, TooManyPrompts
from .engine import ContextLengthExceeded, Engine
from .schemas import (
    MAX_TOP_LOGPROBS,
    APIError,
    CompletionRequest,
    EmbeddingRequest,
    TokenizeRequest,
)

__all__ = ["VERSION_HEADER", "create_app"]

logger = logging.getLogger(__name__)

#: Seconds a client is asked to wait when the batching queue is full.
RETRY_AFTER_S = 1


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    # In a union (str | list[str]) each member reports; a value error says what is wrong.
    ranked = sorted(errors, key=lambda e: e.get("type") != "value_error")
    first = ranked[0] if ranked else {"loc": (), "msg": str(exc)}
    if first.get("type") == "json_invalid":
        return _error_response(APIError(400, "the request body is not valid JSON"))
    # Leave out "body" and pydantic's names of union members ("function-after[...]", "str").
    loc = [
        str(part)
        for part in first.get("loc", ())
        if part != "body" and not (isinstance(part, str) and (part == "str" or "[" in part))
    ]
    param = ".".join(loc) or None
    msg = str(first.get("msg")).removeprefix("Value error, ")
    message = f"{param}: {msg}" if param else msg
    return _error_response(APIError(400, f"invalid request: {message}", param=param))


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return _error_response(exc)

    async def http_error(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        code = "request_too_large" if exc.status_code == 413 else None
        return _error_response(
            APIError(
                exc.status_code,
                str(exc.detail),
                type=kind,
                code=code,
                headers=dict(exc.headers or {}),
            )
        )

    async def queue_full(_r: Request, exc: Exception) -> JSONResponse:
        return _error_response(
            APIError(
                429,
                str(exc),
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        )

    async def too_long(_r: Request, exc: Exception) -> JSONResponse:
        return _error_response(
            APIError(400, str(exc), param="prompt", code="context_length_exceeded")
        )

    async def too_many(_r: Request, exc: Exception) -> JSONResponse:
        return _error_response(APIError(400, str(exc), code="too_many_prompts"))

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        return _validation_error(request, exc)

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(QueueFull, queue_full)
    app.add_exception_handler(ContextLengthExceeded, too_long)
    app.add_exception_handler(TooManyPrompts, too_many)
    app.add_exception_handler(RequestValidationError, validation)


def _install_routes(app: FastAPI, slot: ModelSlot, batcher: ScoreBatcher) -> None:
    @app.get("/health", response_model=None)
    async def health() -> dict[str, str] | JSONResponse:
        status = slot.status
        return {"status": status} if status == "ok" else JSONResponse({"status": status}, 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {
            "id": slot.engine.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "maas-tune",
        }
        return {"object": "list", "data": [card]}

    @app.post("/extras/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict[str, list[int]]:
        engine = slot.engine
        check_model(engine, req.model)
        # Megabytes of text take seconds to tokenize: off the event loop, so others are served.
        return {"tokens": await asyncio.to_thread(engine.tokenize, req.input)}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> dict[str, Any]:
        state = app.state
        done = await create_completion(
            slot.engine, batcher, req, state.max_top_logprobs, state.max_generated_tokens
        )
        return done.to_json()

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> dict[str, Any]:
        engine = slot.engine
        check_model(engine, req.model)
        if not engine.returns_hidden:
            raise APIError(
                400,
                "this server's provider returns no hidden states; start it with return_hidden=True",
                param="model",
            )
        inputs = req.inputs
        lengths = await asyncio.to_thread(engine.checked_lengths, inputs)
        answers = await batcher.submit(inputs, (), lengths)

        def embedding(hidden: np.ndarray | None) -> str | list[float]:
            assert hidden is not None  # returns_hidden was checked above
            if req.encoding_format == "base64":
                return encode_hidden(hidden)
            return [float(x) for x in hidden]

        data = [
            {"object": "embedding", "index": i, "embedding": embedding(a.hidden)}
            for i, a in enumerate(answers)
        ]
        used = sum(a.prompt_tokens for a in answers)
        return {
            "object": "list",
            "data": data,
            "model": engine.model_id,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }


def create_app(
    engine: Engine | Callable[[], Engine],
    *,
    api_key: str | None = None,
    max_batch_size: int = 16,
    max_wait_ms: float = 5,
    max_queue: int = 256,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    on_load_failure: Callable[[BaseException], None] | None = None,
    max_top_logprobs: int = MAX_TOP_LOGPROBS,
    max_generated_tokens: int = DEFAULT_MAX_GENERATED_TOKENS,
    allowed_hosts: Collection[str] = LOOPBACK_HOST_NAMES,
) -> FastAPI:
    """Build the OpenAI-compatible server around ``engine``.

    Parameters
    ----------
    engine : Engine or callable returning one
        The model to serve, or a blocking loader that the server runs in the
        background at startup; until it returns, model routes answer 503 with
        ``Retry-After`` and ``GET /health`` answers 503 ``{"status": "loading"}``.
    api_key : str or None
        When set, every request except ``GET /health`` needs ``Authorization: Bearer <key>``.
    max_batch_size, max_wait_ms, max_queue : int
        Dynamic batching of label scoring and embeddings (see :class:`ScoreBatcher`);
        a full queue answers 429 with ``Retry-After``.
    max_body_bytes : int, default 4 MiB
        Larger request bodies get 413 before they are read in full.
    on_load_failure : callable, optional
        Called with the loader's exception (e.g. to stop the server).
    max_top_logprobs : int, default 20
        Most top log-probs per position, in completions (``logprobs``) and chat
        (``top_logprobs``); more is a 400, as on hosted APIs (e.g. 5).
    max_generated_tokens : int, default 256
        Most tokens one request may generate (``max_tokens`` times its prompts); more
        is a 400 naming ``--max-generated-tokens``.
    allowed_hosts : collection of str, default the loopback names
        ``Host`` header names (without port) served; any other gets 421 (a DNS
        rebinding page cannot reach a key-less server). ``"*"`` allows any host.

    Returns
    -------
    FastAPI
        The application; ``app.state.batcher`` exposes the batcher and
        ``app.state.slot`` the model slot (``app.state.slot.engine``).
    """
    slot = ModelSlot(engine, on_failure=on_load_failure)
    batcher = ScoreBatcher(
        lambda prompts, ids, *n: slot.engine.score(prompts, ids, *n),
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
    )

    def size_passes(ready: Engine) -> None:
        batcher.max_pass_size = min(max_batch_size, ready.max_pass_size)
        batcher.max_pass_tokens = ready.max_pass_tokens

    slot.when_ready(size_passes)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(slot.load())
        yield
        await batcher.aclose()
        loading.cancel()

    app = FastAPI(title="maas-tune", version=__version__, lifespan=lifespan)
    app.state.slot = slot
    app.state.batcher = batcher
    app.state.max_top_logprobs = max_top_logprobs
    app.state.max_generated_tokens = max_generated_tokens
    _install_error_handlers(app)
    _install_routes(app, slot, batcher)
    install_chat_route(app, slot, batcher)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(Gate, api_key=api_key)
    app.add_middleware(HostCheck, allowed=allowed_hosts)  # outermost: before the key
    return app
