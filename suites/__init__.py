"""Benchmark suites: what to sweep and which measurement to take (installed as dimbench.suites)."""
