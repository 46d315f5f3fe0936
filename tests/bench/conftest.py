"""Benchmarks: excluded from the default `pytest` run (addopts `-m "not bench"`).

Run them with `pytest tests/bench -m bench --benchmark-enable` (add
`--benchmark-json=FILE` to keep the samples).
"""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/bench/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.bench)
