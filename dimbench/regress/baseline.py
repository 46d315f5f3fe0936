"""Stored speed baselines: one JSON file per machine class, ``results/baselines/<class>.json``.

The gate compares against the base revision measured in the same run; a stored baseline is the
alternative for ``--baseline FILE`` (and ``--update`` records one). A machine class is the CPU
model and core count (``amd-epyc-avx512-2c``) or the GPU name
(``nvidia-h100-80gb-hbm3``): times are compared only within one class. A file keeps the raw
samples of every benchmark and calibration kernel (seconds per call, one per round), the
benchmark signatures (sizes), the measurement settings, the machine's metadata and the commit.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from dimbench.errors import UsageError
from dimbench.regress.rounds import Samples

SCHEMA = "dimbench.regress/1"
BASELINE_DIR = Path("results") / "baselines"


class BaselineError(UsageError):
    """A baseline file that cannot be read: bad input, reported as one line (exit 2)."""


@dataclass
class Baseline:
    samples: Samples
    machine_class: str
    commit: str
    recorded: str
    machine: dict


def machine_class(device: str = "cpu") -> str:
    """The class whose baseline applies here: CPU model and cores, or the GPU's name."""
    from dimbench.measure.metadata import machine_slug

    return machine_slug(device)


def baseline_path(path: Path | None, machine: str, root: Path) -> Path:
    """``path`` if it names a .json file; ``<path>/<machine>.json`` for a folder; the default
    ``<root>/results/baselines/<machine>.json`` when ``path`` is None (``root``: the tree)."""
    if path is None:
        return root / BASELINE_DIR / f"{machine}.json"
    if path.suffix.lower() == ".json":
        return path
    return path / f"{machine}.json"


def save_baseline(path: Path, samples: Samples, machine: str, metadata: dict) -> None:
    """Write ``samples`` as the baseline of ``machine`` (atomically: a temp file, then rename)."""

    def entry(name: str, values: list[float]) -> dict:
        return {
            "signature": samples.signatures.get(name, ""),
            "median_s": statistics.median(values),
            "samples_s": values,
        }

    doc = {
        "schema": SCHEMA,
        "machine_class": machine,
        "commit": metadata.get("git_sha", ""),
        "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": metadata,
        "settings": samples.settings,
        "calibration": {k: entry(k, v) for k, v in samples.calibration.items()},
        "benchmarks": {k: entry(k, v) for k, v in samples.times.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def load_baseline(path: Path) -> Baseline:
    """Read a baseline written by ``save_baseline``; a malformed file raises BaselineError."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BaselineError(f"cannot read baseline {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise BaselineError(f"{path} is not a dimbench regress baseline (schema {SCHEMA})")
    try:
        sections = {}
        signatures = {}
        for section in ("benchmarks", "calibration"):
            sections[section] = {}
            for name, entry in doc[section].items():
                values = [float(v) for v in entry["samples_s"]]
                if not values or min(values) <= 0:
                    raise ValueError(f"{name}: samples must be positive and non-empty")
                sections[section][name] = values
                signatures[name] = str(entry.get("signature", ""))
        if not sections["calibration"]:
            raise ValueError("no calibration samples")
        samples = Samples(
            times=sections["benchmarks"],
            calibration=sections["calibration"],
            signatures=signatures,
            settings=dict(doc.get("settings", {})),
        )
        return Baseline(
            samples=samples,
            machine_class=str(doc.get("machine_class", "")),
            commit=str(doc.get("commit", "")),
            recorded=str(doc.get("recorded", "")),
            machine=dict(doc.get("machine", {})),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BaselineError(f"malformed baseline {path}: {e}") from None
