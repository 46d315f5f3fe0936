"""The measuring process: ``python -m dimbench.bench.worker CONFIG.json RESULT.json``, or a
paired cell's worker, ``python -m dimbench.bench.worker --serve`` (``serve_cell`` below).

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
    from dimbench.measure.metadata import run_metadata

    cfg = Config.from_dict(config)
    if cfg.threads or cpus:
        torch.set_num_threads(cfg.threads or len(cpus))
    result: dict = {"status": "ok", "error": None, "metrics": {}, "raw": None}
    try:
        result.update(get_suite(cfg.suite).measure(cfg))
    except Exception as exc:  # a failed measurement is a row, not a crash
        result.update(failure(exc))
    result["meta"] = run_metadata(cfg.device)
    return result


def failure(exc: BaseException) -> dict:
    """A failed measurement as a result's status and error (the traceback to stderr)."""
    from dimbench.bench.workload import is_oom

    status = "oom" if is_oom(exc) else "error"
    if status == "error":
        traceback.print_exc(file=sys.stderr)
    return {"status": status, "error": one_line(exc)}


def serve_cell(cpus: tuple[int, ...] = ()) -> None:
    """A paired cell's worker (``dimbench.bench.cell``), over JSON lines (``measure.pipes``):
    ``setup`` {config} builds the suite's stepper (warm-up included), ``time`` runs one timed
    step, ``finish`` returns the result as the one-shot worker writes it. A measurement that
    raises (an OOM) is a ``{"failed": {status, error}}`` reply, not a crash. ``cpus``: as
    ``run``'s."""
    from dimbench.measure import pipes

    reply = pipes.reply_channel()  # what the measured code prints goes to stderr
    state: dict = {}

    def setup(msg: dict) -> dict:
        import importlib

        import torch

        from dimbench.bench.registry import get_suite
        from dimbench.bench.spec import Config

        cfg = state["cfg"] = Config.from_dict(msg["config"])
        if cfg.threads or cpus:
            torch.set_num_threads(cfg.threads or len(cpus))
        module, _, name = get_suite(cfg.suite).stepper.partition(":")
        try:
            state["stepper"] = getattr(importlib.import_module(module), name)(cfg)
        except Exception as exc:
            return {"failed": failure(exc)}
        return {"ready": True}

    def time(msg: dict) -> dict:
        try:
            return {"seconds": state["stepper"].step()}
        except Exception as exc:
            return {"failed": failure(exc)}

    def finish(msg: dict) -> dict:
        from dimbench.measure.metadata import run_metadata

        result: dict = {"status": "ok", "error": None, "metrics": {}, "raw": None}
        try:
            result.update(state["stepper"].finish())
        except Exception as exc:
            result.update(failure(exc))
        result["meta"] = run_metadata(state["cfg"].device)
        return {"result": result}

    pipes.serve(sys.stdin, reply, {"setup": setup, "time": time, "finish": finish})


def main(argv: list[str] | None = None) -> int:
    from dimbench.pool import pin_from_env

    argv = sys.argv[1:] if argv is None else argv
    cpus = pin_from_env()  # before torch starts its threads: they inherit the mask
    if argv == ["--serve"]:
        serve_cell(cpus)
        return 0
    if len(argv) != 2:
        print(
            "usage: python -m dimbench.bench.worker CONFIG.json RESULT.json | --serve",
            file=sys.stderr,
        )
        return 2
    config = json.loads(Path(argv[0]).read_text())
    result = run(config, cpus)
    out = Path(argv[1])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, out)  # the parent never reads a half-written result
    return 0


if __name__ == "__main__":
    sys.exit(main())
