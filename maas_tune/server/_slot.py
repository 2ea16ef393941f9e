"""The served model's slot: loaded up front, or in the background while the server answers 503."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .engine import Engine
from .schemas import APIError

__all__ = ["LOADING_RETRY_AFTER_S", "ModelSlot"]

logger = logging.getLogger(__name__)

#: Seconds a client is asked to wait while the model loads.
LOADING_RETRY_AFTER_S = 5


class ModelSlot:
    """Holds the :class:`Engine` once it exists.

    Parameters
    ----------
    source : Engine or callable returning one
        An engine (ready at once) or a blocking loader, run in a worker thread by
        :meth:`load` while the server already answers: every model route then gets a
        503 with ``Retry-After`` and ``GET /health`` says ``"loading"``.
    on_failure : callable, optional
        Called (from the event loop) with the exception when the loader fails, e.g. to
        stop the server.
    """

    def __init__(
        self,
        source: Engine | Callable[[], Engine],
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._engine = source if isinstance(source, Engine) else None
        self._loader = None if isinstance(source, Engine) else source
        self._on_failure = on_failure
        self._error: BaseException | None = None
        self._ready_callbacks: list[Callable[[Engine], None]] = []

    @property
    def status(self) -> str:
        """``"ok"``, ``"loading"`` or ``"error"``."""
        if self._engine is not None:
            return "ok"
        return "error" if self._error is not None else "loading"

    @property
    def engine(self) -> Engine:
        """The engine; raises a 503 :class:`APIError` while loading or after a failed load."""
        if self._engine is not None:
            return self._engine
        if self._error is not None:
            raise APIError(
                503,
                f"the model failed to load ({type(self._error).__name__}); see the server log",
                type="server_error",
                code="model_load_failed",
            )
        raise APIError(
            503,
            "the model is still loading; retry shortly",
            type="server_error",
            code="model_loading",
            headers={"Retry-After": str(LOADING_RETRY_AFTER_S)},
        )

    def when_ready(self, callback: Callable[[Engine], None]) -> None:
        """Call ``callback(engine)`` now if loaded, else right after loading."""
        if self._engine is not None:
            callback(self._engine)
        else:
            self._ready_callbacks.append(callback)

    async def load(self) -> None:
        """Run the loader (if any) off the event loop; failures go to ``on_failure``."""
        if self._loader is None:
            return
        try:
            engine = await asyncio.to_thread(self._loader)
        except Exception as exc:  # noqa: BLE001 - reported by /health and every route
            logger.error("the model failed to load: %s", exc)
            self._error = exc
            if self._on_failure is not None:
                self._on_failure(exc)
            return
        for callback in self._ready_callbacks:
            callback(engine)
        self._engine = engine
        logger.info("model loaded: %s", engine.model_id)
