"""A device profile: what one device can do, as a JSON file the cost model prices operators with.

Two kinds, told apart by ``source``:

- ``measured`` (``dimbench calibrate``): this device's ceilings (the best matmul GFLOP/s per
  dtype, copy bandwidth, per-operator dispatch cost), bandwidth and elementwise throughput over
  sizes (cache effects), and the time of every distinct operator the default models run at
  their resolutions (matmuls at their (m, n, k), attention over L, the scan over D*L*N, convs,
  norms, copies, elementwise ops), each replayed on real tensors of the recorded layout.
  Cached per machine in ``~/.cache/dimbench/devices/<machine>.json`` (``$DIMBENCH_CACHE_DIR``).
- ``datasheet``: written by hand from published peaks (``results/device_profiles/``): only
  ``ceilings`` (and where the figures come from, ``references``); every operator is priced by
  the roofline.

Format (``"format": "dimbench-device-profile/1"``)::

    {"name", "source": "measured" | "datasheet", "device": "cpu" | "cuda", "device_name",
     "async_dispatch": bool,            # true on GPUs: a launch overlaps the previous kernel
     "backends": {"scan": ..., "attention": ..., "conv": ...},
     "ceilings": {"matmul_gflops": {dtype: GFLOP/s}, "vector_gflops": {dtype: GFLOP/s},
                  "bandwidth_gbs": GB/s, "dispatch_us": us, "view_us": us,
                  "framework_us": us},  # host time per operator in a model, beyond its call
     "curves": {"copy": [[bytes, ms], ...], "elementwise": {dtype: [[bytes, ms], ...]}},
     "points": [{"op", "category", "dtype", "dims", "flops", "bytes", "ms"}, ...],
     "fits": {...}, "measured": {...}, "references": [...], "notes": "..."}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from dimbench.errors import UsageError

FORMAT = "dimbench-device-profile/1"
SOURCES = ("measured", "datasheet")


class DeviceProfileError(UsageError):
    """A device profile file that is missing, unreadable or malformed."""


@dataclass
class DeviceProfile:
    name: str
    source: str
    device: str
    device_name: str
    ceilings: dict
    async_dispatch: bool = False
    backends: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    points: list = field(default_factory=list)
    fits: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)
    references: list = field(default_factory=list)
    notes: str = ""
    path: str | None = None  # where it was read from

    def matmul_gflops(self, dtype: str) -> float:
        table = self.ceilings.get("matmul_gflops", {})
        return float(table.get(dtype) or table.get("fp32") or max(table.values()))

    def vector_gflops(self, dtype: str) -> float:
        table = self.ceilings.get("vector_gflops") or {}
        value = table.get(dtype) or table.get("fp32")
        return float(value) if value else self.matmul_gflops("fp32")

    @property
    def bandwidth_gbs(self) -> float:
        return float(self.ceilings["bandwidth_gbs"])

    @property
    def dispatch_us(self) -> float:
        return float(self.ceilings.get("dispatch_us", 0.0))

    @property
    def view_us(self) -> float:
        return float(self.ceilings.get("view_us", 0.0))

    @property
    def label(self) -> str:
        """How predictions from it are labelled, e.g. "amd-epyc-avx512-2c (measured)"."""
        return f"{self.name} ({self.source})"

    def to_dict(self) -> dict:
        out = {
            "format": FORMAT,
            "name": self.name,
            "source": self.source,
            "device": self.device,
            "device_name": self.device_name,
            "async_dispatch": self.async_dispatch,
            "backends": self.backends,
            "ceilings": self.ceilings,
            "curves": self.curves,
            "points": self.points,
            "fits": self.fits,
            "measured": self.measured,
            "references": self.references,
            "notes": self.notes,
        }
        return {k: v for k, v in out.items() if v not in ({}, [], "") or k == "ceilings"}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)
        self.path = str(path)
        return path


def cache_dir() -> Path:
    root = os.environ.get("DIMBENCH_CACHE_DIR") or Path.home() / ".cache" / "dimbench"
    return Path(root) / "devices"


def default_path(device: str = "cpu") -> Path:
    """Where ``dimbench calibrate`` caches this machine's profile for ``device``."""
    from dimbench.measure.metadata import machine_slug

    return cache_dir() / f"{machine_slug(device)}.json"


def _number(value, what: str, path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise DeviceProfileError(f"device profile {path}: {what} must be a positive number")
    if not math.isfinite(value):
        raise DeviceProfileError(f"device profile {path}: {what} must be finite")
    return float(value)


def from_dict(data: dict, path: str | Path = "<dict>") -> DeviceProfile:
    """Validate and build a profile; any problem is one ``DeviceProfileError`` line."""
    if not isinstance(data, dict):
        raise DeviceProfileError(f"device profile {path}: not a JSON object")
    if data.get("format") != FORMAT:
        raise DeviceProfileError(
            f"device profile {path}: format must be {FORMAT!r}, got {data.get('format')!r}"
        )
    for key in ("name", "source", "device", "ceilings"):
        if key not in data:
            raise DeviceProfileError(f"device profile {path}: no {key!r}")
    if data["source"] not in SOURCES:
        raise DeviceProfileError(
            f"device profile {path}: source must be one of {', '.join(SOURCES)}, "
            f"got {data['source']!r}"
        )
    ceilings = data["ceilings"]
    if not isinstance(ceilings, dict):
        raise DeviceProfileError(f"device profile {path}: ceilings must be an object")
    matmul = ceilings.get("matmul_gflops")
    if not isinstance(matmul, dict) or not matmul:
        raise DeviceProfileError(
            f"device profile {path}: ceilings.matmul_gflops must map dtypes to GFLOP/s"
        )
    for dtype, value in matmul.items():
        _number(value, f"ceilings.matmul_gflops.{dtype}", path)
    for dtype, value in (ceilings.get("vector_gflops") or {}).items():
        _number(value, f"ceilings.vector_gflops.{dtype}", path)
    _number(ceilings.get("bandwidth_gbs"), "ceilings.bandwidth_gbs", path)
    for key in ("dispatch_us", "view_us", "framework_us"):
        if key in ceilings and not (isinstance(ceilings[key], int | float) and ceilings[key] >= 0):
            raise DeviceProfileError(f"device profile {path}: ceilings.{key} must be >= 0")
    points = data.get("points", [])
    if not isinstance(points, list):
        raise DeviceProfileError(f"device profile {path}: points must be a list")
    for i, p in enumerate(points):
        if not isinstance(p, dict) or not {"op", "category", "dtype", "ms"} <= set(p):
            raise DeviceProfileError(
                f"device profile {path}: points[{i}] needs op, category, dtype and ms"
            )
    return DeviceProfile(
        name=str(data["name"]),
        source=data["source"],
        device=str(data["device"]),
        device_name=str(data.get("device_name", data["name"])),
        ceilings=ceilings,
        async_dispatch=bool(data.get("async_dispatch", False)),
        backends=dict(data.get("backends", {})),
        curves=dict(data.get("curves", {})),
        points=points,
        fits=dict(data.get("fits", {})),
        measured=dict(data.get("measured", {})),
        references=list(data.get("references", [])),
        notes=str(data.get("notes", "")),
        path=str(path),
    )


def load(path: str | Path) -> DeviceProfile:
    """Read a profile file (measured or datasheet); a bad one is a one-line UsageError."""
    path = Path(path)
    if not path.is_file():
        raise DeviceProfileError(f"device profile {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise DeviceProfileError(f"device profile {path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise DeviceProfileError(
            f"device profile {path}: not JSON ({e.msg}, line {e.lineno})"
        ) from None
    return from_dict(data, path)


def cached(device: str = "cpu") -> DeviceProfile | None:
    """This machine's calibrated profile for ``device``, None when there is none."""
    path = default_path(device)
    return load(path) if path.is_file() else None


def describe(profile: DeviceProfile) -> str:
    """A few lines for ``dimbench calibrate --show`` and ``dimbench backends``."""
    c = profile.ceilings
    matmul = ", ".join(f"{d} {v:,.0f}" for d, v in c["matmul_gflops"].items())
    lines = [
        f"device profile {profile.label}: {profile.device_name} ({profile.device})",
        f"  matmul GFLOP/s: {matmul}",
        f"  bandwidth: {float(c['bandwidth_gbs']):,.1f} GB/s; dispatch "
        f"{profile.dispatch_us:.1f} us per operator"
        + (f" + {c['framework_us']:.1f} us in a model" if c.get("framework_us") else "")
        + (" (overlapped: asynchronous launches)" if profile.async_dispatch else ""),
    ]
    if c.get("vector_gflops"):
        vec = ", ".join(f"{d} {v:,.0f}" for d, v in c["vector_gflops"].items())
        lines.append(f"  vector GFLOP/s: {vec}")
    if profile.points:
        cats: dict[str, int] = {}
        for p in profile.points:
            cats[p["category"]] = cats.get(p["category"], 0) + 1
        counts = ", ".join(f"{k} {v}" for k, v in sorted(cats.items()))
        lines.append(f"  {len(profile.points)} measured operators: {counts}")
    m = profile.measured
    if m:
        lines.append(
            f"  measured {m.get('timestamp', '?')} in {m.get('seconds', 0):.0f} s, "
            f"{m.get('threads', '?')} threads, clock {m.get('clock', 'wall')}, load "
            f"{m.get('load_avg_1m_start', '?')} -> {m.get('load_avg_1m_end', '?')}"
        )
    for ref in profile.references:
        lines.append(f"  source: {ref}")
    if profile.path:
        lines.append(f"  file: {profile.path}")
    return "\n".join(lines)
