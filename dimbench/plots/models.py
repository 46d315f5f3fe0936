"""What the figures know of a model: the family label it registered, its size, and whether it
is an attention baseline. Rows of a model no module registers any more read as family
"other"."""

from __future__ import annotations

import re

from dimbench.registry import UnknownModelError, get_model

UNREGISTERED = "other"


def model_family(name: str) -> str:
    """The family a model registered with (its plot label)."""
    try:
        return get_model(name).family
    except UnknownModelError:
        return UNREGISTERED


def is_baseline(name: str) -> bool:
    try:
        return get_model(name).baseline
    except UnknownModelError:
        return False


def model_size(name: str) -> str:
    m = re.search(r"-([A-Z]+)/\d+", name)
    return m.group(1) if m else ""


def families(names) -> str:
    """The families of ``names``, e.g. "DiM" or "DiM/TinyConv"."""
    return "/".join(sorted({model_family(n) for n in names}))


def by_family(names) -> list[str]:
    """``names`` in legend order: by family, then name."""
    return sorted(set(names), key=lambda n: (model_family(n), n))
