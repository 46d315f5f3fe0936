"""The comparison itself: size the backbones, then advance each one's ``Trainer`` from
evaluation point to evaluation point (``Trainer.fit(until=...)`` or ``fit(seconds=...)``),
evaluate there, and append one CSV row per (model, seed, point). ``--seeds N`` trains every
model N times, under seeds base, base + 1, ... (data order, initialisation and noise follow
the seed; the held-out set is the same for all).

Layout of ``--out``::

    train_compare.csv     one row per model, seed and evaluation point (``store.COLUMNS``)
    train_compare.json    the plan (everything that defines the results), model sizes and
                          what --match chose, evaluation settings, machine, one entry per run
    <model>/seed-<s>/checkpoint.pt  the trainer's checkpoint of that seed's run
                          (``dimbench sample --ckpt`` reads it), with its log.csv and config.json

(the command adds ``train_compare.png/svg`` and ``summary.md``). Seeds run one after another
(every model's first seed, then every model's second, ...); within a seed, ``sequential``
trains one model to the end of the budget after another, ``interleaved`` takes every model to
point k before any goes on to k + 1. Resume: a rerun with the same ``--out`` and settings
skips the (model, seed, point) triples that have rows and continues each run from its
checkpoint (saved at every point before evaluating, and by the trainer every ``ckpt_every``
steps). The data order, noise and timesteps come from the trainer's (seed, step)-keyed
streams: the same for every model of a seed, and after a resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import time
from pathlib import Path

import torch

from dimbench.diffusion.schedule import NoiseSchedule
from dimbench.errors import Interrupted, UsageError
from dimbench.latents import LATENT_DOWNSAMPLE
from dimbench.out_lock import OutLock
from dimbench.paths import writable_dir
from dimbench.train import distributed as D
from dimbench.train.build import build_model, check_backends, model_input
from dimbench.train.checkpoint import CHECKPOINT_NAME
from dimbench.train.compare.budget import Point, default_warmup, evaluation_points, parse_budget
from dimbench.train.compare.config import CompareConfig, resolve
from dimbench.train.compare.evaluation import PointEvaluator
from dimbench.train.compare.heldout import split_heldout
from dimbench.train.compare.store import CompareStore, plan_record, row_key, utc_now
from dimbench.train.compare.ui import (
    CompareProgress,
    make_console,
    print_plan,
    print_summary_table,
)
from dimbench.train.compare.widths import PlannedModel, match_summary, plan_models
from dimbench.train.data import build_dataset
from dimbench.train.trainer import Trainer


class ModelRun:
    """One backbone under one seed: its trainer (built on first use, resumed from its
    checkpoint), advanced to each point and evaluated there."""

    def __init__(self, comp: CompareRun, spec: PlannedModel, seed: int):
        self.comp = comp
        self.spec = spec
        self.seed = seed
        self.dir = comp.out / spec.slug / f"seed-{seed}"
        self.points = evaluation_points(comp.budget, spec, comp.cfg.evals, comp.cfg.fid_every)
        self.trainer: Trainer | None = None
        self.loss_sum: torch.Tensor | None = None
        self.loss_steps = 0

    def pending(self) -> list[Point]:
        return [p for p in self.points if self.key(p) not in self.comp.done]

    def key(self, point: Point) -> tuple[str, int, int]:
        return self.spec.label, self.seed, point.index

    @property
    def name(self) -> str:
        """The progress bar's name: the label, and the seed when there are several."""
        if self.comp.cfg.seeds == 1:
            return self.spec.label
        return f"{self.spec.label} s{self.seed}"

    def start(self) -> Trainer:
        """Build the trainer (resuming from this model's checkpoint if there is one)."""
        cfg = self.comp.cfg
        total = self.points[-1].steps
        tc = dataclasses.replace(
            cfg.recipe,
            model=self.spec.name,
            seed=self.seed,
            steps=total if total else 10**9,  # a time budget: the clock stops it
            out=str(self.dir),
            schedule=self.comp.schedule_name,
            loss="mse",
            resume=(self.dir / CHECKPOINT_NAME).is_file(),
            progress=False,
            extra=dict(self.spec.overrides),
        )
        self.trainer = Trainer(
            tc,
            self.comp.dist,
            data=(self.comp.evaluator.train_data, self.comp.info),  # without the held-out set
            context={"train_compare": self.spec.to_dict()},
        )
        self.loss_sum = torch.zeros((), device=self.trainer.device)
        self.loss_steps = 0
        return self.trainer

    def advance(self, point: Point) -> None:
        """Train up to ``point`` (if its row is missing), checkpoint, evaluate, write the row."""
        if self.key(point) in self.comp.done:
            return
        tr = self.trainer or self.start()
        if point.steps is not None and tr.step > point.steps:
            raise UsageError(
                f"{self.dir / CHECKPOINT_NAME} is at step {tr.step}, past evaluation point "
                f"{point.index} (step {point.steps}) which has no row; delete {self.dir} to redo "
                "this model"
            )
        try:
            if point.steps is not None:
                tr.fit(until=point.steps, on_step=self._after_step)
            else:
                tr.fit(seconds=point.seconds, on_step=self._after_step)
        except Interrupted as e:
            signum = e.exit_code - 128
            raise Interrupted(
                f"{signal.Signals(signum).name} while training {self.name} at step "
                f"{tr.step}: checkpoint saved in {self.dir}; rerun the same command to continue",
                signum,
            ) from None
        if tr.saved_step != tr.step:
            tr.save()
        self.comp.record(self, point)

    def _after_step(self, tr: Trainer) -> None:
        self.loss_sum += tr.last_loss
        self.loss_steps += 1
        # reading the loss syncs a GPU: there, only every 10 steps
        shown = tr.last_loss if tr.device.type != "cuda" or tr.step % 10 == 0 else None
        self.comp.progress.advance(self.name, tr.step, tr.wall_time, shown)

    def take_train_loss(self) -> float | None:
        """The mean training loss since the previous row (over ranks), then start anew."""
        if not self.loss_steps:
            return None
        mean = D.all_reduce_mean(self.loss_sum / self.loss_steps, self.comp.dist)
        self.loss_sum.zero_()
        self.loss_steps = 0
        return float(mean)

    def close(self) -> None:
        self.trainer = None


class CompareRun:
    """A whole comparison: the data (loaded once, shared by every trainer), the models'
    plan, the evaluation, the store and the terminal output."""

    def __init__(self, cfg: CompareConfig, dist: D.DistInfo):
        self.cfg = cfg
        self.dist = dist
        self.device = dist.device
        self.out = Path(cfg.out)
        self.budget = parse_budget(cfg.budget)
        dataset, info = build_dataset(cfg.recipe.data, cfg.recipe.image_size, LATENT_DOWNSAMPLE)
        self.split = split_heldout(
            cfg.recipe.data, cfg.heldout, cfg.heldout_images, cfg.recipe.image_size,
            cfg.recipe.seed, dataset, info,
        )  # fmt: skip
        self.info = self.split.info  # the training data's
        self.channels, self.downsample = model_input(self.info, cfg.recipe.vae)
        self.specs = plan_models(cfg, self.channels, self.downsample, self.info.num_classes)
        self.schedule_name = cfg.recipe.schedule or (
            "linear" if self.downsample == 1 else "scaled_linear"
        )
        if cfg.recipe.warmup is None:
            cfg.recipe.warmup = default_warmup(self.budget, self.specs, cfg.evals)
        self.schedule = NoiseSchedule(self.schedule_name)
        self.plan = plan_record(cfg, self.budget, self.specs, self.schedule_name)
        self.store = CompareStore(self.out)
        self.store.check_plan(self.plan)
        self.evaluator = PointEvaluator(
            cfg, dist, self.split, self.channels, self.downsample, self.schedule,
            self.info.num_classes or self._num_classes(),
        )  # fmt: skip
        existing = self.store.rows()
        # rank 0's view of what is done, so that every rank skips the same points
        base = cfg.recipe.seed
        self.done = D.broadcast_object({row_key(r, base) for r in existing}, dist)
        self.last_rows = {row_key(r, base)[:2]: r for r in existing}
        self.seeds = [base + i for i in range(cfg.seeds)]
        from dimbench.measure.metadata import run_metadata

        self.machine = run_metadata(str(self.device))
        self.console = make_console(dist.is_main)
        self.progress = CompareProgress(
            self.console, cfg.progress and dist.is_main, self.budget.unit == "seconds"
        )

    def _num_classes(self) -> int:
        s = self.specs[0]
        size, down = self.cfg.recipe.image_size, self.downsample
        return int(build_model(s.name, size, down, s.overrides, device="meta").num_classes)

    def write_meta(self, finished: bool) -> None:
        if not self.dist.is_main:
            return
        body = {
            "plan": self.plan,
            "models": [s.to_dict() for s in self.specs],
            "matching": match_summary(self.specs),
            **self.evaluator.describe(),
            "schedule": self.schedule_name,
            "warmup": self.cfg.recipe.warmup,
            "order": self.cfg.order,
        }
        run = {"command": self.cfg.command, "started": utc_now(), **self.machine}
        self.store.write_meta(body, run, finished)

    def record(self, run: ModelRun, point: Point) -> None:
        """Evaluate ``run``'s trainer at ``point`` and append the row (rank 0)."""
        tr, cfg, s = run.trainer, self.cfg, run.spec
        start = time.perf_counter()
        measured = self.evaluator.measure(tr, point.quality)
        train_loss = run.take_train_loss()
        if not self.dist.is_main:
            return
        row = {
            "model": s.name,
            "label": s.label,
            "family": s.family,
            "width": s.width,
            "depth": s.depth,
            "params": s.params,
            "gflops_per_image": s.gflops,
            "point": point.index,
            "budget_fraction": point.fraction,
            "step": tr.step,
            "images_seen": tr.samples_seen,
            "wall_seconds": tr.wall_time,
            "train_flops": s.train_flops_per_step * tr.step,
            "train_loss": train_loss,
            **measured,
            "eval_seconds": time.perf_counter() - start,
            "lr": getattr(tr, "last_lr", tr.optimizer.param_groups[0]["lr"]) if tr.step else 0.0,
            "batch_size": cfg.recipe.batch_size,
            "image_size": cfg.recipe.image_size,
            "budget": str(self.budget),
            "match": cfg.match,
            "seed": run.seed,
            "device": str(tr.device),
            "world_size": self.dist.world_size,
            "device_name": self.machine["device_name"],
            "threads": torch.get_num_threads(),
            "load_avg_1m": _load_avg(),
            "git_sha": self.machine["git_sha"],
            "torch_version": torch.__version__,
            "timestamp": utc_now(),
        }
        self.store.append(row)
        self.done.add(run.key(point))
        self.progress.report(row, run.name)

    def start(self) -> None:
        """Print the plan and record the run's start."""
        cfg = self.cfg
        header = (
            f"train-compare: {len(self.specs)} models x {cfg.seeds} seed(s), budget {self.budget}, "
            f"batch {cfg.recipe.batch_size}, {cfg.recipe.image_size} px, data {cfg.recipe.data}"
        )
        probe = self.evaluator.probe
        print_plan(self.console, header, match_summary(self.specs), probe.notes if probe else [])
        self.write_meta(finished=False)

    def finish(self) -> dict:
        """Record the run's end, print the summary; the paths, the rows (rank 0) and whether
        this is rank 0."""
        self.write_meta(finished=True)
        rows = self.store.rows() if self.dist.is_main else []
        if rows:
            print_summary_table(self.console, rows)
        D.barrier(self.dist)
        return {
            "out": str(self.out),
            "csv": str(self.store.csv),
            "meta": str(self.store.meta_path),
            "rows": rows,
            "is_main": self.dist.is_main,
        }

    def run(self) -> dict:
        """Train and evaluate every model (what is not done yet): ``start``, ``train``,
        ``finish``."""
        self.start()
        self.train()
        return self.finish()

    def train(self, only: str | None = None, seed: int | None = None) -> None:
        """Train every model (``only``: the one with this label) under every seed (``seed``:
        that one) to the end of the budget."""
        cfg = self.cfg
        specs = [spec for spec in self.specs if only is None or spec.label == only]
        seeds = [s for s in self.seeds if seed is None or s == seed]
        by_seed = [[ModelRun(self, spec, s) for spec in specs] for s in seeds]
        for runs in by_seed:
            for r in runs:
                self._add_bar(r)
        with self.progress:
            for runs in by_seed:
                if cfg.order == "interleaved":
                    for k in range(cfg.evals + 1):
                        for r in runs:
                            r.advance(r.points[k])
                else:
                    for r in runs:
                        for p in r.points:
                            r.advance(p)
                        r.close()
                for r in runs:
                    r.close()

    def _add_bar(self, r: ModelRun) -> None:
        seconds = self.budget.unit == "seconds"
        last = self.last_rows.get((r.spec.label, r.seed), {})
        step = int(last.get("step", 0))
        completed = float(last.get("wall_seconds", 0)) if seconds else step
        started = len(r.pending()) < len(r.points)
        total = self.budget.value if seconds else r.points[-1].steps
        self.progress.add(r.name, total, completed if started else 0, step)


def run_compare(cfg: CompareConfig, slots: list | None = None) -> dict:
    """Resolve the preset, then run (or resume) the comparison; torchrun-aware. ``slots``
    (``dimbench.pool.placement``'s, several): the models train at once, one per slot, each in a
    process of its own (``compare.parallel``)."""
    cfg = resolve(cfg)
    if not cfg.command:
        cfg.command = " ".join(["dimbench", *sys.argv[1:]])
    recipe = cfg.recipe
    dist = D.setup(recipe.device)
    check_backends(recipe.scan_backend, recipe.attn_backend, dist.device, recipe.conv_backend)
    lock = contextlib.nullcontext()
    if dist.is_main:  # the other ranks write under rank 0's lock
        lock = OutLock(writable_dir(cfg.out))
    try:
        with lock:
            comp = CompareRun(cfg, dist)
            if slots and len(slots) > 1:
                from dimbench.train.compare.parallel import train_on_slots

                comp.start()
                train_on_slots(comp, slots)
                return comp.finish()
            return comp.run()
    finally:
        D.cleanup()


def _load_avg() -> float | None:
    from dimbench.measure.metadata import load_average

    return load_average()
