"""The request handling of the hosted-API simulator: routes, key, faults, checks, forwarding.

See :mod:`tests._hosted_api` for the rules, in the order they are applied here.
"""

from __future__ import annotations

import contextlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._hosted_faults import json_response
from ._hosted_rules import (
    CHAT_REQUEST,
    CHAT_RESPONSE,
    COMPLETION_REQUEST,
    COMPLETION_RESPONSE,
    EMBEDDING_REQUEST,
    EMBEDDING_RESPONSE,
    ERROR_RESPONSE,
    Schema,
    error_body,
    post_bias,
    prune,
    shown_tokens,
    unknown_fields,
)

if TYPE_CHECKING:
    from ._hosted_api import HostedAPI

__all__ = ["build_app", "prompts_of"]

JSON = dict[str, Any]
#: (method, path) -> route name.
ROUTES = {
    ("POST", "/v1/completions"): "completions",
    ("POST", "/v1/chat/completions"): "chat",
    ("POST", "/v1/embeddings"): "embeddings",
    ("GET", "/v1/models"): "models",
    ("POST", "/extras/tokenize"): "tokenize",
}
#: Route name -> upstream path, for the routes that reach the model.
MODEL_PATHS = {
    "completions": "/v1/completions",
    "chat": "/v1/chat/completions",
    "embeddings": "/v1/embeddings",
}
REQUESTS: dict[str, Schema] = {
    "completions": COMPLETION_REQUEST,
    "chat": CHAT_REQUEST,
    "embeddings": EMBEDDING_REQUEST,
}
RESPONSES: dict[str, Schema] = {
    "completions": COMPLETION_RESPONSE,
    "chat": CHAT_RESPONSE,
    "embeddings": EMBEDDING_RESPONSE,
}


class _NoTokenizer(Exception):
    """The upstream cannot map token texts to ids (``logit_bias="post"`` needs it)."""


class Simulator:
    """Answers every request of one :class:`~tests._hosted_api.HostedAPI`."""

    def __init__(self, api: HostedAPI) -> None:
        self.api = api
        self.config = api.config
        self.client: httpx.AsyncClient | None = None
        self._ids: dict[str, int | None] = {}  # token text -> id, from the upstream tokenizer

    async def endpoint(self, request: Request) -> Response:
        """The one ASGI endpoint: count, answer, count the status."""
        method, path = request.method, request.url.path
        if method == "GET" and path == "/stats":
            return json_response(200, self.api.stats())
        self.api.arrived(f"{method} {path}")
        response = await self._answer(request)
        self.api.answered(response.status_code)
        return response

    def _route(self, method: str, path: str) -> str | None:
        if method == "GET" and path.startswith("/v1/models/"):
            return "model"
        route = ROUTES.get((method, path))
        if (route == "embeddings" and not self.config.embeddings) or (
            route == "tokenize" and not self.config.tokenizer
        ):
            return None
        return route

    async def _answer(self, request: Request) -> Response:
        route = self._route(request.method, request.url.path)
        if route is None:
            return json_response(
                404, error_body(f"Invalid URL ({request.method} {request.url.path})")
            )
        if not self._authorised(request):
            return json_response(
                401,
                error_body(
                    "Incorrect or missing API key; send 'Authorization: Bearer <key>'.",
                    code="invalid_api_key",
                ),
            )
        if route in ("models", "model"):
            return self._models(request.url.path.removeprefix("/v1/models").lstrip("/"))
        if route in MODEL_PATHS and (fault := self.api.faults.decide(self.api)) is not None:
            return fault
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return json_response(
                400,
                error_body("We could not parse the JSON body of your request; send a JSON object."),
            )
        if route == "tokenize":
            return await self._tokenize(body)
        self.api.asked(route, body)
        return self._check(route, body) or await self._forward(route, body)

    def _authorised(self, request: Request) -> bool:
        if self.config.api_key is None:
            return True
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, f"Bearer {self.config.api_key}".encode())

    def _models(self, wanted: str) -> Response:
        card = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "system"}
        if not wanted:
            return json_response(200, {"object": "list", "data": [card]})
        if wanted == self.config.model:
            return json_response(200, card)
        return _no_model(wanted)

    def _check(self, route: str, body: JSON) -> Response | None:
        """The 400/404 a strict host answers to ``body``, or None."""
        config, model = self.config, body.get("model")
        if not isinstance(model, str) or not model:
            return _bad("you must provide a model parameter", "model")
        if model != config.model:
            return _no_model(model)
        unknown = unknown_fields(body, REQUESTS[route])
        if config.reject_unknown and unknown:
            return _bad(f"Unrecognized request argument supplied: {', '.join(unknown)}", unknown[0])
        if route == "completions":
            n = body.get("logprobs")
            if _count(n) > config.top_k_cap:
                return _bad(f"logprobs must be <= {config.top_k_cap}", "logprobs")
            if not config.echo and body.get("echo") and n is not None:
                return _bad("echo is not supported with logprobs", "echo")
        if route == "chat" and _count(body.get("top_logprobs")) > config.chat_top_k_cap:
            return _bad(f"top_logprobs must be <= {config.chat_top_k_cap}", "top_logprobs")
        if config.logit_bias == "rejected" and body.get("logit_bias") is not None:
            return _bad("logit_bias is not supported for this model", "logit_bias")
        return None

    def _outgoing(self, route: str, body: JSON) -> JSON:
        """What is sent upstream: the upstream's model name, known fields only if strict."""
        out = prune(body, REQUESTS[route]) if self.config.strip_unknown else dict(body)
        out["model"] = self.api.upstream_model
        if self.config.logit_bias == "ignored":
            out.pop("logit_bias", None)
        return out

    async def _forward(self, route: str, body: JSON) -> Response:
        assert self.client is not None
        out = self._outgoing(route, body)
        self.api.sent_on(prompts_of(route, body), out)
        try:
            upstream = await self.client.post(MODEL_PATHS[route], json=out)
        except httpx.HTTPError as exc:
            return json_response(
                502,
                error_body(
                    f"Bad gateway: the upstream failed ({type(exc).__name__})", type="server_error"
                ),
            )
        if upstream.status_code != 200:
            return self._relay_error(upstream)
        self.api.count("billable")
        try:
            answer = upstream.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):  # a broken upstream's body goes on as it came
            return Response(upstream.content, 200, media_type="application/json")
        usage = answer.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
            self.api.count("tokens_billed", usage["total_tokens"])
        return await self._rewrite(route, body, answer)

    async def _rewrite(self, route: str, body: JSON, answer: JSON) -> Response:
        """The upstream's 200 answer as the hosted API reports it."""
        bias = _bias(body.get("logit_bias"))
        if self.config.logit_bias == "post" and bias and route != "embeddings":
            try:
                ids = await self._token_ids(shown_tokens(answer))
            except _NoTokenizer:
                return json_response(
                    500,
                    error_body(
                        "logit_bias='post' needs the upstream's /extras/tokenize; point the "
                        "simulator at an upstream with a tokenizer",
                        type="server_error",
                    ),
                )
            prompts = prompts_of(route, body) if route == "completions" else []
            post_bias(answer, bias, ids, prompts)
        answer["model"] = self.config.reported_model or self.config.model
        if "system_fingerprint" in answer:  # maas-tune's names the server: a host's does not
            answer["system_fingerprint"] = "fp_hosted"
        if self.config.strip_unknown:
            answer = prune(answer, RESPONSES[route])
        return json_response(200, answer)

    def _relay_error(self, upstream: httpx.Response) -> Response:
        headers = {k: v for k, v in upstream.headers.items() if k.lower() == "retry-after"}
        try:
            body = upstream.json()
        except ValueError:
            return Response(upstream.content, upstream.status_code, headers)
        if self.config.strip_unknown and isinstance(body, dict):
            body = prune(body, ERROR_RESPONSE)
        return json_response(upstream.status_code, body, headers)

    async def _tokenize(self, body: JSON) -> Response:
        assert self.client is not None
        out = {**body, "model": self.api.upstream_model} if "model" in body else body
        upstream = await self.client.post("/extras/tokenize", json=out)
        return Response(upstream.content, upstream.status_code, media_type="application/json")

    async def _token_ids(self, texts: set[str]) -> dict[str, int | None]:
        assert self.client is not None
        for text in sorted(texts - self._ids.keys()):
            upstream = await self.client.post("/extras/tokenize", json={"input": text})
            if upstream.status_code != 200:
                raise _NoTokenizer
            tokens = upstream.json().get("tokens") or []
            self._ids[text] = int(tokens[0]) if len(tokens) == 1 else None
        return {text: self._ids[text] for text in texts}


def _bad(message: str, param: str | None) -> Response:
    return json_response(400, error_body(message, param=param))


def _no_model(model: str) -> Response:
    return json_response(
        404,
        error_body(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        ),
    )


def _count(value: Any) -> int:
    """An integer request field, or 0 when it is absent or not an integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _bias(value: Any) -> dict[int, float]:
    """A ``logit_bias`` field as token id -> bias (entries that are not both numbers dropped)."""
    bias = {}
    for key, number in (value or {}).items() if isinstance(value, dict) else ():
        with contextlib.suppress(TypeError, ValueError):
            bias[int(key)] = float(number)
    return bias


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def prompts_of(route: str, body: JSON) -> list[str]:
    """The prompts of a model request, for ``per_prompt``."""
    if route == "chat":
        messages = body.get("messages") or []
        return [
            "\n".join(
                f"{m.get('role')}: {_text(m.get('content'))}"
                for m in messages
                if isinstance(m, dict)
            )
        ]
    value = body.get("prompt" if route == "completions" else "input")
    items = value if isinstance(value, list) else [value]
    return [v if isinstance(v, str) else json.dumps(v) for v in items]


def build_app(api: HostedAPI) -> Starlette:
    """The ASGI app of ``api``: one catch-all route, so every path follows the rules."""
    simulator = Simulator(api)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        timeout = httpx.Timeout(api.config.upstream_timeout_s)
        async with httpx.AsyncClient(base_url=api.upstream, timeout=timeout) as client:
            simulator.client = client
            yield

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(
        routes=[Route("/{path:path}", simulator.endpoint, methods=methods)], lifespan=lifespan
    )
