"""The ``maas-tune`` command line: ``main(argv) -> int``; each subcommand is one library call."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import _cli_commands as commands
from ._constants import DEFAULT_BUDGET_NAME, DEFAULT_MODEL_NAME
from ._version import __version__
from .errors import MaasTuneError
from .experiment import METHODS

__all__ = ["build_parser", "main"]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache", metavar="PATH", help="cache/budget database (default: user cache dir)"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_provider(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="score through an OpenAI-compatible API at URL (e.g. http://127.0.0.1:8000/v1); "
        "default: the local model in process",
    )
    p.add_argument(
        "--api",
        default="completions",
        choices=["completions", "chat"],
        help="with --base-url: /v1/completions (default) or /v1/chat/completions with logprobs",
    )
    p.add_argument("--api-model", metavar="NAME", help="with --base-url: the model name to ask for")
    p.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "extension", "top_logprobs", "echo", "force"],
        help="with --base-url: how label scores are obtained (auto probes the server once); "
        "completions: extension, top_logprobs, echo; chat: force, top_logprobs",
    )
    p.add_argument(
        "--top-logprobs",
        type=_positive,
        default=5,
        help="with --base-url: top log-probs asked per request (hosted APIs allow 5 to 20)",
    )
    p.add_argument(
        "--embeddings",
        action="store_true",
        help="with --base-url: take hidden states from the same API's /embeddings endpoint "
        "(one more query per sample), for APIs that expose none",
    )
    p.add_argument(
        "--embeddings-model",
        metavar="NAME",
        help="with --embeddings: the embedding model to ask for (default: the scoring model)",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL_NAME,
        help=f"local model: {DEFAULT_MODEL_NAME!r} (embedded), a .gguf file or a checkpoint dir",
    )
    p.add_argument("--batch-size", type=_positive, default=16, help="prompts per forward pass")
    p.add_argument(
        "--offline", action="store_true", help="answer from the cache only; send nothing"
    )


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="bundled dataset name (see `maas-tune datasets`)")
    p.add_argument(
        "--train", metavar="FILE", help="training pool (.jsonl/.csv) instead of --dataset"
    )
    p.add_argument("--test", metavar="FILE", help="test set (.jsonl/.csv) instead of --dataset")
    p.add_argument("--task", metavar="FILE", help="task file (.toml/.json); default: the dataset's")
    p.add_argument("--shots", type=_positive, default=16, help="examples per class (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the k-shot draw and the decoder")
    p.add_argument("--budget", default=DEFAULT_BUDGET_NAME, help="name of the training budget")
    p.add_argument("--max-queries", type=_count, help="cap on the training budget's queries")
    p.add_argument(
        "--max-prompt-tokens", type=_count, help="cap on the training budget's prompt tokens"
    )


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # argparse would name the type function: "invalid _positive value"
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def _positive(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    """A duration in seconds, > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _count(text: str) -> int:
    """A cap: an integer >= 0 (argparse turns the errors into a usage message)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``maas-tune`` (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="maas-tune",
        description="Adapt a hosted LLM with cached, budgeted label scores and a local decoder.",
    )
    parser.add_argument("--version", action="version", version=f"maas-tune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("eval", help="fit methods on k shots and report test accuracy")
    _add_common(p), _add_provider(p), _add_data(p)
    p.add_argument(
        "--method",
        action="append",
        metavar="NAME",
        help=f"method(s), repeatable or comma-separated: {', '.join(METHODS)} (default dect)",
    )
    p.add_argument(
        "--test-limit", type=_positive, help="score a seeded random subset of N test examples"
    )
    p.add_argument("--max-test-queries", type=_count, help="cap on the test budget (<budget>:test)")
    p.add_argument("--json", action="store_true", help="one JSON object per method, one per line")
    p.set_defaults(func=commands.cmd_eval)

    p = sub.add_parser("fit", help="fit a decoder on k shots and save it (safetensors + JSON)")
    _add_common(p), _add_provider(p), _add_data(p)
    p.add_argument("--method", default="dect", choices=list(METHODS))
    p.add_argument("--out", required=True, metavar="DIR", help="where to save the decoder")
    p.set_defaults(func=commands.cmd_fit)

    p = sub.add_parser("predict", help="predict labels for a file with a saved decoder")
    _add_common(p), _add_provider(p)
    p.add_argument("--decoder", required=True, metavar="DIR", help="a decoder saved by `fit`")
    p.add_argument("--input", required=True, metavar="FILE", help=".jsonl/.csv with a text field")
    p.add_argument("--output", metavar="FILE", help="write JSON Lines here instead of stdout")
    p.add_argument("--budget", default=DEFAULT_BUDGET_NAME + ":predict", help="budget name")
    p.add_argument("--max-queries", type=_count, help="cap on that budget's queries")
    p.set_defaults(func=commands.cmd_predict, model=None)

    p = sub.add_parser("cache", help="inspect or clear the answer cache")
    p.add_argument("action", choices=["stats", "export", "clear"])
    p.add_argument("--output", metavar="FILE", help="export: JSON Lines file (default stdout)")
    p.add_argument("--model", dest="model_filter", help="clear: only this model's entries")
    p.add_argument("--yes", action="store_true", help="clear: do not ask for confirmation")
    _add_common(p)
    p.set_defaults(func=commands.cmd_cache)

    p = sub.add_parser("budget", help="show, set or reset query budgets")
    p.add_argument("action", choices=["show", "set", "reset"])
    p.add_argument("name", nargs="?", help="budget name (show: all when omitted)")
    p.add_argument("--max-queries", type=_count, help="set: new query cap")
    p.add_argument("--max-prompt-tokens", type=_count, help="set: new prompt-token cap")
    p.add_argument("--json", action="store_true", help="show: JSON output")
    _add_common(p)
    p.set_defaults(func=commands.cmd_budget)

    p = sub.add_parser("serve", help="serve a local model over the OpenAI completions/chat API")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="model to serve (as for eval)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require `Authorization: Bearer <key>` with the key read from this variable",
    )
    p.add_argument("--max-batch-size", type=_positive, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-body-bytes", type=_positive, default=None,
                   help="largest request body (default 4 MiB); larger ones get 413")
    p.add_argument("--max-top-logprobs", type=_positive, default=20,
                   help="most top log-probs per position in completions and chat (default 20; "
                   "5 mimics a hosted API); more is a 400")
    p.add_argument("--max-generated-tokens", type=_positive, default=256,
                   help="most tokens one request may generate, all its prompts together "
                   "(default 256); more is a 400")
    p.add_argument("--max-context-tokens", type=_positive, default=4096,
                   help="most tokens (prompt + generated) one request may hold (default 4096, "
                   "at most the model's context); bounds memory and time; more is a 400")
    p.add_argument("--read-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="time a client gets to send a request's headers, and again its body "
                   "(default 30); then the connection is closed")
    p.add_argument("--max-connections", type=_positive, default=128,
                   help="connections served at once (default 128); a request on one more gets 503")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header names NAME (repeatable; "
                   "loopback names always; '*' for any); others get 421")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.set_defaults(func=commands.cmd_serve)

    p = sub.add_parser("bench", help="run a benchmark grid from a TOML config, or report it")
    p.add_argument("action", choices=["run", "report"],
                   help="run: the cells not yet in the results, then report; report: only the "
                   "table and plots")  # fmt: skip
    p.add_argument("config", metavar="CONFIG", help="the grid (e.g. benchmarks/grid.toml)")
    p.add_argument("--dataset", action="append", help="run only these datasets (repeatable)")
    p.add_argument("--shots", action="append", type=_positive, help="only these shots")
    p.add_argument("--seed", action="append", type=_int, help="only these seeds")
    p.add_argument("--method", action="append", help="only these methods")
    p.add_argument("--no-plots", action="store_true", help="write the table only")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=commands.cmd_bench)

    p = sub.add_parser("datasets", help="list the bundled datasets and their default tasks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands.cmd_datasets, debug=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except MaasTuneError as exc:
        if debug:
            raise
        print(f"maas-tune: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("maas-tune: interrupted (everything answered so far is cached)", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:
        if debug:
            raise
        print(f"maas-tune: error: {exc} (rerun with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
