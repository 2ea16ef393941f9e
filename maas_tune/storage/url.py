"""Store locations: which backend a path or URL names, and how to show it without a password."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigurationError

__all__ = ["Backend", "backend_of", "redact", "sqlite_path"]

Backend = Literal["sqlite", "postgresql"]

#: URL schemes of each backend (``postgres://`` is libpq's alias).
_SCHEMES: dict[str, Backend] = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
}


def _scheme(target: str) -> str | None:
    """The URL scheme of ``target``, or None for a plain path (``C:\\x`` is a path too)."""
    head, sep, _ = target.partition("://")
    return head.lower() if sep and head.isalnum() and len(head) > 1 else None


def backend_of(target: str | os.PathLike[str] | None) -> Backend:
    """Which backend opens ``target``: paths and ``sqlite://`` URLs are SQLite.

    Raises
    ------
    ConfigurationError
        ``target`` is a URL of a scheme maas-tune has no backend for.
    """
    if target is None or isinstance(target, os.PathLike):
        return "sqlite"
    scheme = _scheme(target)
    if scheme is None:
        return "sqlite"
    if scheme not in _SCHEMES:
        raise ConfigurationError(
            f"no store backend for {redact(target)!r}; use a file path, 'sqlite:///abs/path' "
            "or 'postgresql://user@host:port/database'"
        )
    return _SCHEMES[scheme]


def sqlite_path(target: str | os.PathLike[str]) -> Path:
    """The file named by a path or a ``sqlite:///abs/path`` URL (the path after the host part,
    as in ``file://`` URLs; ``sqlite:////abs/path`` names the same file).

    Raises
    ------
    ConfigurationError
        A ``sqlite://`` URL names no file, or names a host.
    """
    if isinstance(target, os.PathLike) or _scheme(target) is None:
        return Path(target).expanduser()
    parts = urlsplit(target)
    if parts.netloc or not parts.path or parts.path == "/":
        raise ConfigurationError(
            f"{target!r} names no local file; write 'sqlite:///absolute/path' (three slashes, "
            "then the path) or pass the path itself"
        )
    return Path(parts.path[1:] if parts.path.startswith("//") else parts.path).expanduser()


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, safe for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
