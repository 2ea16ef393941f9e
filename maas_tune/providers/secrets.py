"""API keys at the edge: checked before they reach a header, and masked in every log line.

A key read from a file or a variable often carries a line break (a CRLF file) or stray
spaces; httpx then fails deep inside h11 with an error whose text holds the whole
header, key included. So keys are checked once, here, with messages that never show
them, and every key in use is registered with a log-record factory that masks it in
any record of any logger (ours, httpx's, httpcore's) before a handler formats it.
"""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Any

from ..errors import ConfigurationError

__all__ = ["REDACTED", "check_api_key", "redact_secrets", "register_secret", "safe_traceback"]

REDACTED = "[REDACTED]"
# Characters an HTTP header value may carry (RFC 9110 field-vchar, SP and HTAB, no CR/LF/NUL).
_HEADER_OK = frozenset(chr(c) for c in range(0x20, 0x7F)) | {"\t"}

_LOCK = threading.Lock()
_SECRETS: set[str] = set()
_installed = False


def check_api_key(key: str | None, source: str) -> str | None:
    """The key to send, with surrounding whitespace removed, or a ConfigurationError.

    Parameters
    ----------
    key : str or None
        As given by the user or read from the environment.
    source : str
        Where it came from (``"api_key="``, ``"$OPENAI_API_KEY"``), named in errors.

    Raises
    ------
    ConfigurationError
        The key holds a character an HTTP header cannot carry (a line break inside it,
        a non-ASCII letter); the message gives the position, never the key.
    """
    if key is None:
        return None
    if not isinstance(key, str):
        raise ConfigurationError(f"the API key from {source} must be a string")
    stripped = key.strip()
    if not stripped:
        return None
    for position, char in enumerate(stripped):
        if char not in _HEADER_OK:
            raise ConfigurationError(
                f"the API key from {source} holds a character an HTTP header cannot carry "
                f"(U+{ord(char):04X} at position {position} of {len(stripped)}); copy the key "
                "again, without line breaks or other invisible characters"
            )
    register_secret(stripped)
    if key != key.strip():
        register_secret(key)  # the raw form, as a traceback could show it
    return stripped


def register_secret(secret: str) -> None:
    """Mask ``secret`` in every log record from now on (installs the record factory once)."""
    global _installed
    if len(secret) < 4:  # too short to mask without mangling ordinary text
        return
    with _LOCK:
        _SECRETS.add(secret)
        if not _installed:
            _install()
            _installed = True


def redact_secrets(text: str) -> str:
    """``text`` with every registered secret replaced by :data:`REDACTED`."""
    with _LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def safe_traceback(exc: BaseException) -> str:
    """The formatted traceback of ``exc`` (chained causes included), secrets masked."""
    return redact_secrets("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def _install() -> None:
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _mask(record)
        return record

    logging.setLogRecordFactory(factory)


def _mask(record: logging.LogRecord) -> None:
    """Format the record's message now, masked, so no handler ever sees the secret."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format string is the handler's to report
        return
    masked = redact_secrets(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and record.exc_info[1] is not None:
        record.exc_text = safe_traceback(record.exc_info[1])
        record.exc_info = None
