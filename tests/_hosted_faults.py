"""The rate limit and the injected faults of the hosted-API simulator (:mod:`tests._hosted_api`)."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from ._hosted_rules import deep_json, error_body
from ._hosted_stats import HostedStats

if TYPE_CHECKING:
    from ._hosted_api import HostedConfig

__all__ = ["Faults", "json_response"]


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer (NaN and infinities pass as Python writes them, as upstream sent them)."""
    return Response(json.dumps(body).encode(), status, headers, media_type="application/json")


class Faults:
    """The rate limit and the injected faults, decided per model request (thread-safe)."""

    def __init__(self, config: HostedConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)
        rate = config.rate_limit_per_s or 0.0
        self._burst = config.rate_limit_burst or max(1.0, rate)
        self._level, self._since = self._burst, time.monotonic()
        self._seq = 0
        self._one_shot = {503: 0, 200: 0}

    def inject(self, status: int, n: int) -> None:
        """Answer the next ``n`` model requests with ``status`` (503, or 200: deep JSON)."""
        with self._lock:
            self._one_shot[status] += n

    def decide(self, stats: HostedStats) -> Response | None:
        """The fault answer for the next model request, or None to go on."""
        config = self.config
        with self._lock:
            wait = self._take()
            if wait is not None:
                stats.count("rejected_429")
                return json_response(
                    429,
                    error_body(
                        f"Rate limit reached for requests on {config.model}: limit "
                        f"{config.rate_limit_per_s}/s. Please try again in {wait:.3g}s.",
                        type="requests",
                        code="rate_limit_exceeded",
                    ),
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
            self._seq += 1
            seq, drawn = self._seq, self._rng.random()
            if (
                self._fire(503)
                or seq <= config.fail_503_first_n
                or _every(seq, config.fail_503_every_n)
                or drawn < config.fail_503_rate
            ):
                stats.count("rejected_503")
                return json_response(
                    503,
                    error_body(
                        "The engine is currently overloaded, please try again later.",
                        type="server_error",
                    ),
                )
            if self._fire(200) or _every(seq, config.deep_json_every_n):
                stats.count("deep_json")
                return Response(
                    deep_json(config.deep_json_depth), 200, media_type="application/json"
                )
        return None

    def _fire(self, status: int) -> bool:
        if self._one_shot[status] > 0:
            self._one_shot[status] -= 1
            return True
        return False

    def _take(self) -> float | None:
        """Take a token from the bucket; None if one was there, else seconds until one is."""
        rate = self.config.rate_limit_per_s
        if rate is None:
            return None
        now = time.monotonic()
        self._level = min(self._burst, self._level + (now - self._since) * rate)
        self._since = now
        if self._level >= 1.0:
            self._level -= 1.0
            return None
        return (1.0 - self._level) / rate


def _every(seq: int, n: int) -> bool:
    return n > 0 and seq % n == 0
