"""The wheel holds every package of the source tree (a normal `pip install .` is what users get)."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> tuple[list[str], dict[str, str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config["packages"], config["package-dir"]


def test_every_source_package_is_declared():
    packages, package_dir = _declared()
    found = set()
    for name, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *relative)))
    missing = sorted(found - set(packages))
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_declared_package_exists():
    packages, package_dir = _declared()
    for name in packages:
        top = max((m for m in package_dir if name == m or name.startswith(m + ".")), key=len)
        folder = ROOT / package_dir[top] / Path(*name[len(top) :].strip(".").split("."))
        assert (folder / "__init__.py").is_file(), f"{name} declared but {folder} has no package"
