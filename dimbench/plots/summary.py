"""``summary.md`` of a results folder: what ran where (each suite's rows and how they were
made), the figures, and where each model overtakes each baseline."""

from __future__ import annotations

import string
from pathlib import Path

from dimbench.bench.spec import Suite
from dimbench.plots.crossover import Crossover
from dimbench.plots.models import families


def write_summary(results_dir: str | Path, rows, plotted: dict) -> Path:
    """Write ``summary.md`` beside the CSVs from their ``rows`` and what ``plot_results`` drew
    ({"figures", "crossovers"}); returns its path."""
    from dimbench.bench.registry import all_suites

    suites = {s.name: s for s in all_suites() if (rows["suite"] == s.name).any()}
    path = Path(results_dir) / "summary.md"
    path.write_text(summary_markdown(rows, plotted["crossovers"], plotted["figures"], suites))
    return path


def _values(frame, column: str) -> str:
    if column not in frame:
        return ""
    return ", ".join(sorted({str(v) for v in frame[column].dropna() if str(v)}))


def provenance(suite: Suite, rows) -> str:
    """How ``suite``'s rows were made: its declared words ({column}: the values in that
    column), else where they were measured or counted."""
    if suite.provenance:
        names = [f for _, f, _, _ in string.Formatter().parse(suite.provenance) if f]
        return suite.provenance.format(**{n: _values(rows, n) for n in names})
    if not suite.isolated:
        return "counted on the meta device"
    return (
        f"measured on {_values(rows, 'device_name')} ({_values(rows, 'device')}, "
        f"{_values(rows, 'threads')} threads, OMP_WAIT_POLICY "
        f"{_values(rows, 'omp_wait_policy') or 'unset'})"
    )


def summary_markdown(
    df, cross: dict[str, list[Crossover]], figures: list[Path], suites: dict[str, Suite]
) -> str:
    """A short human summary of a results folder: what ran where, and the crossovers."""
    lines = ["# dimbench results", ""]
    measured = df[df["device"] != "meta"]
    for name, suite in suites.items():
        rows = df[df["suite"] == name]
        lines.append(
            f"- `{name}.csv`: {len(rows)} rows, {provenance(suite, rows)}; torch "
            f"{_values(rows, 'torch_version')}, dimbench {_values(rows, 'git_sha')}, "
            f"{', '.join(sorted({str(t)[:10] for t in rows['timestamp'].dropna()}))}."
        )
    loads = measured["load_avg_1m"].dropna() if "load_avg_1m" in measured else []
    if len(loads):
        lines.append(
            f"- 1-minute load average at the start of each measurement: {loads.min():.1f} to "
            f"{loads.max():.1f} (above the core count: the machine was shared and timings "
            "are slower and noisier than on an idle one)."
        )
    lines.append("")
    for name in sorted({p.stem for p in figures}):
        lines += [f"![{name}]({name}.png)", ""]
    for label, items in cross.items():
        if not items:
            continue
        lines += [f"## Where {families(c.model for c in items)} {items[0].ratio.heading} ({label})"]
        lines.append("")
        lines += [f"- {c.sentence()}" for c in items]
        lines.append("")
    return "\n".join(lines)
