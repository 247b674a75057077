"""The Kubernetes API as jobgate uses it: a few raw JSON calls through `kubernetes.aio`.

Raw JSON, not the client's models: a LIST of 10,000 Jobs deserialized into
V1Job objects costs seconds and hundreds of megabytes; we keep small views.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from kubernetes.aio import client as aio_client
from kubernetes.aio import config as aio_config

from jobgate.core.jobs import JobView
from jobgate.core.patches import JsonPatch
from jobgate.core.policy import CLUSTER_KIND, CLUSTER_PLURAL, GROUP, PLURAL, VERSION
from jobgate.core.timestamps import format_kubernetes_time
from jobgate.kube import paging
from jobgate.telemetry.metrics import Metrics

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
Item = TypeVar("Item")


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{method} {path}: {status} {message}")


class NotLeading(Exception):
    """A Job write was not sent: this replica could not prove that it holds the Lease now."""


class WatchExpired(Exception):
    """410 Gone: the watch's resourceVersion is older than the API server keeps; LIST again."""


async def connect(kubeconfig: str | None = None, context: str | None = None) -> aio_client.ApiClient:
    """An API client from the given kubeconfig, $KUBECONFIG or ~/.kube/config, else the in-cluster config."""
    configuration = aio_client.Configuration()
    loaded = False
    if kubeconfig is None:
        try:
            aio_config.load_incluster_config(client_configuration=configuration)
            loaded = True
        except aio_config.ConfigException:
            pass
    if not loaded:
        await aio_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    settle_proxy_once(configuration)
    # Each Job watch (one per distinct policy selector) holds a pooled connection for as long as
    # it runs: a bounded pool would let many policies starve admissions. Writes are bounded by
    # the engine's own limits instead.
    configuration.connection_pool_maxsize = 0
    return aio_client.ApiClient(configuration)


def settle_proxy_once(configuration: aio_client.Configuration) -> None:
    """Read the proxy variables once, here, rather than on every request.

    The client's aiohttp session trusts the environment, which makes aiohttp look up
    ~/.netrc and the proxy variables in a worker thread before each request: two thread
    hops per admission, and measurable latency on a busy operator. The proxy a kubeconfig
    names (proxy-url) wins; otherwise HTTPS_PROXY / NO_PROXY apply, as for kubectl.
    """
    if configuration.proxy is None:
        host = urllib.parse.urlsplit(configuration.host).hostname or ""
        proxy = urllib.request.getproxies().get("https")
        if proxy and not urllib.request.proxy_bypass(host):
            configuration.proxy = proxy
    configuration.client_session_kwargs = {**(configuration.client_session_kwargs or {}), "trust_env": False}


def _namespaced(namespace: str | None, api: str, plural: str) -> str:
    if namespace is None:
        return f"{api}/{plural}"
    return f"{api}/namespaces/{quote(namespace)}/{plural}"


class KubeApi:
    """Implements engine.ClusterApi and status.StatusApi."""

    def __init__(
        self,
        api_client: aio_client.ApiClient,
        metrics: Metrics,
        write_timeout: float = 5.0,
        may_write: Callable[[], bool] = lambda: True,
    ) -> None:
        self.client = api_client
        self.metrics = metrics
        # A Job write must end before a successor could take the Lease: both bounds come from
        # lease.LeaseTiming, whose inequality run.py checks at start-up.
        self.write_timeout = write_timeout
        self.may_write = may_write

    async def request(
        self,
        verb: str,
        path: str,
        resource: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
        fenced: bool = False,
    ) -> tuple[int, Any]:
        """One API call. `fenced`: a leader's write, sent only if the Lease is provably held at that moment."""
        method = {
            "list": "GET",
            "get": "GET",
            "patch": "PATCH",
            "create": "POST",
            "update": "PUT",
            "delete": "DELETE",
        }[verb]
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if fenced:
            # The API server stops working on the request when this ends, too: a write that reached
            # it late cannot be applied after the client gave up, beyond the server's own latency.
            query = {**(query or {}), "timeout": f"{timeout or self.write_timeout:g}s"}
        response = await self._send(method, path, query, headers, body, timeout, fenced)
        data = await response.read()
        self.metrics.api_requests.labels(verb, resource, str(response.status)).inc()
        if not 200 <= response.status < 300:
            raise ApiError(response.status, method, path, data.decode(errors="replace"))
        return response.status, json.loads(data) if data else None

    async def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        headers: Mapping[str, str],
        body: Any = None,
        timeout: float | aiohttp.ClientTimeout | None = None,
        fenced: bool = False,
    ) -> Any:
        """The client's response, its body not read yet."""
        serialized = await self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=dict(headers),
            body=body,
            auth_settings=["BearerToken"],
        )
        # Checked here, after the last await before the request leaves: nothing can run in between.
        if fenced and not self.may_write():
            self.metrics.api_requests.labels(method.lower(), "fenced", "not-sent").inc()
            raise NotLeading(f"not sent: the Lease is not provably held now ({method} {path})")
        return await self.client.call_api(*serialized, _request_timeout=timeout)

    async def _list(
        self,
        path: str,
        resource: str,
        convert: Callable[[Mapping[str, Any]], Item],
        query: Mapping[str, str] | None = None,
    ) -> tuple[list[Item], int]:
        """All pages of a LIST; the version is the first page's, the snapshot all pages belong to.

        Items are converted page by page: only one page of bodies is held at a time, not
        every Job's body at once (about 10 KiB each once parsed).
        """
        items: list[Item] = []
        params: dict[str, str] | None = paging.first_page(query)
        version = 0
        while params is not None:
            _, page = await self.request("list", path, resource, params)
            items.extend(convert(item) for item in page.get("items") or [])
            version = version or int(page["metadata"].get("resourceVersion") or 0)
            params = paging.next_page(params, page)
        return items, version

    async def list_jobs(self, namespace: str | None, label_selector: str | None = None) -> tuple[list[JobView], int]:
        query = {"labelSelector": label_selector} if label_selector else None
        path = "/" + _namespaced(namespace, "apis/batch/v1", "jobs")
        return await self._list(path, "jobs", JobView.from_body, query)

    async def watch_jobs(
        self,
        namespace: str | None,
        label_selector: str | None,
        resource_version: int,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[tuple[str, Mapping[str, Any]]]:
        """Watch events (type, object) from resource_version until the server ends the stream.

        BOOKMARK events are passed on: their resourceVersion is where the next watch resumes.
        Raises WatchExpired when that version is too old (410 Gone).
        """
        path = "/" + _namespaced(namespace, "apis/batch/v1", "jobs")
        query = {
            "watch": "true",
            "resourceVersion": str(resource_version),
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            query["labelSelector"] = label_selector
        # No total timeout: the server ends the stream after timeout_seconds; a silent connection
        # (no event, no bookmark for a minute past that) is dead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 60)
        response = await self._send("GET", path, query, {"Accept": "application/json"}, timeout=timeout)
        self.metrics.api_requests.labels("watch", "jobs", str(response.status)).inc()
        stream: aiohttp.ClientResponse = response.response
        try:
            if response.status == 410:
                raise WatchExpired(path)
            if not 200 <= response.status < 300:
                raise ApiError(response.status, "GET", path, (await response.read()).decode(errors="replace"))
            # Lines are split here, not by aiohttp's readline: a Job can be larger than its line limit.
            pending = b""
            async for chunk in stream.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _watch_event(json.loads(line), path)
        finally:
            stream.release()

    async def list_policies(self, namespace: str | None) -> tuple[list[Mapping[str, Any]], int]:
        path = "/" + _namespaced(namespace, f"apis/{GROUP}/{VERSION}", PLURAL)
        return await self._list(path, PLURAL, lambda body: body)

    async def list_cluster_policies(self) -> tuple[list[Mapping[str, Any]], int]:
        """Every ClusterConcurrencyPolicy (their bodies carry no kind in a LIST: it is added)."""
        path = f"/apis/{GROUP}/{VERSION}/{CLUSTER_PLURAL}"
        return await self._list(path, CLUSTER_PLURAL, lambda body: {**body, "kind": CLUSTER_KIND})

    async def list_namespaces(self) -> tuple[list[NamespaceRead], int]:
        """Every Namespace's name, labels and resourceVersion: what ClusterConcurrencyPolicies'
        namespaceSelectors read."""
        return await self._list("/api/v1/namespaces", "namespaces", namespace_read)

    async def get_namespace(self, name: str) -> NamespaceRead | None:
        """One Namespace's labels, read fresh; None when there is no Namespace of that name."""
        try:
            _, body = await self.request("get", f"/api/v1/namespaces/{quote(name)}", "namespaces")
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return namespace_read(body)

    async def get_job(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            _, body = await self.request(
                "get", f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs/{quote(name)}", "jobs"
            )
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return body  # type: ignore[no-any-return]

    async def patch_job(self, namespace: str, name: str, patch: JsonPatch) -> Mapping[str, Any] | None:
        path = f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs/{quote(name)}"
        try:
            _, body = await self.request(
                "patch", path, "jobs", body=patch, content_type=JSON_PATCH, timeout=self.write_timeout, fenced=True
            )
        except ApiError as e:
            if e.status in (404, 409, 422):  # gone, or changed since we decided: not an error
                return None
            raise
        return body  # type: ignore[no-any-return]

    async def delete_job(self, job: JobView) -> bool:
        """Delete the Job if it is still the version decided on; False when it is gone or has changed since.

        The preconditions make a deletion that races an admission lose: a Job admitted
        meanwhile has a newer resourceVersion, and a running Job is never deleted.
        """
        path = f"/apis/batch/v1/namespaces/{quote(job.namespace)}/jobs/{quote(job.name)}"
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",  # its pods (none: it never ran) go with it
            "preconditions": {"uid": job.uid, "resourceVersion": str(job.resource_version)},
        }
        try:
            await self.request("delete", path, "jobs", body=options, timeout=self.write_timeout, fenced=True)
        except ApiError as e:
            if e.status in (404, 409):  # gone, or changed since we decided
                return False
            raise
        return True

    async def patch_policy_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Write a policy's status; namespace "": a ClusterConcurrencyPolicy's."""
        plural = PLURAL if namespace else CLUSTER_PLURAL
        path = "/" + _namespaced(namespace or None, f"apis/{GROUP}/{VERSION}", f"{plural}/{quote(name)}/status")
        try:
            await self.request("patch", path, plural, body={"status": status}, content_type=MERGE_PATCH)
        except ApiError as e:
            if e.status != 404:  # deleted meanwhile
                raise

    async def post_event(self, job: JobView, type_: str, reason: str, message: str) -> None:
        now = format_kubernetes_time(time.time())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{job.name}.", "namespace": job.namespace},
            "involvedObject": {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": job.name,
                "namespace": job.namespace,
                "uid": job.uid,
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": "jobgate"},
            "reportingComponent": "jobgate.dev/operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.request("create", f"/api/v1/namespaces/{quote(job.namespace)}/events", "events", body=event)


NamespaceRead = tuple[str, dict[str, str], int]  # a Namespace's name, labels and resourceVersion


def namespace_read(body: Mapping[str, Any]) -> NamespaceRead:
    meta = body["metadata"]
    return meta["name"], dict(meta.get("labels") or {}), int(meta.get("resourceVersion") or 0)


def _watch_event(event: Mapping[str, Any], path: str) -> tuple[str, Mapping[str, Any]]:
    kind, obj = event["type"], event["object"]
    if kind == "ERROR":
        if obj.get("code") == 410:
            raise WatchExpired(path)
        raise ApiError(int(obj.get("code") or 500), "WATCH", path, json.dumps(obj))
    return kind, obj
