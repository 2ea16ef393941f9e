"""The subcommands behind :mod:`maas_tune.cli`: argument handling around one library call each."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .. import datasets
from .._constants import DEFAULT_TOKEN_FEATURES
from ..client import Client
from ..data import Example, load_examples, parse_examples, sample_k_shot
from ..errors import ConfigurationError
from ..experiment import (
    TEST_BUDGET_SUFFIX,
    EvalResult,
    evaluate,
    fit_method,
    predict_method,
    subsample_test,
)
from ..frames import resolve_columns
from ..methods import PromptMethod
from ..persistence import load_estimator, save_estimator
from ..pricing import Price, format_usd, price_for
from ..providers.base import Provider
from ..registry import make_decoder
from ..storage import Store
from ..storage.budget import QueryBudget
from ..storage.cache import ScoreCache
from ..task import Task
from .provider import (
    RECORD_KEY,
    apply_record,
    check_fingerprint,
    placement,
    provider_record,
)
from .provider import build_provider as _provider  # the seam tests replace


# -- shared argument handling ---------------------------------------------------
def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.quiet else None


def _task_and_data(args: argparse.Namespace) -> tuple[str, Task, list[Example], list[Example]]:
    """(dataset name, task, train pool, test set) from --dataset or --train/--test/--task."""
    if args.dataset:
        if args.train or args.test:
            raise ConfigurationError("give either --dataset or --train/--test files, not both")
        if any(_columns(args).values()):
            raise ConfigurationError(
                "--text-column, --text-b-column and --label-column name the columns of "
                "--train/--test files; a bundled --dataset has its own: drop them"
            )
        task = Task.from_file(args.task) if args.task else datasets.load_task(args.dataset)
        ds = datasets.load(args.dataset)
        return args.dataset, task, list(ds.train), list(ds.test)
    if not (args.train and args.task):
        raise ConfigurationError(
            "say what to train on: --dataset NAME (bundled), or --train FILE and --task FILE"
        )
    task = Task.from_file(args.task)
    train = _load(args.train, args, task)
    test = _load(args.test, args, task) if getattr(args, "test", None) else []
    return Path(args.train).stem, task, train, test


def _columns(args: argparse.Namespace) -> dict[str, Any]:
    """The column flags as the keywords of :func:`load_examples`."""
    return {field: getattr(args, f"{field}_column", None) for field in ("text", "text_b", "label")}


def _load(path: str, args: argparse.Namespace, task: Task, *, require_label: bool = True
          ) -> list[Example]:  # fmt: skip
    """Examples of a data file, or of JSON Lines on stdin for ``-``, with the column flags."""
    if path == "-":
        return parse_examples(
            sys.stdin.buffer.read(),
            fmt="jsonl",
            source="<stdin>",
            labels=task.labels,
            require_label=require_label,
            columns=resolve_columns(**_columns(args)),
        )
    return load_examples(path, labels=task.labels, require_label=require_label, **_columns(args))


def _pricing(args: argparse.Namespace, model: str | None = None) -> tuple[Price | None, bool]:
    """(price, given): ``--price``, else the example table's price of the API model
    (``given`` False: a default, which does not replace a price stored earlier)."""
    if getattr(args, "price", None) is not None:
        return args.price, True
    name = getattr(args, "base_url", None) and (args.api_model or model or args.model)
    return (price_for(name) if name else None), False  # the local model: no price


def _budget(
    store: Store,
    name: str,
    max_queries: int | None,
    max_tokens: int | None = None,
    max_cost: float | None = None,
    pricing: tuple[Price | None, bool] = (None, False),
) -> QueryBudget:
    """The budget with the caps given (None: as stored) and its price (see :func:`_pricing`)."""
    price, given = pricing
    budget = QueryBudget(
        name, max_queries=max_queries, max_prompt_tokens=max_tokens,
        price=price if given else None, store=store,
    )  # fmt: skip
    if price is not None and not given:
        stored = budget.status().price
        if stored is None:
            budget.set_price(price)
        elif stored != price:
            print(f"maas-tune: warning: budget {name!r} keeps its stored price ({stored}), not "
                  f"the example table's ({price}); pass --price INPUT,OUTPUT to change it",
                  file=sys.stderr)  # fmt: skip
    if max_cost is not None:
        budget.set_limits(max_cost=max_cost)
    return budget


def _client(
    args: argparse.Namespace, provider: Provider, store: Store, budget: QueryBudget
) -> Client:
    """The client of ``fit`` and ``predict``: the store's cache, ``budget``, the flags'
    offline mode and progress bars."""
    return Client(
        provider,
        cache=ScoreCache(store),
        offline=args.offline,
        progress=_progress(args),
        budget=budget,
    )


def _methods(raw: Sequence[str] | None) -> list[str]:
    names = [m.strip() for item in (raw or ["dect"]) for m in item.split(",") if m.strip()]
    for name in names:
        make_decoder(name, shots=1)  # unknown names fail here, before any work
    return names


# -- eval -----------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    methods = _methods(args.method)
    name, task, train, test = _task_and_data(args)
    if not test:
        raise ConfigurationError("eval needs a test set: --dataset NAME or --test FILE")
    test = subsample_test(test, args.test_limit)
    # Y-Tuning attends over the input's token states: ask the provider for them (the
    # in-process model and `maas-tune serve`'s extension give them; other APIs cannot).
    args.token_features = DEFAULT_TOKEN_FEATURES if "ytuning" in methods else None
    store = Store(args.cache)
    pricing = _pricing(args)
    budget = _budget(
        store, args.budget, args.max_queries, args.max_prompt_tokens, args.max_cost, pricing
    )
    test_budget = _budget(
        store, args.budget + TEST_BUDGET_SUFFIX, args.max_test_queries, None,
        args.max_test_cost, pricing,
    )  # fmt: skip
    results = evaluate(
        provider=_provider(args),
        task=task,
        dataset=name,
        train_pool=train,
        test=test,
        methods=methods,
        shots=args.shots,
        seed=args.seed,
        cache=ScoreCache(store),
        budget=budget,
        test_budget=test_budget,
        offline=args.offline,
        progress=_progress(args),
    )
    if args.json:
        for r in results:
            print(json.dumps(r.to_dict()))
    else:
        _print_summary(results, test_budget)
    return 0


def _print_summary(results: list[EvalResult], test_budget: QueryBudget) -> None:
    r0 = results[0]
    print(
        f"{r0.dataset}: {r0.shots}-shot, seed {r0.seed}, {r0.n_test} test examples, model {r0.model}"
    )
    print(f"  {'method':<14}{'accuracy':>10}{'macro-F1':>10}{'log-loss':>10}{'ECE':>8}"
          f"{'fit (s)':>10}  lowest recall")  # fmt: skip
    for r in results:
        print(f"  {r.method:<14}{r.accuracy:>10.4f}{_num(r.macro_f1, 10, 4)}"
              f"{_num(r.log_loss, 10, 3)}{_num(r.ece, 8, 3)}{r.fit_seconds:>10.3f}"
              f"  {_lowest_recall(r)}")  # fmt: skip
    print("  (ECE: expected calibration error of predict_proba, 15 equal-width confidence "
          "bins; --json has per-class scores and the confusion matrix)")  # fmt: skip
    limit = "unlimited" if r0.budget_limit is None else str(r0.budget_limit)
    t = test_budget.status()
    scoring = r0.queries_sent - r0.probe_queries - r0.queries_lost
    per_sample = f"{scoring / r0.samples_sent:.2f}" if r0.samples_sent else "-"
    print(f"provider: {r0.provider}, strategy {r0.strategy}, queries per sample: {per_sample}")
    print(
        f"queries sent this run: {r0.queries_sent} (probe {r0.probe_queries}, "
        f"without a kept answer {r0.queries_lost})   cache hits: {r0.cache_hits}"
    )
    if r0.retries or r0.rate_limited:
        print(
            f"retried: {r0.retries} attempts, of which answered 429 (rate limit): {r0.rate_limited}"
        )
    if r0.floored_share:
        print(
            f"label words given the top-k bound, not the model's value: "
            f"{100 * r0.floored_share:.1f}% (pass --tokenizer to force them exactly)"
        )
    if r0.cost_sent is not None and r0.price_input_per_million is not None:
        price = Price(r0.price_input_per_million, r0.price_output_per_million or 0.0)
        print(f"cost this run: {format_usd(r0.cost_sent)} at {price} "
              "(a query counts one output token)")  # fmt: skip
    print(f"training budget {r0.budget_name!r}: {r0.budget_spent} of {limit} queries spent"
          + _cost_text(r0.budget_cost_spent, r0.budget_cost_limit))  # fmt: skip
    print(f"test budget {t.name!r}: {t.spent_queries} queries spent in total"
          + _cost_text(t.spent_cost, t.max_cost))  # fmt: skip


def _cost_text(spent: float | None, cap: float | None) -> str:
    """``"; $0.42 spent (cost cap $4.00)"``, or nothing without a price."""
    if spent is None:
        return ""
    shown = "no cost cap" if cap is None else f"cost cap {format_usd(cap)}"
    return f"; {format_usd(spent)} spent ({shown})"


def _num(value: float | None, width: int, digits: int) -> str:
    """A right-aligned number, or a dash where a method has no such value."""
    return f"{'—':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _lowest_recall(r: EvalResult) -> str:
    """The class the method finds least often: ``ABBR 0.33 of 9`` (what accuracy hides)."""
    present = {k: v for k, v in (r.per_class or {}).items() if v["support"]}
    if not present:
        return "—"
    name = min(present, key=lambda k: present[k]["recall"])
    return f"{name} {present[name]['recall']:.2f} of {int(present[name]['support'])}"


# -- fit / predict ----------------------------------------------------------------
def cmd_fit(args: argparse.Namespace) -> int:
    name, task, train, _ = _task_and_data(args)
    store = Store(args.cache)
    provider = _provider(args)
    budget = _budget(
        store, args.budget, args.max_queries, args.max_prompt_tokens, args.max_cost, _pricing(args)
    )
    client = _client(args, provider, store, budget)
    shots = sample_k_shot(train, args.shots, labels=task.labels, seed=args.seed)
    decoder = make_decoder(args.method, shots=args.shots, random_state=args.seed)
    client.prepare(task)  # a probe is charged to the budget before the identity is read
    record = provider_record(args, provider)  # what predict rebuilds
    meta = {
        "task": task.to_dict(),
        "provider": provider.fingerprint(),
        RECORD_KEY: record,
        "model": record.get("api_model") or args.model,
        "method": args.method,
        "dataset": name,
        "shots": args.shots,
        "seed": args.seed,
    }
    if "progress" in decoder.get_params():
        decoder.set_params(progress=_progress(args))
    seconds = fit_method(decoder, client=client, task=task, shots=shots, pool=train)
    path = save_estimator(decoder, args.out, metadata=meta)
    print(f"fitted {args.method} on {len(shots)} examples in {seconds:.3f} s; saved to {path}")
    print(f"queries sent: {client.usage.queries_sent}, cache hits: {client.usage.cache_hits}")
    return 0


def _in_class_order(task: Task, classes: Sequence[str]) -> Task:
    """``task`` with its labels in the decoder's class order: maas-tune 0.1.0 saved the
    task with its verbalizer's labels sorted, which no longer matched the decoder."""
    classes = [str(c) for c in classes]
    if list(task.labels) != classes and sorted(task.labels) == sorted(classes):
        return task.with_verbalizer({label: task.verbalizer[label] for label in classes})
    return task


def cmd_predict(args: argparse.Namespace) -> int:
    estimator, meta = load_estimator(args.decoder)  # a decoder or a prompt method
    if isinstance(estimator, PromptMethod):  # saved by `fit --method icl|bdpl|prompt-tuning`
        task = estimator.task_
    else:
        task = _in_class_order(Task.from_dict(meta["task"]), estimator.classes_.tolist())
    record = apply_record(args, meta)  # the fitted provider unless the flags name another
    provider = _provider(args, model=args.model or meta.get("model"))
    examples = _load(args.input, args, task, require_label=False)
    store = Store(args.cache)
    pricing = _pricing(args, model=meta.get("model"))
    budget = _budget(store, args.budget, args.max_queries, None, args.max_cost, pricing)
    client = _client(args, provider, store, budget)
    client.prepare(task)  # a probe is charged to the budget before the identity is read
    check_fingerprint(args, provider, meta, record)
    preds, proba = predict_method(estimator, client=client, task=task, examples=examples)
    with contextlib.ExitStack() as stack:
        out: TextIO = (
            stack.enter_context(open(args.output, "w", encoding="utf-8"))
            if args.output and args.output != "-"
            else sys.stdout
        )
        for ex, label, p in zip(examples, preds, proba):
            row: dict[str, Any] = {"text": ex.text, "prediction": str(label)}
            row["probabilities"] = {c: round(float(v), 6) for c, v in zip(task.labels, p)}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0


# -- bench / datasets ------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import load_config, run_grid, write_report

    config = load_config(args.config)
    grid = {k: v for k, v in (("datasets", args.dataset), ("shots", args.shots),
                              ("seeds", args.seed), ("methods", args.method)) if v}  # fmt: skip
    if args.action == "run":
        todo = config.only(**grid) if grid else config
        if not todo.blocks:
            raise ConfigurationError(f"no cell of {args.config} matches {grid}")
        run = run_grid(todo, progress=_progress(args))
        print(f"cells: {run.cells} ({run.cells_skipped} already done), rows written: "
              f"{run.rows_written}, queries sent: {run.queries_sent}")  # fmt: skip
        if run.stopped_by_budget:
            print(f"stopped: the budget ran out ({run.stopped_by_budget}); rows so far are kept")
    for path in write_report(config, plots=not args.no_plots):
        print(f"wrote {path}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    rows = []
    for name in datasets.available():
        task = datasets.load_task(name)
        rows.append(
            {
                "name": name,
                "labels": list(task.labels),
                "template": task.template,
                "words": {k: list(v) for k, v in task.verbalizer.items()},
            }
        )
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    for r in rows if not args.json else []:
        print(
            f"{r['name']}: {', '.join(r['labels'])}\n  template: {r['template']!r}\n  words: {r['words']}"
        )
    return 0


# -- serve ----------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from ..server import run

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ConfigurationError(
                f"--api-key-env {args.api_key_env}: that environment variable is empty or unset"
            )
    where = placement(args)  # before the server starts: a wrong flag stops it here
    run(
        args.model,
        device=where.device,
        dtype=where.dtype,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_bytes,
        max_top_logprobs=args.max_top_logprobs,
        max_generated_tokens=args.max_generated_tokens,
        max_context_tokens=args.max_context_tokens,
        read_timeout_s=args.read_timeout,
        max_connections=args.max_connections,
        allowed_hosts=args.allowed_host,
    )
    return 0
