"""The CPU thread policy of every dimbench process that computes.

OpenMP threads that spin while idle (``OMP_WAIT_POLICY=ACTIVE``, libgomp's behaviour for short
waits) burn the cores their peers need on a shared machine: a 5-step ``train`` took 24.9 s with
one other process on a 2-core CPU, 4.4 s with passive waiting. The OpenMP runtime reads the
variable once, when torch loads it, so the CLI sets it before any command imports torch, and the
processes it starts (sweep workers, torchrun ranks) inherit it. Every result records it.
"""

from __future__ import annotations

import os

from dimbench.errors import UsageError

OMP_POLICIES = ("passive", "active")
DEFAULT_OMP_POLICY = "passive"


def check_omp_policy(policy: str) -> str:
    """``policy`` lower-cased, or a UsageError naming the valid ones."""
    if policy.lower() not in OMP_POLICIES:
        raise UsageError(f"unknown OMP wait policy {policy!r}; valid: {', '.join(OMP_POLICIES)}")
    return policy.lower()


def apply_thread_policy(policy: str | None = None) -> str:
    """Set ``OMP_WAIT_POLICY`` for this process and its children; returns the policy in effect.

    ``None`` keeps a policy the environment already sets and otherwise chooses passive. Call it
    before torch is imported: afterwards it reaches only the child processes.
    """
    if policy is None:
        policy = os.environ.get("OMP_WAIT_POLICY") or DEFAULT_OMP_POLICY
    policy = check_omp_policy(policy)
    os.environ["OMP_WAIT_POLICY"] = policy.upper()
    return policy


def omp_policy_in_effect() -> str:
    """The policy this process runs with, as recorded in results ("" when unset)."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper()
