"""One local control plane per scenario, tuned so that the control plane, not its client limits, sets the pace.

`Bench` starts the cluster with the CRD installed and hands out what a
scenario needs: namespaces, policies, the operator as a process, an independent
Job watch, fast Job creation and patching through `kubernetes.aio`, and the
apiserver's own request counters.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import kubernetes.aio.client
import kubernetes.client
from prometheus_client.parser import text_string_to_metric_families

from bench.environment import cpu_seconds
from jobgate.core.policy import GROUP, PLURAL, VERSION, ConcurrencyPolicy
from localcluster.access import ClusterAccess
from localcluster.build import ensure_binaries
from localcluster.cluster import NODE_CAPACITY, LocalCluster
from localcluster.jobwatch import JobWatch
from localcluster.manifests import policy_manifest
from localcluster.operator_process import CRD_FILE, OperatorProcess

# The controller-manager's and scheduler's clients default to 20 and 50 requests/s: at a few
# hundred Jobs per second they, not jobgate, would set the pace. The apiserver's in-flight limits
# are raised so that the burst scenario's creations are not refused with 429.
CONTROL_PLANE_FLAGS = {
    "kube-apiserver": ["--max-requests-inflight=1000", "--max-mutating-requests-inflight=500"],
    "kube-controller-manager": ["--kube-api-qps=2000", "--kube-api-burst=4000", "--concurrent-job-syncs=50"],
    "kube-scheduler": ["--kube-api-qps=2000", "--kube-api-burst=4000"],
}
PODS_PER_NODE = int(NODE_CAPACITY["pods"])
JSON_PATCH = "application/json-patch+json"
Counts = Counter[tuple[str, ...]]


def nodes_for(running_pods: int) -> int:
    """Enough fake nodes for every pod that may run at once, plus one."""
    return max(3, math.ceil(running_pods / PODS_PER_NODE) + 1)


class Bench:
    """A fresh local control plane with the ConcurrencyPolicy CRD, for one scenario; stopped on exit."""

    def __init__(self, log_dir: Path, running_pods: int) -> None:
        self.log_dir = log_dir
        self.cluster = LocalCluster(
            bin_dir=ensure_binaries(), nodes=nodes_for(running_pods), extra_args=CONTROL_PLANE_FLAGS
        )
        self.operators: list[OperatorProcess] = []
        self._access: ClusterAccess | None = None

    def __enter__(self) -> Bench:
        self.cluster.start()
        try:
            self.access.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
            self.access.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{PLURAL}.{GROUP}")
        except BaseException:
            self.cluster.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for operator in self.operators:
            if exc is not None:
                print(f"--- jobgate log {operator.log_path} ---\n{operator.log_tail(30)}")
            operator.stop()
        if self._access is not None:
            self._access.close()
        self.cluster.stop()

    @property
    def access(self) -> ClusterAccess:
        if self._access is None:
            self._access = self.cluster.access()
        return self._access

    @property
    def nodes(self) -> int:
        return self.cluster.node_count

    def namespace(self, prefix: str) -> str:
        return self.access.create_namespace(prefix)

    def operator(self, namespace: str, *extra: str) -> OperatorProcess:
        """`jobgate run` for the namespace, logging at INFO as in production; started by the caller."""
        operator = OperatorProcess(
            self.access.kubeconfig,
            [namespace],
            self.log_dir,
            "--leader-election-namespace",
            namespace,
            "--log-level",
            "INFO",
            *extra,
        )
        self.operators.append(operator)
        return operator

    def watch(self, namespace: str) -> JobWatch:
        return JobWatch(self.access.api_client(), namespace)

    # --- policies ---------------------------------------------------------------------------------

    def create_policy(
        self, namespace: str, name: str, match: dict[str, str], key_labels: list[str], limit: int
    ) -> ConcurrencyPolicy:
        custom = kubernetes.client.CustomObjectsApi(self.access.api_client())
        body = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, policy_manifest(name, match, key_labels, limit)
        )
        return ConcurrencyPolicy.from_body(body)

    def set_limit(self, namespace: str, name: str, limit: int) -> ConcurrencyPolicy:
        custom = kubernetes.client.CustomObjectsApi(self.access.api_client())
        body = custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"spec": {"maxConcurrent": limit}}
        )
        return ConcurrencyPolicy.from_body(body)

    def policy_status(self, namespace: str, name: str) -> dict[str, Any]:
        custom = kubernetes.client.CustomObjectsApi(self.access.api_client())
        body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status: dict[str, Any] = body.get("status") or {}
        return status

    def wait_until_queued(self, namespace: str, name: str, count: int, timeout: float) -> None:
        """Until the operator reports `count` queued Jobs in the policy's status: it has seen them all."""
        wait_until(
            lambda: self.policy_status(namespace, name).get("queued") == count,
            f"the operator to report {count} queued Jobs on policy {name}",
            timeout,
            interval=0.25,
        )

    # --- the apiserver's own counters -------------------------------------------------------------

    def apiserver_requests(self) -> Counts:
        """`apiserver_request_total` by (verb, resource, subresource), summed over codes and scopes."""
        return apiserver_request_counts(self.access.kubectl("get", "--raw", "/metrics"))

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each control-plane component, the operators, and this load generator."""
        used = {c.name: cpu_seconds(c.pid) for c in self.cluster.components if c.process is not None}
        for operator in self.operators:
            if operator.process is not None and operator.process.poll() is None:
                used["jobgate"] = used.get("jobgate", 0.0) + cpu_seconds(operator.process.pid)
        used["load generator and watch (bench)"] = cpu_seconds(os.getpid())
        return used

    def apiserver_listed_jobs(self) -> int:
        """How many Job objects the apiserver has returned to LISTs, from its watch cache or from etcd."""
        return apiserver_listed_jobs(self.access.kubectl("get", "--raw", "/metrics"))

    # --- many requests at once, through kubernetes.aio --------------------------------------------

    def create_jobs(self, namespace: str, manifests: Sequence[dict[str, Any]], concurrency: int) -> float:
        """Create the Jobs as fast as `concurrency` requests in flight allow; return the seconds it took."""
        path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
        return self.send_all([Request("POST", path, m) for m in manifests], concurrency)

    def send_all(self, requests: Sequence[Request], concurrency: int) -> float:
        """Send the requests with at most `concurrency` in flight; return the seconds from first to last."""

        async def run_all() -> float:
            client = await self.access.aio_api_client()
            try:
                limit = asyncio.Semaphore(concurrency)

                async def one(request: Request) -> None:
                    async with limit:
                        await send(client, request)

                started = time.monotonic()
                await asyncio.gather(*(one(r) for r in requests))
                return time.monotonic() - started
            finally:
                await client.close()

        return asyncio.run(run_all())


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: Any
    content_type: str = "application/json"


async def send(client: kubernetes.aio.client.ApiClient, request: Request) -> None:
    """A plain JSON request through kubernetes.aio: no models to build or parse, as a fast client would."""
    serialized = await client.param_serialize(
        method=request.method,
        resource_path=request.path,
        header_params={"Content-Type": request.content_type, "Accept": "application/json"},
        body=request.body,
        auth_settings=["BearerToken"],
    )
    response = await client.call_api(*serialized)
    data = await response.read()
    if not 200 <= response.status < 300:
        raise RuntimeError(f"{request.method} {request.path}: {response.status} {data[:300]!r}")


def apiserver_request_counts(metrics_text: str) -> Counts:
    counts: Counts = Counter()
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                labels = sample.labels
                counts[(labels["verb"], labels["resource"], labels.get("subresource", ""))] += int(sample.value)
    return counts


LIST_RETURNED = ("apiserver_cache_list_returned_objects_total", "apiserver_storage_list_returned_objects_total")


def apiserver_listed_jobs(metrics_text: str) -> int:
    returned = 0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in LIST_RETURNED and sample.labels.get("resource") == "jobs":
                returned += int(sample.value)
    return returned


def operator_request_counts(metrics_text: str) -> Counts:
    """jobgate's own `jobgate_api_requests_total` by (verb, resource), summed over codes."""
    counts: Counts = Counter()
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "jobgate_api_requests_total":
                counts[(sample.labels["verb"], sample.labels["resource"])] += int(sample.value)
    return counts


def operator_probes(operator: OperatorProcess) -> dict[str, Any]:
    """The operator's liveness probes, e.g. trackedJobs (Kopf caches them for up to 10 s)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5) as r:
        probes: dict[str, Any] = json.load(r)
        return probes


def operator_pid(operator: OperatorProcess) -> int:
    if operator.process is None:
        raise RuntimeError("the operator was not started")
    return operator.process.pid


def wait_until(condition: Callable[[], bool], what: str, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(interval)
