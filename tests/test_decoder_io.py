"""Saving and loading decoders: exact round trips, and a clear error for every kind of damage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save, save_file

from maas_tune._constants import DECODER_FORMAT_VERSION
from maas_tune.decoders import (
    BaseDecoder,
    ContextualCalibration,
    DecT,
    LinearProbe,
    ScoreLogisticRegression,
    ZeroShot,
)
from maas_tune.errors import ConfigurationError, NotFittedError, SerializationError
from maas_tune.persistence import DECODER_JSON_NAME as JSON_NAME
from maas_tune.persistence import TENSORS_NAME, load_decoder, save_decoder
from maas_tune.scores import Scores

from .decoders.test_decoders import fit, make_scores

METADATA = {
    "task": {"template": "Review: {text}\nSentiment:", "labels": ["neg", "neu", "pos"]},
    "provider": {"kind": "local", "model": "gemma-3-270m"},
}


def _fitted(decoder: BaseDecoder) -> tuple[BaseDecoder, Scores]:
    X, y = make_scores(6)
    return fit(decoder, X, y), make_scores(10, seed=2)[0]


@pytest.mark.parametrize(
    "decoder",
    [
        ZeroShot(),
        ContextualCalibration(),
        ScoreLogisticRegression(alpha=0.05),
        LinearProbe(),
        DecT(random_state=1, proto_dim=8, lam_grid=(0.5, 2.0)),
        DecT.paper(6, random_state=1),
    ],
    ids=["zero-shot", "calibrated", "lr", "probe", "dect", "dect-paper"],
)
def test_round_trip_gives_identical_predictions(decoder: BaseDecoder, tmp_path: Path) -> None:
    model, test = _fitted(decoder)
    out = save_decoder(model, tmp_path / "model", metadata=METADATA)
    assert (
        out == tmp_path / "model" and (out / JSON_NAME).is_file() and (out / TENSORS_NAME).is_file()
    )
    loaded, metadata = load_decoder(out)
    assert type(loaded) is type(model) and metadata == METADATA
    assert loaded.get_params() == model.get_params()
    assert list(loaded.classes_) == list(model.classes_)
    assert np.array_equal(loaded.predict_proba(test), model.predict_proba(test))
    assert np.array_equal(loaded.predict(test), model.predict(test))


def test_json_records_versions_class_and_params(tmp_path: Path) -> None:
    model, _ = _fitted(DecT(random_state=0, proto_dim=8))
    doc = json.loads((save_decoder(model, tmp_path / "m") / JSON_NAME).read_text())
    assert doc["format_version"] == DECODER_FORMAT_VERSION
    assert doc["class"] == "DecT" and doc["params"]["proto_dim"] == 8
    assert doc["classes"] == ["neg", "neu", "pos"] and doc["metadata"] == {}
    assert isinstance(doc["maas_tune_version"], str) and doc["state"]["lam_"] == model.lam_


def test_saving_twice_replaces_the_files(tmp_path: Path) -> None:
    first, test = _fitted(LinearProbe(alpha=1.0))
    second, _ = _fitted(LinearProbe(alpha=0.01))
    save_decoder(first, tmp_path / "m")
    save_decoder(second, tmp_path / "m")
    loaded, _ = load_decoder(tmp_path / "m")
    assert loaded.get_params()["alpha"] == 0.01
    assert np.array_equal(loaded.predict_proba(test), second.predict_proba(test))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [JSON_NAME, TENSORS_NAME]


def test_unfitted_or_unserialisable_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError):
        save_decoder(LinearProbe(), tmp_path / "m")
    model, _ = _fitted(ZeroShot())
    with pytest.raises(ConfigurationError, match="JSON"):
        save_decoder(model, tmp_path / "m", metadata={"x": object()})


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    model, _ = _fitted(DecT(random_state=0, proto_dim=8, lam_grid=(1.0, 4.0), lam_selection="best"))
    return save_decoder(model, tmp_path / "model", metadata=METADATA)


def _edit_json(path: Path, **changes: object) -> None:
    doc = json.loads((path / JSON_NAME).read_text())
    doc.update(changes)
    (path / JSON_NAME).write_text(json.dumps(doc))


def test_missing_files(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(SerializationError, match="missing"):
        load_decoder(tmp_path / "nowhere")
    (saved / TENSORS_NAME).unlink()
    with pytest.raises(SerializationError, match=f"{TENSORS_NAME} is missing"):
        load_decoder(saved)


def test_truncated_safetensors(saved: Path) -> None:
    blob = (saved / TENSORS_NAME).read_bytes()
    (saved / TENSORS_NAME).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SerializationError, match="truncated or corrupt"):
        load_decoder(saved)
    (saved / TENSORS_NAME).write_bytes(b"\x00" * 3)
    with pytest.raises(SerializationError, match="truncated or corrupt"):
        load_decoder(saved)


def test_flipped_byte_in_tensor_data_fails_the_checksum(saved: Path) -> None:
    blob = bytearray((saved / TENSORS_NAME).read_bytes())
    blob[-5] ^= 0xFF  # inside the last tensor's data: still parses
    (saved / TENSORS_NAME).write_bytes(bytes(blob))
    with pytest.raises(SerializationError, match="checksum"):
        load_decoder(saved)


def test_invalid_json(saved: Path) -> None:
    (saved / JSON_NAME).write_text('{"format": "maas-tune-decoder", ')
    with pytest.raises(SerializationError, match="not valid JSON"):
        load_decoder(saved)
    (saved / JSON_NAME).write_text('{"hello": 1}')
    with pytest.raises(SerializationError, match="not a maas-tune decoder"):
        load_decoder(saved)


def test_unknown_class(saved: Path) -> None:
    _edit_json(saved, **{"class": "GPTHead"})
    with pytest.raises(SerializationError, match="unknown decoder class 'GPTHead'"):
        load_decoder(saved)


def test_newer_format_version(saved: Path) -> None:
    _edit_json(saved, format_version=DECODER_FORMAT_VERSION + 1)
    with pytest.raises(SerializationError, match="upgrade maas-tune"):
        load_decoder(saved)


def test_tensor_shape_mismatch(saved: Path) -> None:
    tensors = {
        "feature_mean_": torch.zeros(16),
        "feature_scale_": torch.ones(16),
        "score_offset_": torch.zeros(3),
        "projection_": torch.zeros(4, 16, 9),
        "prototypes_": torch.zeros(3, 8),
        "radii_": torch.zeros(4, 3),
        "member_lams_": torch.ones(4),
        "member_weights_": torch.full((4,), 0.25),
        "member_temps_": torch.ones(4),
    }
    save_file(tensors, str(saved / TENSORS_NAME))
    with pytest.raises(SerializationError, match="'projection_' has shape"):
        load_decoder(saved)


def test_tensors_inconsistent_with_classes(saved: Path) -> None:
    _edit_json(saved, classes=["a", "b"])  # 3-class tensors, 2 classes declared
    with pytest.raises(SerializationError, match="inconsistent"):
        load_decoder(saved)


def test_unknown_parameter(saved: Path) -> None:
    doc = json.loads((saved / JSON_NAME).read_text())
    _edit_json(saved, params={**doc["params"], "dropout": 0.1})
    with pytest.raises(SerializationError, match="inconsistent"):
        load_decoder(saved)


def test_io_never_unpickles() -> None:
    source = (Path(__file__).parents[1] / "maas_tune" / "persistence.py").read_text()
    assert "torch.load" not in source and "import pickle" not in source


def test_content_free_survives(tmp_path: Path) -> None:
    model, _test = _fitted(ContextualCalibration())
    loaded, _ = load_decoder(save_decoder(model, tmp_path / "cc"))
    assert torch.allclose(loaded.content_free_, model.content_free_)
    assert np.allclose(np.exp(loaded.content_free_.numpy()).sum(), 1.0)


def test_dect_saved_before_member_temperatures_loads_with_members_at_one(saved: Path) -> None:
    """A save without ``member_temps_`` (older maas-tune) loads; its members vote at T = 1."""
    tensors = load_file(str(saved / TENSORS_NAME))
    old = {k: v for k, v in tensors.items() if k != "member_temps_"}
    blob = save(old)
    (saved / TENSORS_NAME).write_bytes(blob)
    doc = json.loads((saved / JSON_NAME).read_text())
    del doc["tensors"]["member_temps_"]
    del doc["params"]["vote_temperature"], doc["params"]["scale_prior"]
    _edit_json(saved, tensors=doc["tensors"], params=doc["params"])
    _edit_json(saved, tensors_sha256=hashlib.sha256(blob).hexdigest())
    model, _ = load_decoder(saved)
    assert torch.equal(model.member_temps_, torch.ones_like(model.member_lams_))
    X, _ = make_scores()
    assert model.predict_proba(X).shape == (len(X), 3)
