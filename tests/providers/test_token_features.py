"""Token features: the states of a prompt's last tokens, asked for, cached and served, and
Y-Tuning attending over them (its cross-attention must matter on real features)."""

from __future__ import annotations

import sqlite3

import httpx
import numpy as np
import pytest
import torch

from maas_tune._constants import DB_SCHEMA_VERSION
from maas_tune.client import Client
from maas_tune.data import Example
from maas_tune.decoders import YTuning
from maas_tune.decoders.ytuning import feature_scale, position_features
from maas_tune.errors import ConfigurationError
from maas_tune.scores import ProviderAnswer, Scores, pad_token_features
from maas_tune.storage import Store
from maas_tune.storage.cache import ScoreCache
from maas_tune.storage.migrations import STEPS
from maas_tune.storage.url import backend_of, sqlite_path
from maas_tune.task import Task

from ..conftest import REAL_MODEL
from ..fakes import FakeProvider

TASK = Task(
    name="toy",
    template="Review: {text}\nSentiment:",
    verbalizer={"negative": ["bad"], "positive": ["good"]},
)
TEXTS = ["a delight from start to finish", "dull and far too long", "great fun", "a mess"]
EXAMPLES = [Example(text=t, label=("positive", "negative")[i % 2]) for i, t in enumerate(TEXTS)]


def _real_scores(gemma, n_last: int) -> tuple[Scores, np.ndarray]:
    """Scores of :data:`EXAMPLES` with the real model's states of each prompt's last tokens."""
    prompts = [TASK.render(e) for e in EXAMPLES]
    answers = gemma.score_with_tokens(prompts, gemma.label_token_ids(["bad", "good"]), n_last)
    feats, mask = pad_token_features([a.token_features for a in answers])
    lp = np.stack([a.logprobs for a in answers])
    y = np.array([e.label for e in EXAMPLES])
    return Scores.from_arrays(lp, None, ("negative", "positive"), feats, mask), y


# -- (a) the cross-attention matters on real features ----------------------------------
@pytest.mark.model
def test_the_query_weights_change_the_logits_on_real_token_features(gemma):
    X, y = _real_scores(gemma, 8)
    assert X.token_features.shape[1:] == (8, 640) and X.token_mask.all()
    decoder = YTuning(epochs=5, random_state=0).fit(X, y)
    before = decoder.decision_function(X)
    decoder.params_["layer0.cross_q"] = torch.randn_like(decoder.params_["layer0.cross_q"]) * 3
    assert np.abs(decoder.decision_function(X) - before).max() > 1e-3


@pytest.mark.model
def test_with_one_state_per_input_the_query_weights_do_nothing(gemma):
    """The defect this replaces: one key per input makes the attention softmax 1."""
    X, y = _real_scores(gemma, 1)
    decoder = YTuning(epochs=5, random_state=0).fit(X, y)
    before = decoder.decision_function(X)
    decoder.params_["layer0.cross_q"] = torch.randn_like(decoder.params_["layer0.cross_q"]) * 3
    np.testing.assert_allclose(decoder.decision_function(X), before, atol=1e-5)


def test_one_shot_standardisation_keeps_the_coordinates_magnitudes():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 1, 6)) * np.array([0.1, 1, 1, 1, 5, 50])  # K = 2, 1 shot
    X = Scores.from_arrays(np.log(np.full((2, 2), 0.5)), None, ("a", "b"), feats)
    fitted = YTuning(epochs=1, random_state=0).fit(X, ["a", "b"])
    z = ((position_features(X)[0] - fitted.mean_) / fitted.scale_).abs()  # (2, 1, 6)
    assert not torch.allclose(z, torch.ones_like(z))  # per-coordinate std from 2 rows: all +-1
    assert float(z.max()) < 10 and float(z[..., 0].max()) < 0.5  # bounded, small stays small
    many = torch.as_tensor(rng.normal(size=(4000, 3)) * np.array([1.0, 2.0, 3.0]))
    torch.testing.assert_close(  # many inputs: the coordinates' own scales
        feature_scale(many, 4000),
        torch.tensor([1.0, 2.0, 3.0], dtype=many.dtype),
        atol=0.1,
        rtol=0.05,
    )


# -- (b) cached with the answer: a rerun sends nothing ----------------------------------
@pytest.mark.model
def test_token_features_round_trip_through_the_cache(gemma, db_path, monkeypatch):
    with Store(db_path) as store:
        plain = Client(gemma, cache=ScoreCache(store), progress=False).score(TASK, EXAMPLES)
        assert plain.token_features is None and plain.n_queries_sent == len(EXAMPLES)
        monkeypatch.setattr(gemma, "token_features", 8)
        first = Client(gemma, cache=ScoreCache(store), progress=False).score(TASK, EXAMPLES)
        assert first.n_queries_sent == len(EXAMPLES)  # answers without them never stand in
        again = Client(gemma, cache=ScoreCache(store), progress=False).score(TASK, EXAMPLES)
    assert again.n_queries_sent == 0
    assert first.token_features.shape == (len(EXAMPLES), 8, 640)
    assert first.token_features.dtype == np.float16 and first.token_mask.all()
    np.testing.assert_array_equal(again.token_features, first.token_features)
    np.testing.assert_allclose(  # the last token's state is the prediction position's
        again.token_features[:, -1].astype(np.float32), first.hidden, atol=0.05, rtol=0.01
    )


# -- (c) where the strategy gives none: one clear line ----------------------------------
def test_ytuning_without_token_features_says_how_to_get_them(db_path):
    with Store(db_path) as store:
        X = Client(FakeProvider(), cache=ScoreCache(store), progress=False).score(TASK, EXAMPLES)
    assert X.hidden is not None and X.token_features is None  # a hidden state is not enough
    with pytest.raises(ConfigurationError) as info:
        YTuning(epochs=1).fit(X, [e.label for e in EXAMPLES])
    message = str(info.value)
    assert "\n" not in message and "token_features=" in message
    assert "TransformersProvider" in message and "maas-tune serve" in message


# -- (d) maas-tune serve's extension returns them ----------------------------------------
@pytest.mark.model
def test_the_serve_extension_returns_token_features(gemma, real_server):
    from maas_tune.providers.openai import OpenAICompletionsProvider

    prompts = [TASK.render(e) for e in EXAMPLES[:2]]
    ids = gemma.label_token_ids(["bad", "good"])
    local = gemma.score_with_tokens(prompts, ids, 4)
    with OpenAICompletionsProvider(
        f"{real_server}/v1", REAL_MODEL, strategy="extension", token_features=4
    ) as remote:
        answers = remote.score(prompts, ["bad", "good"])
        assert "tokens@last-4" in remote.fingerprint()["reading"]
    for got, want in zip(answers, local):
        assert got.token_features.shape == (4, 640) and got.token_features.dtype == np.float16
        np.testing.assert_allclose(
            got.token_features.astype(np.float32),
            want.token_features.astype(np.float32),
            atol=0.05,
            rtol=0.01,
        )
    body = {
        "model": REAL_MODEL,
        "prompt": "Hi",
        "max_tokens": 0,
        "maas_tune": {"label_token_ids": ids, "return_token_features": 4},
    }
    ext = httpx.post(f"{real_server}/v1/completions", json=body).json()["choices"][0]["maas_tune"]
    assert ext["token_features_shape"] == [2, 640]  # "Hi" is BOS + 1 token: fewer than asked
    plain = {**body, "maas_tune": {"label_token_ids": ids}}
    ext = httpx.post(f"{real_server}/v1/completions", json=plain).json()["choices"][0]["maas_tune"]
    assert "token_features" not in ext  # not asked for: not sent


# -- (e) schema step 5 --------------------------------------------------------------------
def _write_v4(url: str) -> None:
    """A store as maas-tune wrote it at schema 4, holding one answer."""
    dialect = backend_of(url)
    statements = [sql for step in STEPS[:4] for sql in step.sql(dialect)]
    statements.append(
        "INSERT INTO meta VALUES ('application', 'maas-tune'), ('schema_version', '4')"
    )
    answer = (
        "INSERT INTO answers (key, model, prompt_tokens, created, n_logprobs, logprobs) "
        "VALUES ('old', 'm', 3, 0, 2, ?)"
    )
    blob = np.array([-1.0, -2.0], "<f4").tobytes()
    if dialect == "sqlite":
        with sqlite3.connect(sqlite_path(url)) as conn:
            for statement in statements:
                conn.execute(statement)
            conn.execute(answer, (blob,))
        conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.execute(answer.replace("?", "%s"), (blob,))


def test_a_schema_4_store_gets_the_token_columns(store_url: str) -> None:
    _write_v4(store_url)
    assert STEPS[4].version == 5 <= DB_SCHEMA_VERSION
    states = np.arange(12, dtype=np.float16).reshape(3, 4) / 7
    with Store(store_url) as store:
        cache = ScoreCache(store)
        old = cache.get_many(["old"])["old"]
        assert old.token_features is None and old.prompt_tokens == 3
        np.testing.assert_array_equal(old.logprobs, [-1, -2])
        cache.put_many({"new": ProviderAnswer(np.array([-0.5]), None, 4, token_features=states)})
        np.testing.assert_array_equal(cache.get_many(["new"])["new"].token_features, states)
