"""What a comparison writes into ``--out`` and reads back to resume: ``train_compare.csv``
(one row per model, seed and evaluation point, columns ``COLUMNS``) and ``train_compare.json`` (the
plan that defines the results, model sizes, evaluation settings, one entry per run).

A rerun into the same folder must agree on the plan; it skips the (model, seed, point)
triples that have rows.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dimbench.errors import UsageError

if TYPE_CHECKING:
    from dimbench.train.compare.budget import Budget
    from dimbench.train.compare.config import CompareConfig
    from dimbench.train.compare.widths import PlannedModel

FORMAT = "dimbench-train-compare-1"
CSV_NAME = "train_compare.csv"
META_NAME = "train_compare.json"

COLUMNS: dict[str, str] = {
    "model": "registry name",
    "label": "name with the width and depth trained (w..., d...)",
    "family": "dim | dit | uvit (the model's registered family, lower case)",
    "width": "hidden width trained",
    "depth": "blocks (U-ViT: in + out blocks, the mid-block on top)",
    "params": "parameters",
    "gflops_per_image": "forward GFLOPs per image (2 per multiply-add, torch flop counter)",
    "point": "evaluation point: 0 = before training, then 1..evals over the budget",
    "budget_fraction": "point / evals",
    "step": "optimisation steps done",
    "images_seen": "training images seen (step x batch size)",
    "wall_seconds": "training wall time so far (data + steps; evaluation and checkpoints excluded)",
    "train_flops": "cumulative training FLOPs: step x (forward + backward FLOPs of one batch)",
    "train_loss": "mean training loss (epsilon MSE, label dropout) over the steps since the "
    "previous row (since the restart when a run resumed between points)",
    "heldout_loss": "held-out epsilon MSE, EMA weights, eval mode, true labels",
    "heldout_loss_raw": "the same with the raw (non-EMA) weights",
    "heldout_by_t": "held-out loss (EMA) per fixed timestep, JSON {t: loss}",
    "heldout_images": "held-out images (each at every timestep of the grid)",
    "fid": "FID of n_gen EMA samples against n_ref reference images (biased at small n)",
    "swd": "multi-scale sliced Wasserstein distance x1e3 (average over pyramid levels)",
    "n_gen": "generated samples behind fid / swd",
    "n_ref": "reference samples behind fid / swd",
    "sampler": "sampler of the quality samples (no guidance)",
    "sample_steps": "sampler steps",
    "eval_seconds": "time this row's evaluation took",
    "lr": "learning rate at the last step",
    "batch_size": "global batch size",
    "image_size": "image side in pixels",
    "budget": "the whole comparison's budget",
    "match": "--match mode (none | params | flops)",
    "seed": "seed of this run's data order, noise and initialisation (base seed + i of --seeds; "
    "the held-out set is the base seed's for every run)",
    "device": "device trained on",
    "world_size": "processes (torchrun ranks)",
    "device_name": "CPU or GPU model",
    "threads": "torch threads",
    "load_avg_1m": "1-minute load average when the row was written",
    "git_sha": "dimbench commit",
    "torch_version": "torch.__version__",
    "timestamp": "UTC time the row was written",
}


def row_seed(row: dict, base_seed: int = 0) -> int:
    """A row's seed (``base_seed`` for a row of an older CSV that has none)."""
    return int(row["seed"]) if row.get("seed") not in (None, "") else base_seed


def row_key(row: dict, base_seed: int = 0) -> tuple[str, int, int]:
    return row["label"], row_seed(row, base_seed), int(row["point"])


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict) -> None:
    """One row, whole, under ``flock`` on a lock file beside ``path``: the models of a
    ``--devices`` comparison append from processes of their own."""
    with path.with_name(f".{path.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        new = not path.is_file()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS))
        if new:
            w.writeheader()
        w.writerow({k: _cell(row.get(k)) for k in COLUMNS})
        with path.open("a", newline="") as f:
            f.write(buf.getvalue())


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.7g}"
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def plan_record(
    cfg: CompareConfig, budget: Budget, specs: list[PlannedModel], schedule: str
) -> dict:
    """What defines the results (JSON-normalised): a rerun into the same --out must agree on
    all of it."""
    plan = {
        "preset": cfg.preset,
        "models": [{"name": s.name, "overrides": s.overrides} for s in specs],
        "data": cfg.recipe.data,
        "image_size": cfg.recipe.image_size,
        "budget": {"text": str(cfg.budget), "unit": budget.unit, "value": budget.value},
        "match": cfg.match,
        "batch_size": cfg.recipe.batch_size,
        "seed": cfg.recipe.seed,
        "seeds": cfg.seeds,
        "evals": cfg.evals,
        "fid_every": cfg.fid_every,
        "heldout": {
            "images": cfg.heldout_images,
            "timesteps": cfg.heldout_timesteps,
            "folder": cfg.heldout,
        },
        "quality": {
            "metrics": list(cfg.metrics),
            "n_gen": cfg.fid_gen,
            "n_ref": cfg.fid_ref_count,
            "ref": cfg.fid_ref,
            "sampler": cfg.sampler,
            "steps": cfg.sample_steps,
            "inception_weights": cfg.inception_weights,
        },
        "objective": {"loss": "mse", "schedule": schedule},
        "recipe": {
            "optimizer": "AdamW",
            "lr": cfg.recipe.lr,
            "weight_decay": cfg.recipe.weight_decay,
            "betas": list(cfg.recipe.betas),
            "adam_eps": cfg.recipe.adam_eps,
            "warmup": cfg.recipe.warmup,
            "grad_clip": cfg.recipe.grad_clip,
            "ema_decay": cfg.recipe.ema_decay,
            "ema_warmup": cfg.recipe.ema_warmup,
            "label_dropout": cfg.recipe.label_dropout,
            "bf16": cfg.recipe.dtype == "bf16",  # the key of earlier records (resumable)
        },
        "vae": cfg.recipe.vae,
    }
    return json.loads(json.dumps(plan, default=str))


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``key: saved (now current)`` for every leaf where ``a`` (now) and ``b`` (saved) differ."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {vb!r} (now {va!r})")
    return out


class CompareStore:
    """The comparison's files in ``out``."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.csv = self.out / CSV_NAME
        self.meta_path = self.out / META_NAME

    def rows(self) -> list[dict]:
        return read_rows(self.csv)

    def append(self, row: dict) -> None:
        append_row(self.csv, row)

    def done(self, base_seed: int) -> set[tuple[str, int, int]]:
        """The (label, seed, point) triples that have rows: what a rerun skips (a row without a
        seed, from an older CSV, is the base seed's)."""
        return {row_key(r, base_seed) for r in self.rows()}

    def check_plan(self, plan: dict) -> None:
        """Refuse a folder that holds another comparison (or rows without their record)."""
        if not self.meta_path.is_file():
            if self.rows():
                raise UsageError(f"{self.csv} exists without {META_NAME}: choose another --out")
            return
        saved = json.loads(self.meta_path.read_text())
        if saved.get("format") != FORMAT:
            raise UsageError(f"{self.meta_path} is not a train-compare record")
        diffs = differences(plan, saved.get("plan", {}))
        if diffs:
            raise UsageError(
                f"{self.out} holds a comparison with other settings ({'; '.join(diffs[:4])}): "
                "rerun with the same settings to resume it, or choose another --out"
            )

    def write_meta(self, body: dict, run: dict, finished: bool) -> None:
        """``train_compare.json``: ``body`` (plan, models, evaluation settings) and the list of
        runs; a start appends ``run`` (command, start time, machine), a finish stamps the last."""
        saved = json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}
        runs = saved.get("runs", [])
        if not finished or not runs or runs[-1].get("finished"):
            runs.append(dict(run))
        if finished:
            runs[-1]["finished"] = utc_now()
        meta = {"format": FORMAT, **body, "runs": runs}
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
        tmp.replace(self.meta_path)
