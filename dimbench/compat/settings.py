"""Which dimbench backends the compatibility layer's kernels run on.

Code written against ``mamba_ssm`` names no dimbench backend, so the layer reads them from here:
``auto`` unless a caller (a registered model's forward, a benchmark) sets them for a block of
code with :func:`use_backends`. A context variable, so threads and nested calls each see their
own.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backends:
    scan: str = "auto"
    conv: str = "auto"


_CURRENT: contextvars.ContextVar[Backends] = contextvars.ContextVar(
    "dimbench_compat_backends",
    default=Backends(),  # noqa: B039 - a frozen dataclass: never mutated
)


def current() -> Backends:
    """The backends the layer's kernels run on here."""
    return _CURRENT.get()


@contextlib.contextmanager
def use_backends(scan: str = "auto", conv: str = "auto") -> Iterator[Backends]:
    """Run the layer's scans and convs on these dimbench backends inside the block."""
    token = _CURRENT.set(Backends(scan, conv))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)
