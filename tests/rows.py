"""Result rows the tests write: each suite's schema, a throughput key, a row and a store."""

from __future__ import annotations

from dimbench.bench import schemas
from dimbench.results import ResultStore

SCHEMAS = schemas()
KEY = dict(
    suite="throughput",
    model="DiM-T/2",
    image_size=256,
    batch_size=1,
    device="cpu",
    dtype="fp32",
    mode="forward",
    scan_backend="cpu",
    attn_backend="-",
)


def make_row(**fields) -> dict:
    return SCHEMAS[fields["suite"]].row(**fields)


def store_of(out, suite: str) -> ResultStore:
    return ResultStore(out, SCHEMAS[suite])
