"""The measuring process: ``python -m dimbench.bench.worker CONFIG.json RESULT.json``.

Runs one configuration and writes one JSON object to RESULT.json:
``{"status": "ok"|"oom"|"error", "error": str|None, "metrics": {...}, "raw": {...},
"meta": {...}}``; a suite that writes several rows per configuration returns them as
``"rows": [{...metrics...}, ...]`` instead of ``"metrics"``. A process that dies before
writing it (killed by the kernel's OOM killer, a segfault in a kernel, a timeout) is
classified by the parent.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:limit]


def run(config: dict, cpus: tuple[int, ...] = ()) -> dict:
    """Measure ``config``; ``cpus``: the cores this process is pinned to (a pool slot's), whose
    count is its torch threads unless the configuration names them."""
    import torch

    from dimbench.bench.registry import get_suite
    from dimbench.bench.spec import Config
    from dimbench.bench.workload import is_oom
    from dimbench.measure.metadata import run_metadata

    cfg = Config.from_dict(config)
    if cfg.threads or cpus:
        torch.set_num_threads(cfg.threads or len(cpus))
    result: dict = {"status": "ok", "error": None, "metrics": {}, "raw": None}
    try:
        result.update(get_suite(cfg.suite).measure(cfg))
    except Exception as exc:  # a failed measurement is a row, not a crash
        result["status"] = "oom" if is_oom(exc) else "error"
        result["error"] = one_line(exc)
        if result["status"] == "error":
            traceback.print_exc(file=sys.stderr)
    result["meta"] = run_metadata(cfg.device)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m dimbench.bench.worker CONFIG.json RESULT.json", file=sys.stderr)
        return 2
    from dimbench.pool import pin_from_env

    cpus = pin_from_env()  # before torch starts its threads: they inherit the mask
    config = json.loads(Path(argv[0]).read_text())
    result = run(config, cpus)
    out = Path(argv[1])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, out)  # the parent never reads a half-written result
    return 0


if __name__ == "__main__":
    sys.exit(main())
