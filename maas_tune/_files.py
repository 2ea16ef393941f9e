"""Reading a user's file: the ways it can be missing or unreadable, said once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["file_errors"]


@contextmanager
def file_errors(path: Path, what: str, error: type[Exception]) -> Iterator[None]:
    """Turn an :class:`OSError` of reading the ``what`` file ``path`` (missing, a directory,
    no permission, ...) into ``error``, saying what to check."""
    try:
        yield
    except FileNotFoundError as exc:
        raise error(f"{what} file {str(path)!r} does not exist; check the path") from exc
    except OSError as exc:  # a directory, no permission, ...
        raise error(
            f"cannot read {what} file {str(path)!r} ({exc.strerror or exc}); check the path "
            "and its permissions"
        ) from exc
