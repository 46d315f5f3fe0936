"""One model of a ``train-compare --devices`` / ``--workers`` comparison, in a process of its
own (``compare.parallel`` starts it): ``python -m dimbench.train.compare.child CONFIG.pkl
LABEL SEED CWD``. It starts in a folder of its own (a ``dimbench/`` source folder in the caller's
would shadow the installed package), then moves to the caller's CWD, where the comparison's
relative paths (--out, --data, ...) point. Pinned to its slot's cores (``DIMBENCH_CPUS``) or
on its GPU (``CUDA_VISIBLE_DEVICES``), it plans the comparison as the parent did and trains
the model with that label under that seed."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

from dimbench.pool import pin_from_env


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(
            "usage: python -m dimbench.train.compare.child CONFIG.pkl LABEL SEED CWD",
            file=sys.stderr,
        )
        return 2
    cpus = pin_from_env()
    import torch

    from dimbench.train import distributed as D
    from dimbench.train.compare.run import CompareRun

    if cpus:
        torch.set_num_threads(len(cpus))
    cfg = pickle.loads(Path(argv[0]).read_bytes())  # written by our parent, just now
    os.chdir(argv[3])  # the package is imported: the caller's folder can no longer shadow it
    cfg.progress = False
    comp = CompareRun(cfg, D.setup(cfg.recipe.device))
    comp.train(only=argv[1], seed=int(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
