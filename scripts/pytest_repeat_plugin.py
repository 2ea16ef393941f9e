"""A pytest plugin for ``scripts/race_sqlite_open.sh``: ``--repeat N`` runs each test N times.

Each test is parametrised with ``run0`` ... ``run{N-1}``, so the N runs share one pytest
process (starting pytest takes seconds; one run of a race test, a fraction of that).
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--repeat", type=int, default=1, help="run each test this many times")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    count = metafunc.config.getoption("repeat")
    if count > 1:
        metafunc.fixturenames.append("_repeat_run")
        metafunc.parametrize("_repeat_run", range(count), ids=[f"run{i}" for i in range(count)])
