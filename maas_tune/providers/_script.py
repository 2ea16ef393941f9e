"""Scripts: one item's requests written once, sent by a blocking or an async driver.

A scoring strategy is a generator that yields each request body it needs and receives
the decoded answer (``body = yield payload``), returning its result. It never does I/O
itself, so the same code runs under :func:`drive` (a blocking ``post``) and
:func:`adrive` (an ``await``-able one): one implementation for both paths.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["APost", "Post", "Script", "adrive", "drive"]

R = TypeVar("R")
#: One item's requests: yields request bodies, is sent their answers, returns the result.
Script = Generator[dict[str, Any], dict[str, Any], R]
#: Sends one request body and returns the decoded JSON object (blocking).
Post = Callable[[dict[str, Any]], dict[str, Any]]
#: Sends one request body and returns the decoded JSON object (async).
APost = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def drive(script: Script[R], post: Post) -> R:
    """Run ``script`` to its end, sending each request through ``post``.

    An error of ``post`` is raised inside the script (where it may be handled).
    """
    try:
        request = next(script)
        while True:
            try:
                body = post(request)
            except BaseException as exc:  # noqa: BLE001 - the script decides
                request = script.throw(exc)
            else:
                request = script.send(body)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def adrive(script: Script[R], post: APost, request: dict[str, Any] | None = None) -> R:
    """:func:`drive` with an async ``post``; ``request``: the script's first, when it was
    started already (``next(script)``)."""
    try:
        if request is None:
            request = next(script)
        while True:
            try:
                body = await post(request)
            except BaseException as exc:  # noqa: BLE001 - the script decides
                request = script.throw(exc)
            else:
                request = script.send(body)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
