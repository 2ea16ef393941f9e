"""Agreement of label log-probs: in-process model vs `maas-tune serve` vs llama.cpp's server.

Usage: start llama.cpp's server (``scripts/llama_cpp_server.sh 8765``), then
``python benchmarks/agreement.py [--llama-url http://127.0.0.1:8765/v1] [--n 30]``
(writes ``benchmarks/results/agreement.json``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import maas_tune as mt
from maas_tune.server import Engine, create_app

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import write_result

from tests._servers import serve_in_thread


def logprobs(provider: mt.Provider, prompts: list[str], words: list[str]) -> np.ndarray:
    return np.stack([a.logprobs for a in provider.score(prompts, words)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-url", default="http://127.0.0.1:8765/v1")
    parser.add_argument("--n", type=int, default=30)
    args = parser.parse_args()
    task, data = mt.datasets.load_task("sst2"), mt.datasets.load("sst2")
    prompts = [task.render(e) for e in data.test[: args.n]]
    words = list(task.label_words)
    local = mt.TransformersProvider()
    ref = logprobs(local, prompts, words)
    out: dict = {"n_prompts": len(prompts), "words": words}
    with serve_in_thread(create_app(Engine(local, "gemma-3-270m"))) as url:
        for strategy in ("extension", "top_logprobs", "echo"):
            with mt.OpenAICompletionsProvider(f"{url}/v1", "gemma-3-270m", strategy=strategy) as p:
                out[f"serve/{strategy}"] = float(np.abs(logprobs(p, prompts, words) - ref).max())
    with mt.OpenAICompletionsProvider(args.llama_url, "gemma", api_key="unused") as llama:
        got = logprobs(llama, prompts, words)
        out["llama.cpp/strategy"] = llama.strategy
        out["llama.cpp/max_abs_diff"] = float(np.abs(got - ref).max())
        out["llama.cpp/mean_abs_diff"] = float(np.abs(got - ref).mean())
        out["llama.cpp/argmax_agreement"] = float((got.argmax(1) == ref.argmax(1)).mean())
    print(write_result("agreement", out).read_text())


if __name__ == "__main__":
    main()
