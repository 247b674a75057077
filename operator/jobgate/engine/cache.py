"""What jobgate knows of the cluster: policies and small Job views, newest resourceVersion wins.

Watch events and full LISTs both feed this cache. Resource versions are compared
as integers (Kubernetes documents them as comparable since KEP-5504), so a late
event never overwrites a fresher LIST, and a LIST removes the Jobs that vanished
while no watch was running — a new watch replays nothing of the dead.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from jobgate.core.admission import PolicyIndex, PolicyRef, reaches
from jobgate.core.incremental import IncrementalPlanner
from jobgate.core.jobs import JobView
from jobgate.core.policy import ConcurrencyPolicy, Condition


@dataclass
class PolicyCache:
    """The policies, on every replica (the webhook needs them): fed by Kopf's watch and LISTs."""

    policies: dict[PolicyRef, ConcurrencyPolicy] = field(default_factory=dict)
    policy_versions: dict[PolicyRef, int] = field(default_factory=dict)
    # Set once policies were listed: only then may the webhook answer.
    primed: bool = False
    _policy_index: PolicyIndex | None = None  # rebuilt on first use after any policy change
    version: int = 0  # counts the changes to the policies: a term's planner follows them when it moved
    # Called after each change to the policies (the webhook's matchConditions follow them).
    listeners: list[Callable[[], None]] = field(default_factory=list)
    # Called with (before, after) for each policy added (before None), changed or deleted (after None),
    # whether a watch event or a LIST brought it: the leader's streams follow them.
    policy_listeners: list[Callable[[ConcurrencyPolicy | None, ConcurrencyPolicy | None], None]] = field(
        default_factory=list
    )
    # More conditions for a policy's status, from outside the engine (the webhook's scope). Here, not
    # on a term's StatusWriter: they outlive terms, as the policies do.
    condition_sources: list[Callable[[ConcurrencyPolicy], Condition | None]] = field(default_factory=list)
    # The Namespaces' labels, by name, for ClusterConcurrencyPolicies' namespaceSelectors: fed on every
    # replica (the webhook decides governance) with `--cluster-policies` only.
    namespaces: dict[str, Mapping[str, str]] = field(default_factory=dict)
    # Called with a namespace's name whenever its labels change (or it is deleted), e.g. for a planner's
    # upsert_namespace: it must know every Namespace's labels, for the cluster policies still to come.
    namespace_listeners: list[Callable[[str], None]] = field(default_factory=list)
    # The resourceVersion of the newest state seen of each Namespace, deleted ones too.
    namespace_versions: dict[str, int] = field(default_factory=dict)

    @property
    def policy_index(self) -> PolicyIndex:
        if self._policy_index is None:
            self._policy_index = PolicyIndex(self.policies.values(), self.namespaces)
        return self._policy_index

    def put_namespace(self, name: str, labels: Mapping[str, str], resource_version: int) -> bool:
        """Keep a Namespace's labels unless a newer state is known; True when the ClusterConcurrencyPolicies
        that reach it changed."""
        if resource_version < self.namespace_versions.get(name, 0):
            return False  # a LIST or a read that left before the event we have
        self.namespace_versions[name] = resource_version
        if self.namespaces.get(name) == labels:
            return False
        reached = self._reaching(name)
        self.namespaces[name] = labels
        return self._reach_changed(name, reached)

    def delete_namespace(self, name: str, resource_version: int) -> bool:
        if resource_version < self.namespace_versions.get(name, 0):
            return False
        self.namespace_versions[name] = resource_version  # kept: a late event must not bring it back
        if name not in self.namespaces:
            return False
        reached = self._reaching(name)
        del self.namespaces[name]
        return self._reach_changed(name, reached)

    def replace_namespaces(self, listed: Iterable[tuple[str, Mapping[str, str], int]], list_version: int) -> list[str]:
        """Take a LIST of the Namespaces taken at `list_version`; return those that cluster policies now reach
        differently. One it lacks is deleted only if what we know of it is older than the LIST."""
        found = set()
        changed = []
        for name, labels, version in listed:
            found.add(name)
            if self.put_namespace(name, labels, version):
                changed.append(name)
        missing = [name for name in self.namespaces if name not in found]
        deleted = [name for name in missing if self.delete_namespace(name, list_version)]
        # Tombstones older than this LIST can no longer be contradicted by the watch (as for Jobs).
        self.namespace_versions = {
            name: version
            for name, version in self.namespace_versions.items()
            if name in self.namespaces or version >= list_version
        }
        return changed + deleted

    def _reaching(self, namespace: str) -> list[PolicyRef]:
        return [ref for ref, p in self.policies.items() if p.cluster_scoped and reaches(p, namespace, self.namespaces)]

    def _reach_changed(self, namespace: str, before: list[PolicyRef]) -> bool:
        for listener in self.namespace_listeners:
            listener(namespace)
        if self._reaching(namespace) == before:
            return False
        self._policy_index = None  # it remembers which policies reach each namespace, and govern each Job
        return True

    def forget_governance(self, uid: str) -> None:
        if self._policy_index is not None:
            self._policy_index.forget(uid)

    def put_policy(self, policy: ConcurrencyPolicy, resource_version: int) -> bool:
        ref = (policy.namespace, policy.name)
        if self.policy_versions.get(ref, -1) >= resource_version and ref in self.policies:
            return False
        before = self.policies.get(ref)
        changed = before != policy
        self.policies[ref] = policy
        self.policy_versions[ref] = resource_version
        if changed:
            self._policies_changed(before, policy)
        return changed

    def delete_policy(self, ref: PolicyRef) -> bool:
        self.policy_versions.pop(ref, None)
        self._policy_index = None
        before = self.policies.pop(ref, None)
        if before is None:
            return False
        self._policies_changed(before, None)
        return True

    def _policies_changed(self, before: ConcurrencyPolicy | None, after: ConcurrencyPolicy | None) -> None:
        self._policy_index = None
        self.version += 1
        for listener in self.listeners:
            listener()
        for policy_listener in self.policy_listeners:
            policy_listener(before, after)

    def replace_policies(
        self,
        policies: Iterable[tuple[ConcurrencyPolicy, int]],
        list_version: int,
        namespace: str | None = None,
        cluster: bool = False,
    ) -> None:
        """Take a LIST of ConcurrencyPolicies (of one namespace, or all), or with `cluster` of the
        ClusterConcurrencyPolicies: the policies of that scope it lacks were deleted."""
        listed = set()
        for policy, rv in policies:
            listed.add((policy.namespace, policy.name))
            self.put_policy(policy, rv)

        def in_scope(ref: PolicyRef) -> bool:
            if cluster or not ref[0]:
                return cluster and not ref[0]
            return namespace is None or ref[0] == namespace

        for ref in [r for r in self.policies if r not in listed and in_scope(r)]:
            if self.policy_versions.get(ref, 0) < list_version:
                self.delete_policy(ref)


@dataclass
class JobCache:
    """The Jobs one leadership term knows, as small views: made empty when a term begins, dropped when it ends.

    Once primed, every change to `jobs` is also a change to `planner`, which keeps the
    decision state (running and queued per key) up to date event by event: a decision
    costs what changed, not the number of Jobs tracked.
    """

    policies: PolicyCache
    jobs: dict[str, JobView] = field(default_factory=dict)  # by uid
    # uid -> resourceVersion at deletion: late events of a deleted Job must not revive it.
    deleted_jobs: dict[str, int] = field(default_factory=dict)
    # Set once every stream was listed: only then may decisions (and releases) be made.
    primed: bool = False
    planner: IncrementalPlanner = field(default_factory=IncrementalPlanner)  # the same Jobs, once primed
    # Jobs stored since the last decision pass took them: their Queued event or warning may be due.
    touched: set[str] = field(default_factory=set)
    _planned_version: int = -1  # the PolicyCache.version that `planner` follows

    def prime(self) -> None:
        """Every stream was listed: build the planner from the Jobs in one go, and decide from now on.

        The objects it makes live as long as the term: `gc.freeze()` keeps the collector's
        full passes from walking them over and over (at 100,000 Jobs each such pass held the
        loop for tens of milliseconds); `close()` hands them back.
        """
        self.planner = IncrementalPlanner(self.policies.policies.values(), self.jobs.values(), self.policies.namespaces)
        self._planned_version = self.policies.version
        self.policies.namespace_listeners.append(self._namespace_changed)
        self.touched.update(self.jobs)
        self.primed = True
        gc.freeze()

    def close(self) -> None:
        """The term ended: what `prime` froze may be collected again."""
        if self.primed:
            self.policies.namespace_listeners.remove(self._namespace_changed)
            gc.unfreeze()
            self.primed = False

    def _namespace_changed(self, name: str) -> None:
        """A Namespace was relabeled or deleted: the cluster policies that reach its Jobs may differ."""
        labels = self.policies.namespaces.get(name)
        if labels is None:
            reached_otherwise = self.planner.remove_namespace(name)
        else:
            reached_otherwise = self.planner.upsert_namespace(name, labels)
        if reached_otherwise:  # its Jobs may be governed anew: their Queued events may be due
            self.touched.update(uid for uid, job in self.jobs.items() if job.namespace == name)

    def follow_policies(self) -> IncrementalPlanner:
        """The planner, with the policies as they are now; if one may govern other Jobs than it did, every Job
        is looked at anew (for its Queued event)."""
        if self._planned_version != self.policies.version:
            self._planned_version = self.policies.version
            if self.planner.follow_policies(self.policies.policies):
                self.touched.update(self.jobs)
        return self.planner

    def take_touched(self) -> list[JobView]:
        """The Jobs stored since the last call that are still here."""
        touched = [self.jobs[uid] for uid in self.touched if uid in self.jobs]
        self.touched.clear()
        return touched

    def put_job(self, view: JobView) -> JobView | None:
        """Store the view unless something newer is known; return the view it replaced, if it changed."""
        deleted_at = self.deleted_jobs.get(view.uid)
        if deleted_at is not None:
            if view.resource_version < deleted_at:
                return None  # a late event of a deleted Job
            del self.deleted_jobs[view.uid]  # it only left one watch's selector, and entered another's
        old = self.jobs.get(view.uid)
        if old is not None and old.resource_version >= view.resource_version:
            return None
        self.jobs[view.uid] = view
        if self.primed:
            self.planner.upsert_job(view)
        self.touched.add(view.uid)
        return old if old is not None else view

    def delete_job(self, uid: str, resource_version: int) -> JobView | None:
        """Drop a Job a watch says DELETED at resource_version, unless a state as new is known.

        A watch with a label selector also says DELETED, with the version of the change,
        when a Job stops matching it: another watch may have brought that very version.
        """
        old = self.jobs.get(uid)
        if old is not None and old.resource_version >= resource_version:
            return None
        self.deleted_jobs[uid] = max(resource_version, self.deleted_jobs.get(uid, 0))
        return self._drop(uid)

    def forget_job(self, view: JobView) -> JobView | None:
        """Drop a Job that stopped mattering (no policy governs it), unless we know a newer state."""
        old = self.jobs.get(view.uid)
        if old is None or old.resource_version > view.resource_version:
            return None
        return self._drop(view.uid)

    def _drop(self, uid: str) -> JobView | None:
        self.policies.forget_governance(uid)
        if self.primed:
            self.planner.remove_job(uid)
        return self.jobs.pop(uid, None)

    def apply_list(
        self,
        views: Iterable[JobView],
        list_version: int,
        covers: Callable[[JobView], bool] = lambda _: True,
        keep: Callable[[JobView], bool] = lambda _: True,
    ) -> list[JobView]:
        """Apply a LIST taken at list_version, keeping what `keep` accepts.

        Returns the cached Jobs that the LIST should have held (`covers`) but did not, and
        that are older than it: deleted, or relabeled out of its selector, since we saw them.
        Which of the two, the caller finds out; they stay here until then.
        """
        listed = set()
        for view in views:
            listed.add(view.uid)
            if keep(view):
                self.put_job(view)
            else:
                self.forget_job(view)
        # Tombstones older than this LIST can no longer be contradicted by this watch.
        self.deleted_jobs = {uid: rv for uid, rv in self.deleted_jobs.items() if rv >= list_version}
        return [
            job
            for uid, job in self.jobs.items()
            if uid not in listed and job.resource_version < list_version and covers(job)
        ]
