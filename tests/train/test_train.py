"""Trainer, checkpoints, resume, weak-to-strong, torchrun, data, and the train/sample CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dimbench.diffusion.losses import training_losses
from dimbench.diffusion.schedule import NoiseSchedule
from dimbench.errors import UsageError
from dimbench.registry import create_model
from dimbench.train.build import build_model
from dimbench.train.checkpoint import (
    CheckpointError,
    atomic_save,
    check_compatible,
    load_checkpoint,
)
from dimbench.train.config import TrainConfig
from dimbench.train.data import (
    LatentData,
    PhotoCrops,
    SampleStream,
    StepBatches,
    build_dataset,
    load_latent_arrays,
)
from dimbench.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    base = dict(
        model="DiM-T/2",
        data="photos",
        image_size=8,
        steps=6,
        batch_size=4,
        out=str(tmp_path / name),
        lr=1e-3,
        warmup=2,
        log_every=1,
        ckpt_every=3,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def read_log(out: str | Path) -> list[dict]:
    with (Path(out) / "log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# ---- learning -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,loss", [("DiM-T/2", "mse"), ("DiT-T/2", "hybrid")])
def test_overfits_a_fixed_batch(name, loss):
    torch.manual_seed(0)
    model = create_model(name, 8, downsample=1, in_channels=3)
    schedule = NoiseSchedule("scaled_linear" if name.startswith("DiM") else "linear")
    photos = PhotoCrops(8)
    x = torch.stack([photos[(i, i)][0] for i in range(4)])
    y = torch.arange(4)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (4,), generator=g)
    noise = torch.randn(x.shape, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss_value = training_losses(model, x, y, schedule, t, noise, loss).mean()
        opt.zero_grad()
        loss_value.backward()
        opt.step()
        losses.append(loss_value.item())
    assert losses[-1] < 0.3 * losses[0], losses


@pytest.mark.parametrize("name", ["DiM-T/2", "DiT-T/2"])
def test_trainer_learns_on_the_photos(tmp_path, name):
    cfg = config(tmp_path, model=name, steps=40, batch_size=8, log_every=10, ckpt_every=40)
    summary = Trainer(cfg).fit()
    rows = read_log(cfg.out)
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < 0.8 * first, (first, last)
    assert summary["steps"] == 40 and int(rows[-1]["images_seen"]) == 320
    if rows[-1]["flops"]:
        assert int(rows[-1]["flops"]) == 4 * int(rows[0]["flops"]) > 0


# ---- checkpoints, resume, weak-to-strong -------------------------------------------------


def test_labels_are_dropped_once_dit_embedder_dropout_is_off():
    """The trainer drops labels itself; DiT's own in-forward dropout would drop them again."""
    model = build_model("DiT-T/2", 32, 8, {})
    assert model.y_embedder.dropout_prob == 0.0
    assert model.y_embedder.embedding_table.num_embeddings == model.num_classes + 1  # null row
    model.train()
    y = torch.arange(64) % model.num_classes
    assert torch.equal(model.y_embedder(y, train=True), model.y_embedder.embedding_table(y))


def test_resume_is_bitwise_identical(tmp_path):
    straight = Trainer(config(tmp_path, "straight"))
    straight.fit()
    # the same run, "killed" after step 5: the last checkpoint is at step 3
    Trainer(config(tmp_path, "resumed")).fit(until=5)
    assert load_checkpoint(tmp_path / "resumed")["step"] == 3
    resumed = Trainer(config(tmp_path, "resumed", resume=True))
    assert resumed.step == 3
    resumed.fit()
    a, b = straight.state_dict(), resumed.state_dict()
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in opt_a:
        assert torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"])
    assert a["scheduler"] == b["scheduler"] and a["samples_seen"] == b["samples_seen"]
    # the log continues from the checkpoint: steps 4-5 of the killed run were rewritten
    log_a, log_b = read_log(tmp_path / "straight"), read_log(tmp_path / "resumed")
    assert [r["step"] for r in log_b] == [str(s) for s in range(1, 7)]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]


def test_fit_in_slices_follows_one_call_bit_for_bit(tmp_path):
    """fit(until=k) called again and again (train-compare's evaluation points) trains, logs
    and checkpoints as one fit() does; a slice that ends early writes no checkpoint."""
    straight = Trainer(config(tmp_path, "straight", log_every=2))
    straight.fit()
    sliced = Trainer(config(tmp_path, "sliced", log_every=2))
    seen = []
    for until in (1, 1, 4, 5, None):
        summary = sliced.fit(until=until, on_step=lambda t: seen.append(float(t.last_loss)))
        assert summary["steps"] == sliced.step == (until or 6)
        if until == 4:
            assert sliced.saved_step == 3  # ckpt_every=3: the trainer's own, not the slice's
    assert len(seen) == 6
    for key in ("model", "ema"):
        a, b = straight.state_dict()[key], sliced.state_dict()[key]
        assert all(torch.equal(a[n], b[n]) for n in a), key
    log_a, log_b = read_log(tmp_path / "straight"), read_log(tmp_path / "sliced")
    assert [(r["step"], r["loss"]) for r in log_a] == [(r["step"], r["loss"]) for r in log_b]
    assert [r["step"] for r in log_b] == ["2", "4", "6"]


def test_fit_stops_when_its_training_seconds_are_spent(tmp_path, monkeypatch):
    trainer = Trainer(config(tmp_path, "timed", steps=50, ckpt_every=1))
    # checkpoints are not training time: two slow saves, and the clock barely moves
    save = Trainer.save

    def slow_save(self):
        time.sleep(1.0)
        return save(self)

    monkeypatch.setattr(Trainer, "save", slow_save)
    trainer.fit(until=2)
    assert trainer.step == 2 and trainer.saved_step == 2 and trainer.wall_time < 1.5
    monkeypatch.setattr(Trainer, "save", save)
    trainer.fit(seconds=trainer.wall_time + 1e-9)  # at most one more step
    assert trainer.step == 3
    trainer.fit(seconds=trainer.wall_time)  # spent already: nothing to do
    assert trainer.step == 3


def test_trainer_takes_a_dataset_it_is_given(tmp_path, monkeypatch):
    """A caller that has the data loaded (train-compare) passes it: no second copy is read."""
    import dimbench.train.trainer as trainer_module

    dataset, info = build_dataset("photos", 8)

    def no_second_copy(*args, **kwargs):
        raise AssertionError("the trainer read its data again")

    monkeypatch.setattr(trainer_module, "build_dataset", no_second_copy)
    trainer = Trainer(
        config(tmp_path, steps=2), data=(dataset, info), context={"caller": {"why": "test"}}
    )
    assert trainer.dataset is dataset and trainer.data_info is info
    trainer.fit()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["caller"] == {"why": "test"} and saved["model"] == "DiM-T/2"


def test_resume_refuses_another_model_or_setting(tmp_path):
    Trainer(config(tmp_path, steps=1, ckpt_every=1)).fit()
    with pytest.raises(UsageError, match="already holds a checkpoint"):
        Trainer(config(tmp_path, steps=2))
    with pytest.raises(UsageError, match="model='DiT-T/2'"):
        Trainer(config(tmp_path, model="DiT-T/2", resume=True))
    with pytest.raises(UsageError, match="image_size=16"):
        Trainer(config(tmp_path, image_size=16, resume=True))
    with pytest.raises(UsageError, match="no checkpoint"):
        Trainer(config(tmp_path, "empty", resume=True))
    # the architecture check behind it, as sampling and --init-from use it
    meta = load_checkpoint(tmp_path / "run")["meta"]
    with pytest.raises(CheckpointError, match="--init-from"):
        check_compatible(meta, {**meta, "image_size": [16, 16]}, "ckpt")
    check_compatible(meta, {**meta, "image_size": [16, 16]}, "ckpt", allow_resize=True)
    with pytest.raises(CheckpointError, match="in_channels"):
        check_compatible(meta, {**meta, "in_channels": 4}, "ckpt", allow_resize=True)
    # weights written before a model's definition changed: one clear error, not a traceback
    from dimbench.train.generate import load_for_sampling

    ckpt = load_checkpoint(tmp_path / "run")
    ckpt["ema"].pop(next(iter(ckpt["ema"])))
    atomic_save(ckpt, tmp_path / "stale.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_for_sampling(tmp_path / "stale.pt")


def test_weak_to_strong_initialises_a_higher_resolution_model(tmp_path):
    low = Trainer(config(tmp_path, "low", steps=2, ckpt_every=2))
    low.fit()
    src = load_checkpoint(tmp_path / "low")
    high = Trainer(
        config(tmp_path, "high", image_size=16, steps=1, init_from=str(tmp_path / "low"))
    )
    sd = high.model.state_dict()
    assert sd["pos_embed"].shape != src["ema"]["pos_embed"].shape  # resized 4x4 -> 8x8 grid
    for name, value in src["ema"].items():
        if name != "pos_embed":
            assert torch.equal(sd[name], value), name
    assert high.step == 0
    high.fit()
    assert load_checkpoint(tmp_path / "high")["meta"]["image_size"] == [16, 16]
    with pytest.raises(CheckpointError, match="model"):
        Trainer(config(tmp_path, "x", model="DiT-T/2", init_from=str(tmp_path / "low")))


def test_atomic_save_never_leaves_a_half_written_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"v": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"v": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# ---- distributed ----------------------------------------------------------------------------


def test_torchrun_two_processes_match_one(tmp_path):
    args = ["--model", "DiM-T/2", "--data", "photos", "--image-size", "8", "--steps", "3"]
    args += ["--batch-size", "4", "--lr", "1e-3", "--warmup", "1", "--log-every", "1"]
    args += ["--no-progress"]
    ddp_out, samples_ddp = tmp_path / "ddp", tmp_path / "samples_ddp"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    sample_args = ["--num-samples", "3", "--batch-size", "1", "--steps", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd in (
        [*launch, "-m", "dimbench.cli", "train", *args, "--out", str(ddp_out)],
        [*launch, "-m", "dimbench.cli", "sample", "--ckpt", str(ddp_out), "--out", str(samples_ddp)]
        + sample_args,
    ):
        proc = subprocess.run(
            cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    single = Trainer(config(tmp_path, "single", steps=3, batch_size=4, warmup=1, ckpt_every=3))
    single.fit()
    ddp = load_checkpoint(ddp_out)
    assert ddp["meta"]["config"]["batch_size"] == 4
    for name, value in single.model.state_dict().items():
        assert torch.allclose(ddp["model"][name], value, atol=1e-5, rtol=1e-4), name
    losses_1 = [float(r["loss"]) for r in read_log(single.out)]
    losses_2 = [float(r["loss"]) for r in read_log(ddp_out)]
    assert np.allclose(losses_1, losses_2, rtol=1e-4)

    # sharded sampling: each rank drew its batches, rank 0 merged them in order
    from dimbench.train.generate import generate

    merged = np.load(samples_ddp / "samples.npz")
    assert merged["arr_0"].shape == (3, 8, 8, 3)
    local = generate(ddp_out, tmp_path / "samples_1", num=3, batch_size=1, steps=2, progress=False)
    assert local["world_size"] == 1
    again = np.load(tmp_path / "samples_1" / "samples.npz")
    assert np.abs(again["arr_0"].astype(int) - merged["arr_0"].astype(int)).max() <= 1
    assert np.array_equal(again["labels"], merged["labels"])


# ---- CLI ------------------------------------------------------------------------------------


def cli(*argv: str) -> int:
    from dimbench.cli import main

    try:
        main(list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_cli_train_then_sample_with_upsampling(tmp_path, capsys):
    out = tmp_path / "run"
    train = ["train", "--model", "DiT-T/2", "--image-size", "8", "--steps", "2"]
    train += ["--batch-size", "4", "--out", str(out), "--no-progress", "--ckpt-every", "1"]
    assert cli(*train) == 0
    assert cli(*train) == 2  # an existing run without --resume
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dimbench: error:")
    assert cli(*train[:-1], "5", "--resume") == 0
    assert load_checkpoint(out)["step"] == 2  # --ckpt-every 5 > steps: only the final one

    samples = tmp_path / "samples"
    sample = ["sample", "--ckpt", str(out / "checkpoint.pt"), "--num", "3", "--steps", "3"]
    sample += ["--cfg-scale", "0.4", "--upsample", "2", "--out", str(samples), "--no-progress"]
    assert cli(*sample) == 0
    npz = np.load(samples / "samples.npz")
    assert npz["arr_0"].shape == (3, 16, 16, 3) and npz["arr_0"].dtype == np.uint8
    assert sorted(p.name for p in samples.glob("0*.png")) == [f"{i:06d}.png" for i in range(3)]
    assert (samples / "grid.png").exists() and (samples / "samples.json").exists()

    for bad in (["--upsample", "4"], ["--sampler", "euler"], ["--ckpt", str(tmp_path)]):
        args = sample + bad if bad[0] != "--ckpt" else ["sample", *bad, "--out", str(samples)]
        assert cli(*args) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_rejects_unknown_model_and_bad_data(tmp_path, capsys):
    base = ["train", "--image-size", "8", "--steps", "1", "--batch-size", "2", "--no-progress"]
    assert cli(*base, "--model", "DiM-X/9", "--out", str(tmp_path / "a")) == 2
    assert "unknown model" in capsys.readouterr().err
    assert cli(*base, "--model", "DiT-T/2", "--data", str(tmp_path / "nope"), "--out", "b") == 2
    assert "no such file" in capsys.readouterr().err


# ---- data -----------------------------------------------------------------------------------


def test_sample_stream_is_seeded_and_shards_the_global_batch():
    stream = SampleStream(10, seed=3)
    keys = stream.keys(0, 25)
    assert sorted(k[0] for k in keys[:10]) == list(range(10))  # each epoch is a permutation
    assert [k[0] for k in keys[:10]] != [k[0] for k in keys[10:20]]  # reshuffled per epoch
    assert SampleStream(10, seed=3).keys(7, 10) == keys[7:17]  # any position, any time
    assert SampleStream(10, seed=4).keys(0, 10) != keys[:10]
    one = list(StepBatches(stream, 4, 6, rank=0, world=1, steps=2))
    two = [list(StepBatches(stream, 4, 6, rank=r, world=2, steps=2)) for r in (0, 1)]
    for step in range(2):
        assert two[0][step] + two[1][step] == one[step]


def test_photo_crops_are_deterministic_per_key():
    ds, info = build_dataset("photos", 16)
    assert info.channels == 3 and info.num_classes == len(ds.names) >= 10 and not info.latent
    x, label = ds[(13, 99)]
    assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1
    assert torch.equal(ds[(13, 99)][0], x) and label == 13 % info.num_classes
    assert not torch.equal(ds[(13, 98)][0], x)


def test_latent_files(tmp_path):
    lat = np.random.default_rng(0).normal(size=(5, 4, 2, 2)).astype(np.float32)
    np.savez(tmp_path / "lat.npz", latents=lat, labels=np.arange(5))
    ds, info = build_dataset(str(tmp_path / "lat.npz"), 16)
    assert info.latent and info.channels == 4 and info.num_classes == 5
    assert torch.equal(ds[(2, 0)][0], torch.from_numpy(lat[2])) and ds[(2, 0)][1] == 2
    with pytest.raises(UsageError, match="needs 4x4"):
        build_dataset(str(tmp_path / "lat.npz"), 32)
    # U-ViT's layout: (moments, label) pairs, moments = mean and log-variance (8 channels)
    moments = np.concatenate([lat, np.full_like(lat, -60.0)], axis=1)
    pairs = np.empty(5, dtype=object)
    for i in range(5):
        pairs[i] = (moments[i], i % 2)
    np.save(tmp_path / "pairs.npy", pairs, allow_pickle=True)
    arrays, labels = load_latent_arrays(tmp_path / "pairs.npy")
    ds = LatentData(arrays, labels)
    assert ds.channels == 4 and list(labels) == [0, 1, 0, 1, 0]
    z, _ = ds[(1, 7)]  # the variance is ~0: the sample is the scaled mean
    assert torch.allclose(z, torch.from_numpy(lat[1]) * 0.18215, atol=1e-6)
    folder = tmp_path / "features"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"{i}.npy", np.array((moments[i], 7), dtype=object), allow_pickle=True)
    ds, info = build_dataset(str(folder), 16)
    assert info.channels == 4 and len(ds) == 3 and ds[(0, 0)][1] == 7


def test_image_folder(tmp_path):
    from PIL import Image

    for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 12), color).save(tmp_path / cls / f"{i}.png")
    ds, info = build_dataset(str(tmp_path), 8)
    assert info.kind == "folder" and info.num_classes == 2 and len(ds) == 4
    x, label = ds[(3, 0)]
    assert x.shape == (3, 8, 8) and label == 1 and x[2].mean() > 0.9  # blue dog


def test_vae_without_diffusers_is_a_one_line_error(tmp_path):
    pytest.importorskip("PIL")
    try:
        import diffusers  # noqa: F401

        pytest.skip("diffusers is installed")
    except ImportError:
        pass
    from dimbench.train.vae import load_vae

    with pytest.raises(UsageError, match="diffusers"):
        load_vae(tmp_path, torch.device("cpu"))


# ---- interruptions and damaged checkpoints --------------------------------------------------


def test_default_checkpoints_every_tenth_of_the_run_and_by_time(tmp_path):
    cfg = config(tmp_path, "tenth", steps=20, ckpt_every=None)
    assert cfg.checkpoint_interval() == 2
    Trainer(cfg).fit(until=5)  # "killed" after step 5
    assert load_checkpoint(tmp_path / "tenth")["step"] == 4
    # every few microseconds of training: a checkpoint after every step
    Trainer(config(tmp_path, "timed", ckpt_every=1000, ckpt_minutes=1e-9)).fit(until=3)
    assert load_checkpoint(tmp_path / "timed")["step"] == 3


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_resume_is_bitwise(tmp_path, signum, code):
    from dimbench.errors import Interrupted

    straight = Trainer(config(tmp_path, "straight", log_every=2, ckpt_every=100))
    straight.fit()

    def interrupt_at_step_3(trainer):
        if trainer.step == 3:
            os.kill(os.getpid(), signum)

    with pytest.raises(Interrupted, match="at step 3 of 6") as e:
        Trainer(config(tmp_path, "stopped", log_every=2, ckpt_every=100)).fit(
            on_step=interrupt_at_step_3
        )
    assert e.value.exit_code == code
    assert signal.getsignal(signum) is not None  # the handlers are put back
    assert load_checkpoint(tmp_path / "stopped")["step"] == 3
    resumed = Trainer(config(tmp_path, "stopped", log_every=2, ckpt_every=100, resume=True))
    resumed.fit()
    for key in ("model", "ema"):
        a, b = straight.state_dict()[key], resumed.state_dict()[key]
        assert all(torch.equal(a[n], b[n]) for n in a), key
    # the log row at step 4 averages steps 3 and 4 as in the uninterrupted run
    log_a, log_b = read_log(tmp_path / "straight"), read_log(tmp_path / "stopped")
    assert [(r["step"], r["loss"]) for r in log_a] == [(r["step"], r["loss"]) for r in log_b]


def test_stale_temp_files_of_killed_saves_are_removed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a save")
    Trainer(config(tmp_path, "run", steps=1))
    assert not stale.exists()


def test_damaged_or_foreign_checkpoints_are_one_line_errors(tmp_path):
    Trainer(config(tmp_path, "run", steps=1)).fit()
    good = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    cases = {
        "truncated.pt": (good[: len(good) // 2], "is truncated"),
        "foreign.pt": (None, "is not a dimbench checkpoint"),
        "log.csv": (b"step,loss\n1,0.5\n", "is not a checkpoint"),
    }
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    for name, (data, message) in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=message) as e:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(e.value)
    # a truncated checkpoint in a run folder is named as such, not "pass --resume"
    (tmp_path / "run" / "checkpoint.pt").write_bytes(good[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        Trainer(config(tmp_path, "run", steps=1))
    with pytest.raises(CheckpointError, match="truncated"):
        Trainer(config(tmp_path, "run", steps=1, resume=True))


def test_ema_warms_up_by_default_and_sampling_warns_about_a_cold_one(tmp_path):
    from dimbench.train.ema import early_share
    from dimbench.train.generate import describe_weights

    assert config(tmp_path).with_defaults().ema_warmup is True
    # updates 1-30 keep every later decay: 0.9999^270
    assert early_share(0.9999, False, 300) == pytest.approx(0.9999**270, rel=1e-9)
    assert early_share(0.9999, True, 300) < 1e-3
    cold = {"trained_steps": 300, "config": {"ema_decay": 0.9999, "ema_warmup": False}}
    text, warning = describe_weights(cold, "ema")
    assert (
        "no warm-up, 300 updates" in text and "97%" in warning and "--ckpt-weights model" in warning
    )
    warm = {"trained_steps": 300, "config": {"ema_decay": 0.9999, "ema_warmup": True}}
    assert describe_weights(warm, "ema")[1] is None
    assert describe_weights(cold, "model") == ("raw weights after 300 steps", None)


def test_lag1_autocorrelation_tells_noise_from_pictures():
    from skimage import data

    from dimbench.metrics.structure import lag1_autocorrelation

    noise = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    assert abs(lag1_autocorrelation(noise)) < 0.05
    assert lag1_autocorrelation(data.astronaut()[None, ::8, ::8]) > 0.7
    assert lag1_autocorrelation(np.zeros((2, 4, 4, 3))) == 0.0


def test_image_folder_with_a_file_that_is_not_an_image_is_one_line_and_writes_nothing(
    tmp_path, capsys
):
    from PIL import Image

    data = tmp_path / "data"
    for cls in ("cat", "dog"):
        (data / cls).mkdir(parents=True)
        Image.new("RGB", (12, 12), (200, 10, 10)).save(data / cls / "0.png")
    (data / "dog" / "notes.png").write_text("not a picture\n")
    out = tmp_path / "run"
    args = ["train", "--model", "DiT-T/2", "--data", str(data), "--image-size", "8"]
    assert cli(*args, "--steps", "1", "--batch-size", "2", "--out", str(out), "--no-progress") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.png is not a readable image" in err[0], err
    assert not out.exists()  # nothing written to --out before the data is checked


def test_the_label_table_follows_the_data_unless_given(tmp_path):
    """`--data photos` has 10 classes: the model gets 10 (+1 null) labels, not ImageNet's 1000;
    a run resumed or initialised from weights keeps the weights' table; an override wins."""
    run = Trainer(config(tmp_path, "uvit", model="U-ViT-T/2", steps=1, ckpt_every=1))
    assert run.data_info.num_classes == 10 and run.model.num_classes == 10
    run.fit()
    assert load_checkpoint(tmp_path / "uvit")["meta"]["num_classes"] == 10
    given = Trainer(config(tmp_path, "given", steps=1, extra={"num_classes": 1000}))
    assert given.model.num_classes == 1000
    given.fit()
    # a checkpoint written before the table followed the data: its config names no classes
    ckpt = load_checkpoint(tmp_path / "given")
    ckpt["meta"]["config"]["extra"] = {}
    ckpt["meta"]["model_overrides"].pop("num_classes", None)
    torch.save(ckpt, tmp_path / "given" / "checkpoint.pt")
    resumed = Trainer(config(tmp_path, "given", steps=2, resume=True))
    assert resumed.model.num_classes == 1000 and resumed.step == 1
    warm = Trainer(config(tmp_path, "warm", image_size=16, init_from=str(tmp_path / "given")))
    assert warm.model.num_classes == 1000
