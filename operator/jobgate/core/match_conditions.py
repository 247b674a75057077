"""Which Job creations the API server sends to jobgate's webhook: a CEL matchCondition built from the policies.

A Job that no policy governs must be created as if jobgate did not exist, even
while jobgate is down (with `failurePolicy: Fail` the API server refuses every
Job it cannot get an answer for). So the webhook's `matchConditions` say, per
namespace, "one of this namespace's policies selects the Job": the API server
evaluates that before calling, and calls only for governed Jobs.

One expression, an OR over namespaces, because matchConditions are ANDed. It
must stay small: the API server refuses an expression of more than 100,000
characters, and stops evaluating one whose runtime cost passes its limit —
which, under `failurePolicy: Fail`, refuses the Job. When the exact expression
would be larger than `EXPRESSION_BUDGET`, the namespaces with the largest
selectors are coarsened to "every Job of the namespace", largest first, until
it fits; if even the namespace list does not fit, there is no condition at all
and the webhook sees every Job in its scope, as without this module.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from jobgate.core.policy import ConcurrencyPolicy, LabelSelector

CONDITION_NAME = "governed-by-a-concurrencypolicy"
# The API server never sends these namespaces' Jobs to the webhook (the chart's namespaceSelector).
ALWAYS_EXCLUDED = frozenset({"kube-system"})
# Well below the API server's 100,000-character limit. The runtime cost of these expressions is
# about one unit per character at most (measured on kube-apiserver 1.36 by
# tests/test_webhook_scope.py), so this also stays far from the limit of 1,000,000 per expression.
EXPRESSION_BUDGET = 50_000

_LABELS = "object.metadata.labels"
_HAS_LABELS = "has(object.metadata.labels)"
_NAMESPACE = "request.namespace"


class Precision(Enum):
    """How closely the webhook's condition follows a namespace's policies."""

    SELECTOR = "Selector"  # only the Jobs its policies select
    NAMESPACE = "Namespace"  # every Job of the namespace: the selectors did not fit
    UNSCOPED = "Unscoped"  # every Job in the webhook's scope: not even the namespaces fit
    EXCLUDED = "Excluded"  # none: the webhook never sees this namespace


@dataclass(frozen=True)
class WebhookScope:
    """The matchConditions to write, and where they are coarser than the policies."""

    conditions: tuple[Mapping[str, str], ...]
    precision: Mapping[str, Precision]  # by namespace with policies; absent: not called at all

    def precision_for(self, namespace: str) -> Precision:
        return self.precision.get(namespace, Precision.SELECTOR)


def webhook_scope(policies: Iterable[ConcurrencyPolicy], budget: int = EXPRESSION_BUDGET) -> WebhookScope:
    """The webhook's matchConditions for these policies: exact where they fit in `budget` characters."""
    selectors: dict[str, set[str]] = defaultdict(set)
    excluded: dict[str, Precision] = {}
    for policy in policies:
        if policy.namespace in ALWAYS_EXCLUDED:
            excluded[policy.namespace] = Precision.EXCLUDED
        else:
            selectors[policy.namespace].add(selector_expression(policy.spec.selector))
    # A namespace's term: the union of its selectors, or None for every Job of the namespace
    # (a policy with an empty selector governs them all).
    terms: dict[str, str | None] = {
        namespace: None if "true" in exprs else " || ".join(sorted(exprs)) for namespace, exprs in selectors.items()
    }
    precision = dict.fromkeys(terms, Precision.SELECTOR)
    size = len(_WHOLE_NAMESPACES.format("")) + sum(_size(namespace, term) for namespace, term in terms.items())
    largest_first = sorted((n for n, t in terms.items() if t is not None), key=lambda n: -len(terms[n] or ""))
    for namespace in largest_first:
        if size <= budget:
            break
        size += _size(namespace, None) - _size(namespace, terms[namespace])
        terms[namespace] = None
        precision[namespace] = Precision.NAMESPACE
    expression = _expression(terms)
    if len(expression) > budget:
        return WebhookScope((), {**dict.fromkeys(terms, Precision.UNSCOPED), **excluded})
    return WebhookScope(({"name": CONDITION_NAME, "expression": expression},), {**precision, **excluded})


_WHOLE_NAMESPACES = _NAMESPACE + " in [{}]"
_SELECTED_IN_NAMESPACE = _NAMESPACE + " == {} && ({})"
_OR = " || "


def _expression(terms: Mapping[str, str | None]) -> str:
    whole = sorted(namespace for namespace, term in terms.items() if term is None)
    parts = [_WHOLE_NAMESPACES.format(", ".join(_literal(n) for n in whole))] if whole else []
    parts += [
        _SELECTED_IN_NAMESPACE.format(_literal(namespace), term)
        for namespace, term in sorted(terms.items())
        if term is not None
    ]
    return _OR.join(parts) or "false"


def _size(namespace: str, term: str | None) -> int:
    """What a namespace adds to the expression's length, at most."""
    if term is None:
        return len(_literal(namespace)) + len(", ")
    return len(_SELECTED_IN_NAMESPACE.format(_literal(namespace), term)) + len(_OR)


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
