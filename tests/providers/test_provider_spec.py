"""One provider spec: the CLI, Ray and the benchmark build the same provider from it, and a
spec never carries a key where it may be pickled."""

from __future__ import annotations

import pickle

import pytest

from maas_tune import Client, QueryBudget, ScoreCache, Task
from maas_tune.bench import BlockProvider, ProviderPool
from maas_tune.cli import build_parser
from maas_tune.errors import ConfigurationError
from maas_tune.providers._probe import clear_probe_cache
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.providers.spec import HTTPOptions, ProviderSpec
from maas_tune.ray import ProviderConfig
from tests._det_server import DetServer

TASK = Task(name="t", template="{text} It was", verbalizer={"neg": ["bad"], "pos": ["good"]})
KEY = "sk-spec-never-pickled-0123456789"


@pytest.fixture(scope="module")
def server():
    with DetServer(latency=0.0, tokenizer=True) as running:
        yield running


def _cli_args(argv: list[str]):
    return build_parser().parse_args(["eval", "--dataset", "sst2", *argv])


@pytest.mark.parametrize("strategy", ["auto", "top_logprobs"])
def test_the_cli_ray_and_the_benchmark_build_one_spec_alike(server, strategy, tmp_path):
    from maas_tune.cli.provider import build_provider, provider_spec

    spec = ProviderSpec(
        kind="completions", base_url=server.base_url, model="det", strategy=strategy
    )
    args = _cli_args(["--base-url", server.base_url, "--api-model", "det", "--strategy", strategy])
    pool = ProviderPool()
    block = BlockProvider(kind="http", base_url=server.base_url, model="det", strategy=strategy)
    assert provider_spec(args) == spec == pool.spec_of(block)
    built = {
        "spec": spec.build(),
        "cli": build_provider(args),
        "ray": ProviderConfig(server.base_url, "det", strategy=strategy).build(),
        "bench": pool.get(block),
    }
    try:
        fingerprints = {}
        for name, provider in built.items():
            assert isinstance(provider, OpenAICompletionsProvider), name
            # the explicit step: a probe (under auto) is charged to a budget, not hidden
            Client(provider, cache=ScoreCache(tmp_path / f"{name}.sqlite"), progress=False).prepare(
                TASK
            )
            fingerprints[name] = provider.fingerprint()
            assert (provider.top_logprobs, provider.max_concurrency) == (5, 4), name
        assert len({repr(sorted(f.items())) for f in fingerprints.values()}) == 1, fingerprints
        assert fingerprints["spec"]["origin"] == server.base_url
    finally:
        pool.close()
        for provider in built.values():
            provider.close()


def test_a_spec_pickles_without_the_key_and_the_worker_reads_it(monkeypatch):
    monkeypatch.setenv("MY_SPEC_KEY", KEY)
    spec = ProviderSpec(
        kind="chat",
        base_url="https://api.example.com/v1",
        model="m",
        http=HTTPOptions(api_key_env="MY_SPEC_KEY", max_concurrency=8),
    )
    config = ProviderConfig("https://api.example.com/v1", "m", api_key_env="MY_SPEC_KEY")
    for data in (pickle.dumps(spec), pickle.dumps(config)):
        assert KEY.encode() not in data
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and again.http.api_key() == KEY  # read where it is built
    assert pickle.loads(pickle.dumps(config)).api_key_env == "MY_SPEC_KEY"
    monkeypatch.delenv("MY_SPEC_KEY")
    with pytest.raises(ConfigurationError, match="MY_SPEC_KEY is not set"):
        again.build()


def test_a_spec_holding_a_credential_is_neither_shown_nor_pickled():
    in_url = ProviderSpec(
        kind="completions", base_url=f"https://user:{KEY}@api.example.com/v1", model="m"
    )
    in_header = ProviderSpec(
        kind="completions",
        base_url="https://api.example.com/v1",
        model="m",
        http=HTTPOptions(headers=(("api-key", KEY),)),
    )
    assert KEY not in repr(in_url) and KEY not in repr(in_header) + repr(in_header.http)
    for spec in (in_url, in_header):
        with pytest.raises(ConfigurationError, match="must not be pickled"):
            pickle.dumps(spec)


def test_a_spec_refuses_an_unknown_kind_and_api_options_on_the_local_model():
    with pytest.raises(ConfigurationError, match="kind must be one of"):
        ProviderSpec(kind="embeddings")
    with pytest.raises(ConfigurationError, match="local provider takes no base_url"):
        ProviderSpec(kind="local", base_url="http://127.0.0.1:9/v1")


def test_build_sends_nothing_and_selecting_the_strategy_is_the_charged_prepare_step(
    server, tmp_path
):
    clear_probe_cache()  # as in a fresh process: the probe must be sent
    spec = ProviderSpec(kind="completions", base_url=server.base_url, model="det")
    before = server.received
    provider = spec.build()
    assert server.received == before  # building is plain construction
    store = tmp_path / "store.sqlite"
    budget = QueryBudget("spec", max_queries=100, store=store)
    with provider:
        Client(provider, cache=ScoreCache(store), budget=budget, progress=False).prepare(TASK)
        probed = server.received - before
        plan = provider.select_strategy()  # selected already: no request
        assert provider.strategy == plan.strategy and server.received - before == probed
    assert probed == provider.probe_requests > 0
    assert budget.status().spent_queries == probed  # the probe, charged as before
