"""Installing the layer: idempotent, out of the way of real packages, switched on by
``$DIMBENCH_MAMBA_COMPAT`` for the process and the workers it starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dimbench import compat
from dimbench.compat.install import COMPAT_ENV, install_from_env
from dimbench.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, extra_path: Path | None = None, **env) -> str:
    paths = [str(REPO)] + ([str(extra_path)] if extra_path else [])
    environ = {k: v for k, v in os.environ.items() if k != COMPAT_ENV}
    environ.update(PYTHONPATH=os.pathsep.join(paths), **env)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_install_is_idempotent() -> None:
    first = compat.install()
    finders = [f for f in sys.meta_path if type(f).__name__ == "_Finder"]
    import mamba_ssm.ops.selective_scan_interface as ssi

    assert compat.install() == first
    assert [f for f in sys.meta_path if type(f).__name__ == "_Finder"] == finders
    assert len(finders) <= 1
    import mamba_ssm.ops.selective_scan_interface as again

    assert again is ssi
    if compat.served("mamba_ssm"):
        assert first["mamba_ssm"].startswith("dimbench-compat ")
        assert compat.mamba_impl() == first["mamba_ssm"]
        from dimbench.compat.selective_scan import selective_scan_fn

        assert ssi.selective_scan_fn is selective_scan_fn


def test_modules_importable_through_the_layer() -> None:
    out = run_python(
        """
        import dimbench.compat as c
        c.install()
        from mamba_ssm import Mamba, selective_scan_fn, mamba_inner_fn
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref, mamba_inner_ref
        from mamba_ssm.modules.mamba_simple import Mamba as M2
        from mamba_ssm.ops.triton.layer_norm import RMSNorm, rms_norm_fn, layer_norm_fn
        from mamba_ssm.ops.triton.layernorm import RMSNorm as R2
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
        import dimbench.ops
        assert Mamba is M2 and RMSNorm is R2
        # dimbench's CUDA conv backend must not mistake the layer's module for the package
        from dimbench.ops.backends import unavailable_reason
        print(unavailable_reason("conv", "causal_conv1d"), "|", c.mamba_impl())
        """
    )
    reason, impl = out.split(" | ")
    assert reason == "causal-conv1d is not installed"
    assert impl.startswith("dimbench-compat ")


def _fake_package(root: Path, name: str, body: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(textwrap.dedent(body))


def test_real_packages_are_preferred(tmp_path: Path) -> None:
    _fake_package(tmp_path, "mamba_ssm", "__version__ = '9.9.9'\n")
    _fake_package(tmp_path, "causal_conv1d", "__version__ = '8.8'\ndef causal_conv1d_fn(): ...\n")
    out = run_python(
        """
        import dimbench.compat as c
        print(c.install())
        import mamba_ssm, causal_conv1d
        print(mamba_ssm.__file__, causal_conv1d.__file__, c.served("mamba_ssm"), sep="|")
        print(c.mamba_impl())
        """,
        extra_path=tmp_path,
    )
    decided, files, impl = out.splitlines()
    mamba_file, conv_file, served = files.split("|")
    assert mamba_file.startswith(str(tmp_path)) and conv_file.startswith(str(tmp_path))
    assert served == "False"
    assert impl == "mamba_ssm 9.9.9; causal_conv1d: causal_conv1d 8.8"


def test_a_real_package_that_fails_to_import_is_served(tmp_path: Path) -> None:
    _fake_package(tmp_path, "mamba_ssm", "import selective_scan_cuda  # built for another CUDA\n")
    out = run_python(
        """
        import dimbench.compat as c
        c.install()
        from mamba_ssm.modules.mamba_simple import Mamba
        print(Mamba.__module__, c.mamba_impl())
        """,
        extra_path=tmp_path,
    )
    module, impl = out.split(" ", 1)
    assert module == "dimbench.compat.mamba_simple"
    assert impl.startswith("dimbench-compat ")


def test_environment_variable_installs_at_plugin_import(tmp_path: Path) -> None:
    plugin = tmp_path / "mynet.py"
    plugin.write_text("from mamba_ssm.modules.mamba_simple import Mamba\nLOADED = True\n")
    code = """
        from dimbench.registry import import_plugins
        from dimbench.compat import served
        import_plugins()  # imports mynet, which needs mamba_ssm
        import mynet
        print(served("mamba_ssm"), mynet.LOADED)
        """
    out = run_python(code, extra_path=tmp_path, **{COMPAT_ENV: "1", "DIMBENCH_IMPORT": "mynet"})
    assert out == "True True"


def test_environment_variable_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMPAT_ENV, "yes please")
    with pytest.raises(UsageError, match=COMPAT_ENV):
        install_from_env()


def test_result_rows_record_the_implementation() -> None:
    from dimbench.measure.metadata import run_metadata
    from dimbench.results import TAIL_COLUMNS

    compat.install()
    assert "mamba_impl" in TAIL_COLUMNS
    assert run_metadata("cpu")["mamba_impl"] == compat.mamba_impl() != ""
