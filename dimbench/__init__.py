"""dimbench: benchmarking and profiling suite for state-space diffusion backbones."""

try:  # written at build time (setuptools-scm); absent in a plain checkout
    from dimbench._version import __version__
except ImportError:
    __version__ = "0.1.0"

_REGISTRY_NAMES = ("register_model", "create_model", "list_models", "get_model")


def __getattr__(name: str):
    # the registry imports torch: load it on first use, so `dimbench --help` stays instant and
    # the CLI sets the thread policy before torch starts its OpenMP runtime
    if name in _REGISTRY_NAMES:
        from dimbench import registry

        return getattr(registry, name)
    if name == "register_suite":
        from dimbench.bench.registry import register_suite

        return register_suite
    raise AttributeError(f"module 'dimbench' has no attribute {name!r}")
