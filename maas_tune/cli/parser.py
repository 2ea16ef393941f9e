"""The ``maas-tune`` argument parser: every subcommand, its flags and their checks."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .._constants import DEFAULT_BUDGET_NAME, DEFAULT_MODEL_NAME, DEFAULT_TOP_LOGPROBS
from .._version import __version__
from ..errors import ConfigurationError, MaasTuneError
from ..pricing import Price
from ..providers.ratelimit import RateLimit, parse_rate
from ..registry import METHODS
from ..storage.budget import MAX_COUNT
from . import commands
from . import store as store_commands
from .provider import add_api_flags

__all__ = ["ENVIRONMENT_HELP", "MAX_SEED", "build_parser"]

#: Largest seed: numpy's and scikit-learn's ``random_state`` take 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
#: Environment variables that eval, fit and predict read, listed in their ``--help``.
ENVIRONMENT_HELP = (
    "environment: MAAS_TUNE_API_KEY, else OPENAI_API_KEY: the API key sent with --base-url "
    "(never give it on the command line); MAAS_TUNE_BASE_URL, else OPENAI_BASE_URL: the URL "
    "of --base-url env (without --base-url the local model scores); MAAS_TUNE_CACHE_DIR: "
    "the folder of the default --cache database"
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache", metavar="PATH", help="cache/budget database (default: user cache dir)"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--verbose", action="store_true", help="log retries, 429s and the chosen strategy"
    )


def _add_provider(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="score through an OpenAI-compatible API at URL (e.g. http://127.0.0.1:8000/v1); "
        "'env': $MAAS_TUNE_BASE_URL, else $OPENAI_BASE_URL; default: the local model in process "
        "(predict: the provider the decoder was fitted with)",
    )
    add_api_flags(p)
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
        default=DEFAULT_TOP_LOGPROBS,
        help="with --base-url: top log-probs asked per request (hosted APIs allow 5 to 20)",
    )
    p.add_argument(
        "--rate-limit",
        type=_rate,
        metavar="N/min",
        help="with --base-url: the account's request limit, e.g. 3000/min or 50/s; requests "
        "are paced below it and enough are kept in flight to reach it (default: no limit)",
    )
    p.add_argument(
        "--max-concurrency",
        type=_ranged(1, 10_000),
        metavar="N",
        help="with --base-url: most requests in flight (default 4, or 256 with --rate-limit)",
    )
    p.add_argument(
        "--embeddings",
        action="store_true",
        help="with --base-url: take hidden states from the same API's /embeddings endpoint "
        "(one more query per sample), for APIs that expose none",
    )
    p.add_argument(
        "--tokenizer",
        metavar="SPEC",
        help="with --base-url: the served model's tokenizer, for APIs without one (OpenAI and "
        "most hosts): tiktoken:NAME (an encoding or an OpenAI model, e.g. tiktoken:gpt-4o-mini), "
        "a Hugging Face tokenizer directory, or 'embedded'; lets missing label words be forced "
        "exactly with logit_bias and makes prompt-token counts exact",
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
    _add_placement(p, "local model: ", "; answers are cached per dtype")
    p.add_argument(
        "--offline", action="store_true", help="answer from the cache only; send nothing"
    )


def _add_columns(p: argparse.ArgumentParser) -> None:
    for field, default in (("text", "text"), ("text-b", "text_b"), ("label", "label")):
        p.add_argument(
            f"--{field}-column",
            metavar="NAME",
            help=f"the column (or JSON key) of the data files holding the {default} "
            f"(default {default!r})",
        )


def _add_placement(p: argparse.ArgumentParser, prefix: str = "", note: str = "") -> None:
    """--device and --dtype of the in-process model (checked when the model is loaded)."""
    p.add_argument(
        "--device",
        metavar="{cpu,auto,cuda,cuda:N}",
        help=f"{prefix}where the model runs (default cpu; auto: the first CUDA GPU if torch "
        "sees one, else the CPU)",
    )
    p.add_argument(
        "--dtype",
        metavar="{auto,float32,bfloat16,float16}",
        help=f"{prefix}compute dtype (default auto: float32 on CPU, bfloat16 on a GPU that "
        f"computes it natively, else float32){note}",
    )


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="bundled dataset name (see `maas-tune datasets`)")
    p.add_argument(
        "--train",
        metavar="FILE",
        help="training pool (.jsonl/.csv/.parquet) instead of --dataset",
    )
    p.add_argument(
        "--test", metavar="FILE", help="test set (.jsonl/.csv/.parquet) instead of --dataset"
    )
    _add_columns(p)
    p.add_argument("--task", metavar="FILE", help="task file (.toml/.json); default: the dataset's")
    p.add_argument("--shots", type=_positive, default=16, help="examples per class (default 16)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the draw and the decoder")
    p.add_argument("--budget", default=DEFAULT_BUDGET_NAME, help="name of the training budget")
    p.add_argument("--max-queries", type=_count, help="cap on the training budget's queries")
    p.add_argument(
        "--max-prompt-tokens", type=_count, help="cap on the training budget's prompt tokens"
    )


def _add_money(
    p: argparse.ArgumentParser, whose: str = "the training budget's", prefix: str = ""
) -> None:
    auto = (
        ""
        if prefix
        else ("; default for an --api-model listed in maas_tune.pricing.PRICES: its example price")
    )
    p.add_argument(
        "--max-cost",
        type=_usd,
        metavar="USD",
        help=f"{prefix}cap in US dollars on {whose} cost: its queries and prompt "
        "tokens at the price, reserved before sending (persisted; needs a price)",
    )
    p.add_argument("--price", type=_price, metavar="INPUT,OUTPUT",
                   help=f"{prefix}US dollars per million input and output tokens (e.g. "
                   f"0.15,0.60), stored with the budget{auto}")  # fmt: skip


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # argparse would name the type function: "invalid _positive value"
        shown = text if len(text) <= 40 else text[:30] + "..."  # not 5,000 digits back
        raise argparse.ArgumentTypeError(f"invalid int value: {shown!r}") from None


def _ranged(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high`` (argparse names the flag)."""

    def parse(text: str) -> int:
        value = _int(text)
        if not low <= value <= high:
            bound = f">= {low}" if value < low else f"<= {high}"
            shown = str(value) if len(str(value)) <= 40 else str(value)[:30] + "..."
            raise argparse.ArgumentTypeError(
                f"must be {bound}, got {shown}; give an integer from {low} to {high}"
            )
        return value

    return parse


#: A count of examples, prompts or log-probs: 1 up to what the ledger's BIGINT holds.
_positive = _ranged(1, MAX_COUNT)
#: A cap: 0 (nothing may be sent) up to what the ledger's BIGINT holds.
_count = _ranged(0, MAX_COUNT)
#: A seed, as numpy and scikit-learn accept it.
_seed = _ranged(0, MAX_SEED)


def _rate(text: str) -> RateLimit:
    """A request rate such as ``3000/min`` or ``50/s``."""
    try:
        return parse_rate(text)
    except MaasTuneError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    """A duration in seconds, > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _usd(text: str) -> float:
    """An amount of US dollars, finite and >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be an amount of US dollars >= 0, got {text!r}")
    return value


def _price(text: str) -> Price:
    """``INPUT,OUTPUT``: US dollars per million input and output tokens."""
    try:
        return Price.parse(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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

    p = sub.add_parser(
        "eval",
        help="fit methods on k shots and report test accuracy",
        epilog=ENVIRONMENT_HELP,
    )
    _add_common(p)
    _add_provider(p)
    _add_data(p)
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
    _add_money(p)
    p.add_argument(
        "--max-test-cost", type=_usd, metavar="USD", help="cap in US dollars on the test budget"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per method, one per line")
    p.set_defaults(func=commands.cmd_eval)

    p = sub.add_parser(
        "fit",
        help="fit a decoder on k shots and save it (safetensors + JSON)",
        epilog=ENVIRONMENT_HELP,
    )
    _add_common(p)
    _add_provider(p)
    _add_data(p)
    p.add_argument(
        "--method", default="dect", choices=list(METHODS), help="the method to fit (default dect)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="where to save the decoder")
    _add_money(p)
    p.set_defaults(func=commands.cmd_fit)

    p = sub.add_parser(
        "predict",
        help="predict labels for a file with a saved decoder",
        epilog=ENVIRONMENT_HELP,
    )
    _add_common(p)
    _add_provider(p)
    p.add_argument("--decoder", required=True, metavar="DIR", help="a decoder saved by `fit`")
    p.add_argument(
        "--input",
        required=True,
        metavar="FILE",
        help=".jsonl/.csv/.parquet with a text field; '-' reads JSON Lines from stdin",
    )
    _add_columns(p)
    p.add_argument(
        "--output", metavar="FILE", help="write JSON Lines here (default, or '-': stdout)"
    )
    p.add_argument("--budget", default=DEFAULT_BUDGET_NAME + ":predict", help="budget name")
    p.add_argument("--max-queries", type=_count, help="cap on that budget's queries")
    p.add_argument(
        "--allow-provider-mismatch",
        action="store_true",
        help="score with the provider the flags name even where it differs from "
        "the one the decoder was fitted with (default: an error)",
    )
    # None: not given, so the provider recorded at fit fills them (see cli/provider.py).
    _add_money(p, "that budget's")
    p.set_defaults(
        func=commands.cmd_predict, model=None, api=None, strategy=None, top_logprobs=None
    )

    p = sub.add_parser("cache", help="inspect or clear the answer cache")
    p.add_argument("action", choices=["stats", "export", "clear"])
    p.add_argument("--output", metavar="FILE", help="export: JSON Lines file (default stdout)")
    p.add_argument("--model", dest="model_filter", help="clear: only this model's entries")
    p.add_argument("--yes", action="store_true", help="clear: do not ask for confirmation")
    _add_common(p)
    p.set_defaults(func=store_commands.cmd_cache)

    p = sub.add_parser("budget", help="show, set or reset query budgets")
    p.add_argument("action", choices=["show", "set", "reset"])
    p.add_argument("name", nargs="?", help="budget name (show: all when omitted)")
    p.add_argument("--max-queries", type=_count, help="set: new query cap")
    p.add_argument("--max-prompt-tokens", type=_count, help="set: new prompt-token cap")
    _add_money(p, "the budget's", prefix="set: ")
    p.add_argument("--json", action="store_true", help="show: JSON output")
    _add_common(p)
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
        type=_positive,
        default=16,
        help="most prompts scored in one batched forward pass (default 16)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a prompt waits for others to batch with (default 5 ms)",
    )
    _add_placement(p)
    p.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=None,
        help="largest request body (default 4 MiB); larger ones get 413",
    )
    p.add_argument(
        "--max-top-logprobs",
        type=_positive,
        default=20,
        help="most top log-probs per position in completions and chat (default 20; "
        "5 mimics a hosted API); more is a 400",
    )
    p.add_argument(
        "--max-generated-tokens",
        type=_positive,
        default=256,
        help="most tokens one request may generate, all its prompts together "
        "(default 256); more is a 400",
    )
    p.add_argument(
        "--max-context-tokens",
        type=_positive,
        default=4096,
        help="most tokens (prompt + generated) one request may hold (default 4096, "
        "at most the model's context); bounds memory and time; more is a 400",
    )
    p.add_argument(
        "--read-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="time a client gets to send a request's headers, and again its body "
        "(default 30); then the connection is closed",
    )
    p.add_argument(
        "--max-connections",
        type=_positive,
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
    p.add_argument("--shots", action="append", type=_positive, help="only these shots")
    p.add_argument("--seed", action="append", type=_seed, help="only these seeds")
    p.add_argument("--method", action="append", help="only these methods")
    p.add_argument("--no-plots", action="store_true", help="write the table only")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=commands.cmd_bench)

    p = sub.add_parser("datasets", help="list the bundled datasets and their default tasks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands.cmd_datasets, debug=False)
    return parser
