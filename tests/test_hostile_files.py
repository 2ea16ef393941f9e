"""Hostile or broken files: saved decoders and methods, data files and task files that are
crafted, edited or damaged give one maas-tune error naming the file and the field (or line),
never a traceback, a crash, or a silent NaN.

The saved artefacts here are crafted consistently (tensors rewritten with matching shapes,
dtypes and checksum in the JSON), so each case reaches the check it is about instead of
stopping at the checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from maas_tune.cli import commands as _cli_commands
from maas_tune.cli import main
from maas_tune.client import Client
from maas_tune.data import load_examples, sample_k_shot
from maas_tune.datasets import load as load_dataset
from maas_tune.datasets import load_task
from maas_tune.decoders import (
    ContextualCalibration,
    DecT,
    LinearProbe,
    ScoreLogisticRegression,
    YTuning,
)
from maas_tune.errors import ConfigurationError, DataError, SerializationError, TaskError
from maas_tune.methods import BDPL, InContextLearning
from maas_tune.persistence import DECODER_JSON_NAME as JSON_NAME
from maas_tune.persistence import TENSORS_NAME, load_decoder, load_method, save_decoder, save_method
from maas_tune.task import Task

from .decoders.test_decoders import fit, make_scores
from .fakes import FakeProvider

ROOT = Path(__file__).parents[1]
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
Doc = dict[str, Any]
Tensors = dict[str, torch.Tensor]


# -- crafting artefacts -----------------------------------------------------------------
def craft(
    src: Path,
    dst: Path,
    doc_edit: Callable[[Doc], Any] | None = None,
    tensors_edit: Callable[[Tensors], Any] | None = None,
    json_name: str = JSON_NAME,
) -> Path:
    """A copy of the saved artefact ``src`` with its tensors and / or JSON edited; after a
    tensors edit the JSON's shapes, dtypes and checksum are made to match."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / json_name).read_text())
    if tensors_edit is not None:
        tensors = dict(load_safetensors((dst / TENSORS_NAME).read_bytes()))
        tensors_edit(tensors)
        blob = save_safetensors(tensors)
        (dst / TENSORS_NAME).write_bytes(blob)
        doc["tensors"] = {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in tensors.items()
        }
        doc["tensors_sha256"] = hashlib.sha256(blob).hexdigest()
    if doc_edit is not None:
        replaced = doc_edit(doc)
        doc = doc if replaced is None else replaced
    text = doc if isinstance(doc, str) else json.dumps(doc)
    (dst / json_name).write_text(text, encoding="utf-8", errors="surrogatepass")
    return dst


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    """An edit setting ``doc[a][b]...`` for ``path`` "a.b" ("a.b-" deletes the key)."""

    def edit(doc: Doc) -> None:
        *parents, last = path.rstrip("-").split(".")
        node = doc
        for key in parents:
            node = node[key]
        if path.endswith("-"):
            del node[last]
        else:
            node[last] = value

    return edit


def _all(edit: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Tensors], None]:
    def tensors_edit(tensors: Tensors) -> None:
        for name in tensors:
            tensors[name] = edit(tensors[name])

    return tensors_edit


def _one(name: str, edit: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Tensors], None]:
    def tensors_edit(tensors: Tensors) -> None:
        tensors[name] = edit(tensors[name])

    return tensors_edit


def _with_nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


# -- a decoder saved by `maas-tune fit`, and `maas-tune predict` on it -------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A DecT saved by the CLI (with its metadata), through a fake provider."""
    tmp = tmp_path_factory.mktemp("fitted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_cli_commands, "_provider", lambda args, model=None: FakeProvider())
        argv = [
            "fit",
            "--dataset",
            "sst2",
            "--shots",
            "4",
            "--method",
            "dect",
            "--quiet",
            "--cache",
            str(tmp / "c.sqlite"),
            "--out",
            str(tmp / "decoder"),
        ]
        assert main(argv) == 0
    yield tmp


@pytest.fixture()
def predict(fitted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    """Run `maas-tune predict --decoder DIR` in process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(_cli_commands, "_provider", lambda args, model=None: FakeProvider())
    shutil.copy(fitted / "c.sqlite", tmp_path / "c.sqlite")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "a joyous film"}\n{"text": "tedious"}\n')

    def run(decoder: Path, input_file: Path = inputs) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(
            [
                "predict",
                "--decoder",
                str(decoder),
                "--input",
                str(input_file),
                "--cache",
                str(tmp_path / "c.sqlite"),
                "--quiet",
            ]
        )
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_the_untouched_decoder_predicts(fitted: Path, predict) -> None:
    code, out, _ = predict(fitted / "decoder")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 2
    assert all(np.isfinite(list(r["probabilities"].values())).all() for r in rows)


HOSTILE_DECODERS = {
    "n_threads 1,000,000 (was SIGSEGV)": (
        {"doc_edit": _set("params.n_threads", 1_000_000)},
        [JSON_NAME, "params.n_threads must be <= 256, got 1000000"],
    ),
    "float16 tensors": (
        {"tensors_edit": _all(lambda t: t.half())},
        ["is float16, expected float32 (decoder.json declares 'float16')"],
    ),
    "int64 tensors": ({"tensors_edit": _all(lambda t: t.long())}, ["is int64, expected float32"]),
    "bool tensors": ({"tensors_edit": _all(lambda t: t > 0)}, ["is bool, expected float32"]),
    "a NaN in a tensor (was NaN in the output, exit 0)": (
        {"tensors_edit": _one("prototypes_", _with_nan)},
        [TENSORS_NAME, "'prototypes_' holds NaN or infinite values"],
    ),
    "an infinite scale": (
        {"tensors_edit": _one("feature_scale_", lambda t: t * float("inf"))},
        [TENSORS_NAME, "'feature_scale_' holds NaN or infinite values"],
    ),
    "a zero scale": (
        {"tensors_edit": _one("feature_scale_", torch.zeros_like)},
        [TENSORS_NAME, "'feature_scale_' (a standardisation scale) must be positive"],
    ),
    "metadata without task (was KeyError)": (
        {"doc_edit": _set("metadata.task-", None)},
        [JSON_NAME, "the metadata has no 'task'"],
    ),
    "metadata model a list (was TypeError)": (
        {"doc_edit": _set("metadata.model", ["x"])},
        [JSON_NAME, "metadata.model must be a string", "['x']"],
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_DECODERS))
def test_predict_with_a_hostile_decoder_is_one_line_and_exit_1(
    case: str, fitted: Path, predict, tmp_path: Path
) -> None:
    edits, needles = HOSTILE_DECODERS[case]
    code, out, err = predict(craft(fitted / "decoder", tmp_path / "hostile", **edits))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("maas-tune: error: ") and "fit and save the decoder again" in err
    for needle in needles:
        assert needle in err


def test_huge_n_threads_is_refused_by_the_console_script_not_a_segfault(
    fitted: Path, tmp_path: Path
) -> None:
    """In its own process: torch.set_num_threads(1_000_000) killed it with SIGSEGV (exit 139)."""
    hostile = craft(
        fitted / "decoder", tmp_path / "hostile", doc_edit=_set("params.n_threads", 1_000_000)
    )
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "fine"}\n')
    shutil.copy(fitted / "c.sqlite", tmp_path / "c.sqlite")
    script = (
        "import sys; from tests.fakes import FakeProvider\n"
        "from maas_tune.cli import commands as _cli_commands\n"
        "_cli_commands._provider = lambda args, model=None: FakeProvider()\n"
        "from maas_tune.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = [
        "predict",
        "--decoder",
        str(hostile),
        "--input",
        str(inputs),
        "--cache",
        str(tmp_path / "c.sqlite"),
        "--quiet",
    ]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr[-500:]
    assert proc.stderr.count("\n") == 1 and "n_threads must be <= 256" in proc.stderr


def test_missing_metadata_key_is_also_a_key_error(fitted: Path, tmp_path: Path) -> None:
    _decoder, meta = load_decoder(
        craft(fitted / "decoder", tmp_path / "d", doc_edit=_set("metadata.task-", None))
    )
    assert meta.get("task") is None and "task" not in meta
    with pytest.raises(KeyError):
        meta["task"]


# -- saved decoders through the library: one error naming the file and the field ---------
_DEEP = "[" * 5000 + "]" * 5000
BROKEN_DECODER_JSON: dict[str, tuple[Callable[[Doc], Any], str]] = {
    "a list": (lambda doc: [doc], "is not a maas-tune decoder file"),
    "nested 5,000 deep": (lambda doc: _DEEP, "nested too deeply"),
    "deep inside metadata": (
        lambda doc: json.dumps(doc)[:-1] + ', "x": ' + _DEEP + "}",
        "nested too deeply",
    ),
    "NaN literal": (
        lambda doc: json.dumps(doc).replace('"lam_": ', '"lam_": NaN, "y": '),
        "not valid JSON (NaN is not a JSON number)",
    ),
    "1e400": (lambda doc: json.dumps(doc).replace('"lr": 0.01', '"lr": 1e400'), "too large"),
    "5,000-digit integer": (
        lambda doc: json.dumps(doc).replace('"epochs": 30', '"epochs": ' + "9" * 5000),
        "not valid JSON (an integer of 5000 digits)",
    ),
    "lone surrogate in classes": (
        _set("classes", ["neg\ud800", "pos"]),
        "not valid JSON (it holds a lone UTF-16 surrogate \\ud800",
    ),
    "huge epochs": (_set("params.epochs", 10**30), "params.epochs must be <= 1000000"),
    "negative proto_dim": (_set("params.proto_dim", -3), "params.proto_dim must be >= 1"),
    "n_threads as a string": (_set("params.n_threads", "1"), "params.n_threads"),
    "n_threads true": (_set("params.n_threads", True), "params.n_threads"),
    "unknown parameter": (_set("params.dropout", 0.1), "params.dropout is not a known field"),
    "unknown calibration": (_set("params.calibration", "magic"), "calibration must be one of"),
    "lam_grid of strings": (_set("params.lam_grid", ["a"]), "params.lam_grid.0"),
    "state lam_ a string": (_set("state.lam_", "x"), "state.lam_"),
    "state lam_ missing": (_set("state.lam_-", None), "state.lam_ is required"),
    "state cv_loss_ a dict": (_set("state.cv_loss_", {}), "state.cv_loss_"),
    "classes missing": (_set("classes-", None), "classes is required"),
    "classes empty": (_set("classes", []), "classes must have at least 1 item(s), got []"),
    "classes repeated": (_set("classes", ["neg", "neg"]), "classes are not unique"),
    "classes not strings": (_set("classes", [1, 2]), "classes.0"),
    "params a list": (_set("params", [1]), "params"),
    "metadata a list": (_set("metadata", []), "metadata"),
    "metadata missing": (_set("metadata-", None), "metadata is required"),
    "tensor spec a list": (_set("tensors.radii_", [1, 2]), "tensors.radii_"),
    "negative shape": (
        _set("tensors.radii_.shape", [-1, 2]),
        "tensors.radii_.shape.0 must be >= 0",
    ),
    "huge shape": (_set("tensors.radii_.shape", [2**70]), "tensors.radii_.shape.0 must be <="),
    "shape of 100 dims": (_set("tensors.radii_.shape", [1] * 100), "tensors.radii_.shape"),
    "a tensor the file lacks": (
        _set("tensors.evil", {"shape": [1], "dtype": "float32"}),
        "do not match the declared",
    ),
    "wrong shape": (_set("tensors.radii_.shape", [7, 7]), "'radii_' has shape"),
    "declared dtype wrong": (
        _set("tensors.radii_.dtype", "int8"),
        "'radii_' is float32, expected float32 (decoder.json declares 'int8')",
    ),
    "checksum not hex": (_set("tensors_sha256", "zz"), "tensors_sha256"),
    "format_version true": (_set("format_version", True), "invalid format_version"),
    "class a list": (_set("class", ["DecT"]), "unknown decoder class ['DecT']"),
}


@pytest.mark.parametrize("case", list(BROKEN_DECODER_JSON))
def test_a_broken_decoder_json_names_the_file_and_field(
    case: str, fitted: Path, tmp_path: Path
) -> None:
    edit, needle = BROKEN_DECODER_JSON[case]
    with pytest.raises(SerializationError) as info:
        load_decoder(craft(fitted / "decoder", tmp_path / "d", doc_edit=edit))
    message = str(info.value)
    assert needle in message and str(tmp_path / "d") in message and "\n" not in message


BROKEN_DECODER_TENSORS: dict[str, tuple[Callable[[Tensors], Any], str]] = {
    "an extra tensor": (lambda ts: ts.update(evil=torch.zeros(1)), "tensors expected"),
    "a missing tensor": (lambda ts: ts.pop("radii_"), "tensors expected"),
    "a renamed tensor": (lambda ts: ts.update(radii=ts.pop("radii_")), "got ['feature_mean_'"),
    "a tensor of another shape": (
        _one("radii_", lambda t: t[:, :1].contiguous()),
        "inconsistent: radii_ has shape",
    ),
    "float64 tensors": (_all(lambda t: t.double()), "is float64, expected float32"),
    "an empty tensor": (_one("prototypes_", lambda t: t[:0].contiguous()), "inconsistent"),
}


@pytest.mark.parametrize("case", list(BROKEN_DECODER_TENSORS))
def test_broken_decoder_tensors_name_the_tensor(case: str, fitted: Path, tmp_path: Path) -> None:
    edit, needle = BROKEN_DECODER_TENSORS[case]
    with pytest.raises(SerializationError, match="the save is damaged or was edited") as info:
        load_decoder(craft(fitted / "decoder", tmp_path / "d", tensors_edit=edit))
    assert needle in str(info.value)


@pytest.mark.parametrize("cut", [0, 7, 8, 100, -1])
def test_truncated_safetensors_at_any_point(cut: int, fitted: Path, tmp_path: Path) -> None:
    saved = craft(fitted / "decoder", tmp_path / "d")
    blob = (saved / TENSORS_NAME).read_bytes()
    (saved / TENSORS_NAME).write_bytes(blob[:cut])
    with pytest.raises(SerializationError, match=f"{TENSORS_NAME} is truncated or corrupt"):
        load_decoder(saved)


def test_a_safetensors_header_claiming_a_huge_size(fitted: Path, tmp_path: Path) -> None:
    saved = craft(fitted / "decoder", tmp_path / "d")
    (saved / TENSORS_NAME).write_bytes((2**62).to_bytes(8, "little") + b"{}")
    with pytest.raises(SerializationError, match="truncated or corrupt"):
        load_decoder(saved)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.text(max_size=8)
    | st.integers(-(2**70), 2**70)
    | st.integers(-3, 300)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return [prefix]
    return [prefix] + [p for k, v in items for p in _leaf_paths(v, (*prefix, k))]


@given(data=st.data())
@FUZZ
def test_fuzzed_decoder_json_loads_and_predicts_or_is_refused(
    data: st.DataObject, fitted: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Any one value of decoder.json replaced by any JSON value: a decoder whose predictions
    are finite probabilities, or a SerializationError; never another exception."""
    doc = json.loads((fitted / "decoder" / JSON_NAME).read_text())
    path = data.draw(st.sampled_from(_leaf_paths(doc)[1:]))
    value = data.draw(_json_values)

    def edit(d: Doc) -> None:
        node = d
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    saved = craft(fitted / "decoder", tmp_path_factory.mktemp("fuzz") / "d", doc_edit=edit)
    try:
        decoder, _ = load_decoder(saved)
    except SerializationError as exc:
        assert str(saved) in str(exc)
        return
    scores = Client(FakeProvider(), cache=saved / "c.sqlite", progress=False).score(
        load_task("sst2"), ["a joyous film", "tedious"]
    )
    try:
        proba = decoder.predict_proba(scores)
    except ConfigurationError:  # e.g. classes renamed: "X has labels ... but fitted on ..."
        return
    assert np.isfinite(proba).all()


@pytest.fixture(scope="module")
def library_saves(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Decoders saved through the library, one per family of tensors."""
    tmp = tmp_path_factory.mktemp("library")
    X, y = make_scores(4)
    decoders = {
        "ytuning": YTuning(epochs=2, d_model=8, n_heads=2, n_layers=2, random_state=0),
        "dect-logprobs": DecT(use_hidden=False, proto_dim=4, random_state=0),
        "probe": LinearProbe(),
        "lr": ScoreLogisticRegression(),
        "calibrated": ContextualCalibration(),
    }
    return {name: save_decoder(fit(d, X, y), tmp / name) for name, d in decoders.items()}


def test_a_ytuning_layer_of_the_wrong_shape_is_refused_at_load(
    library_saves: dict[str, Path], tmp_path: Path
) -> None:
    """Only the outer tensors were checked: this one failed inside torch at predict."""
    hostile = craft(
        library_saves["ytuning"],
        tmp_path / "y",
        tensors_edit=_one("net.layer1.ff_out", lambda t: t[:-1].contiguous()),
    )
    with pytest.raises(
        SerializationError,
        match=r"net.layer1.ff_out has shape \(31, 8\), "
        r"expected \(32, 8\)",
    ):
        load_decoder(hostile)


_TENSOR_EDITS: dict[str, Callable[[torch.Tensor, list[int], torch.dtype], torch.Tensor]] = {
    "slice": lambda t, _s, _d: t[..., :-1].contiguous() if t.ndim and t.shape[-1] else t[None],
    "unsqueeze": lambda t, _s, _d: t.unsqueeze(0).contiguous(),
    "transpose": lambda t, _s, _d: t.mT.contiguous() if t.ndim >= 2 else t.flip(0),
    "flatten": lambda t, _s, _d: t.flatten().contiguous(),
    "replace": lambda _t, shape, _d: torch.zeros(shape),
    "cast": lambda t, _s, dtype: t.to(dtype),
    "infinity": lambda t, _s, _d: torch.full_like(t, float("-inf")) if t.numel() else t[None],
}


@given(data=st.data())
@FUZZ
def test_fuzzed_tensors_load_and_predict_or_are_refused(
    data: st.DataObject, library_saves: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One tensor reshaped, replaced, cast, made infinite or dropped, the JSON kept consistent:
    a decoder whose predictions are finite probabilities, or a SerializationError."""
    src = library_saves[data.draw(st.sampled_from(sorted(library_saves)))]
    name = data.draw(st.sampled_from(sorted(load_safetensors((src / TENSORS_NAME).read_bytes()))))
    op = data.draw(st.sampled_from([*_TENSOR_EDITS, "drop"]))
    shape = data.draw(st.lists(st.integers(0, 5), max_size=3))
    dtype = data.draw(st.sampled_from([torch.float16, torch.float64, torch.int32, torch.bool]))

    def edit(tensors: Tensors) -> None:
        if op == "drop":
            del tensors[name]
        else:
            tensors[name] = _TENSOR_EDITS[op](tensors[name], shape, dtype)

    saved = craft(src, tmp_path_factory.mktemp("fuzz") / "d", tensors_edit=edit)
    try:
        decoder, _ = load_decoder(saved)
    except SerializationError as exc:
        assert str(saved) in str(exc)
        return
    try:
        proba = decoder.predict_proba(make_scores(2, seed=3)[0])
    except ConfigurationError:
        return
    assert np.isfinite(proba).all()


# -- save refuses what load would refuse --------------------------------------------------
def test_save_refuses_what_load_would_refuse(tmp_path: Path) -> None:
    X, y = make_scores(4)
    probe = LinearProbe().fit(X, y)
    with pytest.raises(ConfigurationError, match="params.n_threads must be <= 256"):
        save_decoder(probe.set_params(n_threads=1_000_000), tmp_path / "a")
    with pytest.raises(ConfigurationError, match="metadata.model must be a string"):
        save_decoder(probe.set_params(n_threads=1), tmp_path / "b", metadata={"model": ["x"]})
    loaded, meta = load_decoder(save_decoder(probe, tmp_path / "c", metadata={"model": "m"}))
    assert meta == {"model": "m"} and loaded.get_params() == probe.get_params()


# -- saved methods --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def methods(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BDPL and an ICL method fitted through a fake provider and saved."""
    tmp = tmp_path_factory.mktemp("methods")
    client = Client(FakeProvider(), cache=tmp / "c.sqlite", progress=False)
    task = load_task("sst2")
    train = sample_k_shot(load_dataset("sst2").train, 2, labels=task.labels, seed=0)
    bdpl = BDPL(
        progress=False,
        prompt_length=2,
        n_candidates=6,
        sample_size=2,
        epochs=1,
        batch_size=4,
        random_state=0,
    )
    save_method(bdpl.fit(client, task, train), tmp / "bdpl", metadata={"model": "m"})
    save_method(
        InContextLearning(demos_per_class=1, random_state=0).fit(client, task, train), tmp / "icl"
    )
    return tmp


BROKEN_METHODS: dict[str, tuple[str, dict[str, Any], str]] = {
    "NaN probabilities": (
        "bdpl",
        {"tensors_edit": _one("probs_", _with_nan)},
        "'probs_' holds NaN",
    ),
    "float prompt indices": (
        "bdpl",
        {"tensors_edit": _one("prompt_indices_", torch.Tensor.float)},
        "'prompt_indices_' is float32, expected int64",
    ),
    "prompt indices out of range": (
        "bdpl",
        {"tensors_edit": _one("prompt_indices_", lambda t: t + 10**6)},
        "outside the candidate",
    ),
    "candidates not strings": (
        "bdpl",
        {"doc_edit": _set("state.candidates_", [1, 2])},
        "state.candidates_.0",
    ),
    "huge prompt_length": (
        "bdpl",
        {"doc_edit": _set("params.prompt_length", 10**9)},
        "params.prompt_length must be <= 4096",
    ),
    "metadata model a dict": (
        "bdpl",
        {"doc_edit": _set("metadata.model", {})},
        "metadata.model must be a string",
    ),
    "tensor spec a string": ("bdpl", {"doc_edit": _set("tensors.probs_", "x")}, "tensors.probs_"),
    "task missing": ("icl", {"doc_edit": _set("task-", None)}, "task is required"),
    "task verbalizer a string": (
        "icl",
        {"doc_edit": _set("task.verbalizer", "x")},
        "verbalizer must be a list",
    ),
    "demonstration without text": (
        "icl",
        {"doc_edit": _set("state.demonstrations_", [{}])},
        "state.demonstrations_.0.text is required",
    ),
    "an extra tensor": (
        "icl",
        {"tensors_edit": lambda ts: ts.update(x=torch.zeros(1))},
        "tensors expected [], got ['x']",
    ),
    "a list": ("icl", {"doc_edit": lambda doc: [doc]}, "is not a maas-tune method file"),
    "nested 5,000 deep": ("icl", {"doc_edit": lambda doc: _DEEP}, "nested too deeply"),
}


@pytest.mark.parametrize("case", list(BROKEN_METHODS))
def test_a_broken_saved_method_names_the_file_and_field(
    case: str, methods: Path, tmp_path: Path
) -> None:
    name, edits, needle = BROKEN_METHODS[case]
    with pytest.raises(SerializationError) as info:
        load_method(craft(methods / name, tmp_path / name, json_name="method.json", **edits))
    assert needle in str(info.value) and str(tmp_path / name) in str(info.value)


def test_saved_methods_still_round_trip(methods: Path) -> None:
    bdpl, meta = load_method(methods / "bdpl")
    assert isinstance(bdpl, BDPL) and meta == {"model": "m"}
    icl, meta = load_method(methods / "icl")
    assert isinstance(icl, InContextLearning) and meta == {}


# -- data files -----------------------------------------------------------------------------
LABELS = ["negative", "positive"]
GOOD = '{"text": "fine", "label": "positive"}\n'
BROKEN_DATA = {
    "1,000 '[' (was RecursionError)": (
        GOOD + '{"text": "x", "label": "positive", "n": ' + "[" * 1000 + "]" * 1000 + "}\n",
        "line 2: JSON nested too deeply to read",
    ),
    "a bare deep array on line 2": (GOOD + "[" * 1000 + "\n", "line 2: JSON nested too deeply"),
    "a lone surrogate (was an encode error without file or line)": (
        GOOD + '{"text": "caf\\ud800e", "label": "positive"}\n',
        "line 2: field 'text' holds a lone UTF-16 surrogate \\ud800 at character 3",
    ),
    "a lone low surrogate in a label": (
        GOOD + '{"text": "x", "label": "positive\\udc00"}\n',
        "line 2: field 'label' holds a lone UTF-16 surrogate \\udc00",
    ),
    "a 5,000-digit number": (
        GOOD + '{"text": "x", "label": "positive", "n": ' + "7" * 5000 + "}\n",
        "line 2: invalid JSON (a number with too many digits",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_DATA))
def test_a_hostile_data_line_names_file_and_line(case: str, tmp_path: Path) -> None:
    content, needle = BROKEN_DATA[case]
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        load_examples(path, labels=LABELS)
    assert str(info.value).startswith(f"{path}, line 2: ") and needle in str(info.value)


def test_a_surrogate_pair_is_a_character_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fun \\ud83d\\ude00", "label": "positive"}\n')
    assert load_examples(path, labels=LABELS)[0].text == "fun \U0001f600"


def test_predict_on_a_file_with_a_lone_surrogate_names_file_and_line(
    fitted: Path, predict, tmp_path: Path
) -> None:
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "fine"}\n{"text": "caf\\ud800e"}\n')
    code, out, err = predict(fitted / "decoder", inputs)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert f"{inputs}, line 2: field 'text' holds a lone UTF-16 surrogate \\ud800" in err


# -- task files ------------------------------------------------------------------------------
_TASK = '{"name": "t", "template": "R: {text}", "verbalizer": {"pos": ["good"], "neg": ["bad"]}'
BROKEN_TASKS = {
    "deep.json": (
        '{"name": "t",\n"template": "R: {text}",\n"x": ' + "[" * 1000 + "]" * 1000 + "}",
        "deep.json, line 3: invalid JSON: nested 1001 levels deep",
    ),
    "deep.toml": (
        'name = "t"\n# [[[ not nesting\ns = "[[["\nx = ' + "[" * 1000 + "]" * 1000,
        "deep.toml, line 4: invalid TOML: nested 1000 levels deep",
    ),
    "inline.toml": (
        'name = "t"\nx = ' + "{a = " * 1000 + "1" + "}" * 1000,
        "inline.toml, line 2: invalid TOML: nested 1000 levels deep",
    ),
    "surrogate.json": (
        _TASK.replace("good", "go\\udbffod") + "}",
        "surrogate.json: verbalizer.pos[0] holds a lone UTF-16 surrogate \\udbff",
    ),
    "surrogate-key.json": (
        _TASK.replace('"neg"', '"n\\ud800"') + "}",
        "a key of verbalizer holds a lone UTF-16 surrogate \\ud800",
    ),
    "digits.json": (
        _TASK + ', "description": ' + "1" * 5000 + "}",
        "digits.json: invalid JSON: a number with too many digits",
    ),
    "digits.toml": ("name = " + "1" * 5000 + "\n", "digits.toml: invalid TOML: a number with"),
    "surrogate.toml": ('name = "t\\ud800"\n', "surrogate.toml: invalid TOML"),
}


@pytest.mark.parametrize("name", list(BROKEN_TASKS))
def test_a_hostile_task_file_names_the_file(name: str, tmp_path: Path) -> None:
    content, needle = BROKEN_TASKS[name]
    (tmp_path / name).write_text(content)
    with pytest.raises(TaskError) as info:
        Task.from_file(tmp_path / name)
    assert needle in str(info.value) and "\n" not in str(info.value)
