"""Distributed scoring on a local Ray cluster: each sample paid for once, the budget cap held,
and batch predictions equal to a single-process client's (deterministic loopback server)."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time

import numpy as np
import pytest

from maas_tune import (
    Client,
    ConfigurationError,
    QueryBudget,
    ScoreCache,
    ScoreLogisticRegression,
    Task,
    save_decoder,
)
from maas_tune.errors import MissingDependencyError
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.providers.options import concurrency_for
from tests._det_server import PROBE_PROMPT, DetServer, client_ports
from tests._ray_cluster import local_ray_cluster

pytestmark = pytest.mark.slow

TASK = Task(
    "sent", "Review: {text} Sentiment:", {"positive": ["positive"], "negative": ["negative"]}
)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster, shared by the modules that need one."""
    yield from local_ray_cluster()


N_ROWS = 300


def _rows(n: int, prefix: str = "review") -> list[dict[str, object]]:
    return [{"text": f"{prefix} number {i} {'!' * (i % 5)}", "row": i} for i in range(n)]


@pytest.fixture(scope="module")
def server():
    with DetServer(latency=0.002, tokenizer=True) as running:
        yield running


@pytest.fixture()
def ray_api(ray_cluster):
    import maas_tune.ray as api

    return api


def _score(api, ray, server, store, rows, budget, **kwargs):
    dataset = ray.data.from_items(rows)
    config = api.ProviderConfig(server.base_url, "det")
    return api.score(
        dataset, TASK, config, str(store), budget, num_workers=2, batch_size=50, **kwargs
    ).take_all()


def test_every_sample_is_scored_and_sent_once_then_rerun_is_free(
    ray_api, ray_cluster, server, tmp_path
):
    store, rows = tmp_path / "store.sqlite", _rows(N_ROWS)
    before = server.received
    out = sorted(_score(ray_api, ray_cluster, server, store, rows, "first"), key=lambda r: r["row"])
    sent = server.received - before
    prompts = [TASK.render({"text": r["text"]}) for r in rows]
    assert [r["row"] for r in out] == list(range(N_ROWS))
    assert all(r["scored"] and not r["cache_hit"] for r in out)
    assert all(server.per_prompt[p] == 1 for p in prompts)  # each prompt sent exactly once
    assert sent <= N_ROWS + 2  # + the capability probe of each actor at most
    # Every request is charged, the probe's too (it is kept in the shared cache: one actor
    # probes, or each of the two if they start together).
    assert QueryBudget("first", store=store).status().spent_queries == sent

    again = _score(ray_api, ray_cluster, server, store, rows, "first")
    assert server.received - before == sent  # a rerun sends nothing
    assert all(r["cache_hit"] for r in again)

    # The same numbers as one process with its own client (and a fresh cache).
    local = Client(
        OpenAICompletionsProvider(server.base_url, "det"),
        cache=ScoreCache(tmp_path / "local.sqlite"),
        progress=False,
    )
    expected = local.score(TASK, [r["text"] for r in rows]).label_logprobs
    np.testing.assert_allclose(np.stack([r["label_logprobs"] for r in out]), expected, rtol=1e-6)


def test_a_budget_smaller_than_the_dataset_is_never_overshot(
    ray_api, ray_cluster, server, tmp_path
):
    store, limit = tmp_path / "store.sqlite", 100
    rows = _rows(N_ROWS, prefix="budgeted")
    before = server.received
    out = _score(ray_api, ray_cluster, server, store, rows, ray_api.BudgetSpec("cap", limit))
    status = QueryBudget("cap", store=store).status()
    scored = np.array([r["scored"] for r in out])
    lp = np.stack([r["label_logprobs"] for r in out])
    assert status.spent_queries <= limit and status.reserved_queries == 0  # 0 overshoot
    assert status.spent_queries >= limit - 16  # used up to one chunk
    samples_sent = sum(server.per_prompt[TASK.render({"text": r["text"]})] for r in rows)
    probes = server.received - before - samples_sent
    assert probes <= 2  # the capability probe of each actor at most, charged too
    assert scored.sum() == samples_sent == status.spent_queries - probes  # one query per row
    assert np.isnan(lp[~scored]).all() and np.isfinite(lp[scored]).all()


def test_predictions_match_a_single_process_client_and_decoder(
    ray_api, ray_cluster, server, tmp_path
):
    store = tmp_path / "store.sqlite"
    train = _rows(40, prefix="train")
    labels = ["positive" if len(r["text"]) % 3 else "negative" for r in train]  # type: ignore[arg-type]
    client = Client(
        OpenAICompletionsProvider(server.base_url, "det"), cache=ScoreCache(store), progress=False
    )
    decoder = ScoreLogisticRegression().fit(client.score(TASK, [r["text"] for r in train]), labels)
    save_decoder(decoder, tmp_path / "decoder")

    rows = _rows(200, prefix="predict")
    dataset = ray_cluster.data.from_items(rows)
    out = ray_api.predict(
        dataset,
        TASK,
        ray_api.ProviderConfig(server.base_url, "det"),
        str(store),
        None,
        tmp_path / "decoder",
        num_workers=2,
        batch_size=50,
    ).take_all()
    out.sort(key=lambda r: r["row"])
    local = client.score(TASK, [r["text"] for r in rows])  # all cache hits now
    assert local.cache_hit.all()
    assert [r["prediction"] for r in out] == decoder.predict(local).tolist()
    np.testing.assert_allclose(
        np.stack([r["probabilities"] for r in out]),
        decoder.predict_proba(local),
        rtol=1e-5,
        atol=1e-6,
    )


def _a_scoring_actor_pid() -> int | None:
    from ray._private import state  # the actor table with pids; no dashboard needed

    pids = [
        a["Pid"]
        for a in state.actors().values()
        if a["State"] == "ALIVE" and "MapWorker" in str(a.get("ActorClassName"))
    ]
    return pids[0] if pids else None


def _kill_one_scoring_actor(
    server: DetServer, after: int, killed: list[tuple[int, set[int]]]
) -> None:
    """SIGKILL one scoring actor's process (as a crash would) once ``after`` requests were
    answered; the server holds further answers until then (``hold_after``), so the run
    cannot finish first however slow the machine is.

    The ports of every connection the actor held while it ran are collected (a connection
    idle past its keep-alive may close before the kill, yet its prompt be sent again), and
    it is stopped before the last read, so that it opens none between that read and its
    death: on a busy machine the actor killed may be one that only starts sending then,
    and its first requests, all on new connections, are the ones sent again."""
    try:
        deadline = time.monotonic() + 120
        victim: int | None = None
        ports: set[int] = set()
        while server.received < after and time.monotonic() < deadline:
            if victim is None:
                victim = _a_scoring_actor_pid()
            if victim is not None:
                ports |= client_ports(victim)
            time.sleep(0.01)
        victim = victim or _a_scoring_actor_pid()
        if victim is not None:
            os.kill(victim, signal.SIGSTOP)
            ports |= client_ports(victim)  # its connections to the server, requests in flight
            os.kill(victim, signal.SIGKILL)
            killed.append((victim, ports))
    finally:
        server.release()


def test_a_killed_worker_is_replaced_and_the_result_is_complete_within_the_cap(
    ray_api, ray_cluster, tmp_path
):
    store, n, chunk = tmp_path / "store.sqlite", 600, 16
    limit = n + chunk * 4  # room for the reservations in flight and the dead worker's
    rows, killed = _rows(n, prefix="killed"), []
    with DetServer(latency=0.02, tokenizer=True, hold_after=n // 4) as server:
        threading.Thread(
            target=_kill_one_scoring_actor, args=(server, n // 4, killed), daemon=True
        ).start()
        out = _score(
            ray_api,
            ray_cluster,
            server,
            store,
            rows,
            ray_api.BudgetSpec("killed", limit),
            chunk_size=chunk,
        )
        sent = [server.per_prompt[TASK.render({"text": r["text"]})] for r in rows]
        resent_by_port = server.duplicates_by_first_port()
        probes = server.per_prompt.get(PROBE_PROMPT, 0)  # capability probes, charged too
    status = QueryBudget("killed", store=store).status()
    assert killed, "no scoring actor was found to kill"
    assert len(out) == n and all(r["scored"] for r in out)  # Ray retried the lost batch
    # Only the dead worker's chunks in flight again (they overlap: ceil(max_concurrency /
    # chunk) + 1 of them).
    slots = concurrency_for(ray_api.ProviderConfig(server.base_url, "det").max_concurrency, None)
    in_flight = -(-slots // chunk) + 1
    assert min(sent) == 1 and sum(sent) - n <= in_flight * chunk
    # every duplicate was first sent by the dead worker: live workers never raced
    assert set(resent_by_port) <= killed[0][1], (resent_by_port, killed)
    assert n <= status.spent_queries <= limit  # its reservation counted as spent; cap held
    # The dead worker's reservations, counted as spent: its chunks in flight, plus each
    # actor's capability probe.
    assert status.spent_queries - n - probes <= in_flight * chunk and status.reserved_queries == 0


def test_worker_setup_carries_no_api_key(ray_api, monkeypatch, tmp_path):
    monkeypatch.setenv("MAAS_TUNE_API_KEY", "sk-secret-never-serialised")
    config = ray_api.ProviderConfig("http://127.0.0.1:9/v1", "m")
    setup = ray_api._setup(TASK, config, str(tmp_path / "s.sqlite"), None, None, 16)
    assert b"sk-secret" not in pickle.dumps(setup)


def test_provider_config_refuses_credentials_in_the_url_and_a_missing_key_variable(monkeypatch):
    from maas_tune.ray import ProviderConfig

    with pytest.raises(ConfigurationError, match="workers' environment"):
        ProviderConfig("https://user:sk-abc@api.example.com/v1", "m")
    with pytest.raises(ConfigurationError, match="kind must be one of"):
        ProviderConfig("https://api.example.com/v1", "m", kind="embeddings")
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="MY_KEY is not set"):
        ProviderConfig("https://api.example.com/v1", "m", api_key_env="MY_KEY").build()


def test_a_process_local_limiter_is_refused(ray_api, tmp_path):
    from maas_tune.providers.ratelimit import LocalRateLimiter, RateLimit

    config = ray_api.ProviderConfig("http://127.0.0.1:9/v1", "m")
    local = LocalRateLimiter(RateLimit(requests_per_minute=60))
    with pytest.raises(ConfigurationError, match="process-local limiter"):
        ray_api._setup(TASK, config, str(tmp_path / "s.sqlite"), None, local, 16)


def test_missing_ray_names_the_extra(monkeypatch):
    import maas_tune.ray as api

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"maas-tune\[ray\]"):
        api._ray()
