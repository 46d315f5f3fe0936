"""The wheel holds every package of the source tree (a normal `pip install .` is what users get):
pyproject finds the packages under dimbench/, so every folder of Python files must be a package,
and the kernels' C++ sources must be package data."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_python_folder_is_a_package():
    setuptools = _setuptools()
    assert "package-dir" not in setuptools, "everything that installs lives under dimbench/"
    assert setuptools["packages"]["find"]["include"] == ["dimbench*"]
    folders = {p.parent for p in (ROOT / "dimbench").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
    assert not missing, f"folders of Python files that find_packages would leave out: {missing}"


def test_kernel_sources_are_package_data():
    patterns = _setuptools()["package-data"]["dimbench.ops"]
    csrc = ROOT / "dimbench" / "ops" / "csrc"
    shipped = {p for pattern in patterns for p in (ROOT / "dimbench" / "ops").glob(pattern)}
    sources = {p for p in csrc.iterdir() if p.suffix in (".cpp", ".h")}
    assert sources and sources <= shipped, f"not shipped: {sorted(map(str, sources - shipped))}"
