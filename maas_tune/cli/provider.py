"""The provider flags of :mod:`maas_tune.cli`: the :class:`~maas_tune.providers.spec.ProviderSpec`
they describe (built through its one ``build``), openai-python's conventions, and the provider
a decoder was fitted with, recorded by ``fit`` and rebuilt by ``predict``.

Base URL from the environment: the Python providers read ``$MAAS_TUNE_BASE_URL``, else
``$OPENAI_BASE_URL``, when ``base_url=None``. The CLI does so only for ``--base-url env``:
without ``--base-url`` it scores with the local model, as it always has, because an
``OPENAI_BASE_URL`` exported for another tool must not turn a free local run into paid
requests. It says on stderr which URL it uses, or that a set variable is not used.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from .._constants import DEFAULT_TOP_LOGPROBS
from ..errors import ConfigurationError
from ..providers.base import Provider
from ..providers.extras import BASE_URL_ENV, parse_pairs, resolve_base_url
from ..providers.http import is_secret_name, public_url
from ..providers.options import HTTPOptions
from ..providers.spec import ProviderSpec, pairs

if TYPE_CHECKING:
    from ..providers.device import Placement

__all__ = [
    "ENV_BASE_URL",
    "add_api_flags",
    "api_extras",
    "apply_record",
    "build_provider",
    "check_fingerprint",
    "placement",
    "provider_record",
    "provider_spec",
    "resolve_cli_base_url",
]

#: The ``--base-url`` value that reads :data:`~maas_tune.providers.extras.BASE_URL_ENV`.
ENV_BASE_URL = "env"
#: Metadata key of the provider recorded by ``fit``.
RECORD_KEY = "provider_config"
# Provider flags that predict leaves unset (None) so that the record can fill them.
_PREDICT_DEFAULTS = {"api": "completions", "strategy": "auto", "top_logprobs": DEFAULT_TOP_LOGPROBS}


def add_api_flags(p: argparse.ArgumentParser) -> None:
    """``--header`` and ``--query`` (repeatable), openai-python's ``default_headers`` /
    ``default_query``."""
    p.add_argument(
        "--header",
        action="append",
        metavar="NAME:VALUE",
        help="with --base-url: send this header with every request (repeatable), e.g. "
        "OpenAI-Organization:org-123, HTTP-Referer:https://example.org, api-key:... (Azure); "
        "values of credential-like names (key, token, auth) are masked in logs",
    )
    p.add_argument(
        "--query",
        action="append",
        metavar="NAME=VALUE",
        help="with --base-url: add this query parameter to every request (repeatable), "
        "e.g. api-version=2024-10-21 (Azure OpenAI)",
    )


def api_extras(args: argparse.Namespace) -> dict[str, Any]:
    """``default_headers`` / ``default_query`` keyword arguments from ``--header`` / ``--query``."""
    extras: dict[str, Any] = {}
    headers = parse_pairs(getattr(args, "header", None), ":", "--header")
    query = parse_pairs(getattr(args, "query", None), "=", "--query")
    if (headers or query) and not getattr(args, "base_url", None):
        raise ConfigurationError("--header and --query need --base-url (they go to the API)")
    if headers:
        extras["default_headers"] = headers
    if query:
        extras["default_query"] = query
    return extras


def resolve_cli_base_url(args: argparse.Namespace) -> None:
    """Replace ``--base-url env`` by the URL the environment gives, and say which is used."""
    given = getattr(args, "base_url", None)
    if given == ENV_BASE_URL:
        args.base_url = resolve_base_url(None)
        source = next(n for n in BASE_URL_ENV if args.base_url == _env(n))
        print(
            f"maas-tune: using base URL {public_url(args.base_url)} from ${source}", file=sys.stderr
        )
    elif given is None and any(_env(n) for n in BASE_URL_ENV):
        found = next(n for n in BASE_URL_ENV if _env(n))
        print(
            f"maas-tune: note: ${found} is set but not used: without --base-url the local "
            "model scores; pass --base-url env to use it",
            file=sys.stderr,
        )


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


# -- the provider the flags describe ----------------------------------------------------
def build_provider(args: argparse.Namespace, model: str | None = None) -> Provider:
    """The provider the flags describe (:func:`provider_spec`), built by its spec; every
    provider built from the same ``args`` shares one rate limiter."""
    spec = provider_spec(args, model)
    if spec.http.rate_limit is not None and not hasattr(args, "_limiter"):
        from ..providers.ratelimit import as_limiter

        args._limiter = as_limiter(spec.http.rate_limit)
    return spec.build(rate_limit=getattr(args, "_limiter", None))


def provider_spec(args: argparse.Namespace, model: str | None = None) -> ProviderSpec:
    """The :class:`ProviderSpec` of ``--base-url``, ``--api``, ``--model``, ... (``model``:
    the local model when ``--model`` names none, e.g. the fitted decoder's).

    Raises
    ------
    ConfigurationError
        Flags that do not go together, naming them.
    """
    resolve_cli_base_url(args)  # --base-url env; a note when $OPENAI_BASE_URL goes unused
    extras = api_extras(args)  # --header / --query
    base_url = getattr(args, "base_url", None)
    if getattr(args, "tokenizer", None) and not base_url:
        raise ConfigurationError("--tokenizer needs --base-url (the local model has its own)")
    if getattr(args, "embeddings", False) and not base_url:
        raise ConfigurationError("--embeddings needs --base-url (the API to embed prompts with)")
    if base_url and (getattr(args, "device", None) or getattr(args, "dtype", None)):
        raise ConfigurationError(
            "--device and --dtype place the local model; drop them with "
            "--base-url (the API's server runs its model)"
        )
    tokens = getattr(args, "token_features", None)
    if not base_url:
        where = placement(args)
        return ProviderSpec(
            kind="local",
            model=model or args.model,
            batch_size=args.batch_size,
            device=where.device,
            dtype=where.dtype,
            token_features=tokens,
        )
    http = HTTPOptions(
        rate_limit=getattr(args, "rate_limit", None),
        max_concurrency=getattr(args, "max_concurrency", None),
        headers=pairs(extras.get("default_headers")),
        query=pairs(extras.get("default_query")),
    )
    kind = getattr(args, "api", None) or "completions"
    return ProviderSpec(
        kind=kind,
        base_url=base_url,
        model=args.api_model or model or args.model,
        strategy=args.strategy,
        top_logprobs=getattr(args, "top_logprobs", DEFAULT_TOP_LOGPROBS),
        tokenizer=getattr(args, "tokenizer", None),
        embeddings=getattr(args, "embeddings", False),
        embeddings_model=getattr(args, "embeddings_model", None),
        token_features=tokens if kind == "completions" else None,
        http=http,
    )


def placement(args: argparse.Namespace) -> Placement:
    """The checked --device and --dtype (a ConfigurationError naming the flag otherwise)."""
    from ..providers.device import DEFAULT_DEVICE, resolve_placement

    device, dtype = getattr(args, "device", None), getattr(args, "dtype", None)
    return resolve_placement(
        device or DEFAULT_DEVICE, dtype or "auto", flags=("--device", "--dtype")
    )


# -- the provider recorded by fit, rebuilt by predict -------------------------------------
def provider_record(args: argparse.Namespace, provider: Provider) -> dict[str, Any]:
    """What ``fit`` keeps in the decoder's metadata to rebuild its provider: never a
    credential (the origin has none; credential-like headers and parameters are left out)."""
    if not getattr(args, "base_url", None):
        return {"kind": "local", "model": args.model}
    scorer = getattr(provider, "scorer", provider)
    model = str(getattr(scorer, "model", args.api_model or args.model))
    extras = api_extras(args)
    return {
        "kind": args.api,
        "base_url": public_url(args.base_url),
        "api_model": model,
        "strategy": args.strategy,
        "top_logprobs": args.top_logprobs,
        "tokenizer": getattr(args, "tokenizer", None),
        "embeddings_model": (args.embeddings_model or model)
        if getattr(args, "embeddings", False)
        else None,
        "headers": {
            k: v for k, v in extras.get("default_headers", {}).items() if not is_secret_name(k)
        },
        "query": {
            k: v for k, v in extras.get("default_query", {}).items() if not is_secret_name(k)
        },
        # pacing, not identity: predict paces as fit did unless its flags say otherwise
        "rate_limit_per_minute": getattr(
            getattr(args, "rate_limit", None), "requests_per_minute", None
        ),
        "max_concurrency": getattr(args, "max_concurrency", None),
    }


def apply_record(args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any] | None:
    """Fill predict's provider flags from the record in ``meta``; refuse a different provider.

    Returns
    -------
    dict or None
        The record, or None for a decoder saved before records existed (a warning says
        that the command line's provider is used).

    Raises
    ------
    ConfigurationError
        The command line names another provider (kind, base URL, model, embeddings) and
        ``--allow-provider-mismatch`` was not given.
    """
    if getattr(args, "base_url", None) == ENV_BASE_URL:
        resolve_cli_base_url(args)
    record = meta.get(RECORD_KEY)
    if not isinstance(record, dict):
        print(
            "maas-tune: warning: this decoder was saved by an older maas-tune and does not "
            "record its provider; the command line's provider is used (refit to record it)",
            file=sys.stderr,
        )
        _fill_defaults(args)
        return None
    _check_record(record)
    problems = _mismatches(args, record)
    if problems and not getattr(args, "allow_provider_mismatch", False):
        raise ConfigurationError(
            f"the decoder was fitted with {_describe(record)}, but {'; '.join(problems)}; "
            "drop those flags to use the fitted provider, or pass --allow-provider-mismatch "
            "to score with another one (its scores may not suit the decoder)"
        )
    if problems:
        print(
            f"maas-tune: warning: provider mismatch allowed: {'; '.join(problems)}", file=sys.stderr
        )
    if not (record.get("kind") == "local" and getattr(args, "base_url", None)):
        _fill(args, record)  # what the flags leave out; a flag given always wins
    _fill_defaults(args)
    return record


def _check_record(record: dict[str, Any]) -> None:
    """Refuse a damaged record (hand-edited metadata) with one clear line."""
    kind = record.get("kind")
    names = ("model",) if kind == "local" else ("base_url", "api_model", "strategy")
    bad = [n for n in names if not isinstance(record.get(n), str) or not record.get(n)]
    if kind not in ("local", "completions", "chat") or bad:
        raise ConfigurationError(
            f"the decoder's metadata.{RECORD_KEY} is damaged (kind {kind!r}, bad fields "
            f"{bad}); refit the decoder, or delete that key to give the provider by flags"
        )


def _mismatches(args: argparse.Namespace, record: dict[str, Any]) -> list[str]:
    problems = []
    given_url = getattr(args, "base_url", None)
    if record.get("kind") == "local":
        if given_url:
            problems.append(f"--base-url {public_url(given_url)} was given")
        if args.model and args.model != record.get("model"):
            problems.append(f"--model {args.model!r} was given")
        return problems
    if given_url and public_url(given_url) != record.get("base_url"):
        problems.append(f"--base-url is {public_url(given_url)}")
    if args.api and args.api != record.get("kind"):
        problems.append(f"--api is {args.api}")
    name = args.api_model or args.model
    if name and name != record.get("api_model"):
        problems.append(f"the model is {name!r}")
    wanted = record.get("embeddings_model")
    if args.embeddings and not wanted:
        problems.append("--embeddings was given")
    if args.embeddings_model and args.embeddings_model != wanted:
        problems.append(f"--embeddings-model is {args.embeddings_model!r}")
    return problems


def _fill(args: argparse.Namespace, record: dict[str, Any]) -> None:
    if record.get("kind") == "local":
        args.model = args.model or record.get("model")
        return
    args.base_url = args.base_url or record.get("base_url")
    args.api = args.api or record.get("kind")
    args.api_model = args.api_model or args.model or record.get("api_model")
    args.strategy = args.strategy or record.get("strategy")
    args.top_logprobs = args.top_logprobs or record.get("top_logprobs")
    args.tokenizer = args.tokenizer or record.get("tokenizer")
    _fill_pacing(args, record)
    if record.get("embeddings_model"):
        args.embeddings, args.embeddings_model = True, record["embeddings_model"]
    for flag, sep in (("header", ":"), ("query", "=")):
        kept = record.get(flag + "s" if flag == "header" else flag) or {}
        given = parse_pairs(getattr(args, flag, None), sep, f"--{flag}")
        setattr(args, flag, [f"{k}{sep}{v}" for k, v in {**kept, **given}.items()])


def _fill_pacing(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """--rate-limit and --max-concurrency as fit had them, where predict gives none (a
    damaged value is ignored: pacing never changes what is scored)."""
    rpm = record.get("rate_limit_per_minute")
    if getattr(args, "rate_limit", None) is None and isinstance(rpm, (int, float)) and rpm > 0:
        from ..providers.ratelimit import RateLimit

        args.rate_limit = RateLimit(requests_per_minute=float(rpm))
    cap = record.get("max_concurrency")
    if getattr(args, "max_concurrency", None) is None and isinstance(cap, int) and cap >= 1:
        args.max_concurrency = cap


def _fill_defaults(args: argparse.Namespace) -> None:
    for name, value in _PREDICT_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def _describe(record: dict[str, Any]) -> str:
    if record.get("kind") == "local":
        return f"the local model {record.get('model')!r}"
    return f"{record.get('kind')} API {record.get('base_url')} model {record.get('api_model')!r}"


def check_fingerprint(
    args: argparse.Namespace, provider: Provider, meta: dict[str, Any], record: Any
) -> None:
    """Refuse (or, for an old decoder or with ``--allow-provider-mismatch``, warn about) a
    provider whose cache identity differs from the fitted one's: e.g. the API now serves
    other weights under the same model name."""
    fitted = meta.get("provider")
    now = provider.fingerprint()
    if now == fitted:
        return
    if record is not None and not getattr(args, "allow_provider_mismatch", False):
        raise ConfigurationError(
            f"the provider's identity differs from the fitted one: {now} vs {fitted}; the "
            "decoder's scores would come from another model — refit, or pass "
            "--allow-provider-mismatch"
        )
    print(
        "maas-tune: warning: the provider differs from the one the decoder was fitted with",
        file=sys.stderr,
    )
