"""Where the in-process model runs: the ``device`` and ``dtype`` options, checked at the edge.

:func:`check_device` and :func:`check_dtype` check the spelling without importing torch
(the CLI calls them while parsing); :func:`resolve_placement` then asks torch what this
machine has and turns ``"auto"`` into a device and a dtype.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError, MissingDependencyError

__all__ = [
    "DEFAULT_DEVICE",
    "DEVICES",
    "DTYPES",
    "DTYPE_LOGPROB_TOLERANCE",
    "Placement",
    "check_device",
    "check_dtype",
    "resolve_placement",
]

#: What ``device`` accepts (``cuda:N`` names the N-th GPU).
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
#: The device when none is given: the CPU, so that a machine with a GPU gives the same
#: float32 answers (and cache keys) as every other machine unless a GPU is asked for.
DEFAULT_DEVICE = "cpu"
#: What ``dtype`` accepts; ``auto`` is float32 on CPU, bfloat16 on a GPU that computes it
#: natively (Ampere and later), else float32: float16 is only taken when asked for, as
#: Gemma-family activations can overflow its range.
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: Largest difference of a label log-prob (nats) from CPU float32 that each compute dtype
#: is expected to stay within (tests/providers/test_device.py and benchmarks/gpu_check.py check it).
#: float32 on a GPU differs only by kernel order; bfloat16 keeps 8 mantissa bits (on CPU,
#: 32 SST-2 prompts of Gemma 3 270M: largest difference 0.12, mean 0.04).
DTYPE_LOGPROB_TOLERANCE = {"float32": 1e-2, "bfloat16": 0.5, "float16": 0.25}

_CUDA = re.compile(r"cuda(:\d{1,3})?")


@dataclass(frozen=True)
class Placement:
    """A resolved device (``"cpu"``, ``"cuda"`` or ``"cuda:N"``) and dtype name."""

    device: str
    dtype: str


def _named(flag: str, value: str) -> str:
    """``--device gpu`` for a CLI flag, ``device='gpu'`` for a parameter."""
    return f"{flag} {value}" if flag.startswith("--") else f"{flag}={value!r}"


def check_device(device: str, flag: str = "device") -> str:
    """``device`` if it is spelled as :data:`DEVICES` allows.

    Raises
    ------
    ConfigurationError
        Naming ``flag`` and the accepted values.
    """
    text = str(device).strip().lower()
    if text in ("auto", "cpu") or _CUDA.fullmatch(text):
        return text
    raise ConfigurationError(
        f"{_named(flag, str(device))} is not a device; give auto, cpu, cuda or cuda:N (e.g. cuda:0)"
    )


def check_dtype(dtype: str, flag: str = "dtype") -> str:
    """``dtype`` if it is one of :data:`DTYPES`.

    Raises
    ------
    ConfigurationError
        Naming ``flag`` and the accepted values.
    """
    text = str(dtype).strip().lower()
    if text in DTYPES:
        return text
    raise ConfigurationError(
        f"{_named(flag, str(dtype))} is not a dtype; give auto, float32, bfloat16 or float16"
    )


def resolve_placement(
    device: str = DEFAULT_DEVICE,
    dtype: str = "auto",
    *,
    flags: tuple[str, str] = ("device", "dtype"),
) -> Placement:
    """Check ``device`` and ``dtype`` against this machine and resolve ``"auto"``.

    Parameters
    ----------
    device, dtype : str
        As :data:`DEVICES` and :data:`DTYPES` allow.
    flags : (str, str)
        How errors name the two options (``("--device", "--dtype")`` for the CLI).

    Raises
    ------
    ConfigurationError
        A misspelt value, a CUDA device that torch does not see, or float16 on CPU.
    """
    device, dtype = check_device(device, flags[0]), check_dtype(dtype, flags[1])
    torch = _torch()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device != "cpu":
        _check_cuda(torch, device, flags[0])
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else _gpu_dtype(torch)
    elif dtype == "float16" and device == "cpu":
        raise ConfigurationError(
            f"{_named(flags[1], 'float16')} is a GPU dtype (slow and lossy on CPU); on CPU "
            "give float32 or bfloat16"
        )
    return Placement(device, dtype)


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("torch", "local") from exc
    return torch


def _check_cuda(torch: Any, device: str, flag: str) -> None:
    """Raise unless torch sees the CUDA GPU that ``device`` names."""
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise ConfigurationError(
            f"{_named(flag, device)}: torch {torch.__version__} ({build}) finds no CUDA GPU "
            f"here; give {_named(flag, 'cpu')} (or auto), or install a CUDA build of torch"
        )
    count = int(torch.cuda.device_count())
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= count:
        raise ConfigurationError(
            f"{_named(flag, device)}: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
        )


def _gpu_dtype(torch: Any) -> str:
    """bfloat16 where the GPU computes it natively (Ampere and later), else float32."""
    try:
        native = bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # pragma: no cover - torch < 2.3 has no including_emulation
        native = bool(torch.cuda.is_bf16_supported())
    return "bfloat16" if native else "float32"
