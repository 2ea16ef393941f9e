"""The headline figures of docs/reliability.md, reported by the tests that measure them.

Each figure is printed (visible with ``pytest -s``) and, when ``MAAS_TUNE_FIGURES`` names
a file, appended to it as one JSON object a line, so that the docs can quote a run::

    MAAS_TUNE_FIGURES=figures.jsonl pytest tests/test_reliability_budget.py ...
"""

from __future__ import annotations

import json
import os

__all__ = ["report"]

#: Environment variable naming the JSON Lines file that figures are appended to.
ENV_FIGURES = "MAAS_TUNE_FIGURES"


def report(name: str, value: float, **detail: object) -> None:
    """Print one measured figure and record it where ``$MAAS_TUNE_FIGURES`` says."""
    extra = "".join(f", {key}={val}" for key, val in detail.items())
    print(f"reliability figure: {name} = {value}{extra}")
    path = os.environ.get(ENV_FIGURES)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"figure": name, "value": value, **detail}) + "\n")
