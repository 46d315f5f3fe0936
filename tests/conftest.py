import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning workers make
# the many tiny ops of the tests 5-20x slower. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fake_cuda_events(monkeypatch):
    """torch.cuda.Event and torch.cuda.synchronize faked on any machine: returns the log of what
    ran ("sync", "record", "event_sync"; tests append their own "work"); an event's elapsed time
    is 2.5 ms per log entry between its two records."""
    log = []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t = None

        def record(self):
            log.append("record")
            self.t = len(log)

        def synchronize(self):
            log.append("event_sync")

        def elapsed_time(self, other):
            return 2.5 * (other.t - self.t)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    return log


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty ``$DIMBENCH_CACHE_DIR`` (no device profile, no FID statistics) that still finds
    the kernels this session already built: a worker process would otherwise recompile the C++
    scan, which takes minutes on some CPUs and tests nothing a kernel test does not."""
    from dimbench.ops import cbuild

    built = cbuild.cache_dir()
    cache = tmp_path / "cache"
    cache.mkdir()
    if built.is_dir():
        (cache / built.name).symlink_to(built, target_is_directory=True)
    monkeypatch.setenv("DIMBENCH_CACHE_DIR", str(cache))
    return cache
