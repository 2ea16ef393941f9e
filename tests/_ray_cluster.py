"""A local Ray cluster for the tests that need one: started once per session, shut down at its end.

Each test module that needs it declares a session fixture ``yield from local_ray_cluster()``
(conftest.py stays free of Ray); the first one to run starts the cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

#: Logical CPUs of the test cluster (the machine has two cores; actors mostly wait on I/O).
RAY_TEST_CPUS = 2


def local_ray_cluster() -> Iterator[Any]:
    """Yield the ``ray`` module initialised on a local cluster; skip when Ray is not installed."""
    ray = pytest.importorskip("ray", reason="needs the 'ray' extra: pip install 'maas-tune[ray]'")
    pytest.importorskip("ray.data", reason="needs the 'ray' extra: pip install 'maas-tune[ray]'")
    if ray.is_initialized():  # another module's fixture started it and will stop it
        yield ray
        return
    ray.init(
        num_cpus=RAY_TEST_CPUS,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()
