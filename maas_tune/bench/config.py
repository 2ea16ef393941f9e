"""The benchmark grid's configuration: a TOML file of defaults and blocks of methods."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import datasets
from .._constants import DEFAULT_TOP_LOGPROBS
from ..errors import ConfigurationError
from ..registry import METHODS, make_decoder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["BenchConfig", "Block", "BlockProvider", "load_config", "parse_config"]

#: Keys a block may override from the top level.
_GRID_KEYS = ("datasets", "shots", "seeds", "test_cap")
_TOP_KEYS = frozenset(
    {"output", "report", "cache", "budget", "max_queries", "model", "block", *_GRID_KEYS}
)
_BLOCK_KEYS = frozenset({"name", "methods", "suffix", "params", "provider", "plot", *_GRID_KEYS})
_PROVIDER_KEYS = frozenset(
    {"kind", "base_url", "model", "strategy", "top_logprobs", "embeddings", "token_features"}
)


@dataclass(frozen=True)
class BlockProvider:
    """Which provider a block scores through.

    Attributes
    ----------
    kind : {"local", "serve", "http"}
        ``local``: the model in process (the default). ``serve``: the same model behind
        ``maas-tune serve``'s app, started on loopback for the run and reached over
        HTTP. ``http``: an OpenAI-compatible API at ``base_url`` (key from
        ``MAAS_TUNE_API_KEY`` or ``OPENAI_API_KEY``).
    base_url, model : str or None
        The API and the model name to ask for (``http`` only; ``model`` defaults to
        the local model's name).
    strategy : str
        How label scores are read over HTTP (``auto``, ``extension``, ``top_logprobs``, ...).
    top_logprobs : int
        Top log-probs asked per request over HTTP.
    embeddings : bool
        Take hidden states from the API's ``/v1/embeddings`` (one more query per sample).
    token_features : int or None
        Ask for the states of each prompt's last this-many tokens (Y-Tuning's keys;
        ``serve`` or ``http`` with the ``extension`` strategy).
    """

    kind: str = "local"
    base_url: str | None = None
    model: str | None = None
    strategy: str = "auto"
    top_logprobs: int = DEFAULT_TOP_LOGPROBS
    embeddings: bool = False
    token_features: int | None = None


@dataclass(frozen=True)
class Block:
    """Methods run over the same grid through the same provider.

    A row of the results is named ``method + suffix`` (``dect+embeddings``); ``plot=False``
    keeps a block's rows out of the plots (e.g. a method re-scored on a smaller test set).
    """

    name: str
    methods: tuple[str, ...]
    datasets: tuple[str, ...]
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    test_cap: int | None
    suffix: str = ""
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    provider: BlockProvider = BlockProvider()
    plot: bool = True

    def row_name(self, method: str) -> str:
        """The name of ``method``'s rows in the results."""
        return method + self.suffix


@dataclass(frozen=True)
class BenchConfig:
    """A benchmark grid: where results and answers go, and its blocks.

    Relative paths in the file are relative to the file's folder.
    """

    output: Path
    cache: Path
    blocks: tuple[Block, ...]
    report: Path | None = None
    budget: str = "bench"
    max_queries: int | None = None
    model: str | None = None
    source: Path | None = None

    @property
    def report_dir(self) -> Path:
        """Where the report goes (``report`` in the file, else ``output``).

        A folder gets ``table.md`` and ``plots/``; a markdown page gets the tables
        between its markers (see :func:`~maas_tune.bench.report.write_report`).
        """
        return self.report or self.output

    @property
    def results_path(self) -> Path:
        """The results, one JSON object per line (appended as cells finish)."""
        return self.output / "results.jsonl"

    def row_names(self) -> list[str]:
        """Every row name, in the order of the blocks and their methods."""
        return list(dict.fromkeys(b.row_name(m) for b in self.blocks for m in b.methods))

    def plotted_rows(self) -> list[str]:
        """The row names of the blocks that are plotted, in order."""
        return list(dict.fromkeys(b.row_name(m) for b in self.blocks if b.plot for m in b.methods))

    def method_of(self, row: str) -> str:
        """The method behind a row name."""
        return next(m for b in self.blocks for m in b.methods if b.row_name(m) == row)

    def only(self, **grid: Sequence[Any]) -> BenchConfig:
        """A copy restricted to a slice (``datasets=``, ``shots=``, ``seeds=``, ``methods=``)."""
        blocks = []
        for block in self.blocks:
            changes: dict[str, Any] = {
                k: tuple(x for x in getattr(block, k) if x in v) for k, v in grid.items()
            }
            narrowed = replace(block, **changes)
            if all(getattr(narrowed, k) for k in ("methods", "datasets", "shots", "seeds")):
                blocks.append(narrowed)
        return replace(self, blocks=tuple(blocks))


def _fail(where: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"benchmark config {where}: {problem}")


def _ints(where: str, key: str, value: Any, *, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(where, f"{key} must be a non-empty list of integers, got {value!r}")
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise _fail(where, f"{key} must hold integers >= {minimum}, got {v!r}")
    return tuple(dict.fromkeys(value))


def _datasets(where: str, value: Any) -> tuple[str, ...]:
    known = datasets.available()
    if value == "all":
        return tuple(known)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _fail(where, f'datasets must be "all" or a list of names, got {value!r}')
    unknown = [v for v in value if v not in known]
    if unknown:
        raise _fail(where, f"unknown dataset(s) {unknown}; bundled: {', '.join(known)}")
    return tuple(dict.fromkeys(value))


def _test_cap(where: str, value: Any) -> int | None:
    if value is None or value == "none":
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _fail(where, f'test_cap must be a positive integer or "none", got {value!r}')
    return value


def _grid(where: str, raw: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    merged = {**defaults, **{k: raw[k] for k in _GRID_KEYS if k in raw}}
    return {
        "datasets": _datasets(where, merged.get("datasets", "all")),
        "shots": _ints(where, "shots", merged.get("shots", [1, 4, 16]), minimum=1),
        "seeds": _ints(where, "seeds", merged.get("seeds", [0, 1, 2, 3, 4]), minimum=0),
        "test_cap": _test_cap(where, merged.get("test_cap", 1000)),
    }


def _provider(where: str, raw: Any) -> BlockProvider:
    if raw is None or raw == "local":
        return BlockProvider()
    if raw == "serve":
        return BlockProvider(kind="serve")
    if not isinstance(raw, dict):
        raise _fail(where, f'provider must be "local", "serve" or a table, got {raw!r}')
    unknown = set(raw) - _PROVIDER_KEYS
    if unknown:
        raise _fail(where, f"unknown provider key(s) {sorted(unknown)}; known: "
                    f"{', '.join(sorted(_PROVIDER_KEYS))}")  # fmt: skip
    spec = BlockProvider(**raw)
    if spec.kind not in ("local", "serve", "http"):
        raise _fail(where, f'provider kind must be "local", "serve" or "http", got {spec.kind!r}')
    if spec.kind == "http" and not spec.base_url:
        raise _fail(where, 'a provider of kind "http" needs base_url')
    if spec.embeddings and spec.kind == "local":
        raise _fail(where, 'embeddings = true needs a provider of kind "serve" or "http"')
    if spec.token_features is not None and spec.kind == "local":
        raise _fail(
            where,
            'token_features needs a provider of kind "serve" or "http" (the '
            "local model is shared by every block; serve it to ask for token features)",
        )
    return spec


def _flag(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"{key} must be true or false, got {value!r}")
    return value


def _params(where: str, raw: Any, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise _fail(where, f"params must be a table of tables (method -> settings), got {raw!r}")
    stray = [m for m in raw if m not in methods]
    if stray:
        raise _fail(where, f"params for method(s) {stray} not in this block's methods")
    return {m: dict(v) for m, v in raw.items()}


def _block(index: int, raw: Any, defaults: Mapping[str, Any]) -> Block:
    where = f"block {index + 1}"
    if not isinstance(raw, dict):
        raise _fail(where, "each [[block]] must be a table")
    unknown = set(raw) - _BLOCK_KEYS
    if unknown:
        raise _fail(
            where, f"unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(_BLOCK_KEYS))}"
        )
    methods = raw.get("methods")
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise _fail(where, f"methods must be a non-empty list of names, got {methods!r}")
    unknown_methods = [m for m in methods if m not in METHODS]
    if unknown_methods:
        raise _fail(where, f"unknown method(s) {unknown_methods}; choose from {', '.join(METHODS)}")
    block = Block(
        name=str(raw.get("name", ",".join(methods))),
        methods=tuple(dict.fromkeys(methods)),
        suffix=str(raw.get("suffix", "")),
        params=_params(where, raw.get("params"), methods),
        provider=_provider(where, raw.get("provider")),
        plot=_flag(where, "plot", raw.get("plot", True)),
        **_grid(where, raw, defaults),
    )
    # Surface bad hyper-parameters now, not after an hour of the grid.
    for method, settings in block.params.items():
        make_decoder(method, shots=1).set_params(**settings)
    return block


def _path(base: Path, value: Any) -> Path:
    return Path(os.path.normpath(base / str(value)))


def parse_config(raw: Mapping[str, Any], *, base: Path | None = None) -> BenchConfig:
    """A :class:`BenchConfig` from a parsed TOML table; relative paths resolve against ``base``.

    Raises
    ------
    ConfigurationError
        Naming the key that is wrong and what it may be.
    """
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise _fail("top level", f"unknown key(s) {sorted(unknown)}; known: "
                    f"{', '.join(sorted(_TOP_KEYS))}")  # fmt: skip
    base = base or Path.cwd()
    defaults = {k: raw[k] for k in _GRID_KEYS if k in raw}
    blocks_raw = raw.get("block")
    if not isinstance(blocks_raw, list) or not blocks_raw:
        raise _fail("top level", "needs at least one [[block]] with a list of methods")
    blocks = tuple(_block(i, b, defaults) for i, b in enumerate(blocks_raw))
    names = [b.row_name(m) for b in blocks for m in b.methods]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _fail("blocks", f"row(s) {twice} appear in two blocks; give one a suffix")
    max_queries = raw.get("max_queries")
    if max_queries is not None and (not isinstance(max_queries, int) or max_queries < 0):
        raise _fail("top level", f"max_queries must be an integer >= 0, got {max_queries!r}")
    return BenchConfig(
        output=_path(base, raw.get("output", "bench-results")),
        cache=_path(base, raw.get("cache", "bench-results/cache.sqlite")),
        report=_path(base, raw["report"]) if "report" in raw else None,
        blocks=blocks,
        budget=str(raw.get("budget", "bench")),
        max_queries=max_queries,
        model=raw.get("model"),
    )


def load_config(path: str | Path) -> BenchConfig:
    """Read a benchmark config (TOML); see ``benchmarks/grid.toml`` for a commented example.

    Raises
    ------
    ConfigurationError
        The file is missing, is not TOML, or holds a wrong key or value.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"benchmark config {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"benchmark config {path} is not valid TOML: {exc}") from None
    return replace(parse_config(raw, base=path.resolve().parent), source=path)
