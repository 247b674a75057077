"""Which Job creations the API server sends to jobgate's webhook: a CEL matchCondition built from the policies.

A Job that no policy governs must be created as if jobgate did not exist, even
while jobgate is down (with `failurePolicy: Fail` the API server refuses every
Job it cannot get an answer for). So the webhook's `matchConditions` say, per
namespace, "one of this namespace's policies selects the Job": the API server
evaluates that before calling, and calls only for governed Jobs.

One expression, an OR over namespaces, because matchConditions are ANDed. It
must stay small. Measured on kube-apiserver 1.36 (tests/test_webhook_scope.py
and the figures below): an expression over 100,000 characters is refused at
write; evaluating one of 100,000 characters of these shapes stays far below the
runtime cost limit (a dry run costs the same as with no condition); but
compiling it when the configuration is written grows faster than its number of
selector terms — 50 terms 0.05 s, 100 terms up to 0.7 s, 200 terms 1.2-2 s on
two busy cores — and every policy change rewrites it. So the expression keeps
within `EXPRESSION_BUDGET` characters and `TERM_BUDGET` selector terms: past
them, the namespaces with the largest selectors are coarsened to "every Job of
the namespace", largest first; if even the namespace list does not fit, there is
no condition at all and the webhook sees every Job in its scope, as without this
module.

A ClusterConcurrencyPolicy adds its selector as a term of its own, in every
namespace but the known ones its namespaceSelector leaves out, by name. The admission CEL
environment declares `namespaceObject`, but kube-apiserver 1.36 does not fill it
in for webhooks' matchConditions: an expression that reads
`namespaceObject.metadata` fails ("no such key: metadata"), and under
`failurePolicy: Fail` the Job is refused (tests/test_cluster_policies.py checks
this). So the names come from the Namespace labels jobgate watches, and the
condition is rewritten when they change. A namespace jobgate does not know yet
is not left out: its Jobs reach the webhook, which reads its labels. A Job
created in a known namespace in the moment between its relabel into the policy's
reach and that rewrite is not sent to the webhook, and the engine's backstop
suspends it again if it takes a key over its limit. When the names do not fit in
the budget, the policy has its selector in any namespace: then the webhook also
sees (and, while jobgate is down, refuses) such Jobs of namespaces it does not
govern.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from jobgate.core.admission import NO_NAMESPACES, NamespaceLabels, reaches
from jobgate.core.policy import ConcurrencyPolicy, LabelSelector

CONDITION_NAME = "governed-by-a-concurrencypolicy"
# The API server never sends these namespaces' Jobs to the webhook (the chart's namespaceSelector).
ALWAYS_EXCLUDED = frozenset({"kube-system"})
EXPRESSION_BUDGET = 20_000  # characters; the API server's limit is 100,000
TERM_BUDGET = 100  # distinct selectors written out, over all namespaces

_LABELS = "object.metadata.labels"
_HAS_LABELS = "has(object.metadata.labels)"
_NAMESPACE = "request.namespace"
_WHOLE_NAMESPACES = _NAMESPACE + " in [{}]"
_SELECTED_IN_NAMESPACE = _NAMESPACE + " == {} && ({})"
_OR = " || "


class Precision(Enum):
    """How closely the webhook's condition follows a namespace's policies."""

    SELECTOR = "Selector"  # only the Jobs its policies select
    NAMESPACE = "Namespace"  # every Job of the namespace: the selectors did not fit
    UNSCOPED = "Unscoped"  # every Job in the webhook's scope: not even the namespaces fit
    EXCLUDED = "Excluded"  # none: the webhook never sees this namespace
    ANY_NAMESPACE = "AnyNamespace"  # cluster policies': the Jobs their selectors match in every namespace


@dataclass(frozen=True)
class WebhookScope:
    """The matchConditions to write, and where they are coarser than the policies."""

    conditions: tuple[Mapping[str, str], ...]
    precision: Mapping[str, Precision]  # by namespace with policies ("" for cluster policies); absent: not called

    def precision_for(self, namespace: str) -> Precision:
        return self.precision.get(namespace, Precision.SELECTOR)


def webhook_scope(
    policies: Iterable[ConcurrencyPolicy],
    budget: int = EXPRESSION_BUDGET,
    term_budget: int = TERM_BUDGET,
    namespaces: NamespaceLabels = NO_NAMESPACES,
) -> WebhookScope:
    """The webhook's matchConditions for these policies: exact where they fit in the budgets.

    `namespaces`: every Namespace's labels, for the names that cluster policies' namespaceSelectors select.
    """
    policies = list(policies)
    cluster = [p for p in policies if p.cluster_scoped]
    if cluster:
        restricted = _scope([p for p in policies if not p.cluster_scoped], budget, term_budget, namespaces, cluster)
        if restricted.precision.get("") != Precision.UNSCOPED:
            return restricted
    return _scope(policies, budget, term_budget, namespaces, [])


def _scope(
    policies: Iterable[ConcurrencyPolicy],
    budget: int,
    term_budget: int,
    namespaces: NamespaceLabels,
    by_name: list[ConcurrencyPolicy],
) -> WebhookScope:
    """`webhook_scope`, with the cluster policies in `policies` in any namespace, and those of `by_name`
    kept out of the known namespaces they do not reach (by name)."""
    selectors: dict[str, set[str]] = defaultdict(set)
    excluded: dict[str, Precision] = {}
    cluster_terms: set[str] = set()
    for policy in by_name:
        term = selector_expression(policy.spec.selector)
        # By exclusion: a namespace jobgate does not know yet (made a moment ago, with its Jobs) is still
        # sent, and the webhook reads its labels then (service/handlers.py).
        left_out = sorted(n for n in namespaces if n not in ALWAYS_EXCLUDED and not reaches(policy, n, namespaces))
        if left_out:
            names = ", ".join(_literal(n) for n in left_out)
            cluster_terms.add(f"!({_NAMESPACE} in [{names}]) && ({term})")
        else:
            cluster_terms.add(term)
    in_any_namespace = False
    for policy in policies:
        if policy.cluster_scoped:
            cluster_terms.add(selector_expression(policy.spec.selector))
            in_any_namespace = True
        elif policy.namespace in ALWAYS_EXCLUDED:
            excluded[policy.namespace] = Precision.EXCLUDED
        else:
            selectors[policy.namespace].add(selector_expression(policy.spec.selector))
    # A namespace's terms, or None for every Job of the namespace (a policy with an empty
    # selector governs them all, and a coarsened namespace is taken whole).
    terms: dict[str, list[str] | None] = {
        namespace: None if "true" in exprs else sorted(exprs) for namespace, exprs in selectors.items()
    }
    precision = dict.fromkeys(terms, Precision.SELECTOR)
    anywhere = sorted(cluster_terms)  # cluster policies' Jobs: in any namespace, or in those named
    if by_name or in_any_namespace:
        excluded[""] = Precision.ANY_NAMESPACE if in_any_namespace else Precision.SELECTOR
    size = len(_WHOLE_NAMESPACES.format("")) + sum(_size(namespace, t) for namespace, t in terms.items())
    size += sum(len(term) + len("()") + len(_OR) for term in anywhere)
    count = sum(len(t) for t in terms.values() if t is not None) + len(anywhere)
    largest_first = sorted((n for n, t in terms.items() if t is not None), key=lambda n: -_size(n, terms[n]))
    for namespace in largest_first:
        if size <= budget and count <= term_budget:
            break
        size += _size(namespace, None) - _size(namespace, terms[namespace])
        count -= len(terms[namespace] or ())
        terms[namespace] = None
        precision[namespace] = Precision.NAMESPACE
    expression = _expression(terms, anywhere)
    if len(expression) > budget or count > term_budget:  # cluster policies' selectors cannot be coarsened
        return WebhookScope((), {**dict.fromkeys([*terms, *([""] if "" in excluded else [])], Precision.UNSCOPED)})
    return WebhookScope(({"name": CONDITION_NAME, "expression": expression},), {**precision, **excluded})


def _expression(terms: Mapping[str, list[str] | None], anywhere: list[str]) -> str:
    whole = sorted(namespace for namespace, selected in terms.items() if selected is None)
    parts = [_WHOLE_NAMESPACES.format(", ".join(_literal(n) for n in whole))] if whole else []
    parts += [
        _SELECTED_IN_NAMESPACE.format(_literal(namespace), _OR.join(selected))
        for namespace, selected in sorted(terms.items())
        if selected is not None
    ]
    parts += [f"({term})" for term in anywhere]
    return _OR.join(parts) or "false"


def _size(namespace: str, selected: list[str] | None) -> int:
    """What a namespace adds to the expression's length, at most."""
    if selected is None:
        return len(_literal(namespace)) + len(", ")
    return len(_SELECTED_IN_NAMESPACE.format(_literal(namespace), _OR.join(selected))) + len(_OR)


def selector_expression(selector: LabelSelector) -> str:
    """CEL that is true for a Job (`object`) whose labels the selector matches; "true" for an empty selector."""
    requires_labels: list[str] = []  # true only for a Job with labels
    allows_unlabeled: list[str] = []  # also true for a Job without any label
    for key, value in sorted((selector.matchLabels or {}).items()):
        requires_labels.append(f"{_label(key)} == {_literal(value)}")
    for requirement in selector.matchExpressions or ():
        present = f"{_literal(requirement.key)} in {_LABELS}"
        values = f"[{', '.join(_literal(v) for v in requirement.values or ())}]"
        match requirement.operator:
            case "In":
                requires_labels.append(f"{present} && {_LABELS}[{_literal(requirement.key)}] in {values}")
            case "Exists":
                requires_labels.append(present)
            case "NotIn":
                allows_unlabeled.append(f"!({present} && {_LABELS}[{_literal(requirement.key)}] in {values})")
            case "DoesNotExist":
                allows_unlabeled.append(f"!({present})")
    requirements = " && ".join(requires_labels + allows_unlabeled)
    if requires_labels:
        return f"{_HAS_LABELS} && {requirements}"
    if allows_unlabeled:
        return f"(!{_HAS_LABELS} || {requirements})"
    return "true"


def _label(key: str) -> str:
    """The label's value, for a Job known to have labels; a missing key makes the comparison false."""
    return f"{_literal(key)} in {_LABELS} && {_LABELS}[{_literal(key)}]"


def _literal(text: str) -> str:
    """A CEL string literal (label keys, values and namespace names never need escapes, but be safe)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
