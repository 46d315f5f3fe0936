"""Benchmarks (pytest-benchmark): never in the default `pytest` run, whose testpaths are tests/.

Run them with `pytest benchmarks -m bench --benchmark-enable` (add `--benchmark-json=FILE` to
keep the samples; `dimbench kernel-report FILE` tabulates the kernel ones).
"""

from dimbench.threads import apply_thread_policy

apply_thread_policy()  # idle OpenMP threads sleep, as under the CLI (before torch starts)

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.bench)
