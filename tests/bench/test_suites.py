"""Suites and their machinery: timing, memory, telemetry, metadata, sweep validation, the
per-configuration worker process, resume, and the `dimbench run` command. Tiny models only."""

from __future__ import annotations

import json
import os
import signal
import types

import pytest
import torch

from dimbench.bench.registry import get_suite
from dimbench.bench.spec import Config, Sweep
from dimbench.errors import UsageError
from dimbench.measure.memory import PeakMemory
from dimbench.measure.metadata import cpu_isa, machine_slug, run_metadata, slugify
from dimbench.measure.telemetry import CpuTelemetry, GpuTelemetry
from dimbench.measure.timing import Timing, make_clock, quantile, time_fn

# ----------------------------------------------------------------------------- timing


def test_quantiles_match_numpy():
    import numpy as np

    xs = [5.0, 1.0, 3.0, 10.0, 7.0, 2.0]
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert quantile(xs, q) == pytest.approx(np.quantile(xs, q))
    t = Timing(samples_ms=xs)
    assert t.median_ms == pytest.approx(4.0)
    assert t.iqr_ms == pytest.approx(np.quantile(xs, 0.75) - np.quantile(xs, 0.25))
    assert Timing(samples_ms=[3.0]).iqr_ms == 0.0


class FakeClock:
    """Each call 'takes' the next duration; records how often fn ran."""

    name = "fake"

    def __init__(self, durations):
        self.durations = list(durations)
        self.calls = 0

    def time(self, fn):
        fn()
        self.calls += 1
        return self.durations.pop(0)


def test_time_fn_warmup_repeats_and_budget():
    ran = []
    clock = FakeClock([100.0, 10.0, 11.0, 12.0, 13.0])
    t = time_fn(lambda: ran.append(1), warmup=1, repeats=4, clock=clock)
    assert t.warmup_ms == [100.0] and t.samples_ms == [10.0, 11.0, 12.0, 13.0]
    assert len(ran) == 5

    # 1 s budget, 600 ms per call: the second call is kept (min_repeats), no third
    clock = FakeClock([600.0] * 10)
    t = time_fn(lambda: None, warmup=0, repeats=10, budget_s=1.0, min_repeats=2, clock=clock)
    assert t.samples_ms == [600.0, 600.0] and clock.calls == 2

    # fast calls fill the repeats
    clock = FakeClock([1.0] * 10)
    t = time_fn(lambda: None, warmup=0, repeats=5, budget_s=1.0, clock=clock)
    assert len(t.samples_ms) == 5


def test_wall_clock_measures_time():
    import time

    t = time_fn(lambda: time.sleep(0.02), warmup=0, repeats=2, device="cpu")
    assert t.clock == "perf_counter" and 15 < t.median_ms < 500


def test_cuda_event_clock_synchronises_and_uses_events(fake_cuda_events):
    """The CUDA clock without a GPU: torch.cuda.Event and synchronize mocked."""
    log = fake_cuda_events
    clock = make_clock("cuda:0")
    assert clock.name == "cuda_events"
    ms = clock.time(lambda: log.append("work"))
    assert log == ["sync", "record", "work", "record", "event_sync"]
    assert ms == pytest.approx(2.5 * 2)


# ----------------------------------------------------------------------------- memory


def test_cpu_peak_memory_sees_an_allocation():
    with PeakMemory("cpu", sample_interval_s=0.001) as pm:
        x = torch.ones(64 * 1024 * 1024 // 4 * 3)  # 192 MB, touched
        x.add_(1)
        del x
    assert pm.result.peak_mb > 150, pm.result
    assert pm.result.reserved_mb is None and pm.result.idle_mb > 0


def test_cuda_peak_memory_reads_allocator_stats(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: 3 * 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d=None: 4 * 2**20)
    with PeakMemory("cuda:0") as pm:
        calls.append("work")
    assert calls == ["sync", "reset", "work", "sync"]
    assert pm.result.peak_mb == 3.0 and pm.result.reserved_mb == 4.0


# ----------------------------------------------------------------------------- telemetry


def fake_nvml(energy_mj=None, power_mw=200_000):
    """A stand-in for pynvml: a board drawing 200 W whose energy counter runs 10 J per read."""
    state = {"energy": energy_mj}

    class Err(Exception):
        pass

    def energy(h):
        if state["energy"] is None:
            raise Err("Not Supported")
        state["energy"] += 10_000
        return state["energy"]

    return types.SimpleNamespace(
        NVML_CLOCK_SM=1,
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: ("gpu", i),
        nvmlDeviceGetTotalEnergyConsumption=energy,
        nvmlDeviceGetPowerUsage=lambda h: power_mw,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=97, memory=40),
        nvmlDeviceGetClockInfo=lambda h, kind: 1980,
        nvmlDeviceGetTemperature=lambda h, kind: 61,
    )


def test_gpu_telemetry_energy_counter_and_samples():
    import time

    with GpuTelemetry("cuda:0", interval_s=0.005, nvml=fake_nvml(energy_mj=1_000_000)) as tel:
        time.sleep(0.03)
    s = tel.summary()
    assert s["energy_j"] == pytest.approx(10.0) and s["energy_source"] == "counter"
    assert s["gpu_power_w"] == pytest.approx(200.0) and s["gpu_util_pct"] == 97
    assert s["gpu_sm_clock_mhz"] == 1980 and s["gpu_temp_c"] == 61
    assert len(tel.samples) >= 3


def test_gpu_telemetry_integrates_power_without_counter():
    import time

    with GpuTelemetry("cuda:0", interval_s=0.005, nvml=fake_nvml(energy_mj=None)) as tel:
        time.sleep(0.05)
    energy, source = tel.energy_j()
    assert source == "power_integral"
    span = tel.samples[-1].t_s - tel.samples[0].t_s
    assert energy == pytest.approx(200.0 * span, rel=1e-6)


def test_gpu_telemetry_without_nvml_is_not_an_error():
    def fail():
        raise RuntimeError("NVML Shared Library Not Found")

    nvml = types.SimpleNamespace(nvmlInit=fail)
    with GpuTelemetry("cuda:0", nvml=nvml) as tel:
        pass
    assert not tel.available and tel.summary() == {} and "Not Found" in tel.error
    with GpuTelemetry("cuda:0") as tel:  # the real pynvml on a machine with or without a GPU
        pass
    assert isinstance(tel.summary(), dict)


def test_cpu_telemetry():
    import time

    with CpuTelemetry() as cpu:
        t0 = time.process_time()
        while time.process_time() - t0 < 0.1:  # 100 ms of this process's CPU time
            pass
    s = cpu.summary()
    assert 0 < s["cpu_util_pct"] <= 100 * 64 and 0 <= s["system_cpu_pct"] <= 100


# ----------------------------------------------------------------------------- metadata


def test_metadata_and_machine_slug():
    assert slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    slug = machine_slug("cpu")
    assert slug == slugify(slug) and slug.endswith("c")
    meta = run_metadata("cpu")
    assert meta["threads"] == torch.get_num_threads()
    assert meta["cpu_isa"] == cpu_isa() and (not cpu_isa() or f"-{cpu_isa()}-" in slug)
    assert meta["torch_version"] == torch.__version__ and meta["device_name"]


@pytest.mark.parametrize(
    "flags,isa",
    [
        ("fpu sse2 avx2 fma", "avx2"),  # AMD EPYC Zen 3
        ("avx2 avx512f avx512bw avx512_bf16", "avx512"),  # Zen 4: the same "AMD EPYC" name
        ("avx2 avx512f amx_bf16 amx_tile", "amx"),  # Sapphire Rapids
        ("fpu sse2", ""),
    ],
)
def test_cpus_of_one_name_and_another_vector_unit_get_their_own_folder(
    flags, isa, tmp_path, monkeypatch
):
    from dimbench.measure import metadata

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n")
    real = metadata.Path

    def fake_path(p, *rest):
        return info if str(p) == "/proc/cpuinfo" else real(p, *rest)

    monkeypatch.setattr(metadata, "Path", fake_path)
    metadata.cpu_isa.cache_clear()
    metadata.cpu_model.cache_clear()
    monkeypatch.setattr(metadata, "cpu_count", lambda: 2)
    try:
        assert metadata.cpu_isa() == isa
        assert metadata.machine_slug("cpu") == f"amd-epyc-{isa + '-' if isa else ''}2c"
    finally:
        metadata.cpu_isa.cache_clear()
        metadata.cpu_model.cache_clear()


# ----------------------------------------------------------------------------- sweep spec


def sweep(**kw) -> Sweep:
    kw.setdefault("suite", get_suite("throughput"))
    kw.setdefault("models", ["DiT-T/2"])
    kw.setdefault("resolutions", [32, 64])
    return Sweep(**kw)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(resolutions=[32, 40]), "resolution 40 is not a positive multiple of 16"),
        (dict(models=["DiT-T/2", "DiM-Z/9"]), "unknown model DiM-Z/9; valid: "),
        (dict(scan_backend="warp", models=["DiM-T/2"]), "unknown scan backend 'warp'"),
        (dict(attn_backend="fast"), "unknown attention backend 'fast'"),
        (dict(dtypes=["fp8"]), "unknown dtype 'fp8'"),
        (dict(modes=["infer"]), "unknown mode 'infer'"),
        (dict(models=["DiT-S/4"], resolutions=[48]), "DiT-S/4 needs resolutions divisible by 32"),
        (dict(omp_wait_policy="lazy"), "unknown OMP wait policy 'lazy'"),
    ],
)
def test_sweep_validation(kw, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        sweep(**kw).validate()


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(UsageError) as e:
        sweep(models=["Nope/2"]).validate()
    assert "DiT-T/2" in str(e.value) and "DiM-T/2" in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda_is_a_usage_error():
    with pytest.raises(UsageError, match="CUDA is not available"):
        sweep(device="cuda").validate()


def test_configs_resolve_backends_per_family():
    s = sweep(models=["DiM-T/2", "DiT-T/2"], dtypes=["fp32", "bf16"], modes=["forward"])
    cfgs = s.validate().configs()
    assert len(cfgs) == 2 * 2 * 2
    dim = [c for c in cfgs if c.model == "DiM-T/2"]
    dit = [c for c in cfgs if c.model == "DiT-T/2"]
    from dimbench.ops import scan_backends

    assert {c.scan_backend for c in dim} == {scan_backends("cpu")[0]}
    assert {c.attn_backend for c in dim} == {"-"}
    assert {c.attn_backend for c in dit} == {"sdpa"} and {c.scan_backend for c in dit} == {"-"}
    assert [c.image_size for c in dim[:2]] == [32, 64]
    assert Config.from_dict(json.loads(json.dumps(cfgs[0].to_dict()))) == cfgs[0]

    fl = sweep(suite=get_suite("flops"), dtypes=["fp32", "bf16"]).configs()
    assert len(fl) == 2 and {c.device for c in fl} == {"meta"}  # dtype does not count


def test_unknown_suite():
    with pytest.raises(UsageError, match="unknown suite 'speed'; valid: throughput"):
        get_suite("speed")


# ----------------------------------------------------------------------------- workloads


def test_workloads_forward_train_and_autocast():
    from dimbench.bench.workload import build_workload

    fwd = build_workload(Config("throughput", "DiT-T/2", 32, batch_size=2, dtype="bf16"))
    fwd.step()
    assert fwd.images_per_step == 2 and fwd.params_m > 0

    train = build_workload(Config("throughput", "U-ViT-T/2", 32, mode="train"))
    before = [p.detach().clone() for p in train.model.parameters()]
    train.step()
    changed = sum(
        not torch.equal(a, p.detach())
        for a, p in zip(before, train.model.parameters(), strict=True)
    )
    assert changed > len(before) // 2  # AdamW moved the weights
    assert all(p.grad is None for p in train.model.parameters())  # zero_grad(set_to_none)


def test_memory_suite_measures_in_process():
    result = get_suite("memory").measure(Config("memory", "DiT-T/2", 32))
    m = result["metrics"]
    assert m["peak_mem_mb"] >= 0 and m["params_m"] > 0 and m["peak_mem_reserved_mb"] is None
    assert result["raw"]["memory"]["method"] in ("ru_maxrss", "rss_sampling")


# ----------------------------------------------------------------------------- worker


def test_worker_classifies_oom_and_errors(monkeypatch):
    from dimbench.bench import worker

    def suite_raising(exc):
        return types.SimpleNamespace(measure=lambda cfg: (_ for _ in ()).throw(exc))

    cfg = Config("throughput", "DiT-T/2", 32).to_dict()
    monkeypatch.setattr(
        "dimbench.bench.registry.get_suite",
        lambda name: suite_raising(
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB")
        ),
    )
    r = worker.run(cfg)
    assert r["status"] == "oom" and "can't allocate" in r["error"] and r["meta"]["torch_version"]
    monkeypatch.setattr(
        "dimbench.bench.registry.get_suite", lambda name: suite_raising(ValueError("bad\nshape"))
    )
    r = worker.run(cfg)
    assert r["status"] == "error" and r["error"] == "ValueError: bad shape"


def test_dead_worker_classification():
    from dimbench.bench.processes import classify_death

    assert classify_death(-signal.SIGKILL, "")[0] == "oom"
    status, error = classify_death(-signal.SIGSEGV, "Fatal Python error")
    assert status == "error" and "SIGSEGV" in error and "Fatal" in error
    assert classify_death(1, "ImportError: x") == (
        "error",
        "worker exited with code 1: ImportError: x",
    )


def test_timeout_is_a_row():
    from dimbench.bench.runner import result_row, run_isolated

    cfg = Config("throughput", "DiT-T/2", 32, timeout_s=0.3)
    result = run_isolated(cfg)
    assert result["status"] == "timeout" and result["wall_s"] < 30
    row = result_row(cfg, result)
    assert row["status"] == "timeout" and "0.3 s" in row["error"] and row["family"] == "dit"


# ----------------------------------------------------------------------------- end to end


def cli(args: list[str]) -> int:
    """Run `dimbench ARGS` in this process; its exit code."""
    from dimbench.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_run_throughput_end_to_end_and_resume(tmp_path, capsys):
    """Two configurations of one cell, each model in its own worker, in paired rounds; rows,
    intervals, raw samples, ratios.csv, resume, CLI parsing."""
    from dimbench.results import ResultStore

    out = tmp_path / "res"
    args = ["run", "throughput", "--res", "32", "--models", "DiM-T/2", "U-ViT-T/2"]
    args += ["--repeats", "3", "--warmup", "1", "--threads", "1", "--out", str(out)]
    assert cli(args) == 0
    rows = ResultStore(out, get_suite("throughput").schema).rows()
    assert [(r["model"], r["status"]) for r in rows] == [("DiM-T/2", "ok"), ("U-ViT-T/2", "ok")]
    dim, uvit = rows
    from dimbench.ops import scan_backends

    assert dim["scan_backend"] == scan_backends("cpu")[0] and dim["attn_backend"] == "-"
    assert uvit["attn_backend"] == "sdpa" and uvit["tokens"] == "4"
    for r in rows:
        lat = float(r["latency_ms"])
        assert float(r["imgs_per_s"]) == pytest.approx(1e3 / lat, rel=1e-4)
        assert float(r["sample_latency_s"]) == pytest.approx(50 * 2 * lat / 1e3, rel=1e-4)
        assert r["threads"] == "1" and r["torch_version"] == torch.__version__
        assert r["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY", "passive").upper()
        assert r["device_name"] and r["repeats"] == "3" and float(r["peak_mem_mb"]) >= 0
        assert r["paired"] == "true"
        assert float(r["latency_ms_ci_lo"]) <= lat <= float(r["latency_ms_ci_hi"])
        assert (
            float(r["imgs_per_s_ci_lo"]) <= float(r["imgs_per_s"]) <= float(r["imgs_per_s_ci_hi"])
        )
    raw = [json.loads(x) for x in (out / "throughput.samples.jsonl").read_text().splitlines()]
    assert len(raw[0]["timing"]["samples_ms"]) == 3 and len(raw[0]["timing"]["warmup_ms"]) == 1
    assert raw[0]["cell"]["id"] == raw[1]["cell"]["id"] and raw[0]["cell"]["rounds"] == 3
    ratios = (out / "ratios.csv").read_text().splitlines()
    assert len(ratios) == 2 and ratios[1].startswith("DiM-T/2,U-ViT-T/2,32,1,fp32,forward,cpu,")
    assert ratios[1].endswith(",3,true")
    printed = capsys.readouterr().out
    assert "DiM-T/2" in printed and "U-ViT-T/2" in printed  # the summary table

    # a rerun into the same folder measures nothing new
    assert cli(args) == 0
    assert len(ResultStore(out, get_suite("throughput").schema).rows()) == 2
    assert "2 of 2 configurations already in" in capsys.readouterr().err


def test_run_flops_in_process(tmp_path):
    from dimbench.results import load_results

    args = ["run", "flops", "--res", "32", "64", "--models", "DiM-T/2", "DiT-T/2"]
    assert cli([*args, "--out", str(tmp_path)]) == 0
    df = load_results(tmp_path)
    assert len(df) == 4 and set(df["status"]) == {"ok"}
    assert df["gflops"].tolist() == pytest.approx((2 * df["gmacs"]).tolist(), rel=1e-6)
    assert (df["device"] == "meta").all()
    dit = df[df["model"] == "DiT-T/2"].set_index("image_size")
    assert dit.loc[64, "gflops"] > 4 * dit.loc[32, "gflops"] * 0.9  # grows with tokens

    from dimbench.results import ResultStore

    # repeated --res works like the space-separated form; --redo measures again
    args = ["run", "flops", "--res", "32", "--res", "64", "--models", "DiT-T/2", "--redo"]
    assert cli([*args, "--out", str(tmp_path)]) == 0
    assert len(ResultStore(tmp_path, get_suite("flops").schema).rows()) == 6
    assert len(load_results(tmp_path)) == 4  # the new rows supersede the old


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "throughput", "--res", "250"], "resolution 250 is not a positive multiple"),
        (["run", "flops", "--models", "DiM-Q/2"], "unknown model DiM-Q/2; valid:"),
        (["run", "sprint"], "unknown suite 'sprint'"),
        (["run", "memory", "--models", "DiT-T/2", "--attn-backend", "x"], "unknown attention"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(argv, message, capsys, tmp_path):
    assert cli([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize(
    "model, dtype, mode", [("DiT-T/2", "bf16", "forward"), ("DiM-T/2", "fp32", "train")]
)
def test_cuda_throughput_in_process(model, dtype, mode):
    cfg = Config("throughput", model, 64, batch_size=2, device="cuda", dtype=dtype, mode=mode)
    cfg = Config.from_dict({**cfg.to_dict(), "repeats": 5, "budget_s": 5.0})
    result = get_suite("throughput").measure(cfg)
    m, raw = result["metrics"], result["raw"]
    assert raw["timing"]["clock"] == "cuda_events" and m["repeats"] == 5
    assert m["latency_ms"] > 0 and m["imgs_per_s"] == pytest.approx(2e3 / m["latency_ms"])
    assert 0 < m["peak_mem_mb"] <= m["peak_mem_reserved_mb"]
    if raw["telemetry"]["nvml_error"] is None:  # NVML present: power, clocks, energy
        assert m["gpu_power_w"] > 0 and m["gpu_sm_clock_mhz"] > 0 and m["energy_j_per_img"] > 0


@pytest.mark.cuda
def test_cuda_sweep_end_to_end(tmp_path):
    from dimbench.results import ResultStore

    args = ["run", "throughput", "--device", "cuda", "--res", "64", "128"]
    args += [
        "--models",
        "DiM-T/2",
        "DiT-T/2",
        "U-ViT-T/2",
        "--dtype",
        "bf16",
        "--out",
        str(tmp_path),
    ]
    assert cli(args) == 0
    assert cli(["run", "memory", *args[2:]]) == 0
    stores = [ResultStore(tmp_path, get_suite(s).schema) for s in ("throughput", "memory")]
    rows = [r for store in stores for r in store.rows()]
    assert len(rows) == 12 and {r["status"] for r in rows} == {"ok"}
    assert all(r["device_name"] and r["cuda_version"] for r in rows)
    assert all(float(r["peak_mem_reserved_mb"]) >= float(r["peak_mem_mb"]) > 0 for r in rows)
