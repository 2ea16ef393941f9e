"""The published blocks that come from the benchmark scripts' ``results/<name>.json``.

Each function reads one result file and renders the table (and the sentences with
numbers) that the docs show for it; the command that wrote the file is named with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GB = 1e9


def _load(results: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((results / f"{name}.json").read_text(encoding="utf-8"))
    return data


def _pm(cell: dict[str, Any]) -> str:
    return f"{cell['mean']:.3f} ± {cell['std']:.3f}"


def speed(results: Path) -> str:
    """Scoring throughput, cache hits and fit times (``throughput.py``)."""
    t = _load(results, "throughput")
    by_batch = t["scoring_samples_per_s_by_batch_size"]
    fit = t["fit_seconds_agnews_16shot_x4"]
    return "\n".join(
        [
            "| what | result | goal |",
            "|---|---|---|",
            (
                f"| local scoring throughput, SST-2 test prompts ({t['scoring_prompts']}), batch "
                f"{' / '.join(by_batch)} (packed, ≤ 512 tokens per pass) | "
                f"{' / '.join(f'{v:.1f}' for v in by_batch.values())} samples/s | — |"
            ),
            (
                f"| cache-hit scoring (`Client.score` on {t['cache_hit_samples']} cached SST-2 samples, "
                f"hidden states included) | {t['cache_hit_samples_per_s']:,.0f} samples/s | ≥ 20,000 |"
            ),
            (
                "| fit, AG News 16 shots × 4 classes: DecT default (incl. 4-fold CV over 4 lambdas, "
                f"16 models) | {fit['dect']:.3f} s | ≤ 1 s |"
            ),
            (
                "| fit, same data: DecT as in the paper / LR on scores / linear probe | "
                f"{fit['dect-paper']:.3f} / {fit['lr']:.3f} / {fit['linear-probe']:.3f} s | — |"
            ),
        ]
    )


def chat(results: Path) -> str:
    """Chat path against the completions path (``chat_accuracy.py``)."""
    c = _load(results, "chat_accuracy")
    s, a = c["results"]["sst2"], c["results"]["agnews"]
    paths = [
        ("**chat**, top-5 cap, `force` (scores only)", "chat"),
        ("completions, extension (hidden state)", "completions"),
        ("completions, scores only (DecT without the hidden state)", "completions, scores only"),
    ]
    lines = [
        (
            "| path (16 shots) | SST-2 DecT | SST-2 LR on scores | AG News DecT | AG News LR on "
            "scores | requests per sample (SST-2 / AG News) |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for label, key in paths:
        per = (
            (
                f"**{s['chat_requests_per_sample']:.2f} / {a['chat_requests_per_sample']:.2f}** (at most "
                f"{1 + len(s['label_words'])} / {1 + len(a['label_words'])})"
            )
            if key == "chat"
            else ("1 / 1" if key == "completions" else "—")
        )
        cells = [_pm(d["accuracy"][key][m]) for d in (s, a) for m in ("dect", "lr")]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {per} |")
    return "\n".join([*lines, "", _chat_notes(s, a)])


def _chat_notes(s: dict[str, Any], a: dict[str, Any]) -> str:
    """The chat table's measured sentences: zero-shot, requests, forced words, gaps."""
    zs = {
        k: (s["accuracy"][k]["zero-shot"]["mean"], a["accuracy"][k]["zero-shot"]["mean"])
        for k in ("chat", "completions")
    }
    return (
        f"Zero-shot (argmax of the label words): chat {zs['chat'][0]:.3f} / {zs['chat'][1]:.3f}, "
        f"completions {zs['completions'][0]:.3f} / {zs['completions'][1]:.3f}. Requests per sample "
        "are the budget ledger's spent queries over the distinct samples scored (shots of all "
        f"seeds plus the test set: {s['chat_requests']:,} requests for {s['n_distinct_samples']:,} "
        f"SST-2 samples, {a['chat_requests']:,} for {a['n_distinct_samples']:,} AG News samples); "
        f"the probe is not charged. Label words missing from the top 5 of the first answer token "
        f"(forced): SST-2 {s['forced_label_words_share']:.1%}, AG News "
        f"{a['forced_label_words_share']:.1%}. DecT through chat is "
        f"{_gap(s, 'completions')} / {_gap(a, 'completions')} below the completions path with "
        f"hidden states and {_gap(s, 'completions, scores only')} / "
        f"{_gap(a, 'completions, scores only')} below DecT on the completions path's scores "
        "alone (SST-2 / AG News)."
    )


def _gap(d: dict[str, Any], path: str) -> str:
    return f"{d['accuracy'][path]['dect']['mean'] - d['accuracy']['chat']['dect']['mean']:.3f}"


def chat_summary(results: Path) -> str:
    """chat.md's one measured sentence (``chat_accuracy.py``)."""
    c = _load(results, "chat_accuracy")
    s, a = c["results"]["sst2"], c["results"]["agnews"]

    def acc(d: dict[str, Any], path: str) -> str:
        return f"{d['accuracy'][path]['dect']['mean']:.3f}"

    share = max(s["forced_label_words_share"], a["forced_label_words_share"])
    return (
        f"16-shot DecT through chat scores {acc(s, 'chat')} on SST-2 and {acc(a, 'chat')} on AG News (completions path: "
        f"{acc(s, 'completions')} / {acc(a, 'completions')} with the hidden state, "
        f"{acc(s, 'completions, scores only')} / {acc(a, 'completions, scores only')} without) at "
        f"{s['chat_requests_per_sample']:.2f} and {a['chat_requests_per_sample']:.2f} requests per "
        f"sample, because the base model left up to {share:.0%} of the label words out of its top 5 "
        "(AG News on the chat benchmark's own test subset, not the grid's)."
    )


def server_throughput(results: Path) -> str:
    """``maas-tune serve`` against the offline pass, and llama.cpp's server."""
    t = _load(results, "server_throughput")
    runs = t["offline_runs"]
    lines = [
        (
            f"Offline reference over the same {t['n_prompts']} prompts: mean "
            f"{t['offline_batched_samples_per_s']:.1f} samples/s (runs {min(runs):.1f}–{max(runs):.1f})."
        ),
        "",
        "| concurrent clients | samples/s | p50 latency | p99 latency | ratio to offline |",
        "|---|---|---|---|---|",
    ]
    for n, r in t["by_concurrency"].items():
        lines.append(
            f"| {n} | {r['samples_per_s']:.1f} | {r['p50_ms']:,.0f} ms | {r['p99_ms']:,.0f} ms "
            f"| {r['ratio_to_offline']:.2f} |"
        )
    ll = t.get("llama_cpp")
    if ll:
        by = ll["by_concurrency"]
        lines += [
            "",
            f"llama.cpp's server, {ll['n_prompts']} prompts (`{ll['request']}`): "
            + " / ".join(f"{r['samples_per_s']:.2f}" for r in by.values())
            + f" samples/s at {' / '.join(by)} clients (p50 "
            + ", ".join(f"{r['p50_ms'] / 1000:.1f} s" for r in by.values())
            + f"), {max(r['ratio_to_offline'] for r in by.values()):.2f} × our offline pass at best.",
        ]
    return "\n".join(lines)


def async_throughput(results: Path) -> str:
    """One process against a rate-limited API, async against the old sync path."""
    t = _load(results, "async_throughput")
    pairs: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for r in t["rows"]:
        pairs.setdefault((r["latency_ms"], r["limit_per_s"]), {})[r["path"]] = r
    lines = [
        (
            "| latency | provider limit | async: samples | async: samples/s ÷ limit "
            "| sync (old): samples | sync (old): ÷ limit | client CPU per request (async / sync) "
            "| server CPU per request (async) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for (lat, limit), by in pairs.items():
        a, s = by["async"], by["sync (old)"]
        lines.append(
            f"| {lat} ms | {limit:,}/s | {a['samples']:,} | **{a['ratio']:.2f}** "
            f"({a['samples_per_s']:.0f}/s) | {s['samples']:,} | {s['ratio']:.2f} "
            f"| {a['client_cpu_us_per_request'] / 1000:.1f} / "
            f"{s['client_cpu_us_per_request'] / 1000:.1f} ms "
            f"| {_server_cpu(a)} |"
        )
    rows = t["rows"]
    dup = sum(r["duplicate_requests"] for r in rows)
    over = sum(r["budget_overshoot"] for r in rows)
    led = sum(abs(r["ledger_minus_received"]) for r in rows)
    lines += [
        "",
        (
            f"Over every cell: {dup} duplicate requests, {sum(r['http_429'] for r in rows)} "
            f"answered 429, {over} budget overshoot, ledger − requests received = {led}. Load "
            f"average during the run: {' / '.join(f'{x:.1f}' for x in t['load_avg'])} on "
            f"{t['cpus']} cores. Command: `cd benchmarks && python {t['command']}`."
        ),
    ]
    return "\n".join(lines)


def _server_cpu(row: dict[str, Any]) -> str:
    """The loopback server's CPU per request, where the run measured it."""
    us = row.get("server_cpu_us_per_request")
    return "–" if us is None else f"{us / 1000:.2f} ms"


def server_memory(results: Path) -> str:
    """Peak memory of the costliest accepted server requests (``server_memory.py``)."""
    t = _load(results, "server_memory")
    cases = {r["case"]: r for r in t["results"]}
    e, g = cases["echo"], cases["generate"]
    return (
        f"The costliest accepted requests, measured by `benchmarks/server_memory.py` "
        f"(peak RSS above an idle {e['idle_rss_bytes'] / GB:.2f} GB): echo of "
        f"{e['usage']['prompt_tokens']:,} tokens with top {t['settings']['max_top_logprobs']}, "
        f"+{e['peak_above_idle_bytes'] / GB:.2f} GB ({e['seconds']:.0f} s); "
        f"{g['usage']['completion_tokens']} tokens generated after {g['usage']['prompt_tokens']:,}, "
        f"+{g['peak_above_idle_bytes'] / GB:.2f} GB ({g['seconds']:.0f} s); "
        f"goal ≤ {t['goal_bytes'] / GB:.1f} GB."
    )


def hosted_run(results: Path) -> str:
    """The hosted-API run through ``maas-tune serve`` (``hosted_run.py``)."""
    h = _load(results, "hosted_run")
    api, local, w = h["through_api"], h["in_process"], h["with_503s"]
    n = api["samples_sent"]  # the examples plus the content-free query (not compared)
    return "\n".join(
        [
            "| | through the strict API | in process |",
            "|---|---|---|",
            (
                f"| zero-shot / calibrated accuracy | {api['accuracy']['zero-shot']:.3f} / "
                f"{api['accuracy']['calibrated']:.3f} | {local['accuracy']['zero-shot']:.3f} / "
                f"{local['accuracy']['calibrated']:.3f} |"
            ),
            (
                f"| DecT accuracy (over HTTP no hidden state: `dect-logprobs` in process) | "
                f"{api['accuracy']['dect']:.3f} | {local['accuracy']['dect-logprobs']:.3f} |"
            ),
            (
                f"| largest difference of the label log-probs of the {n - 1} examples | "
                f"{h['max_abs_label_logprob_diff']:.2e} | — |"
            ),
            f"| `auto`'s plan | `{api['strategy']}`, missing words echoed, then echo alone | — |",
            (
                f"| requests: probe + scoring, for {n} samples | {api['probe_queries']} + "
                f"{api['queries_sent'] - api['probe_queries']} ({(api['queries_sent'] - api['probe_queries']) / n:.2f} "
                "per sample) | 0 |"
            ),
            (
                f"| the ledger / requests the API billed (sent twice) | {api['ledger']} / "
                f"{api['billed_by_api']} ({api['duplicates']}) | — |"
            ),
            f"| a rerun sends / is billed | {api['rerun_queries']} / {api['rerun_billed']} | — |",
            (
                f"| with {h['fail_503_rate']:.0%} 503s: runs until complete, ledger / billed, requests sent "
                f"twice | {w['runs_until_complete']}, {w['ledger']} / {w['billed_by_api']}, {w['duplicates']} | — |"
            ),
        ]
    )


def agreement(results: Path) -> str:
    """Largest difference of label log-probs between backends (``agreement.py``)."""
    a = _load(results, "agreement")
    rows = [
        ("`maas-tune serve`, extension", a["serve/extension"], "same weights, batched differently"),
        ("`maas-tune serve`, top_logprobs", a["serve/top_logprobs"], ""),
        ("`maas-tune serve`, echo", a["serve/echo"], ""),
    ]
    lines = ["| backend / strategy | max abs diff | notes |", "|---|---|---|"]
    lines += [f"| {name} | {v:.1e} | {note} |" for name, v, note in rows]
    if "llama.cpp/max_abs_diff" in a:
        lines.append(
            f"| llama.cpp server, `auto` → {a['llama.cpp/strategy']} | {a['llama.cpp/max_abs_diff']:.2f} "
            f"(mean {a['llama.cpp/mean_abs_diff']:.2f}) | computes with the Q4_K_M weights; we "
            f"dequantise to float32; argmax agrees on {a['llama.cpp/argmax_agreement']:.0%} |"
        )
    return "\n".join(lines)


def scale_out(results: Path) -> str:
    """Workers sharing one PostgreSQL cache, budget and rate limit (``scale_out.py``)."""
    t, k = _load(results, "scale_out"), _load(results, "scale_out_killed")
    limit = t["config"]["provider_rpm"] / 60
    lines = [
        (
            "| workers | wall (s) | samples/s (wall) | provider req/s | duplicate queries | 429s "
            "| budget cap | spent | overshoot |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    runs = [(str(r["workers"]), r) for r in t["runs"]]
    runs += [
        (f"{t['killed_worker_run']['workers']}, one killed", t["killed_worker_run"]),
        (f"{k['killed_worker_run']['workers']}, one killed (again)", k["killed_worker_run"]),
    ]
    for label, r in runs:
        dup = str(r["duplicate_queries"])
        if "duplicates_between_live_workers" in r and r.get("killed"):
            dup += (
                f": **{r['duplicates_between_live_workers']} between live workers**, "
                f"{r['duplicates_resent_after_crash']} re-sent after the crash"
            )
        rate = f"{r['provider_rate_per_s']:.1f}"
        if r["provider_rate_per_s"] >= 0.995 * limit:
            rate = f"**{rate}** (the limit)"
        lines.append(
            f"| {label} | {r['wall_s']:.1f} | {r['throughput_per_s']:.1f} | "
            f"{rate} | {dup} | {r['http_429']} | {r['budget_limit']:,} "
            f"| {r['budget_spent']:,} | {r['budget_overshoot']} |"
        )
    one = t["runs"][0]["throughput_per_s"]
    lines += [
        "",
        "Throughput against one worker: "
        + ", ".join(
            f"{r['throughput_per_s'] / one:.1f}× with {r['workers']}" for r in t["runs"][1:]
        )
        + ".",
    ]
    return "\n".join(lines)
