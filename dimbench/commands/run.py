"""`dimbench run SUITE`: sweep throughput, memory or FLOPs against resolution."""

from pathlib import Path
from typing import Annotated

import typer

from dimbench.bench.spec import Sweep, run_timing_help
from dimbench.cli import options as o
from dimbench.devices import DEFAULT_DEVICE

SuiteName = Annotated[
    str,
    typer.Argument(
        help="throughput | memory | flops, or a suite an --import module registers",
        show_default=False,
    ),
]
Warmup = Annotated[
    int | None, typer.Option("--warmup", help=f"Untimed warm-up steps {run_timing_help('warmup')}")
]
Repeats = Annotated[
    int | None,
    typer.Option(
        "--repeats",
        help=f"Timed repeats at most (fewer past --budget) {run_timing_help('repeats')}",
    ),
]
MinRounds = Annotated[
    int | None,
    typer.Option(
        "--min-rounds",
        help="Timed repeats (rounds of a paired cell) at least, whatever --budget says "
        + run_timing_help("min_rounds"),
    ),
]
Budget = Annotated[
    float | None,
    typer.Option(
        "--budget",
        help="Seconds of timed steps per configuration after which a cell may stop: past "
        "--min-rounds, once every model's 95% interval is within ±10% (else it goes on to "
        "--repeats) " + run_timing_help("budget_s"),
    ),
]
Unpaired = Annotated[
    bool,
    typer.Option(
        "--unpaired",
        help="One process per configuration, one after another (throughput; default: the "
        "models of each resolution/batch/dtype/mode measured in interleaved rounds, one "
        "process each)",
    ),
]
Weights = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        help="Load these weights (a dimbench checkpoint, or a released DiM nnet_ema.pth for "
        "the DiM-*-imagenet* models) into every model [random initialisation]",
        show_default=False,
    ),
]
OmpWaitPolicy = Annotated[
    str | None,
    typer.Option(
        "--omp-wait-policy",
        help="passive | active: OpenMP threads sleep or spin while idle. Spinning threads on a "
        "shared CPU wait for descheduled peers and slow every step by up to 10x "
        "[$OMP_WAIT_POLICY, else passive]",
        show_default=False,
    ),
]
SampleSteps = Annotated[
    int, typer.Option("--sample-steps", help="Sampler steps for the derived sampling-run latency")
]
RetryFailed = Annotated[
    bool,
    typer.Option(
        "--retry-failed/--skip-failed",
        help="On a rerun, measure timeouts and errors again (ok, oom and too_big rows are kept; "
        "too_big ones not with --no-memory-check)",
    ),
]
ResultsDir = o.out(
    "Results folder [runs/<machine>/, e.g. runs/amd-epyc-avx2-2c/; the published "
    "results live in results/<machine>/]"
)


def run(
    suite: SuiteName,
    res: o.Resolutions = None,
    models: o.Models = None,
    batch_size: o.BatchSizes = o.default(Sweep, "batch_sizes"),
    device: o.Device = DEFAULT_DEVICE,
    dtype: o.Dtypes = o.default(Sweep, "dtypes"),
    mode: o.Modes = o.default(Sweep, "modes"),
    warmup: Warmup = None,
    repeats: Repeats = None,
    min_rounds: MinRounds = None,
    budget: Budget = None,
    unpaired: Unpaired = False,
    timeout: o.Timeout = o.default(Sweep, "timeout_s"),
    scan_backend: o.ScanBackend = o.default(Sweep, "scan_backend"),
    attn_backend: o.AttnBackend = o.default(Sweep, "attn_backend"),
    conv_backend: o.ConvBackend = o.default(Sweep, "conv_backend"),
    compile: o.Compile = False,
    weights: Weights = None,
    threads: o.Threads = None,
    omp_wait_policy: OmpWaitPolicy = None,
    sample_steps: SampleSteps = o.default(Sweep, "sample_steps"),
    redo: o.Redo = False,
    memory_check: o.MemoryCheck = o.default(Sweep, "memory_check"),
    retry_failed: RetryFailed = True,
    out: ResultsDir = None,
    devices: o.Devices = None,
    workers: o.Workers = 1,
    launcher: o.Launcher = None,
    dry_run: o.DryRun = False,
    slurm_partition: o.SlurmPartition = None,
    slurm_gpus_per_task: o.SlurmGpusPerTask = 0,
    slurm_time: o.SlurmTime = "60",
    slurm_account: o.SlurmAccount = None,
    slurm_arg: o.SlurmArgs = None,
) -> None:
    """Measure SUITE for every (model, resolution, batch, dtype, mode), each in its own process.

    throughput: the models of each cell (one resolution, batch, dtype, mode) run in interleaved
    rounds, one timed step each per round in shuffled order; each row has a 95% interval and
    OUT/ratios.csv the model-over-baseline ratios with theirs (--unpaired: one configuration at a
    time). Rows are appended to OUT/SUITE.csv as they finish (raw samples to
    OUT/SUITE.samples.jsonl); a rerun with the same --out skips what is already there. OOM,
    timeout and crashes are rows.

    Many at once: --devices cuda:0 cuda:1 (or all) runs one configuration per GPU, --workers N
    one per 1/N of a CPU's cores; --launcher slurm submits one SLURM job-array task per
    configuration (--dry-run: print them), all writing the same OUT/.

    Example: dimbench run throughput --res 256 512 1024 1536
    """
    from dimbench import pool
    from dimbench.bench import launcher as cluster
    from dimbench.bench import session
    from dimbench.errors import UsageError

    opts = None
    if launcher is not None:
        if devices or workers != 1:
            raise UsageError("--launcher places each task itself: no --devices or --workers")
        opts = cluster.cluster_options(
            launcher, slurm_partition, slurm_gpus_per_task, slurm_time, slurm_account, slurm_arg
        )
        device = cluster.cluster_device(device, opts)
    elif dry_run:
        raise UsageError("--dry-run prints what --launcher would submit; add --launcher")
    elif devices and device == DEFAULT_DEVICE:
        device = "cuda"
    sweep = session.plan(
        suite, models, res, device, on_device=opts is None or opts.launcher == "local",
        batch_sizes=list(batch_size), dtypes=list(dtype), modes=list(mode),
        warmup=warmup, repeats=repeats, min_rounds=min_rounds, budget_s=budget,
        timeout_s=timeout, paired=not unpaired,
        scan_backend=scan_backend, attn_backend=attn_backend, conv_backend=conv_backend,
        compile="inductor" if compile else "eager", weights=str(weights) if weights else "",
        threads=threads, omp_wait_policy=omp_wait_policy, sample_steps=sample_steps,
        memory_check=memory_check,
    )  # fmt: skip

    def crossovers(df, out_dir: Path) -> list[str]:
        from dimbench.plots.crossover import crossover_lines

        return crossover_lines(df, sweep.suite, out_dir)

    summarise = crossovers if sweep.suite.stepper else None  # the paired suites
    if opts is not None:
        crashed = cluster.launch_sweep(
            sweep, out, opts, redo=redo, retry_failed=retry_failed, dry_run=dry_run
        )
    else:
        slots = pool.placement(sweep.device, devices, workers)
        crashed = session.run(
            sweep, out, redo=redo, retry_failed=retry_failed, slots=slots, summarise=summarise
        )
    if crashed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
