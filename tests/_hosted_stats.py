"""Thread-safe counters of the hosted-API simulator (:mod:`tests._hosted_api`).

The simulator's event loop writes them; a test reads them from its own thread, as
attributes of :class:`~tests._hosted_api.HostedAPI` or as JSON from ``GET /stats``.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

__all__ = ["HostedStats"]

JSON = dict[str, Any]


class HostedStats:
    """What the simulator was asked and what it answered.

    Attributes (each read under the lock)
    ------------------------------------
    received : int
        Every request except ``GET /stats``, whatever its fate.
    forwarded : int
        Model requests (completions, chat, embeddings) sent on to the upstream model:
        the upstream may have done work for each.
    billable : int
        Forwarded requests that the upstream answered 200 (the answer went back to the
        client): what OpenAI bills. Requests refused by the simulator (401, 404, 400,
        the 429s and 503s it injects before forwarding, the deep-JSON fault) and
        upstream errors are not billable.
    tokens_billed : int
        Sum of ``usage.total_tokens`` of the billable answers.
    rejected_429, rejected_503 : int
        Requests refused by the rate limit, and by the injected 503 fault.
    deep_json : int
        Requests answered with the deeply nested JSON fault.
    by_route : dict
        ``"METHOD /path"`` -> requests received.
    by_status : dict
        HTTP status -> answers sent.
    per_prompt : dict
        Forwarded prompt -> times forwarded (completions: each prompt string; chat: the
        messages as ``"role: content"`` lines; embeddings: each input).
    per_request : dict
        Canonical JSON of each forwarded body -> times forwarded.
    requests : list of (str, dict)
        The route name (``completions``, ``chat``, ``embeddings``) and JSON body of each
        model request past the key and the faults, as the client sent it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zero()

    def _zero(self) -> None:
        self._counts: Counter[str] = Counter()
        self._by_route: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        self._per_prompt: Counter[str] = Counter()
        self._per_request: Counter[str] = Counter()
        self._requests: list[tuple[str, JSON]] = []

    # -- writes (the simulator's loop) -----------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` (``received``, ``billable``, ...)."""
        with self._lock:
            self._counts[name] += n

    def arrived(self, route: str) -> None:
        """One request received on ``route`` (``"METHOD /path"``)."""
        with self._lock:
            self._counts["received"] += 1
            self._by_route[route] += 1

    def answered(self, status: int) -> None:
        """One answer sent with ``status``."""
        with self._lock:
            self._by_status[status] += 1

    def asked(self, route: str, body: JSON) -> None:
        """A model request's body as the client sent it."""
        with self._lock:
            self._requests.append((route, body))

    def sent_on(self, prompts: list[str], body: JSON) -> None:
        """One request forwarded to the upstream, with its prompts and forwarded body."""
        key = json.dumps(body, sort_keys=True, separators=(",", ":"))
        with self._lock:
            self._counts["forwarded"] += 1
            self._per_prompt.update(prompts)
            self._per_request[key] += 1

    # -- reads (the test's thread) ---------------------------------------------------
    def _get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    @property
    def received(self) -> int:
        """Every request except ``GET /stats``."""
        return self._get("received")

    @property
    def forwarded(self) -> int:
        """Model requests sent on to the upstream."""
        return self._get("forwarded")

    @property
    def billable(self) -> int:
        """Forwarded requests the upstream answered 200."""
        return self._get("billable")

    @property
    def tokens_billed(self) -> int:
        """``usage.total_tokens`` summed over the billable answers."""
        return self._get("tokens_billed")

    @property
    def rejected_429(self) -> int:
        """Model requests refused by the rate limit."""
        return self._get("rejected_429")

    @property
    def rejected_503(self) -> int:
        """Model requests answered by an injected 503."""
        return self._get("rejected_503")

    @property
    def deep_json(self) -> int:
        """Model requests answered with the deeply nested JSON fault."""
        return self._get("deep_json")

    @property
    def by_route(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_route)

    @property
    def by_status(self) -> dict[int, int]:
        with self._lock:
            return dict(self._by_status)

    @property
    def per_prompt(self) -> dict[str, int]:
        with self._lock:
            return dict(self._per_prompt)

    @property
    def per_request(self) -> dict[str, int]:
        with self._lock:
            return dict(self._per_request)

    @property
    def requests(self) -> list[tuple[str, JSON]]:
        with self._lock:
            return list(self._requests)

    def duplicates(self) -> int:
        """Forwarded requests identical to an earlier one (same body), beyond the first."""
        with self._lock:
            return sum(n - 1 for n in self._per_request.values())

    def prompt_duplicates(self) -> int:
        """Forwarded prompts beyond their first (a forced request repeats its prompt too)."""
        with self._lock:
            return sum(n - 1 for n in self._per_prompt.values())

    def stats(self) -> JSON:
        """Every counter as plain JSON (what ``GET /stats`` answers)."""
        with self._lock:
            return {
                **{
                    name: self._counts[name]
                    for name in (
                        "received",
                        "forwarded",
                        "billable",
                        "tokens_billed",
                        "rejected_429",
                        "rejected_503",
                        "deep_json",
                    )
                },
                "by_route": dict(self._by_route),
                "by_status": {str(k): v for k, v in self._by_status.items()},
                "per_prompt": dict(self._per_prompt),
                "duplicates": sum(n - 1 for n in self._per_request.values()),
            }

    def reset(self) -> None:
        """Forget every count (the faults' sequence is not reset)."""
        with self._lock:
            self._zero()
