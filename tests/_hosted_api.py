"""A strict hosted OpenAI-compatible API of our own, on loopback, in front of a real upstream.

:class:`HostedAPI` plays the part of a hosted API (OpenAI or a compatible host) for the
test suite's conformance matrix: it forwards to an upstream OpenAI-compatible server
(``maas-tune serve`` with the real model, or a fast fake) and enforces, per switch of
:class:`HostedConfig`, what hosted APIs enforce::

    with HostedAPI(upstream_url, HostedConfig(api_key="sk-test", top_k_cap=5)) as api:
        ...  # OpenAICompletionsProvider(api.base_url, api.config.model, api_key="sk-test")
        assert api.billable == 3 and api.duplicates() == 0

Each request goes through these steps, in order; the first that answers ends it:

1. ``GET /stats`` answers the counters (:meth:`HostedStats.stats`), unauthenticated and
   uncounted. Every other request counts in ``received`` and ``by_route``.
2. Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``POST
   /v1/embeddings`` (``embeddings``), ``GET /v1/models``, ``GET /v1/models/{id}`` and
   ``POST /extras/tokenize`` at the root (``tokenizer``). Anything else, e.g.
   ``/completions`` without ``/v1``, is a 404 ``Invalid URL (POST /completions)``.
3. ``api_key``: without ``Authorization: Bearer <api_key>``, 401 (``invalid_api_key``).
4. Model routes only (completions, chat, embeddings), the faults: the rate limit (429
   with ``Retry-After`` in whole seconds, ``rate_limit_exceeded``), then the injected
   503s (:meth:`HostedAPI.inject_503`, ``fail_503_first_n``, ``fail_503_every_n``,
   ``fail_503_rate`` drawn from ``random.Random(seed)``), then the deep-JSON fault (200
   with a body nested ``deep_json_depth`` deep: :meth:`HostedAPI.inject_deep_json`,
   ``deep_json_every_n``). ``every_n`` counts model requests past the rate limit.
5. Validation: a body that is not a JSON object is a 400; no ``model`` a 400; another
   model than ``model`` a 404 ``The model `x` does not exist``; completions ``logprobs``
   above ``top_k_cap`` a 400 ``logprobs must be <= 5``; chat ``top_logprobs`` above
   ``chat_top_k_cap`` a 400; ``echo`` with ``logprobs`` when ``echo`` is off a 400
   ``echo is not supported with logprobs``; ``logit_bias`` when it is ``"rejected"`` a 400;
   unknown fields a 400 ``Unrecognized request argument supplied`` when ``reject_unknown``.
6. Forwarding: the model is renamed to the upstream's (``upstream_model``, else the
   first of the upstream's ``GET /v1/models``, else unchanged); unknown fields are dropped
   when ``strip_unknown``; ``logit_bias`` is dropped when ``"ignored"``. The request now
   counts in ``forwarded``, ``per_prompt`` and ``per_request``; an upstream that cannot be
   reached (or times out, ``upstream_timeout_s``) gives a 502.
7. The answer: an upstream error is passed on (status, error body, ``Retry-After``); a 200
   counts in ``billable`` and ``tokens_billed``; a 200 body that is not a JSON object goes
   back as it came (so :class:`~tests._fault_server.FaultServer`'s broken bodies show
   through); a JSON one reports ``reported_model`` (default ``model``) as its model and
   ``fp_hosted`` as its ``system_fingerprint`` (if any), is rewritten after the bias when
   ``logit_bias="post"``, and loses every field OpenAI does not define when
   ``strip_unknown``.

``logit_bias`` modes: ``"pre"`` passes it on: maas-tune's server (and both fakes), like
OpenAI, report log-probs before the bias (the forced token keeps the model's own log-prob). ``"post"``
reports the biased distribution, as hosts that apply the bias as a logits processor do:
at each generated position the log-probs shown are renormalised with the bias (a token
forced with +100 gets about 0, the others about -100) and the top-k is re-ranked. Token
texts are mapped to ids with the upstream's ``/extras/tokenize``; a biased token that is
neither generated nor shown at a position is taken to have no pre-bias mass, and a shown
token pushed down by a negative bias can leave the top-k one entry short.
``"ignored"`` drops ``logit_bias``; ``"rejected"`` answers 400.

The answers never carry maas-tune's version header, so clients see a foreign host.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal, final

import httpx

from maas_tune.server.background import serve_in_thread

from ._hosted_app import build_app
from ._hosted_faults import Faults
from ._hosted_stats import HostedStats

__all__ = ["BiasMode", "HostedAPI", "HostedConfig"]

BiasMode = Literal["pre", "post", "ignored", "rejected"]
BIAS_MODES = ("pre", "post", "ignored", "rejected")


@dataclass(frozen=True)
class HostedConfig:
    """The switches of the simulated hosted API (defaults: OpenAI's documented behaviour,
    except that unknown request fields are dropped rather than refused).

    Attributes
    ----------
    model : str
        The one model served; requests must name it.
    reported_model : str or None
        The ``model`` answers report (e.g. a dated snapshot); None: ``model``.
    upstream_model : str or None
        The name forwarded upstream; None: the first of the upstream's ``/v1/models``
        (or ``model`` when the upstream lists none).
    api_key : str or None
        The bearer key every request needs; None: no check.
    top_k_cap, chat_top_k_cap : int
        Most ``logprobs`` in completions (OpenAI: 5) and ``top_logprobs`` in chat (20).
    tokenizer : bool
        Serve ``POST /extras/tokenize`` (forwarded); hosted APIs have none (404).
    echo : bool
        Accept ``echo`` together with ``logprobs``; off: 400, as hosts that refuse it.
    logit_bias : {"pre", "post", "ignored", "rejected"}
        How ``logit_bias`` is treated (see the module docstring).
    embeddings : bool
        Serve ``POST /v1/embeddings``; off: 404.
    strip_unknown : bool
        Drop request fields OpenAI does not define (e.g. ``maas_tune``) before
        forwarding, and answer fields it does not define from answers.
    reject_unknown : bool
        Answer 400 to requests with unknown fields (what OpenAI itself does).
    rate_limit_per_s : float or None
        Token-bucket limit on model requests; None: none.
    rate_limit_burst : float or None
        Bucket size (requests that may come at once); None: ``max(1, rate_limit_per_s)``.
    fail_503_rate : float
        Fraction of model requests answered 503 (drawn from ``seed``).
    fail_503_first_n, fail_503_every_n : int
        The first n model requests, and every n-th (0: off), answered 503.
    deep_json_every_n : int
        Every n-th model request answered 200 with deeply nested JSON (0: off).
    deep_json_depth : int
        Nesting of that body.
    seed : int
        Seed of the 503 draws.
    upstream_timeout_s : float
        Timeout of each upstream request (502 past it).
    """

    model: str = "hosted-model"
    reported_model: str | None = None
    upstream_model: str | None = None
    api_key: str | None = None
    top_k_cap: int = 5
    chat_top_k_cap: int = 20
    tokenizer: bool = False
    echo: bool = True
    logit_bias: BiasMode = "pre"
    embeddings: bool = True
    strip_unknown: bool = True
    reject_unknown: bool = False
    rate_limit_per_s: float | None = None
    rate_limit_burst: float | None = None
    fail_503_rate: float = 0.0
    fail_503_first_n: int = 0
    fail_503_every_n: int = 0
    deep_json_every_n: int = 0
    deep_json_depth: int = 100_000
    seed: int = 0
    upstream_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.logit_bias not in BIAS_MODES:
            raise ValueError(f"logit_bias must be one of {BIAS_MODES}, got {self.logit_bias!r}")
        if not 0.0 <= self.fail_503_rate <= 1.0:
            raise ValueError(f"fail_503_rate must lie in [0, 1], got {self.fail_503_rate}")
        if self.rate_limit_per_s is not None and self.rate_limit_per_s <= 0:
            raise ValueError(f"rate_limit_per_s must be > 0 or None, got {self.rate_limit_per_s}")


def discover_model(root: str, fallback: str) -> str:
    """The first model the upstream lists at ``GET /v1/models``, else ``fallback``."""
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        response = httpx.get(f"{root}/v1/models", timeout=10)
        if response.status_code == 200:
            return str(response.json()["data"][0]["id"])
    return fallback


@final
class HostedAPI(HostedStats):
    """The simulator on ``127.0.0.1`` (a free port), run by uvicorn in a thread by ``with``.

    Parameters
    ----------
    upstream : str
        The upstream server's root or base URL (``http://127.0.0.1:PORT`` or ``.../v1``).
    config : HostedConfig, optional
        The switches (defaults: :class:`HostedConfig`).

    Attributes
    ----------
    base_url : str
        ``http://127.0.0.1:<port>/v1``, for clients (set once started).
    root_url : str
        ``http://127.0.0.1:<port>`` (``/extras/tokenize`` and ``/stats`` live there).
    upstream_model : str
        The model name forwarded upstream.

    The counters (``received``, ``billable``, ...) are those of :class:`HostedStats`.
    """

    def __init__(self, upstream: str, config: HostedConfig | None = None) -> None:
        super().__init__()
        self.config = config or HostedConfig()
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.upstream_model = self.config.upstream_model or ""
        self.faults = Faults(self.config)
        self.base_url = self.root_url = ""
        self._stack = contextlib.ExitStack()

    def inject_503(self, n: int = 1) -> None:
        """Answer the next ``n`` model requests 503 (before forwarding: not billable)."""
        self.faults.inject(503, n)

    def inject_deep_json(self, n: int = 1) -> None:
        """Answer the next ``n`` model requests 200 with deeply nested JSON (not forwarded)."""
        self.faults.inject(200, n)

    def __enter__(self) -> HostedAPI:
        if not self.upstream_model:
            self.upstream_model = discover_model(self.upstream, self.config.model)
        self.root_url = self._stack.enter_context(serve_in_thread(build_app(self)))
        self.base_url = f"{self.root_url}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
