"""`make demo` runs to completion and reports no over-admission."""

from __future__ import annotations

import pytest

from localcluster.demo import run_demo

pytestmark = pytest.mark.cluster


def test_the_demo_gates_every_customer_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(tty=False)
    out = capsys.readouterr().out
    assert "over-admission: none: no customer-id ever had more than 1 running" in out
    assert "Summary: 14 Jobs, 4 values of customer-id" in out
    for customer in ("acme", "globex", "initech", "umbrella"):
        assert f"  {customer:<12}" in out
