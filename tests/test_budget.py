"""The suite's budget script fails when the suite, scaled to the slow machines, passes its limit."""
import pytest

from tests import budget


def test_the_scaling_reproduces_the_measured_pair():
    """Issue 35's suite: 20.1 min at an sgemm peak of 445 GFLOP/s, 24.1 min at 200."""
    assert budget.scaled_to_slow_machine(20.1 * 60, 445) / 60 == pytest.approx(24.1, abs=0.1)
    assert budget.scaled_to_slow_machine(600, 200) == 600
    assert budget.scaled_to_slow_machine(600, 100) < 600  # a slower machine than the slow kind


@pytest.mark.parametrize("seconds_here, peak, fast, code", [
    (700, 445, False, 0),   # 14.0 min on the slow machine: within 15
    (800, 445, False, 1),   # 16.0 min
    (100, 200, True, 0),    # the fast tier: 1.7 min of 2
    (130, 200, True, 1),
])
def test_the_budget_scales_by_the_sgemm_peak_and_fails_past_the_limit(monkeypatch, capsys, seconds_here, peak,
                                                                      fast, code):
    calls = []
    clock = iter([0.0, float(seconds_here)])
    monkeypatch.setattr(budget, "sgemm_peak_gflops", lambda: peak)
    monkeypatch.setattr(budget.subprocess, "call", lambda args: calls.append(args) or 0)
    monkeypatch.setattr(budget.time, "monotonic", lambda: next(clock))
    assert budget.main(["--fast"] if fast else []) == code
    assert (["-m", "not slow"] == calls[0][4:6]) == fast
    assert f"about {budget.scaled_to_slow_machine(seconds_here, peak) / 60:.1f} min" in capsys.readouterr().out


def test_a_failing_suite_fails_the_budget_with_its_own_code(monkeypatch):
    clock = iter([0.0, 1.0])
    monkeypatch.setattr(budget, "sgemm_peak_gflops", lambda: 200)
    monkeypatch.setattr(budget.subprocess, "call", lambda args: 2)
    monkeypatch.setattr(budget.time, "monotonic", lambda: next(clock))
    assert budget.main([]) == 2
