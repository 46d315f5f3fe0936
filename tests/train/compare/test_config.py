"""train-compare's configuration: a TrainConfig recipe under the comparison's own settings,
layered from the preset and the base defaults; and no import circle in the package."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import dimbench.train.compare
from dimbench.train.compare.config import BASE, PRESETS, CompareConfig, resolve, unset_recipe
from dimbench.train.config import TrainConfig


def names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_every_default_sets_one_field_of_the_comparison_or_of_its_recipe():
    own, recipe = names(CompareConfig), names(TrainConfig)
    for layer in (BASE, *PRESETS.values()):
        for key in layer:
            assert (key in own) != (key in recipe), key
    # what both declare is set apart: the recipe's out and progress are each trainer's
    assert own & recipe == {"out", "progress"}


def test_the_recipe_takes_the_presets_values_and_what_is_given():
    cfg = resolve(CompareConfig(preset="paper", recipe=unset_recipe(data="x.npz", lr=1e-4)))
    assert cfg.recipe.dtype == "bf16" and cfg.recipe.batch_size == 768 and cfg.recipe.lr == 1e-4
    assert cfg.recipe.data == "x.npz" and cfg.recipe.image_size == 256
    smoke = resolve(CompareConfig(preset="smoke"))
    assert smoke.recipe.dtype == "fp32" and smoke.recipe.betas == (0.99, 0.99)
    assert smoke.recipe.conv_backend == "auto" and smoke.models == PRESETS["smoke"]["models"]


def imports(path: Path, package: str) -> set[str]:
    """The modules of ``package`` that ``path`` imports, at any level (TYPE_CHECKING too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package):
            out.add(node.module.removeprefix(package + ".").split(".")[0])
    return out


def test_no_import_circle_in_train_compare():
    folder = Path(dimbench.train.compare.__file__).parent
    package = "dimbench.train.compare"
    graph = {p.stem: imports(p, package) for p in folder.glob("*.py") if p.stem != "__init__"}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    assert [m for m in graph if reaches(m, m, set())] == []
