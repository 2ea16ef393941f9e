"""The in-process transformers provider on the real Gemma 3 270M model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from maas_tune.errors import TaskError

pytestmark = pytest.mark.model

PROMPTS = [
    "Review: a gorgeous, witty, seductive movie.\nSentiment:",
    "Review: dull\nSentiment:",
    "Review: the plot is a mess and the acting is worse, an utterly forgettable two hours.\nSentiment:",
]


def test_label_token_ids_are_single_tokens(gemma):
    ids = gemma.label_token_ids(["negative", "positive"])
    assert len(ids) == 2 and ids[0] != ids[1]
    assert gemma.tokenizer.convert_ids_to_tokens(ids) == ["▁negative", "▁positive"]


def test_multi_token_word_is_refused_with_its_tokenization(gemma):
    with pytest.raises(TaskError) as err:
        gemma.label_token_ids(["positive", "supercalifragilistic"])
    assert "supercalifragilistic" in str(err.value) and "tokens" in str(err.value)


@pytest.mark.parametrize("pack_tokens", [512, 40, None], ids=["packed", "packed-in-runs", "padded"])
def test_answers_match_a_plain_unbatched_forward_pass(gemma, monkeypatch, pack_tokens):
    import torch

    monkeypatch.setattr(gemma, "pack_tokens", pack_tokens)
    ids = gemma.label_token_ids(["negative", "positive"])
    answers = gemma.score(
        PROMPTS, ["negative", "positive"]
    )  # one packed row / runs of <= 40 tokens / a padded batch
    for prompt, answer in zip(PROMPTS, answers):
        enc = gemma.tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = gemma.model(**enc, output_hidden_states=True)
        expected = torch.log_softmax(out.logits[0, -1].float(), -1)[ids].numpy()
        np.testing.assert_allclose(answer.logprobs, expected, atol=2e-4)
        np.testing.assert_allclose(answer.hidden, out.hidden_states[-1][0, -1].numpy(), atol=5e-4)
        assert answer.prompt_tokens == enc["input_ids"].shape[1]
        assert answer.hidden.shape == (640,) and np.isfinite(answer.hidden).all()


def test_pack_runs_respects_prompt_and_token_caps():
    from maas_tune.providers.packing import pack_runs

    assert pack_runs([10, 10, 10, 700, 5, 5], max_prompts=2, max_tokens=25) == [
        [0, 1],
        [2],
        [3],
        [4, 5],
    ]
    assert pack_runs([], max_prompts=4, max_tokens=10) == []


def test_logprobs_are_normalised_over_the_full_vocabulary(gemma):
    ids = list(range(gemma.tokenizer.vocab_size))
    (answer,) = gemma.score_with_tokens(PROMPTS[:1], ids, 0)
    assert np.logaddexp.reduce(answer.logprobs.astype(np.float64)) == pytest.approx(0.0, abs=1e-3)


def test_sentiment_direction_is_sensible(gemma):
    good, _, bad = gemma.score(PROMPTS, ["negative", "positive"])
    margin_good = good.logprobs[1] - good.logprobs[0]
    margin_bad = bad.logprobs[1] - bad.logprobs[0]
    assert margin_good > margin_bad


def test_fingerprint_names_model_and_strategy_without_secrets(gemma):
    fp = gemma.fingerprint()
    assert fp["provider"] == "transformers" and fp["model"].startswith("gemma-3-270m")
    assert fp["strategy"] == "next-token-logprobs"
    assert not any("key" in k.lower() for k in fp)


@pytest.mark.slow
def test_cold_conversion_from_gguf_gives_the_same_model(gemma, tmp_path, monkeypatch):
    """A fresh machine has no converted checkpoint: convert from the GGUF package, once."""
    from maas_tune.providers._model_files import CONVERSION_MARKER, resolve_model
    from maas_tune.providers.local import TransformersProvider

    monkeypatch.setenv("MAAS_TUNE_CACHE_DIR", str(tmp_path))
    resolved = resolve_model("gemma-3-270m")
    assert resolved.directory.is_relative_to(tmp_path)
    assert (resolved.directory / CONVERSION_MARKER).is_file()
    assert not list(resolved.directory.parent.glob(".converting-*"))  # no half-written leftovers
    assert resolve_model("gemma-3-270m").directory == resolved.directory  # second call: no work
    fresh = TransformersProvider()
    assert fresh.fingerprint() == gemma.fingerprint()
    a, b = (
        fresh.score(PROMPTS, ["negative", "positive"]),
        gemma.score(PROMPTS, ["negative", "positive"]),
    )
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-5)
        np.testing.assert_allclose(x.hidden, y.hidden, atol=1e-4)
    fresh.close()
    shutil.rmtree(resolved.directory)  # a 1 GB checkpoint: do not leave it in pytest's tmp


def test_concurrent_calls_get_their_own_hidden_states(gemma):
    """Threads share one model: each call must get its own batch's answers."""
    from concurrent.futures import ThreadPoolExecutor

    expected = [gemma.score([p], ["negative", "positive"])[0] for p in PROMPTS]
    with ThreadPoolExecutor(6) as pool:
        got = list(
            pool.map(
                lambda i: gemma.score([PROMPTS[i % 3]], ["negative", "positive"])[0], range(12)
            )
        )
    for i, answer in enumerate(got):
        np.testing.assert_allclose(answer.logprobs, expected[i % 3].logprobs, atol=1e-5)
        np.testing.assert_allclose(answer.hidden, expected[i % 3].hidden, atol=1e-4)
