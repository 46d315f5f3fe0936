"""Installing the layer: a meta-path finder that answers ``import mamba_ssm...`` and
``import causal_conv1d`` with modules backed by dimbench's kernels, for each package that is not
importable on its own.

``install()`` decides per package, once: a package that imports (the real one, on a CUDA
machine) is left alone and keeps answering; one that is missing or fails to import (mamba_ssm
built for another CUDA, say) is served by the layer from then on. ``mamba_impl()`` says which
implementation answers, for the result rows.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys

from dimbench.errors import UsageError

COMPAT_ENV = "DIMBENCH_MAMBA_COMPAT"  # "1": install the layer in this process and its workers
PACKAGES = ("mamba_ssm", "causal_conv1d")

_SCAN = ["selective_scan_fn", "selective_scan_ref", "mamba_inner_fn", "mamba_inner_ref"]
_NORM = ["RMSNorm", "layer_norm_fn", "rms_norm_fn"]
_CONV = ["causal_conv1d_fn", "causal_conv1d_update"]
# module the layer answers -> the names it holds, as (dimbench.compat submodule, name)
MODULES: dict[str, list[tuple[str, str]]] = {
    "mamba_ssm": [
        ("selective_scan", "selective_scan_fn"),
        ("selective_scan", "mamba_inner_fn"),
        ("mamba_simple", "Mamba"),
    ],
    "mamba_ssm.ops": [],
    "mamba_ssm.ops.selective_scan_interface": [("selective_scan", n) for n in _SCAN],
    "mamba_ssm.ops.triton": [],
    "mamba_ssm.ops.triton.layer_norm": [("layer_norm", n) for n in _NORM],
    "mamba_ssm.ops.triton.layernorm": [("layer_norm", n) for n in _NORM],  # releases < 2.0
    "mamba_ssm.modules": [],
    "mamba_ssm.modules.mamba_simple": [("mamba_simple", "Mamba")],
    "causal_conv1d": [("causal_conv1d", n) for n in _CONV],
    "causal_conv1d.causal_conv1d_interface": [("causal_conv1d", n) for n in _CONV],
}


def _version() -> str:
    # dimbench.__version__: the package is imported before any of its modules (an import of
    # its facade from here would close a cycle through the registry)
    return sys.modules["dimbench"].__version__


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers the names of ``MODULES`` under the packages in ``served``."""

    def __init__(self) -> None:
        self.served: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] not in self.served or fullname not in MODULES:
            return None
        package = any(name.startswith(fullname + ".") for name in MODULES)
        return importlib.machinery.ModuleSpec(fullname, self, is_package=package)

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module) -> None:
        for source, name in MODULES[module.__name__]:
            value = getattr(importlib.import_module(f"dimbench.compat.{source}"), name)
            setattr(module, name, value)
        module.__version__ = _version()
        module.__dimbench_compat__ = True


_FINDER = _Finder()
_DECIDED: dict[str, str] = {}  # package -> "real" | why the layer serves it


def _drop(package: str) -> None:
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


def _real_import_fails(package: str) -> str | None:
    """None where the real ``package`` imports; else why not (a partial import is undone)."""
    if importlib.util.find_spec(package) is None:
        return "not installed"
    try:
        importlib.import_module(package)
    except Exception as e:  # noqa: BLE001 - any failure means the layer serves it
        _drop(package)
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def install() -> dict[str, str]:
    """Make ``mamba_ssm`` and ``causal_conv1d`` importable, backed by dimbench's kernels where
    the real packages do not import; idempotent. Returns package -> what answers it."""
    if not _DECIDED:
        # probe dimbench's own backends first: the causal_conv1d conv backend looks for the
        # CUDA package by importing it, and must never find the layer's module instead
        from dimbench import ops

        ops.conv_backends()
        ops.scan_backends()
    for package in PACKAGES:
        if package not in _DECIDED:
            why = _real_import_fails(package)
            _DECIDED[package] = "real" if why is None else why
            if why is not None:
                _FINDER.served.add(package)
    if _FINDER.served and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    return {package: _impl(package) for package in PACKAGES}


def install_from_env() -> None:
    """``install()`` when ``$DIMBENCH_MAMBA_COMPAT`` is 1 (0 or unset: nothing)."""
    value = os.environ.get(COMPAT_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise UsageError(f"${COMPAT_ENV} must be 1 or 0, got {value!r}")
    if value == "1":
        install()


def served(package: str) -> bool:
    """Whether the layer answers imports of ``package`` in this process."""
    return package in _FINDER.served and _FINDER in sys.meta_path


def _impl(package: str) -> str:
    if served(package):
        return f"dimbench-compat {_version()}"
    module = sys.modules.get(package)
    version = getattr(module, "__version__", None) if module is not None else None
    if version is None:
        if importlib.util.find_spec(package) is None:
            return ""
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
    return f"{package} {version}"


def mamba_impl() -> str:
    """What answers ``import mamba_ssm`` (and ``causal_conv1d`` where that differs) in this
    process: "dimbench-compat 0.4.0", "mamba_ssm 2.2.2; causal_conv1d 1.4.0", ... ("" where
    neither is importable)."""
    mamba, conv = _impl("mamba_ssm"), _impl("causal_conv1d")
    if not conv or conv == mamba:
        return mamba
    return f"{mamba}; causal_conv1d: {conv}" if mamba else f"causal_conv1d: {conv}"
