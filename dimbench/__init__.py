"""dimbench: benchmarking and profiling suite for state-space diffusion backbones."""

__version__ = "0.1.0"
