"""The ``maas-tune`` argument parser: every subcommand, its flags and their checks."""

from __future__ import annotations

import argparse

from .._constants import DEFAULT_BUDGET_NAME, DEFAULT_MODEL_NAME
from .._version import __version__
from ..registry import METHODS
from . import commands
from . import store as store_commands
from ._flags import add_columns, add_common, add_data, add_money, add_placement, add_provider
from ._types import MAX_SEED, count, positive, seconds, seed, usd

__all__ = ["ENVIRONMENT_HELP", "MAX_SEED", "build_parser"]

#: Environment variables that eval, fit and predict read, listed in their ``--help``.
ENVIRONMENT_HELP = (
    "environment: MAAS_TUNE_API_KEY, else OPENAI_API_KEY: the API key sent with --base-url "
    "(never give it on the command line); MAAS_TUNE_BASE_URL, else OPENAI_BASE_URL: the URL "
    "of --base-url env (without --base-url the local model scores); MAAS_TUNE_CACHE_DIR: "
    "the folder of the default --cache database"
)


def _scoring_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
) -> argparse.ArgumentParser:
    """A subcommand that scores through a provider: the common and provider flags, and
    the environment variables it reads in its ``--help``."""
    p = sub.add_parser(name, help=help, epilog=ENVIRONMENT_HELP)
    add_common(p)
    add_provider(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``maas-tune`` (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="maas-tune",
        description="Adapt a hosted LLM with cached, budgeted label scores and a local decoder.",
    )
    parser.add_argument("--version", action="version", version=f"maas-tune {__version__}")
    # Also accepted after the subcommand; own dests, as a subcommand's default would win.
    parser.add_argument(
        "--debug",
        dest="debug_global",
        action="store_true",
        help="show tracebacks and debug logs (also accepted after the subcommand)",
    )
    parser.add_argument(
        "--quiet",
        dest="quiet_global",
        action="store_true",
        help="no progress bars (also accepted after the subcommand)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _scoring_command(sub, "eval", "fit methods on k shots and report test accuracy")
    add_data(p)
    p.add_argument(
        "--method",
        action="append",
        metavar="NAME",
        help=f"method(s), repeatable or comma-separated: {', '.join(METHODS)} (default dect)",
    )
    p.add_argument(
        "--test-limit", type=positive, help="score a seeded random subset of N test examples"
    )
    p.add_argument("--max-test-queries", type=count, help="cap on the test budget (<budget>:test)")
    add_money(p)
    p.add_argument(
        "--max-test-cost", type=usd, metavar="USD", help="cap in US dollars on the test budget"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per method, one per line")
    p.set_defaults(func=commands.cmd_eval)

    p = _scoring_command(sub, "fit", "fit a decoder on k shots and save it (safetensors + JSON)")
    add_data(p)
    p.add_argument(
        "--method", default="dect", choices=list(METHODS), help="the method to fit (default dect)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="where to save the decoder")
    add_money(p)
    p.set_defaults(func=commands.cmd_fit)

    p = _scoring_command(sub, "predict", "predict labels for a file with a saved decoder")
    p.add_argument("--decoder", required=True, metavar="DIR", help="a decoder saved by `fit`")
    p.add_argument(
        "--input",
        required=True,
        metavar="FILE",
        help=".jsonl/.csv/.parquet with a text field; '-' reads JSON Lines from stdin",
    )
    add_columns(p)
    p.add_argument(
        "--output", metavar="FILE", help="write JSON Lines here (default, or '-': stdout)"
    )
    p.add_argument("--budget", default=DEFAULT_BUDGET_NAME + ":predict", help="budget name")
    p.add_argument("--max-queries", type=count, help="cap on that budget's queries")
    p.add_argument(
        "--allow-provider-mismatch",
        action="store_true",
        help="score with the provider the flags name even where it differs from "
        "the one the decoder was fitted with (default: an error)",
    )
    # None: not given, so the provider recorded at fit fills them (see cli/provider.py).
    add_money(p, "that budget's")
    p.set_defaults(
        func=commands.cmd_predict, model=None, api=None, strategy=None, top_logprobs=None
    )

    p = sub.add_parser("cache", help="inspect or clear the answer cache")
    p.add_argument("action", choices=["stats", "export", "clear"])
    p.add_argument("--output", metavar="FILE", help="export: JSON Lines file (default stdout)")
    p.add_argument("--model", dest="model_filter", help="clear: only this model's entries")
    p.add_argument("--yes", action="store_true", help="clear: do not ask for confirmation")
    add_common(p)
    p.set_defaults(func=store_commands.cmd_cache)

    p = sub.add_parser("budget", help="show, set or reset query budgets")
    p.add_argument("action", choices=["show", "set", "reset"])
    p.add_argument("name", nargs="?", help="budget name (show: all when omitted)")
    p.add_argument("--max-queries", type=count, help="set: new query cap")
    p.add_argument("--max-prompt-tokens", type=count, help="set: new prompt-token cap")
    add_money(p, "the budget's", prefix="set: ")
    p.add_argument("--json", action="store_true", help="show: JSON output")
    add_common(p)
    p.set_defaults(func=store_commands.cmd_budget)

    p = sub.add_parser("serve", help="serve a local model over the OpenAI completions/chat API")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="model to serve (as for eval)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require `Authorization: Bearer <key>` with the key read from this variable",
    )
    p.add_argument(
        "--max-batch-size",
        type=positive,
        default=16,
        help="most prompts scored in one batched forward pass (default 16)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a prompt waits for others to batch with (default 5 ms)",
    )
    add_placement(p)
    p.add_argument(
        "--max-body-bytes",
        type=positive,
        default=None,
        help="largest request body (default 4 MiB); larger ones get 413",
    )
    p.add_argument(
        "--max-top-logprobs",
        type=positive,
        default=20,
        help="most top log-probs per position in completions and chat (default 20; "
        "5 mimics a hosted API); more is a 400",
    )
    p.add_argument(
        "--max-generated-tokens",
        type=positive,
        default=256,
        help="most tokens one request may generate, all its prompts together "
        "(default 256); more is a 400",
    )
    p.add_argument(
        "--max-context-tokens",
        type=positive,
        default=4096,
        help="most tokens (prompt + generated) one request may hold (default 4096, "
        "at most the model's context); bounds memory and time; more is a 400",
    )
    p.add_argument(
        "--read-timeout",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="time a client gets to send a request's headers, and again its body "
        "(default 30); then the connection is closed",
    )
    p.add_argument(
        "--max-connections",
        type=positive,
        default=128,
        help="connections served at once (default 128); a request on one more gets 503",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header names NAME (repeatable; "
        "loopback names always; '*' for any); others get 421",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.set_defaults(func=commands.cmd_serve)

    p = sub.add_parser("bench", help="run a benchmark grid from a TOML config, or report it")
    p.add_argument("action", choices=["run", "report"],
                   help="run: the cells not yet in the results, then report; report: only the "
                   "table and plots")  # fmt: skip
    p.add_argument("config", metavar="CONFIG", help="the grid (e.g. benchmarks/grid.toml)")
    p.add_argument("--dataset", action="append", help="run only these datasets (repeatable)")
    p.add_argument("--shots", action="append", type=positive, help="only these shots")
    p.add_argument("--seed", action="append", type=seed, help="only these seeds")
    p.add_argument("--method", action="append", help="only these methods")
    p.add_argument("--no-plots", action="store_true", help="write the table only")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=commands.cmd_bench)

    p = sub.add_parser("datasets", help="list the bundled datasets and their default tasks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands.cmd_datasets, debug=False)
    return parser
