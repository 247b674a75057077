"""The operator's own Job watch (kube.KubeApi.watch_jobs) against the real API server."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kubernetes
import pytest

from jobgate.kube import api as kube
from jobgate.telemetry.metrics import Metrics
from localcluster.access import ClusterAccess
from localcluster.manifests import job_manifest

pytestmark = pytest.mark.cluster


async def _first_events(
    cluster: ClusterAccess, namespace: str, create: list[dict[str, Any]], selector: str | None = None
) -> list[tuple[str, Mapping[str, Any]]]:
    """LIST the namespace's Jobs, create `create`, and return the watch's events until each was seen."""
    client = await cluster.aio_api_client()
    try:
        api = kube.KubeApi(client, Metrics())
        _, version = await api.list_jobs(namespace)
        batch = kubernetes.client.BatchV1Api(cluster.api_client())
        for manifest in create:
            batch.create_namespaced_job(namespace, manifest)
        events: list[tuple[str, Mapping[str, Any]]] = []
        wanted = {m["metadata"]["name"] for m in create if selector is None or selector in m["metadata"]["labels"]}
        async with asyncio.timeout(30):
            async for event_type, body in api.watch_jobs(namespace, selector, version, timeout_seconds=30):
                if event_type == "BOOKMARK":
                    continue
                events.append((event_type, body))
                wanted.discard(body["metadata"]["name"])
                if not wanted:
                    break
        return events
    finally:
        await client.close()


def test_watch_delivers_jobs_created_after_the_list(cluster: ClusterAccess, namespace: str) -> None:
    events = asyncio.run(_first_events(cluster, namespace, [job_manifest("after-list", {"app": "x"})]))
    assert events[0][0] == "ADDED"
    assert events[0][1]["metadata"]["name"] == "after-list"
    assert events[0][1]["spec"]["suspend"] is True


def test_watch_passes_jobs_larger_than_a_read_buffer_whole(cluster: ClusterAccess, namespace: str) -> None:
    """A Job may carry up to 256 KiB of annotations: its event is one JSON line of that size."""
    big = "x" * 200_000
    events = asyncio.run(
        _first_events(cluster, namespace, [job_manifest("big", {"app": "x"}, annotations={"example.com/big": big})])
    )
    assert events[0][1]["metadata"]["annotations"]["example.com/big"] == big


def test_watch_asks_the_server_for_selected_jobs_only(cluster: ClusterAccess, namespace: str) -> None:
    jobs = [job_manifest("other", {"app": "other"}), job_manifest("export", {"app": "x", "export": "yes"})]
    events = asyncio.run(_first_events(cluster, namespace, jobs, selector="export"))
    assert {body["metadata"]["name"] for _, body in events} == {"export"}
