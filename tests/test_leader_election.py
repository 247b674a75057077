"""Two `jobgate run` replicas with leader election: one admits, and the other takes over when it dies.

The Lease is `jobgate-leader` in the test namespace; the Job watch checks that
the two together never run a key over its limit.
"""

from __future__ import annotations

import re
import time

import pytest

from localcluster.operator_process import OperatorProcess
from tests.support.metrics import samples, value
from tests.support.scenario import Scenario, assert_never_over_admitted

pytestmark = pytest.mark.cluster

# A process killed mid-lease: the other waits out the lease it last saw renewed, then LISTs and admits.
TAKEOVER_MARGIN = 3.0


def identity(operator: OperatorProcess) -> str:
    found = re.search(r"jobgate starting as (\S+),", operator.log_path.read_text())
    assert found, f"no identity in {operator.log_path}"
    return found.group(1)


def is_leader(operator: OperatorProcess) -> bool:
    return value(samples(operator), "jobgate_leader") == 1


def admissions(operator: OperatorProcess, scenario: Scenario, policy: str) -> float:
    return value(samples(operator), "jobgate_admissions_total", policy_namespace=scenario.namespace, policy=policy)


def test_two_replicas_gate_together_and_the_survivor_of_a_kill_takes_over_after_the_lease(
    scenario: Scenario,
) -> None:
    lease_seconds = 6.0
    first = scenario.start_operator(lease_seconds=lease_seconds)
    scenario.wait_lease_holder(identity(first))
    second = scenario.start_operator(lease_seconds=lease_seconds)
    scenario.policy("burst", {"app": "b"}, ["customer"], 2)
    names = [f"burst-{customer}-{i}" for customer in "xyz" for i in range(10)]
    for name in names:
        scenario.job(name, {"app": "b", "customer": name.split("-")[1]})
    scenario.watch.wait_for(lambda w: sum(j.finished for j in w.jobs.values()) >= 6, "a few Jobs finishing")

    # One holder, and only it admits.
    lease = scenario.wait_lease_holder(identity(first))
    assert (is_leader(first), is_leader(second)) == (True, False)
    assert admissions(first, scenario, "burst") >= 6
    assert admissions(second, scenario, "burst") == 0

    killed_at = time.time()
    first.kill()  # no goodbye: the Lease is left to expire
    scenario.watch.wait_for(lambda w: w.finished(*names), "all 30 Jobs finishing after the kill", timeout=120)

    assert_never_over_admitted(scenario.watch)
    assert max(scenario.watch.peak.values()) == 2
    admitted = (job.admitted_at for job in scenario.watch.jobs.values())
    admitted_after_kill = sorted(at for at in admitted if at is not None and at > killed_at)
    handover = admitted_after_kill[0] - killed_at
    print(f"first admission {handover:.2f}s after killing the leader (lease {lease_seconds:.0f}s)")
    # Not before the lease it last saw renewed ran out (less a retry period), and not long after.
    assert lease_seconds - 1 <= handover <= lease_seconds + TAKEOVER_MARGIN
    after = scenario.wait_lease_holder(identity(second))
    assert after.spec.lease_transitions == lease.spec.lease_transitions + 1
    assert is_leader(second)
    assert admissions(second, scenario, "burst") == len(admitted_after_kill)


def test_a_clean_stop_releases_the_lease_and_the_other_replica_takes_over_at_once(scenario: Scenario) -> None:
    lease_seconds = 10.0  # long, so that a release and an expiry cannot be mistaken for each other
    first = scenario.start_operator(lease_seconds=lease_seconds)
    scenario.wait_lease_holder(identity(first))
    second = scenario.start_operator(lease_seconds=lease_seconds)
    scenario.policy("one", {"app": "o"}, [], 1)
    names = [f"one-{i}" for i in range(4)]
    for name in names:
        scenario.job(name, {"app": "o"})
    scenario.watch.wait_for(lambda w: w.finished("one-0"), "the first Job finishing")

    stopped = time.monotonic()
    first.stop()  # SIGTERM, as the kubelet stops a pod
    exited = time.monotonic() - stopped
    scenario.wait_lease_holder(identity(second), timeout=lease_seconds)
    handover = time.monotonic() - stopped
    print(f"SIGTERM: exited after {exited:.2f}s, Lease taken over after {handover:.2f}s (lease {lease_seconds:.0f}s)")

    assert first.process is not None and first.process.returncode == 0
    assert exited < 3
    assert "released Lease" in first.log_path.read_text()
    assert handover < lease_seconds / 2
    scenario.watch.wait_for(lambda w: w.finished(*names), "every Job finishing under the new leader")
    assert_never_over_admitted(scenario.watch)
    assert admissions(second, scenario, "one") >= 1
