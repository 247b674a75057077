"""Scenario 9. Reaction: jobgate's own time from a Job's completion seen to the next admission sent.

The whole engine as it runs in the operator — its watch loop, cache, planner,
decision loop, write tasks and status writer — on one asyncio loop, with the
API server replaced by an answer made in memory (`InMemoryApi`): what is timed
is jobgate alone, apart from any control plane. (The refill scenario measures
the same path through a real API server, whose latency dominates there.)

Each namespace has one policy, `customer` as key, `PER_KEY` at a time; every key
starts with `PER_KEY` running Jobs and the rest queued, `JOBS_PER_KEY` in all.
Then, one at a time: a random running Job's watch event says it completed; the
engine decides and sends the admission of that key's next Job; the API answers
at once. The time is taken from the moment the watch stream hands the event to
the engine to the moment the engine calls the API with the patch, on the wall
clock of this process (which has the machine to itself only if nothing else
runs). The status writer runs at its usual tick and the collector as it would:
what they cost shows in the tail.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.scenarios import Document, target
from jobgate.core.jobs import JobView
from jobgate.core.patches import JsonPatch
from jobgate.engine.engine import Engine, EngineSettings
from jobgate.kube.api import NamespaceRead
from jobgate.telemetry.metrics import Metrics
from localcluster.manifests import job_manifest, policy_manifest

PER_KEY = 2
JOBS_PER_KEY = 50
POLICIES = 10  # one per namespace
TARGET_P99_MS = 10.0
CREATED = "2026-01-01T00:00:00Z"


@dataclass(frozen=True)
class Params:
    sizes: str = "2000,100000"  # tracked Jobs
    completions: int = 2000  # timed per size
    # Between completions: 200 a second, so that the status writer's ticks and the collector fall among them.
    interval_seconds: float = 0.005
    seed: int = 9

    @classmethod
    def tiny(cls) -> Params:
        return cls(sizes="200", completions=20, interval_seconds=0.0)


class InMemoryApi:
    """Answers the engine's calls from memory: Jobs as bodies, patches applied as the API server would."""

    def __init__(self, tracked: int) -> None:
        self.version = 1
        self.bodies: dict[str, dict[str, Any]] = {}
        self.running: dict[tuple[str, str], list[str]] = {}  # (namespace, customer) -> uids
        self.queued: dict[tuple[str, str], list[str]] = {}
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.seen_at = 0.0  # when the watch handed the last event to the engine
        self.patched: asyncio.Queue[tuple[float, str]] = asyncio.Queue()  # (when, uid) of each admission
        self.status_writes = 0
        keys = max(1, tracked // JOBS_PER_KEY)
        for k in range(keys):
            namespace, customer = f"tenant-{k % POLICIES}", f"c{k}"
            for j in range(JOBS_PER_KEY):
                running = j < PER_KEY
                body = job_manifest(f"{customer}-{j}", {"app": "export", "customer": customer}, suspend=not running)
                uid = f"{customer}-{j}"
                body["metadata"].update(namespace=namespace, uid=uid, creationTimestamp=CREATED)
                self._put(body)
                (self.running if running else self.queued).setdefault((namespace, customer), []).append(uid)

    def _put(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.bodies[body["metadata"]["uid"]] = body
        return body

    def complete(self, uid: str) -> None:
        """The Job controller marks a running Job Complete: its watch event goes out."""
        body = self.bodies[uid]
        body["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
        self.events.put_nowait(("MODIFIED", self._put(body)))

    # --- the ClusterApi ---

    async def list_jobs(self, namespace: str | None, label_selector: str | None = None) -> tuple[list[JobView], int]:
        views = [JobView.from_body(b) for b in self.bodies.values() if namespace in (None, b["metadata"]["namespace"])]
        return views, self.version

    async def watch_jobs(
        self, namespace: str | None, label_selector: str | None, resource_version: int, timeout_seconds: int = 300
    ) -> AsyncIterator[tuple[str, Mapping[str, Any]]]:
        while True:
            event = await self.events.get()
            self.seen_at = time.perf_counter()
            yield event

    async def get_job(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return next((b for b in self.bodies.values() if b["metadata"]["name"] == name), None)

    async def list_policies(self, namespace: str | None) -> tuple[list[Mapping[str, Any]], int]:
        policies: list[Mapping[str, Any]] = []
        for n in range(POLICIES):
            body = policy_manifest("per-customer", {"app": "export"}, ["customer"], PER_KEY)
            body["metadata"].update(
                namespace=f"tenant-{n}", uid=f"policy-{n}", resourceVersion="1", creationTimestamp=CREATED
            )
            policies.append(body)
        return policies, 1

    async def list_cluster_policies(self) -> tuple[list[Mapping[str, Any]], int]:
        return [], 1

    async def list_namespaces(self) -> tuple[list[NamespaceRead], int]:
        return [(f"tenant-{n}", {}, 1) for n in range(POLICIES)], 1

    async def get_namespace(self, name: str) -> NamespaceRead | None:
        return (name, {}, 1)

    async def patch_job(self, namespace: str, name: str, patch: JsonPatch) -> Mapping[str, Any] | None:
        now = time.perf_counter()
        uid = next(op["value"] for op in patch if op["op"] == "test" and op["path"] == "/metadata/uid")
        body = self.bodies[uid]
        body["spec"]["suspend"] = False
        customer = body["metadata"]["labels"]["customer"]
        key = (namespace, customer)
        self.queued[key].remove(uid)
        self.running[key].append(uid)
        self.patched.put_nowait((now, uid))
        return self._put(body)

    async def patch_policy_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.status_writes += 1

    async def delete_job(self, job: JobView) -> bool:
        return False

    async def post_event(self, job: JobView, type_: str, reason: str, message: str) -> None:
        pass


async def measure(tracked: int, completions: int, interval: float, rnd: random.Random) -> dict[str, Any]:
    api = InMemoryApi(tracked)
    engine = Engine(api, EngineSettings(), Metrics())
    leading = asyncio.get_running_loop().create_task(engine.lead())
    started = time.perf_counter()
    while engine.term is None or not engine.term.jobs.primed:  # noqa: ASYNC110 - no event says "listed"
        await asyncio.sleep(0.01)
    primed_seconds = time.perf_counter() - started
    reactions: list[float] = []
    cpu_started = time.process_time()
    keys = [key for key, queued in api.queued.items() if queued]  # those with a Job left to admit
    for _ in range(completions):
        while keys and not api.queued[key := keys[rnd.randrange(len(keys))]]:
            keys.remove(key)
        if not keys:
            break
        api.complete(api.running[key].pop(rnd.randrange(len(api.running[key]))))
        _, uid = sent = await api.patched.get()
        reactions.append(sent[0] - api.seen_at)
        assert uid in api.running[key]
        await asyncio.sleep(interval)
    cpu = time.process_time() - cpu_started
    leading.cancel()
    await asyncio.gather(leading, return_exceptions=True)
    await engine.close()
    ordered = sorted(reactions)
    return {
        "tracked": len(api.bodies),
        "keys": len(api.queued),
        "completions": len(reactions),
        "reaction_ms": {
            "p50": round(statistics.median(ordered) * 1000, 3),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
            "max": round(ordered[-1] * 1000, 3),
        },
        "cpu_ms_per_completion": round(cpu / len(reactions) * 1000, 3),
        "listed_and_primed_seconds": round(primed_seconds, 2),
        "status_writes": api.status_writes,
    }


def run(params: Params, log_dir: Path) -> dict[str, Document]:
    rnd = random.Random(params.seed)
    by_size: dict[str, dict[str, Any]] = {}
    for size in sorted(int(s) for s in params.sizes.split(",") if s):
        print(f"    reaction: {size} tracked Jobs", flush=True)
        by_size[str(size)] = asyncio.run(measure(size, params.completions, params.interval_seconds, rnd))
        gc.collect()
    targets = [
        target(
            f"reaction p99 at {result['tracked']:,} tracked Jobs (completion seen → admission sent)",
            f"≤ {TARGET_P99_MS:g} ms",
            f"{result['reaction_ms']['p99']:.2f} ms (p50 {result['reaction_ms']['p50']:.2f}, "
            f"max {result['reaction_ms']['max']:.1f}; {result['cpu_ms_per_completion']:.2f} ms CPU per completion)",
            result["reaction_ms"]["p99"] <= TARGET_P99_MS,
        )
        for result in by_size.values()
    ]
    return {
        "reaction": {
            "parameters": asdict(params),
            "results": {"by_tracked_jobs": by_size},
            "targets": targets,
        }
    }
