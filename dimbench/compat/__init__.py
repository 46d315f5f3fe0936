"""dimbench's kernels as a drop-in for ``mamba_ssm`` and ``causal_conv1d``: a model written
against those packages runs on a CPU, through every suite.

    import dimbench.compat
    dimbench.compat.install()          # or DIMBENCH_MAMBA_COMPAT=1 in the environment
    from mamba_ssm.modules.mamba_simple import Mamba   # dimbench's kernels underneath

Where the real packages import they are used and the layer stays out of the way;
``mamba_impl()`` says which answered (every result row records it). What the layer provides:
``mamba_ssm.ops.selective_scan_interface`` (``selective_scan.py``), ``mamba_ssm.modules.
mamba_simple.Mamba`` (``mamba_simple.py``), ``mamba_ssm.ops.triton.layer_norm``
(``layer_norm.py``) and ``causal_conv1d`` (``causal_conv1d.py``); the dimbench backends its
kernels run on are set with ``use_backends`` (``settings.py``).
"""

from dimbench.compat.install import COMPAT_ENV, install, install_from_env, mamba_impl, served
from dimbench.compat.settings import current, use_backends

__all__ = [
    "COMPAT_ENV",
    "current",
    "install",
    "install_from_env",
    "mamba_impl",
    "served",
    "use_backends",
]
