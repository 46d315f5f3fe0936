"""A sweep as data: which suite, which models, resolutions, batch sizes, dtypes, modes, device
and backends; its configurations are the cross product. The shape follows triton's
``perf_report``: a sweep is a spec, its result a DataFrame, its picture a plot.

Validation happens here, before anything runs, and raises ``UsageError`` (one line, exit 2):
a resolution the models cannot patchify, an unknown model, ``cuda`` without CUDA, an unknown
or unusable backend. Backends are resolved here too (``auto`` -> the concrete kernel), so
each row names what actually ran and a rerun's skip check compares like with like.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace

from dimbench.compile import check_compiler
from dimbench.devices import parse_device
from dimbench.dtypes import NAMES as DTYPES
from dimbench.errors import UsageError
from dimbench.results import KEY_COLUMNS, Schema
from dimbench.threads import check_omp_policy

MODES = ("forward", "train")
SAMPLE_STEPS = 50  # DPM-Solver++ steps of a DiM/DiT sampling run

# Default model sets. CPU: the small configs (a 1536-px forward of a paper-sized model takes
# minutes on two cores); GPU: the paper-sized models the DiM paper compares.
CPU_MODELS = ("DiM-S/2", "DiT-S/2", "U-ViT-S/2")
GPU_MODELS = ("DiM-H/2", "DiT-XL/2", "U-ViT-H/2")
PAPER_MODELS = ("DiM-L/2", "DiM-H/2", "DiT-XL/2", "U-ViT-H/2")
DEFAULT_RESOLUTIONS = (256, 512, 1024, 1536)
NO_BACKEND = "-"  # in the scan column of a model without a scan, and vice versa
# `dimbench run`'s timing where not given, by device kind: a CPU step is slow, a GPU one fast.
# repeats: timed rounds at most; min_rounds: at least, whatever the budget (measure.rounds)
RUN_TIMING = {
    "cpu": {"warmup": 1, "min_rounds": 5, "repeats": 10, "budget_s": 20.0},
    "cuda": {"warmup": 3, "min_rounds": 10, "repeats": 20, "budget_s": 10.0},
}


def run_timing(device: str, **given: float | None) -> dict:
    """``given`` (warmup, repeats, budget_s) with RUN_TIMING's value for ``device`` where None."""
    defaults = RUN_TIMING["cuda" if device.startswith("cuda") else "cpu"]
    return {k: defaults[k] if v is None else v for k, v in given.items()}


def run_timing_help(name: str) -> str:
    """``[CPU 10, GPU 20]``: RUN_TIMING's ``name`` for the help text."""
    return f"[CPU {RUN_TIMING['cpu'][name]:g}, GPU {RUN_TIMING['cuda'][name]:g}]"


@dataclass(frozen=True)
class SummaryColumn:
    """A column of the summary table a sweep prints at its end."""

    column: str
    title: str  # may name {sample_steps}
    fmt: str = ".3g"


@dataclass(frozen=True)
class Panel:
    """One panel of the scaling figure: a metric against ``x``, one line per model."""

    metric: str
    title: str
    ylabel: str
    per_image: bool = False  # divide by the batch size
    fallback: tuple[str, ...] = ()  # suites whose rows it draws when this suite has none
    device_ylabels: tuple[tuple[str, str], ...] = ()  # (device type, ylabel): what was measured
    x: str = "image_size"
    # the metric of another suite's panel this one is drawn over (dashed lines, labelled with
    # ``tag``) where that panel is in the figure; else it is a panel of its own
    over: str = ""
    tag: str = ""  # words after its lines' labels and in the title, e.g. "predicted"

    def ylabel_for(self, device: str | None) -> str:
        return dict(self.device_ylabels).get(str(device or "").split(":")[0], self.ylabel)


@dataclass(frozen=True)
class Ratio:
    """How a model compares with an attention baseline on a suite's metric, and the words for
    where the ratio crosses 1 ({b}: the baseline, {x}: the crossing, {lo}-{hi}: the range)."""

    name: str  # what is compared, e.g. "throughput", "GFLOPs"
    metric: str
    higher_is_better: bool
    label: str  # the ratio's axis label ({model}: the models' family)
    heading: str  # "Where DiM {heading}"
    crossing: str
    ahead: str
    behind: str
    # marks its crossovers beside another suite's in one figure (label suffix, dash-dotted
    # lines), e.g. "predicted"
    tag: str = ""
    # the verb of a crossover given as an interval ("{model} overtakes {b} between X and Y px")
    overtakes: str = "overtakes"


@dataclass(frozen=True)
class Suite:
    """One kind of measurement, declared in one place (triton's ``perf_report``): what it
    measures, the result columns it writes, how its rows are printed, and how they are drawn."""

    name: str
    measure: Callable[[Config], dict]  # runs one configuration (in its own process if isolated)
    columns: dict[str, str]  # its metric columns: name -> meaning (its CSV: these + common ones)
    summary: tuple[SummaryColumn, ...]  # the summary table's columns
    row_line: Callable[[dict], str]  # what is printed after a finished row's key fields
    panels: tuple[Panel, ...] = ()
    ratio: Ratio | None = None  # the model-over-baseline comparison its rows give
    isolated: bool = True  # one process per configuration (False: instant, allocates nothing)
    # "module:Class": built from a Config in a cell's worker, ``step() -> seconds`` times one
    # step, ``finish() -> {"metrics", "raw"}``; the models of a cell are then measured in
    # interleaved rounds (bench.cell). "": one process per configuration, one after another
    stepper: str = ""
    grouped: bool = True  # its rows differ by device, dtype, mode and batch (False: drawn in all)
    default_models: Callable[[str], tuple[str, ...]] = lambda device: (
        GPU_MODELS if device.startswith("cuda") else CPU_MODELS
    )
    # environment of the measuring process, e.g. a malloc policy (read when the process starts)
    worker_env: Callable[[Config], dict[str, str]] = lambda cfg: {}
    # of its columns, those that join a measurement's identity (rows of one figure are drawn
    # apart by them), and those that tell apart the rows one measurement writes
    keys: tuple[str, ...] = ()
    row_keys: tuple[str, ...] = ()
    # "module:function(results_dir, formats, rows) -> [paths]" drawing a figure of its own
    figure: str = ""
    # how the results summary says its rows were made ({column}: the values in that column);
    # "": measured on the device (isolated) or counted on the meta device
    provenance: str = ""

    def __post_init__(self) -> None:
        self.schema  # noqa: B018  (a declaration with bad key columns fails where it is made)

    @property
    def schema(self) -> Schema:
        """Its CSV's columns: the common key and provenance columns and its own."""
        return Schema(self.name, self.columns, self.keys, self.row_keys)


# Metric columns more than one suite writes (each suite declares the ones it writes)
PARAMS_COLUMN = {"params_m": "parameters in millions"}
FLOPS_COLUMNS = {
    "gmacs": "multiply-accumulates per forward (or train step) of the batch, in 1e9",
    "gflops": "2 x gmacs (torch.utils.flop_counter convention)",
}
MEMORY_COLUMNS = {
    "peak_mem_mb": "GPU: max_memory_allocated; CPU: peak RSS above the process's idle level "
    "(peak_mem_method says how it was taken)",
    "peak_mem_reserved_mb": "GPU: max_memory_reserved (caching allocator); empty on CPU",
    "peak_mem_method": "how peak_mem_mb was taken (on CPU: whether malloc returned large "
    "blocks to the kernel, so that RSS follows the live tensors)",
}

# predict's rows; in the measuring suites, their too_big rows (bench.memory_check)
PREDICTED_PEAK_COLUMN = {
    "predicted_peak_mem_mb": "cost model: parameters (+ AdamW state) + peak of live operator "
    "outputs, MB",
}


def fmt(value, spec: str) -> str:
    """A number for a table or a row line: "-" when missing, thousands separated when large."""
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return "-"
    v = float(value)
    return f"{v:,.0f}" if abs(v) >= 10_000 else format(v, spec)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """How each configuration of a sweep is measured, the same for all of them: declared once,
    for a ``Sweep`` and for each of its ``Config``s (``Sweep.configs`` carries them over)."""

    device: str = "cpu"
    compile: str = "eager"
    weights: str = ""  # a checkpoint (dimbench's or a released DiM file) to load; "": random init
    warmup: int = 1
    repeats: int = 3
    min_rounds: int = 1  # timed steps at least, whatever budget_s says (at most repeats)
    budget_s: float | None = None
    timeout_s: float = 300.0
    sample_steps: int = SAMPLE_STEPS
    threads: int | None = None
    omp_wait_policy: str | None = None  # OMP_WAIT_POLICY for the measuring process
    # what a suite reads beyond these (e.g. the profile's device_profile and trace_dir): travels
    # with the configuration to its process; not part of a measurement's identity
    suite_options: dict[str, str] = field(default_factory=dict, hash=False)

    def settings(self) -> dict:
        """These fields and their values."""
        return {f.name: getattr(self, f.name) for f in fields(Settings)}


@dataclass(frozen=True)
class Config(Settings):
    """One measurement: everything the measuring process needs, JSON-serialisable."""

    suite: str
    model: str
    image_size: int
    batch_size: int = 1
    dtype: str = "fp32"
    mode: str = "forward"
    scan_backend: str = NO_BACKEND
    attn_backend: str = NO_BACKEND
    conv_backend: str = NO_BACKEND

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def key_fields(self) -> dict:
        """What identifies the measurement (``results.KEY_COLUMNS``, a field each)."""
        return {name: getattr(self, name) for name in KEY_COLUMNS}

    def option(self, name: str) -> str | None:
        """A suite option (``suite_options``), None when not given."""
        return self.suite_options.get(name)

    def backend_kwargs(self) -> dict[str, str]:
        """The backends to build the model with (``create_model`` keywords)."""
        names = {"scan_backend": self.scan_backend, "attn_backend": self.attn_backend}
        names["conv_backend"] = self.conv_backend
        return {k: v for k, v in names.items() if v != NO_BACKEND}

    def label(self) -> str:
        compiled = "" if self.compile == "eager" else f" {self.compile}"
        return (
            f"{self.model} @ {self.image_size}px  b{self.batch_size} {self.dtype} {self.mode}"
            + compiled
        )


@functools.cache
def params_m(name: str) -> float:
    """Parameters of a registered model in millions, from a meta-device build (free)."""
    from dimbench.registry import create_model

    model = create_model(name, image_size=256, device="meta")
    return sum(p.numel() for p in model.parameters()) / 1e6


@dataclass(frozen=True)
class Sweep(Settings):
    """The cross product models x resolutions x batch sizes x dtypes x modes on one device,
    each measured with the same ``Settings``."""

    suite: Suite
    models: list[str]
    resolutions: list[int] = field(default_factory=lambda: list(DEFAULT_RESOLUTIONS))
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    modes: list[str] = field(default_factory=lambda: ["forward"])
    scan_backend: str = "auto"
    attn_backend: str = "auto"
    conv_backend: str = "auto"
    # refuse (status too_big) what the cost model predicts cannot fit (bench.memory_check)
    memory_check: bool = True
    # the models of a cell measured in interleaved rounds (bench.cell), where the suite can
    paired: bool = True
    # False: planned away from its device (a cluster's login node): the device is not checked
    # here and the backends stay as requested, resolved by each task on its node
    on_device: bool = True

    def requested(self, kernel: str) -> str:
        """The backend asked for ``kernel`` (scan, attention, conv)."""
        return {"scan": self.scan_backend, "attention": self.attn_backend}.get(
            kernel, self.conv_backend
        )

    def backends(self, model: str, dtype: str) -> dict[str, str]:
        """Config fields of the backends ``model`` runs, resolved for this device and dtype;
        the kernels it does not declare read NO_BACKEND. Call ``validate()`` first."""
        from dimbench.ops.backends import resolve
        from dimbench.registry import KERNELS, get_model

        out = dict.fromkeys(KERNELS.values(), NO_BACKEND)
        if self.suite.isolated:
            for kernel in get_model(model).kernels:
                name = self.requested(kernel)
                out[KERNELS[kernel]] = (
                    resolve(kernel, name, self.device, dtype) if self.on_device else name
                )
        return out

    def configs(self) -> list[Config]:
        """Every configuration, smallest resolution first within each model, backends resolved,
        the settings carried over. Call it on ``validate()``'s result."""
        settings = self.settings()
        if not self.suite.isolated:  # counted, not run: nothing is allocated or loaded
            settings.update(device="meta", compile="eager", weights="")
        out = []
        for model in self.models:
            for dtype in self.dtypes:
                backends = self.backends(model, dtype)
                for mode in self.modes:
                    for batch in self.batch_sizes:
                        for res in self.resolutions:
                            out.append(
                                Config(
                                    suite=self.suite.name,
                                    model=model,
                                    image_size=res,
                                    batch_size=batch,
                                    dtype=dtype if self.suite.isolated else "fp32",
                                    mode=mode,
                                    **backends,
                                    **settings,
                                )
                            )
        # FLOPs do not depend on dtype: one row per (model, res, batch, mode)
        return list(dict.fromkeys(out))

    def validate(self) -> Sweep:
        """This sweep checked, with its device and weights resolved (``auto`` -> the device,
        the weights' absolute path); bad input is a one-line UsageError before anything runs."""
        from dimbench.ops.backends import resolve
        from dimbench.registry import KERNELS, get_model, list_models

        valid = list_models()
        unknown = [m for m in self.models if m not in valid]
        if unknown:
            raise UsageError(
                f"unknown model{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"valid: {', '.join(valid) or '(none registered)'}"
            )
        if not self.models:
            raise UsageError("no models to run")
        if not self.resolutions:
            raise UsageError("no resolutions to run")
        for model in self.models:
            for res in self.resolutions:
                get_model(model).input_size(res)
        for b in self.batch_sizes:
            if b < 1:
                raise UsageError(f"batch size must be >= 1, got {b}")
        for name, values, allowed in (
            ("dtype", self.dtypes, DTYPES),
            ("mode", self.modes, MODES),
        ):
            for v in values:
                if v not in allowed:
                    raise UsageError(f"unknown {name} {v!r}; valid: {', '.join(allowed)}")
        check_compiler(self.compile)
        weights = self.weights
        if weights:
            weights = check_weights(weights, self.models, self.resolutions[0])
        if self.warmup < 0 or self.repeats < 1:
            raise UsageError("--warmup must be >= 0 and --repeats >= 1")
        if self.min_rounds < 1:
            raise UsageError("--min-rounds must be >= 1")
        if self.timeout_s <= 0:
            raise UsageError("--timeout must be positive")
        if self.omp_wait_policy is not None:
            check_omp_policy(self.omp_wait_policy)
        if self.threads is not None and self.threads < 1:
            raise UsageError("--threads must be >= 1")
        if not self.on_device:
            return replace(self, weights=weights)
        device = parse_device(self.device, allow_auto=True)
        if self.suite.isolated:
            # a backend named explicitly must exist even if no model in the sweep uses it
            used = {k for m in self.models for k in get_model(m).kernels}
            for kernel in KERNELS:
                if kernel in used or self.requested(kernel) != "auto":
                    for dtype in self.dtypes:
                        resolve(kernel, self.requested(kernel), device, dtype)
        # --repeats caps the rounds, --min-rounds included
        min_rounds = min(self.min_rounds, self.repeats)
        return replace(self, device=device, weights=weights, min_rounds=min_rounds)


def check_weights(path: str, models: list[str], image_size: int) -> str:
    """The absolute path of a weights file that fits every model (one-line errors otherwise),
    checked on meta-device builds without reading the tensors."""
    from pathlib import Path

    from dimbench.registry import create_model
    from dimbench.train.checkpoint import load_checkpoint, load_model_weights, model_meta

    ckpt = load_checkpoint(path, map_location="meta", mmap=False)
    for name in models:
        model = create_model(name, image_size, device="meta")
        load_model_weights(model, ckpt, model_meta(model, 8), f"--weights {path}")
    return str(Path(path).resolve())
