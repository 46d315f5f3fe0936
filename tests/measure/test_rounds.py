"""The shared rounds (``dimbench.measure.rounds``): the stop rule, and a failing worker dropped
while the others go on (the gate's own use is tested in tests/regress)."""

import pytest

from dimbench.measure.rounds import StopRule, interleave, widest


class Fake:
    def __init__(self, name, seconds, fail_on=None):
        self.names, self.seconds, self.fail_on, self.calls = [name], seconds, fail_on, 0

    def time(self, names):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("killed")
        return {n: self.seconds for n in names}


def test_stop_rule_min_max_budget_and_width():
    tight = [{"a": [1.0, 1.01, 0.99, 1.0, 1.0, 1.02]}]
    wide = [{"a": [1.0, 2.0, 0.5, 1.5, 3.0, 0.7]}]
    rule = StopRule(min_rounds=3, max_rounds=8, budget_s=10.0)
    assert not rule.done(2, tight, spent_s=100.0)  # never before min
    assert not rule.done(6, tight, spent_s=5.0)  # budget not spent
    assert rule.done(6, tight, spent_s=10.0)
    assert not rule.done(6, wide, spent_s=10.0)  # too wide: goes on
    assert rule.done(8, wide, spent_s=0.0)  # max caps it
    assert StopRule(3, 8, None).done(7, tight, 1e9) is False  # no budget: to max
    assert widest(wide) > 0.1 > widest(tight)
    with pytest.raises(ValueError):
        StopRule(0, 3)


def test_a_failing_worker_is_dropped_and_the_rounds_go_on():
    a, b = Fake("a", 1.0), Fake("b", 2.0, fail_on=2)
    failed = {}
    samples = interleave([a, b], rounds=4, seed=1, failed=failed)
    assert samples == [{"a": [1.0] * 4}, {"b": [2.0]}]
    assert list(failed) == [1] and str(failed[1]) == "killed"
    with pytest.raises(RuntimeError):  # without ``failed`` the error is the caller's (the gate)
        interleave([Fake("a", 1.0), Fake("b", 2.0, fail_on=1)], rounds=2)


def test_the_stop_rule_ends_the_rounds_at_min_when_tight():
    a, b = Fake("a", 1.0), Fake("b", 2.0)
    done = []
    samples = interleave([a, b], 10, on_round=done.append, stop=StopRule(3, 10, 0.0))
    assert done == [1, 2, 3] and samples == [{"a": [1.0] * 3}, {"b": [2.0] * 3}]
