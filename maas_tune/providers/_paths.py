"""Where maas-tune keeps files on the user's machine (cache directory)."""

from __future__ import annotations

import os
from pathlib import Path

from .._constants import ENV_CACHE_DIR

__all__ = ["user_cache_dir"]


def user_cache_dir() -> Path:
    """The per-user cache directory: ``$MAAS_TUNE_CACHE_DIR`` or the platform's cache dir."""
    override = os.environ.get(ENV_CACHE_DIR)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("maas-tune"))
