"""Real faults for tests, and what each one cost: the time from the fault to the next admission.

Fixtures (registered in tests/conftest.py):

- ``local_control_plane``: the session's `LocalCluster`, whose etcd and kube-apiserver a test may kill
  and restart in place (skipped on kind and existing clusters: they are not ours to kill);
- ``fault_proxy``: a `FaultProxy` (Toxiproxy) in front of that cluster's API server, for one test;
- ``recoveries``: records a test's faults and when the independent Job watch saw the next admission
  after each; the lines go to the test's output and to the summary at the end of the run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobgate.core.jobs import JobView
from localcluster.cluster import LocalCluster
from localcluster.faults import FaultProxy
from localcluster.jobwatch import JobWatch
from localcluster.operator_process import OperatorProcess
from tests.support.metrics import samples, value
from tests.support.scenario import Scenario, assert_never_over_admitted

LOCAL_CONTROL_PLANE = pytest.StashKey[LocalCluster]()
RECOVERY = "fault recovery"  # the user_properties entry that carries one line per fault
QUEUED_MARK = {"jobgate.dev/queued": "true"}  # what jobgate admits: its webhook's mark, or the user's


@pytest.fixture
def local_control_plane(cluster: object, request: pytest.FixtureRequest) -> LocalCluster:
    if LOCAL_CONTROL_PLANE not in request.config.stash:
        pytest.skip("kills and restarts control-plane processes: only on the local control plane (--cluster=local)")
    return request.config.stash[LOCAL_CONTROL_PLANE]


@pytest.fixture
def fault_proxy(local_control_plane: LocalCluster, tmp_path: Path) -> Iterator[FaultProxy]:
    with FaultProxy(local_control_plane.apiserver_port, tmp_path) as proxy:
        yield proxy


@dataclass
class Fault:
    what: str
    started: float  # monotonic
    # Admissions this soon after the start may be writes the faulty replica had in flight: not a recovery.
    in_flight_seconds: float
    ended: float | None = None
    next_admission: float | None = None


class Recoveries:
    """A test's faults, and when the watch saw the first admission after each (by its own clock)."""

    def __init__(self, watch: JobWatch) -> None:
        self.watch = watch
        self.admissions: list[float] = []
        self.faults: list[Fault] = []
        self.over_limit: list[tuple[float, str, list[str]]] = []  # when the watch saw each, and who ran
        self._states: dict[str, list[tuple[float, str]]] = {}  # each Job's states as the watch saw them, by name
        watch.listeners.append(self._seen)

    def _seen(self, at: float, before: JobView | None, after: JobView | None) -> None:
        if before is not None and after is not None and after.running and not before.running and after.admitted_at:
            self.admissions.append(at)
        if after is not None:
            state = _state(after)
            states = self._states.setdefault(after.name, [])
            if not states or states[-1][1] != state:
                states.append((at, state))
        for over in self.watch.admitted_over_limit[len(self.over_limit) :]:
            running = over.split("(running: ", 1)[-1].rstrip(")").split(", ")
            self.over_limit.append((at, over, running))

    def begin(self, what: str, in_flight_seconds: float = 0.0) -> Fault:
        fault = Fault(what, time.monotonic(), in_flight_seconds)
        self.faults.append(fault)
        return fault

    def end(self, fault: Fault) -> None:
        fault.ended = time.monotonic()

    @contextmanager
    def fault(self, what: str, in_flight_seconds: float = 0.0) -> Iterator[Fault]:
        fault = self.begin(what, in_flight_seconds)
        try:
            yield fault
        finally:
            self.end(fault)

    def _first_after(self, fault: Fault) -> float | None:
        not_before = fault.started + fault.in_flight_seconds
        return next((at for at in self.admissions if at >= not_before), None)

    def wait_next_admission(self, fault: Fault, timeout: float) -> float:
        """Until the watch sees an admission after ``fault`` began; returns the seconds from the fault to it."""
        self.watch.wait_for(lambda _: self._first_after(fault) is not None, f"an admission after {fault.what}", timeout)
        at = self._first_after(fault)
        assert at is not None
        fault.next_admission = at
        return at - fault.started

    def lines(self) -> list[str]:
        found = []
        for fault in self.faults:
            lasted = f"lasted {fault.ended - fault.started:.2f}s" if fault.ended is not None else "did not end"
            if fault.next_admission is None:
                found.append(f"{fault.what}: {lasted}, no admission seen after it")
                continue
            found.append(
                f"{fault.what}: next admission {fault.next_admission - fault.started:.2f}s after it began ({lasted})"
            )
        for at, over, running in self.over_limit:
            found.append(f"OVER THE LIMIT: {over}, {self._when(at)}")
            for name in running:  # how each got to run, as the watch saw it
                seen = ", ".join(f"{state} {self._when(t)}" for t, state in self._states.get(name, []))
                found.append(f"    {name}: {seen}")
        return found

    def _when(self, at: float) -> str:
        fault = next((f for f in reversed(self.faults) if f.started <= at), None)
        if fault is None:
            return "before any fault"
        if fault.ended is None or at < fault.ended:
            return f"{at - fault.started:.3f}s into {fault.what}"
        return f"{at - fault.ended:.3f}s after the end of {fault.what}"


@pytest.fixture
def recoveries(scenario: Scenario, request: pytest.FixtureRequest) -> Iterator[Recoveries]:
    found = Recoveries(scenario.watch)
    yield found
    for line in found.lines():
        print(f"fault recovery: {line}")
        request.node.user_properties.append((RECOVERY, line))


def report_recoveries(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault → next admission times of every fault test (also under xdist: reports carry them)."""
    by_test: dict[str, list[str]] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) == "teardown":
                found = [v for k, v in getattr(report, "user_properties", ()) if k == RECOVERY]
                if found:
                    by_test[report.nodeid] = found
    if by_test:
        terminalreporter.section("fault recovery (fault → next admission seen by the Job watch)")
        for nodeid, lines in by_test.items():
            terminalreporter.write_line(nodeid)
            for line in lines:
                terminalreporter.write_line(f"    {line}")


def _state(job: JobView) -> str:
    if job.finished:
        return "finished"
    if job.running:
        return "running (admitted)" if job.admitted_at else "running (never admitted)"
    return "held" if job.held else "queued"


# -- replicas -------------------------------------------------------------------------------------------


def identity(operator: OperatorProcess) -> str:
    """The identity the process runs under now (a restart logs a new one to the same file)."""
    found = re.findall(r"jobgate starting as (\S+),", operator.log_path.read_text())
    assert found, f"no identity in {operator.log_path}"
    return str(found[-1])


def is_leader(operator: OperatorProcess) -> bool:
    return value(samples(operator), "jobgate_leader") == 1


def the_leader(scenario: Scenario, replicas: list[OperatorProcess]) -> OperatorProcess:
    """The replica that holds the Lease now."""
    holder = scenario.wait_lease_holder().spec.holder_identity
    by_identity = {identity(replica): replica for replica in replicas}
    assert holder in by_identity, f"the Lease is held by {holder}, none of {sorted(by_identity)}"
    return by_identity[holder]


# -- work -----------------------------------------------------------------------------------------------


class Burst:
    """Jobs of one policy over several keys, topped up so that every key always has Jobs waiting."""

    def __init__(self, scenario: Scenario, policy: str, keys: tuple[str, ...], limit: int, runs_for: str) -> None:
        self.scenario = scenario
        self.policy = policy
        self.keys = keys
        self.runs_for = runs_for
        self.names: list[str] = []
        self._next = 0
        scenario.policy(policy, {"app": policy}, ["customer"], limit)

    def top_up(self, waiting_per_key: int) -> None:
        """Create Jobs until each key has ``waiting_per_key`` queued (by the watch; unseen ones count as queued)."""
        jobs = self.scenario.watch.jobs
        for key in self.keys:
            mine = [n for n in self.names if n.startswith(f"{self.policy}-{key}-")]
            waiting = sum(1 for n in mine if n not in jobs or jobs[n].queued)
            for _ in range(waiting_per_key - waiting):
                self.add(key)

    def add(self, key: str) -> None:
        """One more Job for ``key`` (which need not be one of the burst's keys)."""
        name = f"{self.policy}-{key}-{self._next}"
        self._next += 1
        self.scenario.job(name, {"app": self.policy, "customer": key, **QUEUED_MARK}, runs_for=self.runs_for)
        self.names.append(name)

    def finished(self) -> int:
        return sum(1 for n in self.names if self.scenario.watch.finished(n))

    def wait_finished(self, count: int, timeout: float = 60) -> None:
        self.scenario.watch.wait_for(lambda _: self.finished() >= count, f"{count} Jobs finishing", timeout)

    def drain(self, timeout: float) -> None:
        """Until every Job has finished; fail naming the Jobs that wait although their keys have a free slot."""
        watch = self.scenario.watch
        try:
            watch.wait_for(lambda w: w.finished(*self.names), f"all {len(self.names)} Jobs finishing", timeout)
        except TimeoutError as e:
            stuck = watch.queued_with_free_slot()
            raise AssertionError(f"Jobs left queued with a free slot: {stuck}" if stuck else str(e)) from None
        assert watch.queued_with_free_slot() == []
        assert_never_over_admitted(watch)
