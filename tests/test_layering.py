"""The layering rule: dimbench's imports form no cycles and every arrow points down.

The graph: one node per module of the package, one arrow per ``import`` / ``from ... import``
statement naming a dimbench module, at module level or inside a function (a lazy import is an
arrow all the same), read with ``ast``; imports under ``if TYPE_CHECKING:`` are left out (they
never run). ``from pkg import name`` points at ``pkg.name`` when that is a module, else at
``pkg`` (its ``__init__``). Lookups by name (``importlib.import_module`` in the registries' and
``measure``'s lazy loaders) are the plug-in mechanism, not arrows.

(a) No cycles: no strongly connected component of more than one module. A package's
``__init__`` that imports its own submodules is fine as long as they do not import it back.

(b) No upward arrows, in this order (``LAYERS``; a layer may import the layers before it and
its own members, never the layers after it):

    foundation   errors, paths, out_lock, devices, threads, plugins, torch_files, compile, latents,
                 pool (the slots of --devices / --workers, which sweeps and train-compare share)
    ops          the kernels (dimbench/ops)
    compat       mamba_ssm / causal_conv1d on those kernels (dimbench/compat)
    models       the model zoo and the registry that builds it (models/, registry.py)
    diffusion    schedules, losses, samplers
    results      the row schema and the CSV store: everything that makes or reads rows sits
                 above it (calibration stamps its profile with the rows' timestamp, the suites
                 write rows, the plots read them); it imports only errors
    measure, metrics   beside each other: neither imports the other (``APART``)
    train        the trainer and train-compare: uses measure (FLOPs) and metrics (FID, SWD)
    bench        sweeps and suites: time models, load checkpoints (train.checkpoint)
    plots        figures from result rows (and from train-compare's records)
    regress      the speed gate: its cases call ops and models, its report stands alone
    commands     the CLI (cli/, __main__.py, commands/)

The package's own ``__init__`` (``dimbench``: ``__version__`` and the lazy facade
``dimbench.register_model`` / ``register_suite``) belongs to no layer: its arrows, and arrows
into it, are not checked for direction (they are for cycles).

``ALLOWED`` lists the arrows that break the rule today, each with the reason and the work that
removes it; the test fails when one of them is gone, so that the list only shrinks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import dimbench

PACKAGE = Path(dimbench.__file__).resolve().parent

LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "errors",
        "paths",
        "out_lock",
        "devices",
        "threads",
        "plugins",
        "torch_files",
        "compile",
        "latents",
        "dtypes",
        "pool",
    ),
    ("_version",),  # written at build time (setuptools-scm), imports nothing
    ("ops",),
    ("compat",),
    ("models", "registry"),
    ("diffusion",),
    ("results",),
    ("measure", "metrics"),
    ("train",),
    ("bench",),
    ("plots",),
    ("regress",),
    ("commands", "cli", "__main__"),
)
APART = (("measure", "metrics"),)  # same layer, no arrow either way

# (importer, imported): arrows in other work's areas that close a cycle or point up, kept until
# that work lands.
ALLOWED: dict[tuple[str, str], str] = {}

Edge = tuple[str, str]


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(body: Iterable[ast.AST]) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement under ``body`` at any depth, except TYPE_CHECKING blocks."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.orelse)
        else:
            yield from _import_nodes(ast.iter_child_nodes(node))


def imported_modules(module: str, path: Path, modules: set[str]) -> set[str]:
    """The dimbench modules that ``module`` (the file ``path``) imports."""

    def known(name: str) -> str:  # a name inside a module -> that module
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    out = set()
    for node in _import_nodes(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            out |= {known(a.name) for a in node.names if a.name.split(".")[0] == "dimbench"}
            continue
        base = node.module or ""
        if node.level:  # relative: from the importing module's package
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        if base.split(".")[0] != "dimbench":
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.add(sub if sub in modules else known(base))
    out.discard(module)
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the dimbench modules it imports, for every module of ``package``."""
    files = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    names = set(files)
    return {m: imported_modules(m, p, names) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def group(module: str) -> str | None:
    """The top-level name a module belongs to (``dimbench.models.dim`` -> ``models``); None for
    the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def upward_arrows(graph: dict[str, set[str]]) -> list[Edge]:
    apart = {frozenset(pair) for pair in APART}
    bad = []
    for importer, targets in graph.items():
        for target in targets:
            a, b = group(importer), group(target)
            if a is None or b is None or a == b:
                continue
            if RANK[b] > RANK[a] or frozenset((a, b)) in apart:
                bad.append((importer, target))
    return sorted(bad)


def without_allowed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {t for t in ts if (m, t) not in ALLOWED} for m, ts in graph.items()}


# ----------------------------------------------------------------------------- the rule


def test_every_module_has_a_layer():
    unplaced = {group(m) for m in import_graph()} - set(RANK) - {None}
    assert unplaced == set(), f"add {sorted(unplaced)} to LAYERS"


def test_no_import_cycles():
    assert cycles(without_allowed(import_graph())) == []


def test_no_upward_arrows():
    assert upward_arrows(without_allowed(import_graph())) == []


def test_the_allowlist_only_names_arrows_that_exist():
    graph = import_graph()
    gone = [edge for edge in ALLOWED if edge[1] not in graph.get(edge[0], set())]
    assert gone == [], f"fixed: remove {gone} from ALLOWED"
    for edge, why in ALLOWED.items():
        if why == "cycle":  # still closes a cycle
            assert any(set(edge) <= set(c) for c in cycles(graph)), edge
        else:
            assert edge in upward_arrows(graph), edge


# ----------------------------------------------------------------------------- the checker


def test_the_graph_reads_every_kind_of_import(tmp_path):
    pkg = tmp_path / "dimbench"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "import dimbench.b\nfrom dimbench.sub import c\nfrom . import d\n",
        "b.py": "def f():\n    from dimbench.sub.c import THING\n",
        "d.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from dimbench import a\nelse:\n    from .b import f\n"
        ),
        "sub/__init__.py": "from .c import THING\n",
        "sub/c.py": "import os\nfrom dimbench.sub import THING as _\nTHING = 1\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    assert import_graph(pkg) == {
        "dimbench": set(),
        "dimbench.a": {"dimbench.b", "dimbench.sub.c", "dimbench.d"},
        "dimbench.b": {"dimbench.sub.c"},
        "dimbench.d": {"dimbench.b"},
        "dimbench.sub": {"dimbench.sub.c"},
        "dimbench.sub.c": {"dimbench.sub"},
    }


def test_cycles_and_arrows_are_found():
    graph = {
        "dimbench.ops.x": {"dimbench.models.y"},  # up
        "dimbench.models.y": {"dimbench.models.z"},
        "dimbench.models.z": {"dimbench.models.y", "dimbench.errors"},
        "dimbench.measure.m": {"dimbench.metrics.n"},  # apart
        "dimbench.metrics.n": set(),
        "dimbench.errors": set(),
        "dimbench": {"dimbench.registry"},  # the package's facade: not checked
        "dimbench.registry": set(),
    }
    assert cycles(graph) == [["dimbench.models.y", "dimbench.models.z"]]
    assert upward_arrows(graph) == [
        ("dimbench.measure.m", "dimbench.metrics.n"),
        ("dimbench.ops.x", "dimbench.models.y"),
    ]
