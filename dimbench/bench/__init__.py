"""Benchmark sweeps: a sweep as data (``spec``), the runner that measures it one process per
configuration (``runner``, ``worker``), the work a measurement times (``workload``), and the
suites (``suites/``), registered with ``register_suite``."""

from dimbench.bench.registry import all_suites, get_suite, register_suite, schemas, suite_names

__all__ = ["all_suites", "get_suite", "register_suite", "schemas", "suite_names"]
