"""What a client did: its running totals of requests, samples, tokens and cache hits."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Usage"]


@dataclass
class Usage:
    """Running totals of what a :class:`Client` did (this process only).

    ``queries_sent`` counts every request charged to the budget: those of answered
    samples, of samples whose scoring failed after a request was answered, of requests
    whose answer was lost (timeouts, Ctrl-C), and the probe's (also in ``probe_queries``).
    """

    queries_sent: int = 0
    samples_sent: int = 0
    cache_hits: int = 0
    prompt_tokens_sent: int = 0
    #: Prompt tokens of the answers served from the cache: what they cost when first sent.
    prompt_tokens_cached: int = 0
    #: Requests of the provider's capability probe (part of ``queries_sent``).
    probe_queries: int = 0
    #: Requests charged although no answer was kept for them (a failed or interrupted
    #: sample's, a lost answer's): part of ``queries_sent``.
    queries_lost: int = 0
    #: Attempts retried (5xx, timeouts, connection errors) and answered 429.
    retries: int = 0
    rate_limited: int = 0
