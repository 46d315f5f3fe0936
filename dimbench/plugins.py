"""Modules outside dimbench that register models or suites: named with ``--import MODULE`` on
any command or ``DIMBENCH_IMPORT=mod1,mod2``, kept in that environment variable so the worker
processes a sweep starts import them too. (Installed packages can declare an entry point in the
group ``dimbench.models`` instead.) Nothing here imports torch: the CLI calls it first."""

from __future__ import annotations

import os

IMPORT_ENV = "DIMBENCH_IMPORT"
IMPORT_OPTION = "--import"


def named_modules() -> list[str]:
    return [m.strip() for m in os.environ.get(IMPORT_ENV, "").split(",") if m.strip()]


def add_imports(modules: list[str]) -> None:
    """Name more modules to import, for this process and the processes it starts."""
    os.environ[IMPORT_ENV] = ",".join(dict.fromkeys([*named_modules(), *modules]))


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
