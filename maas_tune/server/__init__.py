"""``maas-tune serve``: an OpenAI-compatible HTTP server over a local transformers model.

Routes
------
``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``
(the model's chat template, or a plain one), ``POST /v1/embeddings`` and ``POST
/extras/tokenize`` (llama-cpp-python's shape). Every response carries the
``x-maas-tune-version`` header; errors use OpenAI's ``{"error": {...}}`` shape.

Extension
---------
A completions request may carry ``"maas_tune": {"label_token_ids": [...],
"return_hidden": bool}``; each choice then carries ``"maas_tune": {"label_logprobs":
[...], "hidden": base64 float32 little-endian | null, "prompt_tokens": int}``, scored at
the position right after the prompt (log-softmax over the full vocabulary), so one
request per sample gives maas-tune everything it needs; ``max_tokens`` may then be 0.
Such requests are batched dynamically across clients. With ``"return_token_features": N``
(1-512) the choice's ``maas_tune`` also carries ``"token_features"`` (base64 float16
little-endian) and ``"token_features_shape": [m, d]``: the last-layer states of the
prompt's last ``m <= N`` tokens, oldest first (what Y-Tuning attends over).

Embeddings are the last-layer hidden state at the last prompt token (BOS prepended).

FastAPI and uvicorn are imported only when the server is used (``pip install
'maas-tune[server]'``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from .._constants import DEFAULT_MODEL_NAME
from ..errors import MissingDependencyError
from ..providers.device import DEFAULT_DEVICE

if TYPE_CHECKING:
    from .app import create_app
    from .engine import Engine

__all__ = ["Engine", "create_app", "run"]

logger = logging.getLogger(__name__)

#: Hosts that only this machine can reach.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Bind addresses that listen on every interface (no one name to allow in ``Host``).
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def __getattr__(name: str) -> Any:
    # Lazy so that importing maas_tune.server does not import fastapi or torch.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def warn_if_exposed(host: str, api_key: str | None) -> bool:
    """Log a warning (and return True) when ``host`` is beyond loopback and no key is set."""
    if api_key is None and host not in LOOPBACK_HOSTS:
        logger.warning(
            "serving on %s without an API key: anyone who can reach this port can "
            "use the model; pass --api-key-env",
            host,
        )
        return True
    return False


def served_hosts(host: str, extra: Sequence[str], loopback: Collection[str]) -> frozenset[str]:
    """``Host`` names to answer: the loopback names, ``extra``, and the bind address when it
    names one address (a wildcard such as 0.0.0.0 names none)."""
    named = [] if host in WILDCARD_HOSTS else [host]
    return frozenset([*loopback, *extra, *named])


def run(
    model: str | os.PathLike[str] = DEFAULT_MODEL_NAME,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch_size: int = 16,
    max_wait_ms: float = 5,
    max_body_bytes: int | None = None,
    max_top_logprobs: int = 20,
    *,
    max_generated_tokens: int | None = None,
    max_context_tokens: int | None = None,
    read_timeout_s: float | None = None,
    max_connections: int | None = None,
    allowed_hosts: Sequence[str] = (),
    device: str = DEFAULT_DEVICE,
    dtype: str = "auto",
) -> None:
    """Serve ``model`` until SIGINT/SIGTERM (a graceful shutdown: in-flight requests finish).

    The server listens at once and loads the model in the background: until it is
    loaded, ``GET /health`` answers 503 ``{"status": "loading"}`` and model routes 503
    with ``Retry-After``. If loading fails, the server stops and the error is raised.

    Parameters
    ----------
    model : str or path, default "gemma-3-270m"
        What :class:`~maas_tune.providers.local.TransformersProvider` accepts; the served
        model id is ``"gemma-3-270m"`` for the default, else the provider's ``model_id``.
    host, port : str, int
        Where to listen. Binding beyond loopback without ``api_key`` logs a warning.
    api_key : str or None
        Require ``Authorization: Bearer <api_key>`` on every route except ``/health``.
    max_batch_size, max_wait_ms : int, float
        Dynamic batching of label scoring (prompts gathered per batch, wait for company).
    max_body_bytes : int, optional
        Largest request body (default 4 MiB); larger ones get 413.
    max_top_logprobs : int, default 20
        Most top log-probs per position in completions and chat; 5 mimics a hosted API.
    max_generated_tokens : int, optional
        Most tokens one request may generate, all its prompts together (default 256).
    max_context_tokens : int, optional
        Most tokens (prompt + generated) one request may hold (default 4096, at most the
        model's context); bounds the memory and time of one forward pass.
    read_timeout_s : float, optional
        Seconds a client gets to send a request's headers, and again its body (default 30).
    max_connections : int, optional
        Connections served at once (default 128); a request on one more gets 503.
    allowed_hosts : sequence of str
        ``Host`` names served besides the loopback names (and ``host`` itself when it
        names one address); ``"*"`` allows any. Other hosts get 421.
    device, dtype : str, default "cpu", "auto"
        Where the model runs (``"auto"``: the first CUDA GPU, else the CPU; ``"cuda"``)
        and its compute dtype, as
        :class:`~maas_tune.providers.local.TransformersProvider` takes them; checked
        before the server starts.

    Raises
    ------
    MissingDependencyError
        If fastapi or uvicorn is not installed.
    ConfigurationError
        A misspelt ``device`` or ``dtype``, or a CUDA device torch does not see (before
        the server starts).
    MaasTuneError
        Whatever loading the model raised (e.g. :class:`ConfigurationError`).
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError("uvicorn", "server") from exc
    from ..providers.device import resolve_placement
    from ..providers.local import TransformersProvider
    from ._completions import DEFAULT_MAX_GENERATED_TOKENS
    from ._connections import DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_TIMEOUT_S, server_config
    from ._middleware import DEFAULT_MAX_BODY_BYTES
    from .app import create_app
    from .engine import DEFAULT_MAX_CONTEXT_TOKENS, Engine

    placement = resolve_placement(device, dtype)
    warn_if_exposed(host, api_key)
    providers: list[TransformersProvider] = []

    def load() -> Engine:
        provider = TransformersProvider(model, device=placement.device, dtype=placement.dtype)
        providers.append(provider)
        model_id = DEFAULT_MODEL_NAME if str(model) == DEFAULT_MODEL_NAME else provider.model_id
        return Engine(provider, model_id, max_context_tokens or DEFAULT_MAX_CONTEXT_TOKENS)

    failed: list[BaseException] = []

    def stop(exc: BaseException) -> None:
        failed.append(exc)
        server.should_exit = True

    app = create_app(
        load,
        api_key=api_key,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        on_load_failure=stop,
        max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY_BYTES,
        max_top_logprobs=max_top_logprobs,
        max_generated_tokens=max_generated_tokens or DEFAULT_MAX_GENERATED_TOKENS,
        allowed_hosts=served_hosts(host, allowed_hosts, LOOPBACK_HOSTS),
    )
    server = uvicorn.Server(
        server_config(
            app,
            host,
            port,
            read_timeout_s=read_timeout_s or DEFAULT_READ_TIMEOUT_S,
            max_connections=max_connections or DEFAULT_MAX_CONNECTIONS,
        )
    )
    try:
        server.run()
    finally:
        for provider in providers:
            provider.close()
    if failed:
        raise failed[0]
