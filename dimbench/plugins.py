"""Modules outside dimbench that register models or suites: named with ``--import MODULE`` on
any command or ``DIMBENCH_IMPORT=mod1,mod2``, kept in that environment variable so the worker
processes a sweep starts import them too. (Installed packages can declare an entry point in the
group ``dimbench.models`` instead.) Nothing here imports torch: the CLI calls it first.

A module is found where ``python -m`` would find it: on the Python path, or in the current
directory, or as a file (``--import path/to/mynet.py``). The folders of the last two are kept in
``DIMBENCH_IMPORT_PATH`` and appended to ``sys.path`` (after the installed packages, so a source
checkout in that folder never shadows the installed dimbench), because the workers run in a
folder of their own."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

IMPORT_ENV = "DIMBENCH_IMPORT"
IMPORT_PATH_ENV = "DIMBENCH_IMPORT_PATH"
IMPORT_OPTION = "--import"


def named_modules() -> list[str]:
    return [m.strip() for m in os.environ.get(IMPORT_ENV, "").split(",") if m.strip()]


def import_dirs() -> list[str]:
    """The folders named modules were found in beyond the Python path."""
    return [d for d in os.environ.get(IMPORT_PATH_ENV, "").split(os.pathsep) if d]


def _locate(module: str) -> tuple[str, str | None]:
    """(module name, the folder to search for it or None) for a name or a ``.py`` file."""
    if module.endswith(".py"):
        path = Path(module).expanduser().resolve()
        return path.stem, str(path.parent) if path.is_file() else None
    top = module.split(".")[0]
    cwd = Path.cwd()
    in_cwd = (cwd / f"{top}.py").is_file() or (cwd / top / "__init__.py").is_file()
    try:
        on_path = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        on_path = False
    return module, str(cwd) if in_cwd and not on_path else None


def add_imports(modules: list[str]) -> None:
    """Name more modules to import, for this process and the processes it starts."""
    names, dirs = [], import_dirs()
    for module in modules:
        name, folder = _locate(module)
        names.append(name)
        if folder is not None:
            dirs.append(folder)
    os.environ[IMPORT_ENV] = ",".join(dict.fromkeys([*named_modules(), *names]))
    if dirs:
        os.environ[IMPORT_PATH_ENV] = os.pathsep.join(dict.fromkeys(dirs))


def extend_path() -> None:
    """Append the folders of the named modules to ``sys.path`` (once each)."""
    for folder in import_dirs():
        if folder not in sys.path:
            sys.path.append(folder)


def take_import_options(argv: list[str]) -> list[str]:
    """Remove every ``--import MODULE`` (or ``--import=MODULE``) from ``argv``, wherever it
    stands, name the modules, and return the rest."""
    rest, modules = [], []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == IMPORT_OPTION and i + 1 < len(argv):
            modules.append(argv[i + 1])
            i += 2
            continue
        if tok.startswith(IMPORT_OPTION + "="):
            modules.append(tok.split("=", 1)[1])
        else:
            rest.append(tok)
        i += 1
    if modules:
        add_imports(modules)
    return rest
