"""The ``cache`` and ``budget`` subcommands of :mod:`maas_tune.cli`, and how a budget
refusal is told on the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ..errors import BudgetExceeded, ConfigurationError
from ..experiment import TEST_BUDGET_SUFFIX
from ..pricing import format_usd
from ..storage import Store
from ..storage.budget import BudgetStatus, QueryBudget, list_budgets, reset_budget
from ..storage.cache import ScoreCache

__all__ = ["budget_refusal", "cmd_budget", "cmd_cache"]


def cmd_cache(args: argparse.Namespace) -> int:
    cache = ScoreCache(Store(args.cache))
    if args.action == "stats":
        s = cache.stats()
        print(f"cache: {s.location}\nentries: {s.entries}\nsize: {s.size_bytes / 1e6:.1f} MB")
        for model, count in sorted(s.per_model.items()):
            print(f"  {model or '(unknown)'}: {count}")
    elif args.action == "export":
        n = cache.export(args.output or sys.stdout)
        print(f"exported {n} entries", file=sys.stderr)
    else:
        if not args.yes and not _confirmed(f"delete cached answers in {cache.store.location}?"):
            print("nothing deleted")
            return 1
        print(f"deleted {cache.clear(args.model_filter)} entries")
    return 0


def _confirmed(question: str) -> bool:
    """Ask on the terminal; without one (a pipe, a script, cron) refuse: paid answers
    must not go because some input said "y" or nothing at all."""
    if sys.stdin is None or not sys.stdin.isatty():
        raise ConfigurationError(
            "cache clear asks before deleting paid answers, and stdin is not a terminal; "
            "nothing deleted: pass --yes to delete without asking"
        )
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:  # Ctrl-D
        print()
        return False


def cmd_budget(args: argparse.Namespace) -> int:
    store = Store(args.cache)
    if args.action == "show":
        _show_budgets([b for b in list_budgets(store) if args.name in (None, b.name)], args)
        return 0
    if not args.name:
        raise ConfigurationError(f"budget {args.action} needs a budget name")
    if args.action == "reset":
        reset_budget(store, args.name)
        print(f"budget {args.name!r}: spent counters reset to 0")
    else:
        _set_budget(store, args)
    return 0


def _set_budget(store: Store, args: argparse.Namespace) -> None:
    """``budget set``: the caps and the price given, in that order (a cost cap needs a price)."""
    given = (("max_queries", args.max_queries), ("max_prompt_tokens", args.max_prompt_tokens),
             ("max_cost", args.max_cost))  # fmt: skip
    limits = {k: v for k, v in given if v is not None}
    if not limits and args.price is None:
        raise ConfigurationError(
            "budget set needs --max-queries, --max-prompt-tokens, --max-cost and/or --price"
        )
    b = QueryBudget(args.name, price=args.price, store=store)
    b.set_limits(**limits)
    s = b.status()
    cost = "none" if s.max_cost is None else format_usd(s.max_cost)
    print(
        f"budget {args.name!r}: max queries {s.max_queries}, "
        f"max prompt tokens {s.max_prompt_tokens}, max cost {cost}, price {s.price or 'none'}"
    )


def _show_budgets(rows: list[BudgetStatus], args: argparse.Namespace) -> None:
    """One line per budget, both units (or ``--json``: every field, remaining ones too)."""
    if args.json:
        remaining = ("remaining_queries", "remaining_prompt_tokens", "spent_cost",
                     "reserved_cost", "remaining_cost")  # fmt: skip
        dicts = [{**dataclasses.asdict(b), **{k: getattr(b, k) for k in remaining}} for b in rows]
        print(json.dumps(dicts))
        return
    if not rows:
        print("no budgets yet" if args.name is None else f"no budget named {args.name!r}")
        return
    for b in rows:
        q, t = ("unlimited" if c is None else c for c in (b.max_queries, b.max_prompt_tokens))
        print(
            f"{b.name}: {b.spent_queries} of {q} queries spent, {b.reserved_queries} in flight; "
            f"{b.spent_prompt_tokens} of {t} prompt tokens spent, "
            f"{b.reserved_prompt_tokens} in flight" + _cost_line(b)
        )
    print("(a query is one request to the provider: one prompt scored; prompt tokens are "
          "the tokens of the prompts sent; cost is both at the budget's price, a query "
          "counting one output token)")  # fmt: skip


def _cost_line(b: BudgetStatus) -> str:
    """``; $0.42 of $4.00 spent, $0.01 in flight, at $0.15/$0.60 per million ...``."""
    if b.spent_cost is None or b.reserved_cost is None:
        return "; no price" + (" (and a cost cap: set one)" if b.max_cost is not None else "")
    cap = "no cost cap" if b.max_cost is None else format_usd(b.max_cost)
    return (
        f"; {format_usd(b.spent_cost)} of {cap} spent, {format_usd(b.reserved_cost)} in "
        f"flight, at {b.price}"
    )


def budget_refusal(args: argparse.Namespace, exc: BudgetExceeded) -> str:
    """The refusal with the advice that fits this command line: the flag that raises the
    cap of that budget (``--max-queries``, ``--max-test-queries``, ``--max-prompt-tokens``,
    ``--max-cost``, ``--max-test-cost``),
    else ``maas-tune budget set`` (a cap stored earlier, on a budget without a flag here)."""
    flags: dict[tuple[str, str], str] = {}
    name = getattr(args, "budget", None)
    if isinstance(name, str):
        for dest, budget, unit in (
            ("max_queries", name, "queries"),
            ("max_prompt_tokens", name, "prompt_tokens"),
            ("max_cost", name, "cost"),
            ("max_test_queries", name + TEST_BUDGET_SUFFIX, "queries"),
            ("max_test_cost", name + TEST_BUDGET_SUFFIX, "cost"),
        ):
            if hasattr(args, dest):
                flags[(budget, unit)] = "--" + dest.replace("_", "-")
    flag = flags.get((exc.budget, exc.unit))
    value = "USD" if exc.unit == "cost" else "N"
    if flag is not None:
        advice = f"rerun with a larger {flag} {value} (it is stored with the budget)"
    else:
        cap = "--max-" + exc.unit.replace("_", "-")
        advice = f"raise it with `maas-tune budget set {exc.budget} {cap} {value}`"
    return f"{exc.summary}; {advice}, or use a cached run"
