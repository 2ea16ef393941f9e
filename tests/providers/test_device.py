"""The in-process model's device and dtype: checked at the edge (library, CLI, serve), and
bfloat16 on CPU within its tolerance of float32. No GPU in CI: benchmarks/gpu_check.py
checks a GPU machine."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from maas_tune.cli import build_parser, main
from maas_tune.errors import ConfigurationError
from maas_tune.providers.device import (
    DTYPE_LOGPROB_TOLERANCE,
    Placement,
    check_device,
    check_dtype,
    resolve_placement,
)

torch = pytest.importorskip("torch", reason="needs the 'local' extra")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")

PROMPTS = [
    "Review: a gorgeous, witty, seductive movie.\nSentiment:",
    "Review: dull\nSentiment:",
    "Review: the plot is a mess and the acting is worse, an utterly forgettable two hours.\nSentiment:",
    "Review: not bad at all, though it drags in the middle.\nSentiment:",
]


def test_documented_spellings_are_accepted():
    assert [check_device(d) for d in ("auto", "CPU", "cuda", " cuda:1 ")] == [
        "auto",
        "cpu",
        "cuda",
        "cuda:1",
    ]
    assert [check_dtype(d) for d in ("auto", "float32", "BFloat16", "float16")] == [
        "auto",
        "float32",
        "bfloat16",
        "float16",
    ]


@no_cuda
def test_default_and_auto_are_cpu_float32_without_a_gpu_and_bfloat16_is_allowed():
    assert resolve_placement() == Placement("cpu", "float32")
    assert resolve_placement("auto", "auto") == Placement("cpu", "float32")
    assert resolve_placement("cpu", "bfloat16") == Placement("cpu", "bfloat16")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"device": "gpu"}, "device='gpu' is not a device; give auto, cpu, cuda or cuda:N"),
        ({"device": "cuda:x"}, "device='cuda:x' is not a device"),
        ({"dtype": "fp8"}, "dtype='fp8' is not a dtype; give auto, float32, bfloat16 or float16"),
        ({"device": "cpu", "dtype": "float16"}, "dtype='float16' is a GPU dtype"),
    ],
)
def test_the_provider_refuses_a_bad_device_or_dtype_before_loading(kwargs, needle):
    from maas_tune.providers.local import TransformersProvider

    with pytest.raises(ConfigurationError) as err:
        TransformersProvider("/nonexistent/model/dir", **kwargs)  # checked before the model
    assert needle in str(err.value)


@no_cuda
def test_cuda_without_a_gpu_is_one_clear_error():
    from maas_tune.providers.local import TransformersProvider
    from maas_tune.server import run

    with pytest.raises(ConfigurationError, match="device='cuda': torch .* finds no CUDA GPU"):
        TransformersProvider(device="cuda")
    with pytest.raises(ConfigurationError, match="device='cuda:1': torch .* finds no CUDA GPU"):
        run(device="cuda:1", port=0)  # refused before the server starts


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["eval", "--dataset", "sst2", "--device", "gpu"], "--device gpu is not a device"),
        (
            ["fit", "--dataset", "sst2", "--out", "x", "--dtype", "half"],
            "--dtype half is not a dtype; give auto, float32, bfloat16 or float16",
        ),
        (
            ["eval", "--dataset", "sst2", "--device", "cpu", "--dtype", "float16"],
            "--dtype float16 is a GPU dtype (slow and lossy on CPU); on CPU give float32 or bfloat16",
        ),
        (["serve", "--device", "tpu"], "--device tpu is not a device"),
        (["serve", "--dtype", "int8"], "--dtype int8 is not a dtype"),
        (
            [
                "eval",
                "--dataset",
                "sst2",
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--dtype",
                "bfloat16",
            ],
            "--device and --dtype place the local model; drop them with --base-url",
        ),
    ],
)
def test_the_cli_names_the_flag_in_one_line_and_exits_1(argv, needle, capsys, tmp_path):
    argv = [*argv, "--cache", str(tmp_path / "c.sqlite")] if argv[0] != "serve" else argv
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("maas-tune: error: ") and needle in err
    assert err.count("\n") == 1


@no_cuda
def test_the_cli_passes_cuda_on_to_the_check(capsys):
    assert main(["serve", "--device", "cuda", "--port", "0"]) == 1
    assert "--device cuda: torch" in capsys.readouterr().err


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("command", ["serve", "eval", "fit", "predict"])
def test_every_flag_has_help_text(command, capsys):
    parser = _subparsers(build_parser())[command]
    bare = [a.option_strings for a in parser._actions if not a.help]
    assert bare == []
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "--device" in out and "--dtype" in out


@pytest.mark.model
def test_bfloat16_on_cpu_agrees_with_float32_within_its_tolerance(gemma):
    from maas_tune.cli.commands import _provider

    # the CLI's path: --device/--dtype reach the provider (the one extra model load here)
    args = build_parser().parse_args(["eval", "--device", "cpu", "--dtype", "bfloat16"])
    bf16 = _provider(args)
    try:
        assert (bf16.device, bf16.dtype) == ("cpu", "bfloat16")
        assert (gemma.device, gemma.dtype) == ("cpu", "float32")  # the defaults
        assert next(bf16.model.parameters()).dtype == torch.bfloat16
        ref, low = (
            gemma.score(PROMPTS, ["negative", "positive"]),
            bf16.score(PROMPTS, ["negative", "positive"]),
        )
        fp_ref, fp_low = gemma.fingerprint(), bf16.fingerprint()
    finally:
        bf16.close()
    # cached apart from float32 answers; the device is not part of the key
    assert fp_low == {**fp_ref, "dtype": "bfloat16"} and "device" not in fp_low
    for a, b in zip(ref, low):
        assert b.logprobs.dtype == np.float32 and b.hidden.dtype == np.float32
        assert b.hidden.shape == a.hidden.shape and b.prompt_tokens == a.prompt_tokens
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=DTYPE_LOGPROB_TOLERANCE["bfloat16"])
        assert b.logprobs.argmax() == a.logprobs.argmax()
    diff = np.abs(np.stack([b.logprobs for b in low]) - np.stack([a.logprobs for a in ref]))
    assert diff.max() > 0  # really computed in bfloat16
