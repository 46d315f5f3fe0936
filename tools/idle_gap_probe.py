"""Why is a paired step slower than a back-to-back one? One model in one process, no other
process: its steps timed back to back, after an idle gap (the seconds a paired round spends on
the other models), and after a gap followed by one untimed step, with the minor page faults and
system CPU time of every timed step.

    python tools/idle_gap_probe.py --model DiM-S/2 --res 1536 --gap 6 --steps 5
    python tools/idle_gap_probe.py ... --keep-heap   # malloc keeps freed memory (mallopt)

The patterns alternate (back-to-back, gap, gap+warm, back-to-back, ...) so a drift of the machine
lands on all of them. Prints one line per pattern and, with --json, writes every sample.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="DiM-S/2")
    p.add_argument("--res", type=int, default=1536)
    p.add_argument("--gap", type=float, default=6.0, help="idle seconds before a gapped step")
    p.add_argument("--steps", type=int, default=5, help="timed steps per pattern per block")
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep-heap", action="store_true")
    p.add_argument("--json", default="")
    args = p.parse_args()

    from dimbench.bench.spec import Config
    from dimbench.bench.workload import build_workload
    from dimbench.measure.timing import make_clock
    from dimbench.regress.worker import keep_heap

    torch.set_num_threads(args.threads)
    kept = keep_heap() if args.keep_heap else False
    cfg = Config(suite="throughput", model=args.model, image_size=args.res)
    work = build_workload(cfg)
    clock = make_clock(cfg.device)  # the throughput suite's clock
    work.step()  # warm-up

    def timed() -> dict:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        ms = clock.time(work.step)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "ms": ms,
            "minflt": r1.ru_minflt - r0.ru_minflt,
            "sys_ms": (r1.ru_stime - r0.ru_stime) * 1e3,
        }

    patterns = {
        "back-to-back": lambda: timed(),
        "gap": lambda: (time.sleep(args.gap), timed())[1],
        "gap+warm": lambda: (time.sleep(args.gap), work.step(), timed())[2],
    }
    samples: dict[str, list[dict]] = {name: [] for name in patterns}
    for _ in range(args.blocks):
        for name, run in patterns.items():
            samples[name] += [run() for _ in range(args.steps)]

    print(
        f"{args.model} @ {args.res}px fp32 forward b1, {args.threads} threads, gap {args.gap:g} s,"
        f" keep_heap={kept}"
    )
    base = statistics.median(s["ms"] for s in samples["back-to-back"])
    for name, xs in samples.items():
        ms = statistics.median(s["ms"] for s in xs)
        flt = statistics.median(s["minflt"] for s in xs)
        sys_ms = statistics.median(s["sys_ms"] for s in xs)
        print(
            f"  {name:13s} n={len(xs):2d}  median {ms:8.1f} ms ({ms / base:5.3f}x)  "
            f"minor faults {flt:8.0f}  system {sys_ms:7.1f} ms"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "keep_heap": kept, "samples": samples}, f, indent=1)


if __name__ == "__main__":
    main()
