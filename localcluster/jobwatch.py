"""An independent observer of Jobs: follows the watch stream and checks the limits at every event.

It shares only the pure core with the operator (to compute keys), never its
cache or its decisions: what it sees is what the API server says, in order.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any

import kubernetes.client
import kubernetes.watch
import urllib3

from jobgate.core.admission import governance
from jobgate.core.jobs import JobView
from jobgate.core.policy import ConcurrencyPolicy

Slot = tuple[str, tuple[str, ...]]

RETRY_SECONDS = 0.2  # after the API server or etcd went away: the fault tests kill and restart them
READ_TIMEOUT_SECONDS = 30  # longer than a watch lasts (5 s), shorter than a hung connection would hang


def limit_of(policy: ConcurrencyPolicy, key: tuple[str, ...]) -> int:
    """The key's limit, read from the spec here rather than through the operator's own lookup."""
    named = dict(zip(policy.spec.keyLabels, key, strict=True))
    return next((e.maxConcurrent for e in policy.spec.limits if e.key == named), policy.spec.maxConcurrent)


class JobWatch:
    """The Jobs of one namespace, by name; or, with `namespace` None, of the namespaces `among`, by "ns/name".

    `namespaces`: the Namespaces' labels, for ClusterConcurrencyPolicies (`relabel` changes them).
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        namespace: str | None,
        *,
        among: Collection[str] = (),
        namespaces: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.namespace = namespace
        self.among = set(among)
        self.namespace_labels: dict[str, Mapping[str, str]] = dict(namespaces or {})
        self.jobs: dict[str, JobView] = {}  # by name, or "ns/name" across namespaces
        self.policies: list[ConcurrencyPolicy] = []
        self.peak: Counter[Slot] = Counter()  # the most Jobs ever seen running at once, per policy and key
        self.admitted_over_limit: list[str] = []  # admissions by jobgate that took a key over its limit
        self.interruptions = 0  # watches that ended in an error (the API server away) and were resumed
        # Running Jobs per policy and key, kept up to date event by event: recounting every Job on
        # every event would cost O(jobs) each time, too slow for the benchmarks' tens of thousands.
        self._running: Counter[Slot] = Counter()
        self.changed = threading.Condition()
        # Called under the lock on every change with (monotonic time seen, before, after): for benchmarks.
        self.listeners: list[Callable[[float, JobView | None, JobView | None], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._started = threading.Event()

    def __enter__(self) -> JobWatch:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def govern(self, policy: ConcurrencyPolicy) -> None:
        """Tell the watch which policy to check (the test's own copy, not the operator's)."""
        with self.changed:
            self.policies = [p for p in self.policies if p.name != policy.name] + [policy]
            self._recount()

    def relabel(self, namespace: str, labels: Mapping[str, str]) -> None:
        """Tell the watch a Namespace's labels (the test's own copy) before changing them."""
        with self.changed:
            self.namespace_labels[namespace] = dict(labels)
            self._recount()

    def _recount(self) -> None:
        self._running = Counter()
        for job in self.jobs.values():
            if job.running:
                self._running.update(self._slots(job))
        for slot, count in self._running.items():
            self.peak[slot] = max(self.peak[slot], count)

    def _follow(self) -> None:
        version = ""  # resume each watch where the last one ended, so that no transition is missed
        while not self._stop.is_set():
            watch = kubernetes.watch.Watch()
            self._started.set()
            try:
                listing: tuple[Any, ...] = (
                    (self.batch.list_namespaced_job, self.namespace)
                    if self.namespace is not None
                    else (self.batch.list_job_for_all_namespaces,)
                )
                for event in watch.stream(
                    *listing,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=5,
                    deserialize=False,
                    _request_timeout=(5, READ_TIMEOUT_SECONDS),
                ):
                    body = event["object"]
                    version = body["metadata"].get("resourceVersion") or version
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self._apply(event["type"], body)
                    if self._stop.is_set():
                        watch.stop()
                        break
            except KeyError as e:
                if e.args != ("raw_object",):
                    raise
                # kubernetes 37.0.2's watch.py reads an ERROR event's 'raw_object', which only its
                # deserialize=True path sets: the event is almost always 410 Gone (an API server just
                # restarted keeps no older versions). Whatever it was, a fresh list is the truth.
                version = ""
            except kubernetes.client.ApiException as e:
                if e.status == 410:
                    version = ""  # too old: start over from a fresh list
                else:  # e.g. 500 or 504 while etcd is away: the same watch again, from where it was
                    self._interrupted()
            except (urllib3.exceptions.HTTPError, OSError):
                self._interrupted()  # the API server went away; resume where we were once it is back

    def _interrupted(self) -> None:
        self.interruptions += 1
        self._stop.wait(RETRY_SECONDS)

    def _name(self, view: JobView) -> str:
        return view.name if self.namespace is not None else f"{view.namespace}/{view.name}"

    def _apply(self, kind: str, body: dict[str, Any]) -> None:
        view = JobView.from_body(body)
        if self.namespace is None and view.namespace not in self.among:
            return
        name = self._name(view)
        seen = time.monotonic()
        with self.changed:
            before = self.jobs.get(name)
            if before is not None and before.running:
                self._running.subtract(self._slots(before))
            if kind == "DELETED":
                self.jobs.pop(name, None)
            else:
                self.jobs[name] = view
                if view.running:
                    slots = self._slots(view)
                    self._running.update(slots)
                    for slot in slots:  # only counts that grew can make a new peak
                        self.peak[slot] = max(self.peak[slot], self._running[slot])
            newly_running = view.running and (before is None or not before.running) and kind != "DELETED"
            if newly_running and view.admitted_at is not None:
                for gov in governance(self.policies, view, self.namespace_labels):
                    slot = (gov.policy.name, gov.key)
                    if self._running[slot] > limit_of(gov.policy, gov.key):
                        running = sorted(n for n, j in self.jobs.items() if j.running and slot in self._slots(j))
                        self.admitted_over_limit.append(
                            f"{name} took {gov.policy.name}{gov.key} over (running: {', '.join(running)})"
                        )
            for listener in self.listeners:
                listener(seen, before, None if kind == "DELETED" else view)
            self.changed.notify_all()

    def queued_with_free_slot(self) -> list[str]:
        """Jobs waiting although every key they need has a free slot, by this watch's own count.

        A Job is here for a moment between a slot freeing and the next admission;
        one still here when the work should be done is stuck.
        """
        with self.changed:
            policies = {p.name: p for p in self.policies}
            stuck = []
            for name, job in sorted(self.jobs.items()):
                slots = self._slots(job) if job.queued else []
                if slots and all(self._running[(p, key)] < limit_of(policies[p], key) for p, key in slots):
                    stuck.append(name)
            return stuck

    def running_counts(self) -> Counter[Slot]:
        return +self._running  # a copy without the keys that dropped to zero

    def _slots(self, job: JobView) -> list[Slot]:
        return [(gov.policy.name, gov.key) for gov in governance(self.policies, job, self.namespace_labels)]

    def wait_for(self, predicate: Callable[[JobWatch], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{what} did not happen within {timeout:.0f}s; jobs: {self.describe()}")
                self.changed.wait(remaining)

    def finished(self, *names: str) -> bool:
        return all(n in self.jobs and self.jobs[n].finished for n in names)

    def all_finished(self, count: int) -> bool:
        return len(self.jobs) >= count and all(j.finished for j in self.jobs.values())

    def running(self) -> set[str]:
        return {name for name, job in self.jobs.items() if job.running}

    def describe(self) -> str:
        states = {
            name: "finished" if j.finished else "running" if j.running else "held" if j.held else "queued"
            for name, j in sorted(self.jobs.items())
        }
        return ", ".join(f"{n}={s}" for n, s in states.items())
