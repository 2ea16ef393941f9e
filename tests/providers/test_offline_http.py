"""Offline runs over HTTP: the probe and label token ids come from the cache, nothing is sent."""

from __future__ import annotations

import numpy as np
import pytest

import maas_tune as mt
from maas_tune.errors import OfflineCacheMiss
from maas_tune.providers._probe import clear_probe_cache
from maas_tune.providers.openai import OpenAICompletionsProvider

from .._servers import serve_in_thread

pytestmark = pytest.mark.model


def test_offline_rerun_needs_no_server_and_a_fresh_cache_says_what_is_missing(gemma, tmp_path):
    pytest.importorskip("fastapi", reason="needs the 'server' extra")
    from maas_tune.server import Engine, create_app

    task, data = mt.datasets.load_task("sst2"), mt.datasets.load("sst2")
    examples = data.test[:6]
    cache = mt.ScoreCache(tmp_path / "cache.sqlite")
    with serve_in_thread(create_app(Engine(gemma, "gemma-3-270m"))) as url:
        online = OpenAICompletionsProvider(f"{url}/v1", "gemma-3-270m")
        first = mt.Client(online, cache=cache, progress=False).score(task, examples)
        assert online.strategy == "extension"
    clear_probe_cache()  # forget what this process learnt: only the cache may answer now
    # The server is gone: any request would fail with a connection error.
    offline = OpenAICompletionsProvider(f"{url}/v1", "gemma-3-270m", max_retries=0)
    client = mt.Client(offline, cache=cache, offline=True, progress=False)
    again = client.score(task, examples)
    np.testing.assert_array_equal(again.label_logprobs, first.label_logprobs)
    assert client.usage.queries_sent == 0 and offline.probe_requests == 0

    fresh = OpenAICompletionsProvider(f"{url}/v1", "gemma-3-270m", max_retries=0)
    empty = mt.Client(fresh, cache=tmp_path / "empty.sqlite", offline=True, progress=False)
    with pytest.raises(OfflineCacheMiss, match="offline mode: the (capability probe|token ids)"):
        empty.score(task, examples)


def test_the_probe_result_is_kept_in_the_cache_across_processes(gemma, tmp_path):
    pytest.importorskip("fastapi", reason="needs the 'server' extra")
    from maas_tune.server import Engine, create_app

    cache = mt.ScoreCache(tmp_path / "cache.sqlite")
    with serve_in_thread(create_app(Engine(gemma, "gemma-3-270m"))) as url:
        clear_probe_cache()
        first = OpenAICompletionsProvider(f"{url}/v1", "gemma-3-270m")
        first.attach_facts(cache)
        assert first.select_strategy().strategy == "extension" and first.probe_requests > 0
        clear_probe_cache()  # as in a new process
        second = OpenAICompletionsProvider(f"{url}/v1", "gemma-3-270m")
        second.attach_facts(cache)
        second.select_strategy()  # from the cache: no request
        assert second.probe_result == first.probe_result
        assert second.probe_requests == 0
