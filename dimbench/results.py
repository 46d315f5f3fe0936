"""Result rows and the CSV store.

One row per measurement, long format, one CSV per suite in a results folder
(``results/<machine>/throughput.csv``, ``memory.csv``, ``flops.csv``). Rows are appended as each
measurement finishes, so an interrupted sweep loses nothing; a rerun into the same folder skips
the configurations already measured. Many processes may write one folder at once (the workers of
a pool, the tasks of a cluster job array): every read and append holds ``flock`` on
``OUT/.<suite>.csv.lock``, so a row is written whole and once, and a rerun sees every row any
writer finished. The raw samples of each row (every latency, telemetry
samples) go to ``<suite>.samples.jsonl`` beside the CSV, one JSON object per line, keyed like
the row.

Each suite's CSV has the suite's own ``Schema``: the common head (what was measured, where),
the suite's metric columns, the common tail (status, provenance). The suites declare theirs
(``dimbench.bench.spec.Suite``); nothing here knows a suite. CSVs from older dimbench versions,
which carried every suite's columns, read with their values unchanged; appending to one
rewrites it in its suite's layout, keeping any other column that holds a value.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dimbench.errors import UsageError

# name -> meaning. A CSV's columns: these, its suite's metric columns, then TAIL_COLUMNS.
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
    "status": "ok | oom | timeout | error | too_big (predicted not to fit: nothing was run)",
    "error": "one line: why a row is not ok",
    "load_avg_1m": "1-minute load average when the measurement started",
    "threads": "torch.get_num_threads() in the measuring process",
    "omp_wait_policy": "OMP_WAIT_POLICY of the measuring process (PASSIVE: idle threads sleep)",
    "git_sha": "dimbench commit",
    "torch_version": "torch.__version__",
    "cuda_version": "torch.version.cuda (the build's CUDA)",
    "mamba_impl": "what answers `import mamba_ssm` (causal_conv1d where it differs): "
    "'mamba_ssm 2.2.2', 'dimbench-compat <version>' (dimbench.compat), '' (neither)",
    "cpu_model": "CPU model of the host",
    "cpu_isa": "widest vector unit: amx | avx512 | avx2 | sve | neon (one CPU name can hide two)",
    "hostname": "host that measured",
    "slot": "the pool slot that measured it (--devices, --workers: cuda:1, cpus 0-3, or a "
    "cluster task's id); empty: the whole device, one configuration at a time",
    "wall_s": "seconds the whole measurement took (process start to result)",
    "timestamp": "UTC time the row was written (ISO 8601)",
}
COMMON_COLUMNS: dict[str, str] = {**HEAD_COLUMNS, **TAIL_COLUMNS}

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
STATUSES = ("ok", "oom", "timeout", "error", "too_big")
# Rows that a rerun does not repeat; timeouts and errors are retried unless asked not to.
FINAL_STATUSES = frozenset({"ok", "oom", "too_big"})


def utc_timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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


@dataclass(frozen=True)
class Schema:
    """The columns of one suite's CSV: the common head, the suite's ``metrics`` (name ->
    meaning), the common tail. Of the metrics, ``keys`` join a measurement's identity beside
    KEY_COLUMNS (e.g. the device profile a prediction used), and ``row_keys`` tell apart the
    rows one measurement writes (e.g. one per operator category): a rerun replaces all of a
    measurement's rows."""

    suite: str
    metrics: Mapping[str, str] = field(default_factory=dict)
    keys: tuple[str, ...] = ()
    row_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        common = [c for c in self.metrics if c in COMMON_COLUMNS]
        if common:
            raise ValueError(
                f"suite {self.suite!r}: {', '.join(common)} are common result columns, not its own"
            )
        unknown = [k for k in (*self.keys, *self.row_keys) if k not in self.metrics]
        if unknown:
            raise ValueError(f"suite {self.suite!r}: key columns {unknown} are not its columns")

    @classmethod
    def from_header(cls, suite: str, header: Iterable[str]) -> Schema:
        """The schema a CSV of a suite nobody declares has: its header (meanings unknown).
        Its measurements are told apart by the common key; their rows by all its own
        columns, as which of them tell rows apart is not known."""
        own = [c for c in header if c not in COMMON_COLUMNS]
        return cls(suite, dict.fromkeys(own, ""), row_keys=tuple(own))

    @property
    def columns(self) -> dict[str, str]:
        """Every column, in CSV order: name -> meaning."""
        return {**HEAD_COLUMNS, **self.metrics, **TAIL_COLUMNS}

    @property
    def measurement(self) -> tuple[str, ...]:
        """The columns of a measurement's identity."""
        return KEY_COLUMNS + self.keys

    def row(self, **fields) -> dict:
        """A full row: every column present (missing ones empty), unknown names refused."""
        unknown = set(fields) - set(self.columns)
        if unknown:
            raise KeyError(f"unknown {self.suite} result columns: {', '.join(sorted(unknown))}")
        if fields.get("status") not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {fields.get('status')!r}")
        row = {name: fields.get(name) for name in self.columns}
        row["timestamp"] = row["timestamp"] or utc_timestamp()
        return row

    def layout(self, header: Iterable[str], holds_value: Callable[[str], bool]) -> list[str]:
        """The columns a file with ``header`` is written (and read) in: this schema's, plus
        each other column of the file that ``holds_value`` (an older layout's or a newer
        dimbench's), before the tail, so that nothing is lost."""
        own = list(self.columns)
        extra = [c for c in header if c not in self.columns and holds_value(c)]
        at = len(own) - len(TAIL_COLUMNS)
        return own[:at] + extra + own[at:]


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
    """The rows of a dimbench result CSV (None for a missing or empty file), in the file's own
    layout.

    Raises ``ResultFileError`` for a file that is not one of ours (a foreign CSV: no suite,
    model, image size or status column) or has a malformed row anywhere but at the end. A last
    line without its newline and with too few fields is a row whose writer was killed
    mid-write: it is reported as ``partial_tail`` and left out; every intact row is kept.
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
    missing = [c for c in IDENTITY_COLUMNS if c not in header]
    if missing:
        raise ResultFileError(
            f"{path} is not a dimbench result file (no {missing[0]} column); move it away or "
            "choose another --out (it is left as it is)"
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


def _file_layout(schema: Schema, contents: CsvContents) -> list[str]:
    return schema.layout(contents.header, lambda c: any(r[c] for r in contents.rows))


class ResultStore:
    """The CSV (and raw-sample JSONL) of one suite in one results folder, in its ``schema``."""

    def __init__(self, out_dir: str | Path, schema: Schema):
        self.out_dir = Path(out_dir)
        self.schema = schema
        self.suite = schema.suite
        self.csv_path = self.out_dir / f"{self.suite}.csv"
        self.samples_path = self.out_dir / f"{self.suite}.samples.jsonl"
        # a file of its own, not the CSV: a layout rewrite replaces the CSV by a rename
        self.lock_path = self.out_dir / f".{self.suite}.csv.lock"

    @contextlib.contextmanager
    def locked(self, exclusive: bool = True) -> Iterator[None]:
        """Hold the store's lock (shared: to read) against the other writers of the folder."""
        if not self.out_dir.exists():  # nothing to read, nobody to exclude yet
            if not exclusive:
                yield
                return
            self.out_dir.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def check(self) -> None:
        """Refuse a foreign or corrupt CSV before any measurement (``ResultFileError``)."""
        with self.locked(exclusive=False):
            read_result_csv(self.csv_path)

    def rows(self) -> list[dict]:
        """Every intact row in the CSV, in file order, as strings ("" for empty), with the
        schema's columns (and any other column of the file that holds a value)."""
        with self.locked(exclusive=False):
            contents = read_result_csv(self.csv_path)
        if contents is None:
            return []
        layout = _file_layout(self.schema, contents)
        return [{c: r.get(c, "") for c in layout} for r in contents.rows]

    def frame(self):
        """The CSV's rows as ``load_results`` gives them (the latest per key)."""
        with self.locked(exclusive=False):
            return load_results(self.csv_path, {self.suite: self.schema})

    def done_keys(
        self, retry_failed: bool = True, retry_too_big: bool = False
    ) -> set[tuple[str, ...]]:
        """Keys a rerun should skip: rows with a final status (ok, oom, too_big), plus timeouts
        and errors when ``retry_failed`` is False; ``retry_too_big``: not too_big rows (their
        configurations run without the memory check). The last row of a key decides."""
        latest: dict[tuple[str, ...], str] = {}
        for row in self.rows():
            latest[row_key(row)] = row.get("status", "")
        final = FINAL_STATUSES if retry_failed else frozenset(STATUSES)
        if retry_too_big:
            final = final - {"too_big"}
        return {k for k, status in latest.items() if status in final}

    def append(self, row: dict, raw: dict | None = None) -> None:
        """Append one row (and its raw samples); the file is created with a header if new.

        A CSV in another layout (an older dimbench's, with every suite's columns) is first
        rewritten in the schema's, keeping every column that holds a value; a cut-off last
        line is dropped so the new row lands on a line of its own."""
        unknown = set(row) - set(self.schema.columns)
        if unknown:
            raise KeyError(f"unknown {self.suite} result columns: {', '.join(sorted(unknown))}")
        with self.locked():
            self._append(row, raw)

    def _append(self, row: dict, raw: dict | None) -> None:
        contents = read_result_csv(self.csv_path)
        layout = (
            list(self.schema.columns) if contents is None else _file_layout(self.schema, contents)
        )
        if contents is not None and (contents.header != layout or not contents.clean_end):
            self._rewrite(contents.rows, layout)
        buf = io.StringIO()
        writer = csv.writer(buf)
        if contents is None:
            writer.writerow(layout)
        writer.writerow([_cell(row.get(c)) for c in layout])
        with self.csv_path.open("a", newline="") as f:
            f.write(buf.getvalue())
        if raw is not None:
            record = {c: row.get(c) for c in KEY_COLUMNS}
            record.update(status=row.get("status"), timestamp=row.get("timestamp"), **raw)
            with self.samples_path.open("a") as f:
                f.write(json.dumps(record, default=_json_default) + "\n")

    def _rewrite(self, rows: list[dict], layout: list[str]) -> None:
        """The intact rows in ``layout``; atomically (a temp file, then rename)."""
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(layout)
            for r in rows:
                writer.writerow([r.get(c, "") or "" for c in layout])
        tmp.replace(self.csv_path)


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def load_results(
    paths: Iterable[str | Path] | str | Path, schemas: Mapping[str, Schema] | None = None
):
    """All result rows from CSV files or folders of them as one DataFrame, the latest row per
    key (a rerun's row replaces the earlier one). Numeric columns come back as numbers.

    Each CSV's rows are read with the schema of their suite from ``schemas`` (suite name ->
    Schema; ``dimbench.bench.schemas()`` gives the registered ones): its columns, and its key
    columns to tell a rerun from another measurement. The rows of a suite ``schemas`` lacks
    read with their file's header as their schema (``Schema.from_header``). Columns of
    another suite that an older layout carried, empty in these rows, are left out.

    In a folder, only dimbench result CSVs are read (other CSVs beside them are skipped); a
    dimbench CSV that is corrupt raises ``ResultFileError``."""
    import pandas as pd

    schemas = schemas or {}
    if isinstance(paths, (str, Path)):
        paths = [paths]
    by_suite: dict[str, list] = {}
    for p in map(Path, paths):
        for f in sorted(p.glob("*.csv")) if p.is_dir() else [p]:
            if p.is_dir() and not _looks_like_results(f):
                continue
            c = read_result_csv(f)
            if c is None or not c.rows:
                continue
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(c.header)
            writer.writerows([r[h] for h in c.header] for r in c.rows)
            buf.seek(0)
            frame = pd.read_csv(buf, dtype={"git_sha": str, "suite": str})
            for name, part in frame.groupby("suite", sort=False, dropna=False):
                by_suite.setdefault(str(name), []).append(part)
    frames = []
    for name, parts in by_suite.items():
        df = pd.concat(parts, ignore_index=True)
        schema = schemas.get(name) or Schema.from_header(name, df.columns)
        frames.append(_latest(_in_layout(df, schema), schema))
    if not frames:
        columns = {c: None for s in schemas.values() for c in s.columns} or COMMON_COLUMNS
        return pd.DataFrame(columns=list(columns))
    return pd.concat(frames, ignore_index=True)


def _in_layout(df, schema: Schema):
    """``df`` with the schema's columns (empty where the file had none), and the other
    columns that hold a value."""
    layout = schema.layout(df.columns, lambda c: df[c].notna().any())
    for c in layout:
        if c not in df.columns:
            df[c] = math.nan  # what an empty CSV column reads as
    return df[layout]


def _latest(df, schema: Schema):
    """A configuration's rows are those of its latest measurement (the rows written with its
    last row's timestamp): a rerun replaces them all, whatever rows the earlier run wrote."""
    import pandas as pd

    measurement = list(schema.measurement)
    config = pd.Series(
        ["\x1f".join(k) for k in zip(*(df[c].map(key_part) for c in measurement), strict=True)],
        index=df.index,
    )
    stamp = df["timestamp"].map(key_part)
    df = df.loc[stamp == stamp.groupby(config).transform("last")].reset_index(drop=True)
    keys = df[measurement + list(schema.row_keys)].astype(str)
    return df.loc[~keys.duplicated(keep="last")].reset_index(drop=True)


def _looks_like_results(path: Path) -> bool:
    """A CSV whose header begins like dimbench's (``suite,model,...``); only the first line is
    read, so a dimbench CSV damaged further down is still recognised (and then refused)."""
    try:
        with path.open("rb") as f:
            first = f.readline().decode("utf-8")
        header = next(csv.reader([first]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return header[:2] == list(HEAD_COLUMNS)[:2]
