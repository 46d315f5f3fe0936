"""Result rows and the CSV store.

One row per measurement, long format, one CSV per suite in a results folder
(``results/<machine>/throughput.csv``, ``memory.csv``, ``flops.csv``). Rows are appended as each
measurement finishes, so an interrupted sweep loses nothing; a rerun into the same folder skips
the configurations already measured. The raw samples of each row (every latency, telemetry
samples) go to ``<suite>.samples.jsonl`` beside the CSV, one JSON object per line, keyed like
the row.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dimbench.errors import UsageError

# name -> meaning. A CSV's columns: these, the metric columns the suites register, then TAIL.
HEAD_COLUMNS: dict[str, str] = {
    "suite": "the suite that measured the row (throughput, memory, flops, ...)",
    "model": "registry name, e.g. DiM-H/2",
    "family": "the model's registered family, lower case: dim | dit | uvit | ...",
    "image_size": "image side in pixels (latents are image_size/8)",
    "tokens": "image patch tokens: (image_size / 8 / patch_size)^2",
    "batch_size": "images per forward pass",
    "device": "cpu | cuda | cuda:N | meta (FLOP counting, nothing allocated)",
    "device_name": "CPU or GPU model",
    "dtype": "fp32 | bf16 | fp16 (bf16/fp16: torch.autocast, fp32 weights)",
    "mode": "forward (inference) | train (forward + MSE loss + backward + AdamW step)",
    "scan_backend": "selective-scan backend used; '-' for a model without a scan",
    "attn_backend": "attention backend used; '-' for a model without attention",
    "conv_backend": "causal-conv1d backend used; '-' for a model without one",
    "compile": "eager | inductor (torch.compile, compiled in the warm-up)",
    "weights": "the checkpoint the model's weights came from ('' = random initialisation)",
}
TAIL_COLUMNS: dict[str, str] = {
    "status": "ok | oom | timeout | error",
    "error": "one line: why a row is not ok",
    "load_avg_1m": "1-minute load average when the measurement started",
    "threads": "torch.get_num_threads() in the measuring process",
    "omp_wait_policy": "OMP_WAIT_POLICY of the measuring process (PASSIVE: idle threads sleep)",
    "git_sha": "dimbench commit",
    "torch_version": "torch.__version__",
    "cuda_version": "torch.version.cuda (the build's CUDA)",
    "cpu_model": "CPU model of the host",
    "cpu_isa": "widest vector unit: amx | avx512 | avx2 | sve | neon (one CPU name can hide two)",
    "hostname": "host that measured",
    "wall_s": "seconds the whole measurement took (process start to result)",
    "timestamp": "UTC time the row was written (ISO 8601)",
}
METRIC_COLUMNS: dict[str, str] = {}  # registered by the suites (dimbench.bench.register_suite)
COLUMNS: dict[str, str] = {**HEAD_COLUMNS, **TAIL_COLUMNS}  # kept in CSV order, updated in place


def register_columns(
    columns: dict[str, str], keys: tuple[str, ...] = (), row_keys: tuple[str, ...] = ()
) -> None:
    """Add a suite's metric columns to the one schema every result CSV has. A name another
    suite registered with another meaning is an error; the same meaning is shared.

    Of ``columns``, ``keys`` join a measurement's identity beside KEY_COLUMNS (e.g. the device
    profile a prediction used), and ``row_keys`` tell apart the rows one measurement writes
    (e.g. one per operator category): a rerun replaces all of a measurement's rows."""
    unknown = [k for k in (*keys, *row_keys) if k not in columns]
    if unknown:
        raise ValueError(f"key columns {unknown} are not among the columns registered")
    for name, meaning in columns.items():
        known = {**HEAD_COLUMNS, **TAIL_COLUMNS, **METRIC_COLUMNS}.get(name)
        if known is not None and known != meaning:
            raise ValueError(f"result column {name!r} means {known!r} already, not {meaning!r}")
        METRIC_COLUMNS.setdefault(name, meaning)
    ordered = {**HEAD_COLUMNS, **METRIC_COLUMNS, **TAIL_COLUMNS}
    COLUMNS.clear()
    COLUMNS.update(ordered)
    for target, names in ((EXTRA_KEY_COLUMNS, keys), (ROW_KEY_COLUMNS, row_keys)):
        target.extend(k for k in names if k not in target)


# What identifies a measurement: a rerun with the same key is the same measurement.
KEY_COLUMNS = (
    "suite",
    "model",
    "image_size",
    "batch_size",
    "device",
    "dtype",
    "mode",
    "scan_backend",
    "attn_backend",
    "conv_backend",
    "compile",
    "weights",
)
# Registered by suites (register_columns): more columns of a measurement's identity, and the
# columns that tell apart the rows of one measurement. A row's identity is all three.
EXTRA_KEY_COLUMNS: list[str] = []
ROW_KEY_COLUMNS: list[str] = []
STATUSES = ("ok", "oom", "timeout", "error")
# Rows that a rerun does not repeat; timeouts and errors are retried unless asked not to.
FINAL_STATUSES = frozenset({"ok", "oom"})


def utc_timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_row(**fields) -> dict:
    """A full row: every column present (missing ones empty), unknown names refused."""
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise KeyError(f"unknown result columns: {', '.join(sorted(unknown))}")
    if fields.get("status") not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {fields.get('status')!r}")
    row = {name: fields.get(name) for name in COLUMNS}
    row["timestamp"] = row["timestamp"] or utc_timestamp()
    return row


def key_part(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def row_key(row: dict) -> tuple[str, ...]:
    """The identity of a row's configuration, as strings so CSV-read and fresh rows compare
    equal: a configuration is measured (or not) as a whole, however many rows it wrote."""
    return tuple(key_part(row.get(c)) for c in KEY_COLUMNS)


def full_key(row: dict) -> tuple[str, ...]:
    """The identity of one row: its configuration plus the suites' extra key columns."""
    extra = EXTRA_KEY_COLUMNS + ROW_KEY_COLUMNS
    return row_key(row) + tuple(key_part(row.get(c)) for c in extra)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.7g}"
    return str(value).replace("\n", " ")


# The columns every dimbench result CSV has had: a file without them is not one of ours.
IDENTITY_COLUMNS = ("suite", "model", "image_size", "status")


class ResultFileError(UsageError):
    """A result CSV that is not dimbench's, or is corrupt: refused, never rewritten."""


@dataclass
class CsvContents:
    header: list[str]
    rows: list[dict]
    partial_tail: bool  # the last line was cut off (its writer killed mid-row): not a row
    clean_end: bool  # the file ends with a newline: a row can be appended as it is


def read_result_csv(path: Path) -> CsvContents | None:
    """The rows of a dimbench result CSV (None for a missing or empty file).

    Raises ``ResultFileError`` for a file with another header (a foreign CSV, or one from a
    newer dimbench) or a malformed row anywhere but at the end. A last line without its
    newline and with too few fields is a row whose writer was killed mid-write: it is reported
    as ``partial_tail`` and left out; every intact row is kept.
    """
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ResultFileError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ResultFileError(
            f"{path} is damaged: line {line} holds bytes that are not text (byte {e.start}); "
            "it is left as it is: cut that line off or move the file away, or choose another "
            "--out"
        ) from None
    try:
        lines = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise ResultFileError(f"{path} is not a readable CSV ({e}); move it away") from None
    header, body = lines[0], lines[1:]
    unknown = [c for c in header if c not in COLUMNS]
    missing = [c for c in IDENTITY_COLUMNS if c not in header]
    if unknown or missing:
        what = f"unknown columns {', '.join(unknown[:3])}" if unknown else "no " + missing[0]
        raise ResultFileError(
            f"{path} is not a dimbench result file ({what}); move it away or choose another "
            "--out (it is left as it is)"
        )
    clean_end = text.endswith(("\n", "\r"))
    partial = False
    if body and not clean_end and len(body[-1]) != len(header):
        body, partial = body[:-1], True
    for i, fields in enumerate(body):
        if len(fields) != len(header):
            raise ResultFileError(
                f"{path} is corrupt: row {i + 1} has {len(fields)} fields, the header "
                f"{len(header)}; fix or remove that line (the file is left as it is)"
            )
    rows = [dict(zip(header, fields, strict=True)) for fields in body]
    return CsvContents(header=header, rows=rows, partial_tail=partial, clean_end=clean_end)


class ResultStore:
    """The CSV (and raw-sample JSONL) of one suite in one results folder."""

    def __init__(self, out_dir: str | Path, suite: str):
        self.out_dir = Path(out_dir)
        self.suite = suite
        self.csv_path = self.out_dir / f"{suite}.csv"
        self.samples_path = self.out_dir / f"{suite}.samples.jsonl"

    def check(self) -> None:
        """Refuse a foreign or corrupt CSV before any measurement (``ResultFileError``)."""
        read_result_csv(self.csv_path)

    def rows(self) -> list[dict]:
        """Every intact row in the CSV, in file order, as strings ("" for empty)."""
        contents = read_result_csv(self.csv_path)
        return [] if contents is None else contents.rows

    def done_keys(self, retry_failed: bool = True) -> set[tuple[str, ...]]:
        """Keys a rerun should skip: rows with a final status (ok, oom), plus timeouts and
        errors when ``retry_failed`` is False. The last row of a key decides."""
        latest: dict[tuple[str, ...], str] = {}
        for row in self.rows():
            latest[row_key(row)] = row.get("status", "")
        final = FINAL_STATUSES if retry_failed else frozenset(STATUSES)
        return {k for k, status in latest.items() if status in final}

    def append(self, row: dict, raw: dict | None = None) -> None:
        """Append one row (and its raw samples); the file is created with a header if new.

        A CSV in an older dimbench layout is first rewritten in today's (every value kept); a
        cut-off last line is dropped so the new row lands on a line of its own."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        contents = read_result_csv(self.csv_path)
        if contents is not None and (contents.header != list(COLUMNS) or not contents.clean_end):
            self._rewrite(contents.rows)
        with self.csv_path.open("a", newline="") as f:
            writer = csv.writer(f)
            if contents is None:
                writer.writerow(COLUMNS)
            writer.writerow([_cell(row.get(c)) for c in COLUMNS])
        if raw is not None:
            record = {c: row.get(c) for c in KEY_COLUMNS}
            record.update(status=row.get("status"), timestamp=row.get("timestamp"), **raw)
            with self.samples_path.open("a") as f:
                f.write(json.dumps(record, default=_json_default) + "\n")

    def _rewrite(self, rows: list[dict]) -> None:
        """Today's layout, the intact rows only; atomically (a temp file, then rename)."""
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for r in rows:
                writer.writerow([r.get(c, "") or "" for c in COLUMNS])
        tmp.replace(self.csv_path)


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def load_results(paths: Iterable[str | Path] | str | Path):
    """All result rows from CSV files or folders of them as one DataFrame, the latest row per
    key (a rerun's row replaces the earlier one). Numeric columns come back as numbers.

    In a folder, only dimbench result CSVs are read (other CSVs beside them are skipped); a
    dimbench CSV that is corrupt raises ``ResultFileError``."""
    import pandas as pd

    if isinstance(paths, (str, Path)):
        paths = [paths]
    contents: list[CsvContents] = []
    for p in map(Path, paths):
        for f in sorted(p.glob("*.csv")) if p.is_dir() else [p]:
            if p.is_dir() and not _looks_like_results(f):
                continue
            c = read_result_csv(f)
            if c is not None:
                contents.append(c)
    frames = []
    for c in contents:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(c.header)
        writer.writerows([r[h] for h in c.header] for r in c.rows)
        buf.seek(0)
        frames.append(pd.read_csv(buf, dtype={"git_sha": str}))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    df = pd.concat(frames, ignore_index=True)
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    # a configuration's rows are those of its latest measurement (the rows written with its
    # last row's timestamp): a rerun replaces them all, whatever rows the earlier run wrote
    measurement = list(KEY_COLUMNS) + EXTRA_KEY_COLUMNS
    config = pd.Series(
        ["\x1f".join(k) for k in zip(*(df[c].map(key_part) for c in measurement), strict=True)],
        index=df.index,
    )
    stamp = df["timestamp"].map(key_part)
    df = df.loc[stamp == stamp.groupby(config).transform("last")].reset_index(drop=True)
    keys = df[measurement + ROW_KEY_COLUMNS].astype(str)
    df = df.loc[~keys.duplicated(keep="last")].reset_index(drop=True)
    return df


def _looks_like_results(path: Path) -> bool:
    """A CSV whose header begins like dimbench's (``suite,model,...``); only the first line is
    read, so a dimbench CSV damaged further down is still recognised (and then refused)."""
    try:
        with path.open("rb") as f:
            first = f.readline().decode("utf-8")
        header = next(csv.reader([first]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return header[:2] == list(COLUMNS)[:2]
