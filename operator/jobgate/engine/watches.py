"""Which Jobs the leader asks the API server for: those a policy selects, and those jobgate queued.

Each stream is one LIST+WATCH with a server-side label selector, so that Jobs
no policy could govern are not sent to the operator, plus one per watched scope
for the Jobs that carry jobgate's queued label, so that a Job queued under a
policy deleted while no replica led is still found, and released.

Every stream holds a connection for as long as it runs, so their number is
bounded, whatever the number of policies:

- a namespace with at most `SELECTORS_PER_NAMESPACE` distinct policy selectors
  gets one stream per selector;
- past that, one stream for the namespace, filtered by what every one of its
  selectors requires (`union`): `app in (a,b,...)` for selectors that each pin
  `app`, `app` for selectors that each need it, nothing for selectors that
  share no requirement. The engine filters the rest client-side: a Job no
  policy governs is dropped as it arrives (`Engine._keeps`);
- a ClusterConcurrencyPolicy's selector counts in every watched scope (all
  namespaces, or each namespace the operator was given): the API server cannot
  select Jobs by their Namespace's labels, so Jobs of namespaces its
  namespaceSelector leaves out come too, and are dropped as they arrive;
- past `MOST_POLICY_STREAMS` streams in all, one stream per watched scope (every
  namespace, or each namespace the operator was given), filtered the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from jobgate.core.jobs import QUEUED_LABEL, JobView
from jobgate.core.policy import ConcurrencyPolicy, LabelSelector, LabelSelectorRequirement
from jobgate.core.selectors import matches, to_label_selector_string

SELECTORS_PER_NAMESPACE = 8
MOST_POLICY_STREAMS = 64
# A union's value list longer than this becomes "the label exists": the URL stays short, and the
# stream stays the same while policies with new values come and go.
MOST_UNION_VALUES = 64


@dataclass(frozen=True)
class JobStream:
    namespace: str | None  # None: every namespace
    selector: str  # the server-side label selector; "" selects every Job
    # The selector it was made from (None for the queued-label stream): tells which cached
    # Jobs a LIST of this stream speaks for. The string above already identifies it.
    policy_selector: LabelSelector | None = field(default=None, compare=False, hash=False)

    def covers(self, job: JobView) -> bool:
        """Whether the Job, with the labels we know, belongs to what this stream sends."""
        if self.namespace is not None and job.namespace != self.namespace:
            return False
        if self.policy_selector is None:
            return QUEUED_LABEL in job.labels
        return matches(self.policy_selector, job.labels)

    def __str__(self) -> str:
        return f"Jobs in {self.namespace or 'all namespaces'} matching {self.selector or '(everything)'!r}"


def both(*selectors: str | None) -> str:
    """Label selectors joined with AND (the API's comma)."""
    return ",".join(s for s in selectors if s)


def wanted(
    policies: Iterable[ConcurrencyPolicy],
    scopes: Iterable[str | None],
    job_selector: str | None,
    *,
    per_namespace: int = SELECTORS_PER_NAMESPACE,
    most: int = MOST_POLICY_STREAMS,
) -> set[JobStream]:
    """The streams that bring every Job some policy governs or jobgate queued, and as few others as they can."""
    scopes = tuple(scopes)

    def stream(namespace: str | None, selector: LabelSelector) -> JobStream:
        return JobStream(namespace, both(to_label_selector_string(selector), job_selector), selector)

    # A ClusterConcurrencyPolicy's Jobs are in any namespace of each scope (the Namespaces' labels are
    # not known to the API server's Job selectors: the engine drops those of other namespaces).
    by_namespace: dict[str | None, dict[str, LabelSelector]] = {}
    for policy in policies:
        selector = policy.spec.selector
        for namespace in scopes if policy.cluster_scoped else (policy.namespace,):
            by_namespace.setdefault(namespace, {})[to_label_selector_string(selector)] = selector
    policy_streams = set()
    for namespace, selectors in by_namespace.items():
        if len(selectors) > per_namespace:
            policy_streams.add(stream(namespace, union(selectors.values())))
        else:
            policy_streams.update(stream(namespace, selector) for selector in selectors.values())
    if len(policy_streams) > most:
        policy_streams = set()
        for scope in scopes:
            inside = [
                s for namespace, found in by_namespace.items() if scope in (None, namespace) for s in found.values()
            ]
            if inside:
                policy_streams.add(stream(scope, union(inside)))
    return {JobStream(scope, both(QUEUED_LABEL, job_selector)) for scope in scopes} | policy_streams


def union(selectors: Iterable[LabelSelector]) -> LabelSelector:
    """A selector that matches every Job any of `selectors` matches: what they all require, per label.

    Label selectors can only AND; a union of them is expressible only in part. Per label
    that every selector constrains: the values they allow, if each allows finitely many;
    "exists", if each needs the label; "does not exist", if none allows it. Labels some
    selector leaves free are left out. The result may match more: never less.
    """
    constraints = [_constraints(s) for s in selectors]
    shared = set(constraints[0]).intersection(*constraints[1:]) if constraints else set()
    requirements = []
    for key in sorted(shared):
        kinds = [c[key] for c in constraints]
        finite = [k for k in kinds if isinstance(k, frozenset)]
        if len(finite) == len(kinds):
            values = sorted(set().union(*finite))
            if len(values) <= MOST_UNION_VALUES:
                requirements.append(LabelSelectorRequirement(key=key, operator="In", values=values))
                continue
        if all(k != ABSENT for k in kinds):
            requirements.append(LabelSelectorRequirement(key=key, operator="Exists"))
        elif all(k == ABSENT for k in kinds):
            requirements.append(LabelSelectorRequirement(key=key, operator="DoesNotExist"))
    return LabelSelector(matchExpressions=requirements or None)


PRESENT, ABSENT = "present", "absent"


def _constraints(selector: LabelSelector) -> dict[str, frozenset[str] | str]:
    """Per label the selector constrains: the values it allows (a set), PRESENT or ABSENT."""
    found: dict[str, frozenset[str] | str] = {}

    def narrow(key: str, allowed: frozenset[str] | str) -> None:
        known = found.get(key)
        if known is None or known in (allowed, PRESENT):
            found[key] = allowed
        elif isinstance(known, frozenset) and isinstance(allowed, frozenset):
            found[key] = known & allowed
        elif allowed != PRESENT:  # ABSENT against a value, or a value against ABSENT
            found[key] = frozenset()  # the selector matches nothing: any bound holds for it

    for key, value in (selector.matchLabels or {}).items():
        narrow(key, frozenset([value]))
    for requirement in selector.matchExpressions or ():
        match requirement.operator:
            case "In":
                narrow(requirement.key, frozenset(requirement.values or ()))
            case "Exists":
                narrow(requirement.key, PRESENT)
            case "DoesNotExist":
                narrow(requirement.key, ABSENT)
            case "NotIn":
                pass  # allows the label's absence and every other value: no bound worth sending
    return found
