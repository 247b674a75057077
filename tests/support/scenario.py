"""Driving `jobgate run` against a cluster: a namespace, operator processes, an independent Job watch.

The ``scenario`` fixture (registered in tests/conftest.py) gives a `Scenario`
for the test's namespace; tests create policies and Jobs through it and assert
on what its `JobWatch` saw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client import ApiException

from jobgate.core.policy import GROUP, PLURAL, VERSION, ConcurrencyPolicy
from localcluster.access import ClusterAccess
from localcluster.jobwatch import JobWatch
from localcluster.manifests import job_manifest, policy_manifest
from localcluster.operator_process import OperatorProcess
from tests.support.waiting import poll_until, wait_status, watch_until

LEASE = "jobgate-leader"  # `jobgate run --lease-name`'s default, and the chart's for release "jobgate"


class Scenario:
    """A namespace, the operator watching it, an independent Job watch, and ways to act."""

    def __init__(self, cluster: ClusterAccess, namespace: str, tmp_path: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.tmp_path = tmp_path
        self.api = cluster.api_client()
        self.batch = kubernetes.client.BatchV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.watch = JobWatch(self.api, namespace)
        self.operators: list[OperatorProcess] = []

    def start_operator(
        self,
        *extra: str,
        kubeconfig: Path | None = None,
        lease_namespace: str | None = None,
        lease_seconds: float = 6,  # Lease calls get lease/8: on 2 busy cores, 3 s (0.375 s) timed out
        namespaces: Sequence[str] = (),
    ) -> OperatorProcess:
        """`jobgate run` on this namespace (and `namespaces`), as admin unless ``kubeconfig`` says otherwise."""
        args = ["--leader-election-namespace", lease_namespace or self.namespace]
        args += ["--lease-seconds", str(lease_seconds), *extra]
        watched = [self.namespace, *namespaces]
        operator = OperatorProcess(kubeconfig or self.cluster.kubeconfig, watched, self.tmp_path, *args)
        self.operators.append(operator)
        return operator.start()

    def policy(self, name: str, match: dict[str, str], keys: list[str], limit: int) -> ConcurrencyPolicy:
        body = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, policy_manifest(name, match, keys, limit)
        )
        model = ConcurrencyPolicy.from_body(body)
        self.watch.govern(model)
        return model

    def set_limit(self, name: str, limit: int) -> None:
        body = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": {"maxConcurrent": limit}}
        )
        self.watch.govern(ConcurrencyPolicy.from_body(body))

    def job(self, name: str, labels: dict[str, str], **kwargs: Any) -> Any:
        """Create a Job from `job_manifest`; returns the Job as the API server stored it."""
        return self.batch.create_namespaced_job(self.namespace, job_manifest(name, labels, **kwargs))

    def status(self, name: str) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        status: dict[str, Any] = body.get("status") or {}
        return status

    def wait_status(self, name: str, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        return wait_status(lambda: self.status(name), check, what)

    def wait_leader_synced(self, policy: str) -> None:
        """Until the leader has listed the cluster: it writes `policy`'s status only after that.

        Jobs queued before a new leader's first LIST get no Queued event from it
        (it assumes a predecessor posted one): create Jobs after this when a test
        expects Queued events.
        """
        self.wait_status(policy, lambda s: bool(s.get("conditions")), f"the leader writing {policy}'s status")

    def events(self, job: str) -> list[tuple[str, str]]:
        listed = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={job}")
        return [(e.reason, e.message) for e in listed.items]

    def wait_event(self, job: str, reason: str) -> str:
        found: str = poll_until(
            lambda: next((m for r, m in self.events(job) if r == reason), ""), f"a {reason} event on {job}"
        )
        return found

    def watch_created(self, name: str) -> float:
        self.watch.wait_for(lambda w: name in w.jobs, f"{name} appearing")
        return self.watch.jobs[name].created

    def wait_webhook(self, labels: dict[str, str]) -> None:
        """Until the API server has jobgate's webhook suspend a new Job with `labels` (which a policy must govern).

        New webhook configurations reach the API server through an informer, and
        the operator's webhook server listens a little after /healthz answers. A
        server-side dry run goes through admission without storing anything.
        """
        manifest = job_manifest("probe", labels, suspend=False)

        def suspended() -> bool:
            try:
                job = self.batch.create_namespaced_job(self.namespace, manifest, dry_run="All")
            except ApiException as e:
                if e.status != 500:
                    raise
                return False  # failurePolicy Fail, and nothing listens yet
            return bool(job.spec.suspend)

        poll_until(suspended, "the API server calling jobgate's webhook", timeout=60)

    def wait_lease_holder(
        self, holder: str | None = None, *, namespace: str | None = None, timeout: float = 30
    ) -> kubernetes.client.V1Lease:
        """The leader Lease once someone (or `holder`) holds it; in this namespace unless told."""
        lease: kubernetes.client.V1Lease = watch_until(
            kubernetes.client.CoordinationV1Api(self.api).list_namespaced_lease,
            namespace or self.namespace,
            field_selector=f"metadata.name={LEASE}",
            until=lambda lease: lease.spec.holder_identity == holder if holder else bool(lease.spec.holder_identity),
            what=f"Lease {LEASE} held by {holder or 'anyone'}",
            timeout=timeout,
        )
        return lease

    def suspended(self, name: str) -> bool:
        return bool(self.batch.read_namespaced_job(name, self.namespace).spec.suspend)

    def close(self) -> None:
        for operator in self.operators:
            operator.stop()
            # pytest shows captured output only for failed tests: there, this log explains.
            print(f"--- jobgate log {operator.log_path} ---\n{operator.log_tail(80)}")
        self.watch.__exit__()
        self.api.close()


@pytest.fixture
def scenario(cluster: ClusterAccess, namespace: str, crd: None, tmp_path: Path) -> Iterator[Scenario]:
    s = Scenario(cluster, namespace, tmp_path)
    s.watch.__enter__()
    try:
        yield s
    finally:
        s.close()


def assert_never_over_admitted(watch: JobWatch) -> None:
    assert watch.admitted_over_limit == [], watch.admitted_over_limit
