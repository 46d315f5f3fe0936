"""Configuration by composition: a Config carries its Sweep's settings (declared once, in
Settings), its key fields are results.KEY_COLUMNS, and suite options travel in it."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from dimbench.bench.registry import get_suite
from dimbench.bench.spec import Config, Settings, Sweep
from dimbench.results import KEY_COLUMNS


def test_a_config_carries_every_setting_of_its_sweep():
    settings = dict(
        warmup=2, repeats=5, min_rounds=2, budget_s=1.5, timeout_s=9.0, sample_steps=7, threads=1,
        omp_wait_policy="passive", suite_options={"trace_dir": "/tmp/t"},
    )  # fmt: skip
    assert set(settings) | {"device", "compile", "weights"} == {f.name for f in fields(Settings)}
    sweep = Sweep(suite=get_suite("throughput"), models=["DiT-T/2"], resolutions=[32], **settings)
    sweep = sweep.validate()
    (cfg,) = sweep.configs()
    assert cfg.settings() == sweep.settings() and cfg.option("trace_dir") == "/tmp/t"
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # to the worker
    # declared once: the two classes share no field beyond Settings but the requested /
    # resolved backends and the suite (a Suite in a sweep, its name in a config)
    own = {f.name for f in fields(Sweep)} & {f.name for f in fields(Config)}
    assert own - {f.name for f in fields(Settings)} == {
        "suite", "scan_backend", "attn_backend", "conv_backend",
    }  # fmt: skip


def test_key_fields_are_the_key_columns():
    cfg = Config("throughput", "DiT-T/2", 32, suite_options={"device_profile": "x.json"})
    assert tuple(cfg.key_fields()) == KEY_COLUMNS
    assert set(KEY_COLUMNS) <= {f.name for f in fields(Config)}
    # suite options are not part of a measurement's identity
    assert cfg.key_fields() == Config("throughput", "DiT-T/2", 32).key_fields()
    assert hash(cfg) == hash(Config("throughput", "DiT-T/2", 32))


def test_validate_resolves_auto_and_leaves_the_sweep_as_it_was():
    sweep = Sweep(suite=get_suite("flops"), models=["DiT-T/2"], resolutions=[32], device="auto")
    checked = sweep.validate()
    assert sweep.device == "auto" and checked.device in ("cpu", "cuda")


def test_the_profile_suite_reads_its_options_from_the_config():
    from dimbench.bench.suites.profile import PROFILE_OPTION, find_device_profile
    from dimbench.measure import device_profile as dp

    datasheet = (
        Path(__file__).resolve().parents[2] / "results/device_profiles/h100-sxm-datasheet.json"
    )
    cfg = Config("profile", "DiT-T/2", 32, suite_options={PROFILE_OPTION: str(datasheet)})
    assert find_device_profile(cfg).label == dp.load(datasheet).label
