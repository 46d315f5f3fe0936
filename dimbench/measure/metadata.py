"""What a result row needs to say about where it was measured: device name, software versions,
git sha, threads, load. ``machine_slug`` names the default results folder, ``results/<machine>/``.

Nothing here initialises CUDA: GPU names come from NVML when it loads, so the sweep's parent
process never holds a CUDA context that would skew the children's memory figures.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import socket
import subprocess
from pathlib import Path


@functools.cache
def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC 7B13"), from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_name(index: int = 0) -> str | None:
    """The name of GPU ``index`` without creating a CUDA context (NVML first, torch second)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
        finally:
            pynvml.nvmlShutdown()
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(index)
    except Exception:
        pass
    return None


def device_name(device: str) -> str:
    """Human name of the device a measurement ran on."""
    kind = device.split(":")[0]
    if kind == "cuda":
        index = int(device.split(":")[1]) if ":" in device else 0
        return gpu_name(index) or "cuda"
    if kind == "meta":
        return "meta (no compute)"
    return cpu_model()


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


@functools.cache
def cpu_isa() -> str:
    """The widest vector/matrix extension the CPU has: ``amx``, ``avx512``, ``avx2``, ``sve``,
    ``neon`` or "". Two CPUs sold under one name ("AMD EPYC" is Zen 3 with AVX2 or Zen 4 with
    AVX-512) run dimbench's kernels and bf16 matmuls at very different speeds."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags = set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            flags.update(line.split(":", 1)[1].split())
    for isa, flag in (("amx", "amx_tile"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return isa
    if "sve" in flags:
        return "sve"
    return "neon" if "asimd" in flags or platform.machine() in ("arm64", "aarch64") else ""


def machine_slug(device: str = "cpu") -> str:
    """Folder name for this machine's results: ``amd-epyc-avx512-2c`` on a 2-core EPYC with
    AVX-512 (``amd-epyc-avx2-2c`` on one without), ``nvidia-h100-80gb-hbm3`` on an H100."""
    if device.split(":")[0] == "cuda":
        name = gpu_name(int(device.split(":")[1]) if ":" in device else 0)
        if name:
            return slugify(name)
    name = re.sub(r"\b\d+-core processor\b", "", cpu_model(), flags=re.IGNORECASE)
    isa = cpu_isa()
    return f"{slugify(name)}-{isa + '-' if isa else ''}{cpu_count()}c"


# Code whose uncommitted edits change what a measurement measures.
MEASURED_PATHS = ("dimbench",)


@functools.cache
def git_sha() -> str:
    """Commit of the dimbench code in use, ``+dirty`` when it had uncommitted edits: from git for
    a checkout (the measured code's edits), else the revision written into the package when it
    was built (the whole tree's state then); "" when neither is known."""
    return _checkout_sha() or _built_sha()


def _checkout_sha() -> str:
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None

    top = git("rev-parse", "--show-toplevel")
    # an installed copy inside a repository (a venv in a checkout) is not that checkout's code
    if top is None or top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
        return ""
    head = git("rev-parse", "--short=12", "HEAD")
    if head is None or head.returncode != 0:
        return ""
    diff = git("diff", "--quiet", "HEAD", "--", *MEASURED_PATHS)
    dirty = diff is not None and diff.returncode == 1
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _built_sha() -> str:
    try:
        from dimbench import _version
    except ImportError:
        return ""
    node = str(getattr(_version, "REVISION", "") or "").removeprefix("g")
    if not node:
        return ""
    return node[:12] + ("+dirty" if getattr(_version, "DIRTY", False) else "")


def load_average() -> float | None:
    """The 1-minute load average: tells a reader whether the machine was busy."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run_metadata(device: str) -> dict:
    """Columns every row carries. Call it in the process that measures (it reads torch)."""
    import torch

    from dimbench.compat import mamba_impl

    return {
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "mamba_impl": mamba_impl(),
        "cuda_version": torch.version.cuda or "",
        "git_sha": git_sha(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "").upper(),
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),
        "hostname": socket.gethostname(),
        "load_avg_1m": load_average(),
    }
