"""How a results folder's rows split into figures: one per (device, dtype, mode, batch) group,
named by the group when there are several."""

from __future__ import annotations

import re

GROUP_KEYS = ["device", "dtype", "mode", "batch_size"]


def groups(rows) -> dict[tuple, object]:
    """Rows split by (device, dtype, mode, batch), in that order."""
    if rows.empty:
        return {}
    return {tuple(k): g for k, g in rows.groupby(GROUP_KEYS, sort=True)}


def group_label(key: tuple) -> str:
    device, dtype, mode, batch = key
    return f"{device}, {dtype}, {mode}, batch {batch}"


def group_slug(key: tuple) -> str:
    """The group in a file name: ``cpu_fp32_forward_b1``."""
    device, dtype, mode, batch = key
    return re.sub(r"[^a-z0-9_]+", "-", f"{device}_{dtype}_{mode}_b{batch}".lower())


def figure_stem(kind: str, key: tuple | None, several: bool) -> str:
    """``kind`` alone for a folder's only figure of that kind, else ``kind_<group>``."""
    return f"{kind}_{group_slug(key)}" if several and key is not None else kind


def first_value(*frames, column: str = "device_name") -> str:
    """The first value of ``column`` in the first frame that has one ("" if none does)."""
    for f in frames:
        if not f.empty and column in f and f[column].notna().any():
            return str(f[column].dropna().iloc[0])
    return ""


def split(rows, columns: tuple[str, ...]) -> list[tuple[str, object]]:
    """``rows`` split by ``columns`` (a suite's extra key columns, e.g. the device profile of a
    prediction: measurements of one configuration that live side by side), each part with its
    label; one unlabelled part when the rows do not vary by them."""
    present = [c for c in columns if c in rows and rows[c].notna().any()]
    if not present:
        return [("", rows)]
    parts = rows.groupby(present if len(present) > 1 else present[0], sort=True)
    return [(", ".join(map(str, k if isinstance(k, tuple) else (k,))), g) for k, g in parts]
