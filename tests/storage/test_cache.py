"""Tests for the answer cache: keys, round trips, validation, other processes, crashes, upkeep.

Every test that takes the ``cache`` fixture runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import maas_tune.storage.cache as cache_module
from maas_tune._constants import CACHE_READ_CHUNK
from maas_tune.errors import CacheCorruptionError, ConfigurationError, ProviderResponseError
from maas_tune.scores import ProviderAnswer
from maas_tune.storage import Store
from maas_tune.storage.cache import CachedAnswer, ScoreCache, cache_key

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 60
FINGERPRINT = {"provider": "local", "model": "gemma-3-270m", "strategy": "next-token"}


# Helpers import maas_tune's store modules without running the package __init__, which
# loads torch: 64 racing workers then start in well under a second on a small machine.
_LIGHT_PACKAGE = (
    "import sys, types; _pkg = types.ModuleType('maas_tune'); "
    f"_pkg.__path__ = [{str(REPO / 'maas_tune')!r}]; sys.modules['maas_tune'] = _pkg\n"
)


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    """Start ``python -c code args`` on this checkout; stdout and stderr are piped."""
    return subprocess.Popen(
        [sys.executable, "-c", _LIGHT_PACKAGE + code, *args],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _run(code: str, *args: str) -> str:
    proc = _python(code, *args)
    out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0, err
    return out


@pytest.fixture
def cache(store_url: str):
    opened = ScoreCache(store_url)
    yield opened
    opened.close()


def _answer(seed: int, *, t: int = 3, d: int | None = 8) -> ProviderAnswer:
    rng = np.random.default_rng(seed)
    hidden = None if d is None else rng.standard_normal(d).astype(np.float32)
    return ProviderAnswer(-rng.random(t).astype(np.float32) - 0.1, hidden, 10 + seed)


def test_key_is_canonical() -> None:
    key = cache_key(FINGERPRINT, "Review: great. Sentiment:", [5, 7])
    assert len(key) == 64 and int(key, 16) >= 0
    reordered = dict(reversed(list(FINGERPRINT.items())))
    assert cache_key(reordered, "Review: great. Sentiment:", (np.int64(5), np.int64(7))) == key
    assert cache_key(FINGERPRINT, "Review: great. Sentiment:", [5, 7], None) == key
    assert cache_key(FINGERPRINT, "Review: great. Sentiment:", [5, 7], {}) == key


def test_key_changes_with_every_input(monkeypatch: pytest.MonkeyPatch) -> None:
    base = cache_key(FINGERPRINT, "prompt", [1, 2], {"hidden": True})
    variants = [
        cache_key({**FINGERPRINT, "model": "other"}, "prompt", [1, 2], {"hidden": True}),
        cache_key(FINGERPRINT, "prompt ", [1, 2], {"hidden": True}),
        cache_key(FINGERPRINT, "prompt", [2, 1], {"hidden": True}),
        cache_key(FINGERPRINT, "prompt", [1, 2, 3], {"hidden": True}),
        cache_key(FINGERPRINT, "prompt", [1, 2], {"hidden": False}),
        cache_key(FINGERPRINT, "prompt", [1, 2]),
    ]
    monkeypatch.setattr(cache_module, "CACHE_SCHEMA_VERSION", cache_module.CACHE_SCHEMA_VERSION + 1)
    variants.append(cache_key(FINGERPRINT, "prompt", [1, 2], {"hidden": True}))
    assert len({base, *variants}) == len(variants) + 1


@pytest.mark.parametrize("fingerprint", [{"model": object()}, {"temperature": float("nan")}])
def test_key_refuses_non_json(fingerprint: dict) -> None:
    with pytest.raises(ConfigurationError, match="plain JSON"):
        cache_key(fingerprint, "p", [1])


@pytest.mark.parametrize("d", [8, None])
def test_round_trip(cache: ScoreCache, d: int | None) -> None:
    answer = _answer(1, d=d)
    answer.logprobs[1] = -np.inf  # a token the model rules out is a valid answer
    before = time.time()
    cache.put_many({"k1": answer}, model="m")
    got = cache.get_many(["k1"])["k1"]
    assert got.logprobs.dtype == np.float32 and got.logprobs.shape == (3,)
    np.testing.assert_array_equal(got.logprobs, answer.logprobs)
    if d is None:
        assert got.hidden is None
    else:
        assert got.hidden is not None and got.hidden.dtype == np.float32
        np.testing.assert_array_equal(got.hidden, answer.hidden)
    assert got.prompt_tokens == 11
    assert before <= got.created <= time.time()


def test_cached_answer_keeps_its_time_and_replaces(cache: ScoreCache) -> None:
    old = CachedAnswer(np.array([-1.0, -2.0], np.float32), None, 4, created=1000.0)
    cache.put_many({"k": _answer(2)})
    cache.put_many({"k": old})
    got = cache.get_many(["k"])["k"]
    assert got.created == 1000.0 and got.prompt_tokens == 4 and got.hidden is None
    assert len(cache) == 1


def test_misses_are_absent_and_chunks_cover_everything(cache: ScoreCache) -> None:
    n = CACHE_READ_CHUNK * 2 + 7
    cache.put_many({f"k{i}": _answer(i, d=4) for i in range(n)})
    wanted = [f"k{i}" for i in range(n)] + ["missing", "k0"]
    got = cache.get_many(wanted)
    assert set(got) == {f"k{i}" for i in range(n)}
    assert got[f"k{n - 1}"].prompt_tokens == 10 + n - 1
    assert cache.get_many([]) == {} and cache.get_many(["nope"]) == {}


def test_damaged_entry_is_reported(cache: ScoreCache) -> None:
    cache.put_many({"k": _answer(0)})
    with cache.store.transaction() as conn:
        conn.execute("UPDATE answers SET n_logprobs = n_logprobs + 1")
    with pytest.raises(CacheCorruptionError, match="damaged"):
        cache.get_many(["k"])


@pytest.mark.parametrize(
    "answer",
    [
        ProviderAnswer(np.array([-1.0, np.nan]), None, 3),
        ProviderAnswer(np.array([-1.0, np.inf]), None, 3),
        ProviderAnswer(np.array([[-1.0, -2.0]]), None, 3),
        ProviderAnswer(np.array(["a", "b"]), None, 3),
        ProviderAnswer(np.array([-1.0]), np.array([0.5, -np.inf]), 3),
        ProviderAnswer(np.array([-1.0]), None, -1),
    ],
    ids=["nan", "plus-inf", "2d", "text", "hidden-inf", "negative-usage"],
)
def test_bad_answers_are_never_stored(cache: ScoreCache, answer: ProviderAnswer) -> None:
    with pytest.raises(ProviderResponseError, match="not cached"):
        cache.put_many({"good": _answer(0), "bad": answer})
    assert len(cache) == 0  # the good one in the same batch is not stored either


def test_put_inside_a_failing_transaction_leaves_nothing(cache: ScoreCache) -> None:
    with pytest.raises(RuntimeError), cache.store.transaction() as conn:
        cache.put_many({"k": _answer(0)}, conn=conn)
        assert "k" in cache.get_many(["k"])  # visible inside the transaction
        raise RuntimeError("the budget commit failed")
    assert cache.get_many(["k"]) == {}
    with pytest.raises(ConfigurationError, match="no open transaction"):
        cache.put_many({"k": _answer(0)}, conn=cache.store.connection())


_WRITE_ONE = """
import sys, numpy as np
from maas_tune.storage.cache import ScoreCache
from maas_tune.scores import ProviderAnswer
answer = ProviderAnswer(np.array([-0.5, -1.5]), np.arange(4.0), 9)
ScoreCache(sys.argv[1]).put_many({"from-child": answer}, model="c")
"""

_READ_ONE = """
import json, sys
from maas_tune.storage.cache import ScoreCache
got = ScoreCache(sys.argv[1]).get_many(["from-parent", "absent"])
print(json.dumps({k: [v.logprobs.tolist(), v.prompt_tokens] for k, v in got.items()}))
"""


def test_other_processes_see_each_others_answers(cache: ScoreCache) -> None:
    path = cache.store.url
    _run(_WRITE_ONE, path)
    got = cache.get_many(["from-child"])["from-child"]
    np.testing.assert_array_equal(got.logprobs, [-0.5, -1.5])
    np.testing.assert_array_equal(got.hidden, np.arange(4.0))
    cache.put_many({"from-parent": ProviderAnswer(np.array([-2.0]), None, 5)})
    assert json.loads(_run(_READ_ONE, path)) == {"from-parent": [[-2.0], 5]}


_WRITE_FOREVER = """
import os, sys, numpy as np
from maas_tune.storage.cache import ScoreCache
from maas_tune.scores import ProviderAnswer
cache = ScoreCache(sys.argv[1])
for i in range(10**6):
    batch = {f"b{i}-{j}": ProviderAnswer(np.full(3, -i), np.full(16, j), i) for j in range(10)}
    cache.put_many(batch)
    with open(sys.argv[2] + ".tmp", "w") as f:  # reported only once the commit has returned
        f.write(str(i))
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])
"""


def _wait_for_progress(progress: Path, at_least: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and int(progress.read_text()) >= at_least:
            return
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"the writer made no progress: {proc.communicate()[1]}")


def test_kill_9_keeps_every_committed_answer(cache: ScoreCache, tmp_path: Path) -> None:
    progress = tmp_path / "progress"
    proc = _python(_WRITE_FOREVER, cache.store.url, str(progress))
    try:
        _wait_for_progress(progress, 20, proc)
        proc.kill()  # SIGKILL on POSIX: no cleanup, no atexit
    finally:
        proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    last = int(progress.read_text())
    keys = [f"b{i}-{j}" for i in range(last + 1) for j in range(10)]
    with Store(cache.store.url) as fresh:
        got = ScoreCache(fresh).get_many(keys)
    assert len(got) == len(keys)
    assert got[f"b{last}-9"].prompt_tokens == last
    np.testing.assert_array_equal(got[f"b{last}-9"].hidden, np.full(16, 9.0))


def test_stats_export_clear(cache: ScoreCache, tmp_path: Path) -> None:
    cache.put_many({"a1": _answer(1), "a2": _answer(2, d=None)}, model="alpha")
    cache.put_many({"b1": ProviderAnswer(np.array([-np.inf, -1.0]), None, 2)}, model="beta")
    stats = cache.stats()
    assert stats.entries == 3 == len(cache)
    assert stats.per_model == {"alpha": 2, "beta": 1}
    assert stats.path == cache.store.path and stats.size_bytes > 0
    assert stats.oldest is not None and stats.newest is not None and stats.oldest <= stats.newest

    out = tmp_path / "export.jsonl"
    assert cache.export(out) == 3
    records = {r["key"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert set(records) == {"a1", "a2", "b1"}
    assert records["a2"]["hidden"] is None and records["a2"]["model"] == "alpha"
    assert records["b1"]["logprobs"] == [-np.inf, -1.0] and records["b1"]["prompt_tokens"] == 2
    np.testing.assert_allclose(records["a1"]["hidden"], _answer(1).hidden, rtol=1e-6)
    stream = io.StringIO()
    assert cache.export(stream) == 3 and stream.getvalue() == out.read_text(encoding="utf-8")

    assert cache.clear("alpha") == 2
    assert cache.stats().per_model == {"beta": 1}
    assert cache.clear() == 1 and len(cache) == 0 and cache.stats().oldest is None


def test_empty_put_is_a_no_op(cache: ScoreCache) -> None:
    cache.put_many({})
    assert len(cache) == 0
    with pytest.raises(ConfigurationError, match="non-empty strings"):
        cache.put_many({"": _answer(0)})
