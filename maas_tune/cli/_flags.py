"""Flag groups that several ``maas-tune`` subcommands share: storage and logging, the
provider, the data, the placement of the local model, money caps."""

from __future__ import annotations

import argparse

from .._constants import DEFAULT_BUDGET_NAME, DEFAULT_MODEL_NAME, DEFAULT_TOP_LOGPROBS
from ._types import count, positive, price, ranged, rate, seed, usd
from .provider import add_api_flags

__all__ = ["add_columns", "add_common", "add_data", "add_money", "add_placement", "add_provider"]


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache", metavar="PATH", help="cache/budget database (default: user cache dir)"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--verbose", action="store_true", help="log retries, 429s and the chosen strategy"
    )


def add_provider(p: argparse.ArgumentParser) -> None:
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
        type=positive,
        default=DEFAULT_TOP_LOGPROBS,
        help="with --base-url: top log-probs asked per request (hosted APIs allow 5 to 20)",
    )
    p.add_argument(
        "--rate-limit",
        type=rate,
        metavar="N/min",
        help="with --base-url: the account's request limit, e.g. 3000/min or 50/s; requests "
        "are paced below it and enough are kept in flight to reach it (default: no limit)",
    )
    p.add_argument(
        "--max-concurrency",
        type=ranged(1, 10_000),
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
    p.add_argument("--batch-size", type=positive, default=16, help="prompts per forward pass")
    add_placement(p, "local model: ", "; answers are cached per dtype")
    p.add_argument(
        "--offline", action="store_true", help="answer from the cache only; send nothing"
    )


def add_columns(p: argparse.ArgumentParser) -> None:
    for field, default in (("text", "text"), ("text-b", "text_b"), ("label", "label")):
        p.add_argument(
            f"--{field}-column",
            metavar="NAME",
            help=f"the column (or JSON key) of the data files holding the {default} "
            f"(default {default!r})",
        )


def add_placement(p: argparse.ArgumentParser, prefix: str = "", note: str = "") -> None:
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


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="bundled dataset name (see `maas-tune datasets`)")
    p.add_argument(
        "--train",
        metavar="FILE",
        help="training pool (.jsonl/.csv/.parquet) instead of --dataset",
    )
    p.add_argument(
        "--test", metavar="FILE", help="test set (.jsonl/.csv/.parquet) instead of --dataset"
    )
    add_columns(p)
    p.add_argument("--task", metavar="FILE", help="task file (.toml/.json); default: the dataset's")
    p.add_argument("--shots", type=positive, default=16, help="examples per class (default 16)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the draw and the decoder")
    p.add_argument("--budget", default=DEFAULT_BUDGET_NAME, help="name of the training budget")
    p.add_argument("--max-queries", type=count, help="cap on the training budget's queries")
    p.add_argument(
        "--max-prompt-tokens", type=count, help="cap on the training budget's prompt tokens"
    )


def add_money(
    p: argparse.ArgumentParser, whose: str = "the training budget's", prefix: str = ""
) -> None:
    auto = (
        ""
        if prefix
        else ("; default for an --api-model listed in maas_tune.pricing.PRICES: its example price")
    )
    p.add_argument(
        "--max-cost",
        type=usd,
        metavar="USD",
        help=f"{prefix}cap in US dollars on {whose} cost: its queries and prompt "
        "tokens at the price, reserved before sending (persisted; needs a price)",
    )
    p.add_argument("--price", type=price, metavar="INPUT,OUTPUT",
                   help=f"{prefix}US dollars per million input and output tokens (e.g. "
                   f"0.15,0.60), stored with the budget{auto}")  # fmt: skip
