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


def test_a_normal_install_records_its_revision(tmp_path):
    """`pip install .` (not editable): every result row's git_sha still names the commit it was
    built from (setuptools-scm writes it into the package), and --version shows it too."""
    import shutil
    import subprocess
    import sys

    pytest.importorskip("setuptools_scm")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    tracked = (
        subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):  # the working tree's state, uncommitted edits included
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, clone / name)
    head = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), str(clone)], check=True, timeout=300)
    shutil.rmtree(clone)  # the installed copy has no checkout to ask
    code = (
        "import dimbench; from dimbench.measure.metadata import git_sha; "
        "print(git_sha(), dimbench.__version__, dimbench.__file__)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr
    sha, version, where = res.stdout.split()
    assert where.startswith(str(site)) and sha.startswith(head) and head[:7] in version
