"""The webhook's matchConditions as a pure function of the policies: exact, coarser only when too large.

Whether the API server agrees with `selectors.matches` on every selector is
checked against a real kube-apiserver in tests/test_webhook_scope.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from jobgate.core.match_conditions import (
    CONDITION_NAME,
    EXPRESSION_BUDGET,
    TERM_BUDGET,
    Precision,
    selector_expression,
    webhook_scope,
)
from jobgate.core.policy import ClusterPolicySpec, ConcurrencyPolicy, LabelSelector


def policy(namespace: str, name: str, selector: dict[str, Any]) -> ConcurrencyPolicy:
    return ConcurrencyPolicy.model_validate(
        {
            "namespace": namespace,
            "name": name,
            "uid": f"{namespace}-{name}",
            "generation": 1,
            "created": 0.0,
            "spec": {"selector": selector, "keyLabels": [], "maxConcurrent": 1},
        }
    )


def expression(policies: list[ConcurrencyPolicy], budget: int = EXPRESSION_BUDGET) -> str:
    (condition,) = webhook_scope(policies, budget).conditions
    assert condition["name"] == CONDITION_NAME
    return condition["expression"]


def test_without_policies_the_webhook_is_called_for_nothing() -> None:
    scope = webhook_scope([])
    assert scope.conditions == ({"name": CONDITION_NAME, "expression": "false"},)
    assert scope.precision == {}


def test_each_namespace_gets_the_union_of_its_selectors() -> None:
    policies = [
        policy("billing", "exports", {"matchLabels": {"app": "export"}}),
        policy("billing", "imports", {"matchLabels": {"app": "import"}}),
        policy("backups", "db", {"matchExpressions": [{"key": "database", "operator": "Exists"}]}),
    ]
    assert expression(policies) == (
        "request.namespace == 'backups' && (has(object.metadata.labels) && 'database' in object.metadata.labels)"
        " || request.namespace == 'billing' && ("
        "has(object.metadata.labels) && 'app' in object.metadata.labels && object.metadata.labels['app'] == 'export'"
        " || "
        "has(object.metadata.labels) && 'app' in object.metadata.labels && object.metadata.labels['app'] == 'import')"
    )
    assert webhook_scope(policies).precision == {"billing": Precision.SELECTOR, "backups": Precision.SELECTOR}


def test_the_expression_does_not_depend_on_the_order_of_policies() -> None:
    policies = [policy(ns, name, {"matchLabels": {"app": name}}) for ns in "ab" for name in ("x", "y")]
    assert expression(policies) == expression(list(reversed(policies)))


def test_identical_selectors_are_written_once() -> None:
    same = {"matchLabels": {"app": "export"}}
    assert expression([policy("a", "one", same), policy("a", "two", same)]) == expression([policy("a", "one", same)])


def test_an_empty_selector_takes_the_whole_namespace() -> None:
    policies = [policy("a", "all", {}), policy("a", "some", {"matchLabels": {"app": "x"}}), policy("b", "all", {})]
    assert expression(policies) == "request.namespace in ['a', 'b']"


def test_selectors_that_only_exclude_also_match_jobs_without_labels() -> None:
    only_negative = LabelSelector.model_validate(
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["free"]}]}
    )
    assert selector_expression(only_negative).startswith("(!has(object.metadata.labels) || ")
    mixed = LabelSelector.model_validate(
        {"matchLabels": {"app": "x"}, "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}
    )
    assert selector_expression(mixed).startswith("has(object.metadata.labels) && ")


def test_kube_system_is_never_in_the_expression() -> None:
    scope = webhook_scope([policy("kube-system", "p", {}), policy("a", "p", {})])
    assert scope.conditions[0]["expression"] == "request.namespace in ['a']"
    assert scope.precision["kube-system"] is Precision.EXCLUDED


def big_selector(values: int) -> dict[str, Any]:
    return {"matchExpressions": [{"key": "customer", "operator": "In", "values": [f"c{i:05}" for i in range(values)]}]}


def test_over_budget_the_largest_namespaces_are_coarsened_first() -> None:
    policies = [
        policy("huge", "p", big_selector(256)),
        policy("large", "p", big_selector(100)),
        policy("small", "p", {"matchLabels": {"app": "x"}}),
    ]
    exact = expression(policies)
    without_huge = expression(policies, budget=len(exact) - 1)
    scope = webhook_scope(policies, budget=len(exact) - 1)
    assert scope.precision == {"huge": Precision.NAMESPACE, "large": Precision.SELECTOR, "small": Precision.SELECTOR}
    assert without_huge.startswith("request.namespace in ['huge'] || request.namespace == 'large' && (")
    assert len(without_huge) < len(exact)
    tighter = webhook_scope(policies, budget=len(without_huge) - 1)
    assert tighter.precision == {"huge": Precision.NAMESPACE, "large": Precision.NAMESPACE, "small": Precision.SELECTOR}
    assert len(tighter.conditions[0]["expression"]) <= len(without_huge) - 1


def test_too_many_selectors_are_coarsened_like_too_long_ones() -> None:
    # Short, but many: the API server's compile time grows with the number of selectors.
    crowded = [policy("crowded", f"p{i}", {"matchLabels": {"app": f"a{i}"}}) for i in range(TERM_BUDGET)]
    scope = webhook_scope([*crowded, policy("calm", "p", {"matchLabels": {"app": "x"}})])
    assert scope.precision == {"crowded": Precision.NAMESPACE, "calm": Precision.SELECTOR}
    assert webhook_scope(crowded).precision == {"crowded": Precision.SELECTOR}  # exactly the budget fits


def test_when_not_even_the_namespaces_fit_there_is_no_condition() -> None:
    policies = [policy(f"namespace-{i}", "p", {"matchLabels": {"app": "x"}}) for i in range(10)]
    scope = webhook_scope(policies, budget=50)
    assert scope.conditions == ()
    assert set(scope.precision.values()) == {Precision.UNSCOPED}


def test_the_budget_holds_for_any_number_of_policies() -> None:
    policies = [policy(f"team-{i % 300}", f"p{i}", big_selector(1 + i % 40)) for i in range(2000)]
    scope = webhook_scope(policies)
    expression = scope.conditions[0]["expression"]
    assert len(expression) <= EXPRESSION_BUDGET
    assert expression.count("has(object.metadata.labels)") <= TERM_BUDGET  # one per selector
    assert Precision.NAMESPACE in scope.precision.values()
    assert Precision.SELECTOR in scope.precision.values()


TENANTS = {"matchLabels": {"tenant": "true"}}
NAMESPACES = {"t1": {"tenant": "true"}, "t2": {"tenant": "true"}, "other": {}, "kube-system": {"tenant": "true"}}


def cluster_policy(name: str, selector: dict[str, Any], namespaces: dict[str, Any] = TENANTS) -> ConcurrencyPolicy:
    return ConcurrencyPolicy.model_validate(
        {
            "namespace": "",
            "name": name,
            "uid": f"cluster-{name}",
            "generation": 1,
            "created": 0.0,
            "spec": ClusterPolicySpec.model_validate(
                {"selector": selector, "namespaceSelector": namespaces, "maxConcurrent": 1}
            ),
        }
    )


TEAM = {"matchExpressions": [{"key": "team", "operator": "Exists"}]}


def test_a_cluster_policy_adds_its_selector_but_in_the_known_namespaces_it_leaves_out() -> None:
    """matchConditions cannot read a Namespace's labels: the names come from the labels jobgate watches.
    A Job of namespace "other" is never sent to the webhook, so jobgate being down never refuses it; one of
    a namespace jobgate has not seen yet is, and the webhook reads that namespace's labels."""
    billing = policy("billing", "p", {"matchLabels": {"app": "x"}})
    scope = webhook_scope([billing, cluster_policy("per-team", TEAM)], namespaces=NAMESPACES)
    (alone,) = webhook_scope([billing]).conditions
    team_term = selector_expression(LabelSelector.model_validate(TEAM))
    but_other = f"!(request.namespace in ['other']) && ({team_term})"  # kube-system: never sent anyway
    assert scope.conditions[0]["expression"] == f"{alone['expression']} || ({but_other})"
    assert "namespaceObject" not in team_term  # the API server leaves it empty for webhooks
    assert scope.precision == {"billing": Precision.SELECTOR, "": Precision.SELECTOR}


@pytest.mark.parametrize("every_namespace", [{}, {"matchLabels": {}}, {"matchExpressions": []}])
def test_a_cluster_policy_over_every_namespace_has_its_selector_in_any(every_namespace: dict[str, Any]) -> None:
    scope = webhook_scope([cluster_policy("per-team", TEAM, every_namespace)], namespaces=NAMESPACES)
    assert scope.conditions[0]["expression"] == f"({selector_expression(LabelSelector.model_validate(TEAM))})"
    assert scope.precision == {"": Precision.SELECTOR}


def test_a_cluster_policy_leaving_out_unlabeled_namespaces_still_sees_those_jobgate_has_not_seen() -> None:
    scope = webhook_scope([cluster_policy("per-team", TEAM)], namespaces={"other": {}})
    team_term = selector_expression(LabelSelector.model_validate(TEAM))
    assert scope.conditions[0]["expression"] == f"(!(request.namespace in ['other']) && ({team_term}))"


def test_cluster_policies_whose_namespaces_do_not_fit_take_their_selectors_in_any_namespace() -> None:
    many = {f"other-{i:04d}": {} for i in range(400)}
    scope = webhook_scope([cluster_policy("per-team", TEAM)], namespaces=many, budget=2_000)
    assert scope.conditions[0]["expression"] == f"({selector_expression(LabelSelector.model_validate(TEAM))})"
    assert scope.precision == {"": Precision.ANY_NAMESPACE}


def test_cluster_policies_over_the_budget_leave_no_condition() -> None:
    policies = [cluster_policy(f"p{i}", big_selector(5 + i)) for i in range(20)]
    scope = webhook_scope(policies, budget=2_000, namespaces=NAMESPACES)
    assert scope.conditions == ()
    assert scope.precision == {"": Precision.UNSCOPED}
