"""The providers a benchmark's blocks score through, built once per run and shared."""

from __future__ import annotations

import contextlib

from ..providers import spec as provider_spec
from ..providers.base import Provider
from .config import BlockProvider

__all__ = ["ProviderPool"]


class ProviderPool(contextlib.AbstractContextManager["ProviderPool"]):
    """Providers by :class:`BlockProvider`; one local model for all of them.

    Parameters
    ----------
    model : str or None
        The local model (None: the embedded default).
    local : Provider or None
        An already loaded in-process provider to use instead of loading ``model``.
    """

    def __init__(self, model: str | None = None, *, local: Provider | None = None) -> None:
        self._model = model
        self._local = local
        self._built: dict[BlockProvider, Provider] = {}
        self._servers = contextlib.ExitStack()
        self._served_url: str | None = None

    def local(self) -> Provider:
        """The in-process model, loaded on first use."""
        if self._local is None:
            from ..providers.local import TransformersProvider

            self._local = (
                TransformersProvider(self._model) if self._model else TransformersProvider()
            )
        return self._local

    def get(self, spec: BlockProvider) -> Provider:
        """The provider for ``spec`` (built on first use)."""
        if spec not in self._built:
            self._built[spec] = self._build(spec)
        return self._built[spec]

    def _build(self, spec: BlockProvider) -> Provider:
        if spec.kind == "local":
            return self.local()
        return self.spec_of(spec).build()

    def spec_of(self, spec: BlockProvider) -> provider_spec.ProviderSpec:
        """The :class:`~maas_tune.providers.spec.ProviderSpec` a block's HTTP provider is
        built from (``serve``: starts the loopback server on first use)."""
        if spec.kind == "serve":
            base_url, model = self._serve() + "/v1", self._served_model()
        else:
            base_url, model = str(spec.base_url), spec.model or self._served_model()
        return provider_spec.ProviderSpec(
            kind="completions",
            base_url=base_url,
            model=model,
            strategy=spec.strategy,
            top_logprobs=spec.top_logprobs,
            embeddings=spec.embeddings,
            token_features=spec.token_features,
        )

    def _served_model(self) -> str:
        from .._constants import DEFAULT_MODEL_NAME

        return self._model or DEFAULT_MODEL_NAME

    def _serve(self) -> str:
        """``maas-tune serve``'s app over the local model, on loopback for this run."""
        if self._served_url is None:
            from ..server.app import create_app
            from ..server.background import serve_in_thread
            from ..server.engine import Engine

            engine = Engine(self.local(), model_id=self._served_model())  # type: ignore[arg-type]
            self._served_url = self._servers.enter_context(serve_in_thread(create_app(engine)))
        return self._served_url

    def close(self) -> None:
        """Stop the loopback server, if one was started, and close the HTTP providers."""
        for provider in self._built.values():
            if provider is not self._local:
                provider.close()
        self._built.clear()
        self._servers.close()
        self._served_url = None

    def __exit__(self, *exc: object) -> None:
        self.close()
