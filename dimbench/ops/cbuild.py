"""Build, cache and thread the plain C++ CPU kernels in csrc/ (no torch headers, called by ctypes).

``build(source)`` compiles one source file with the system compiler at first use
(``-O3 -march=native``, portable flags if that fails) into a shared library cached under
``$DIMBENCH_CACHE_DIR`` (default ``~/.cache/dimbench``), keyed by the source and every header
it includes (``sources``), the compiler, the flags and the CPU; concurrent processes build once.
ctypes releases the GIL during a call, so ``run`` spreads a kernel's work units over
``torch.get_num_threads()`` Python threads.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=fast"]
ARCH_FLAGS = (["-march=native"], [])  # tried in order: native first, portable if it fails


class KernelUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("DIMBENCH_CACHE_DIR") or Path.home() / ".cache" / "dimbench"
    return Path(root) / "kernels"


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))][:2]
        return "\n".join(keep)
    except OSError:
        return platform.processor()


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    raise KernelUnavailable("no C++ compiler found (set CXX or install g++)")


_LOCAL_INCLUDE = re.compile(rb'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


def sources(source: Path) -> list[Path]:
    """``source`` and every header it includes with ``#include "..."`` (found beside the file
    that includes it), recursively: what the build's cache key hashes."""
    found: list[Path] = []
    todo = [source]
    while todo:
        path = todo.pop(0).resolve()
        if path in found:
            continue
        found.append(path)
        for name in _LOCAL_INCLUDE.findall(path.read_bytes()):
            todo.append(path.parent / name.decode())
    return found


def library_path(source: Path, cxx: str, flags: Sequence[str] = FLAGS) -> Path:
    """Where the cache keeps ``source``'s library built by ``cxx`` with ``flags``: named by a
    hash of the source and its headers, the compiler's version, the flags and the CPU."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    texts = [path.read_bytes() for path in sources(source)]
    key = hashlib.sha256(
        b"\0".join([*texts, version.encode(), " ".join(flags).encode(), _cpu_signature().encode()])
    ).hexdigest()[:16]
    return cache_dir() / f"{source.stem}_{platform.machine()}_{key}.so"


def build(
    source: Path,
    flags: Sequence[str] = FLAGS,
    arch_flags: Sequence[Sequence[str]] = ARCH_FLAGS,
) -> Path:
    """Compile ``source`` if it is not cached yet; return the shared library's path.
    ``arch_flags``: the target flags to try in order (another one than the default, e.g.
    ``(["-march=haswell"],)``, builds that code path on this machine; it is part of the key)."""
    cxx = _compiler()
    arch_key = [] if tuple(map(tuple, arch_flags)) == tuple(map(tuple, ARCH_FLAGS)) else arch_flags
    lib = library_path(source, cxx, [*flags, *(f for fl in arch_key for f in fl)])
    out_dir = lib.parent
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:  # concurrent processes build once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.exists():
            return lib
        errors = []
        for arch in arch_flags:
            fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".so")
            os.close(fd)
            cmd = [cxx, *flags, *arch, str(source), "-o", tmp]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode == 0:
                os.replace(tmp, lib)
                return lib
            os.unlink(tmp)
            errors.append(f"{' '.join(cmd)}: {res.stderr.strip()[-500:]}")
        raise KernelUnavailable(f"compiling {source.name} failed:\n" + "\n".join(errors))


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dimbench-kernel")


def ranges(units: int, min_units_per_thread: int) -> list[tuple[int, int]]:
    """``units`` split into contiguous [lo, hi) ranges, one per thread of this process (fewer
    when a thread would get under ``min_units_per_thread``)."""
    threads = max(1, min(torch.get_num_threads(), units // min_units_per_thread))
    bounds = [units * i // threads for i in range(threads + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def run(
    fn: Callable[..., object],
    work: list[tuple[int, int]],
    args_for: Callable[[int, int, int], Sequence[object]],
) -> None:
    """Call ``fn(*args_for(i, lo, hi))`` for each range of ``work``, on threads when several."""
    if len(work) == 1:
        fn(*args_for(0, *work[0]))
        return
    futures = [_pool(len(work)).submit(fn, *args_for(i, lo, hi)) for i, (lo, hi) in enumerate(work)]
    for f in futures:
        f.result()
