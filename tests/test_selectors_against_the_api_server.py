"""Our label selector matching agrees with the API server's own, on a generated sample.

The Jobs jobgate counts come from server-side selected watches, while the webhook
and the decisions match selectors in Python: the two must never disagree.
"""

from __future__ import annotations

import random

import kubernetes
import pytest

from jobgate.core.policy import LabelSelector, LabelSelectorRequirement
from jobgate.core.selectors import matches, to_label_selector_string
from localcluster.access import ClusterAccess

pytestmark = pytest.mark.cluster

KEYS = ("app", "tier", "example.com/team")
VALUES = ("a", "b", "c-1", "")  # "" is a valid label value, and a different one from absent


def random_labels(rnd: random.Random) -> dict[str, str]:
    return {key: rnd.choice(VALUES) for key in KEYS if rnd.random() < 0.6}


def random_selector(rnd: random.Random) -> LabelSelector:
    match_labels = {key: rnd.choice(VALUES) for key in KEYS if rnd.random() < 0.3}
    expressions = []
    for key in KEYS:
        if rnd.random() < 0.4:
            operator = rnd.choice(["In", "NotIn", "Exists", "DoesNotExist"])
            values = rnd.sample(VALUES, rnd.randint(1, 3)) if operator in ("In", "NotIn") else None
            expressions.append(LabelSelectorRequirement(key=key, operator=operator, values=values))
    return LabelSelector(matchLabels=match_labels or None, matchExpressions=expressions or None)


def test_matches_selects_what_the_api_server_selects(cluster: ClusterAccess, namespace: str) -> None:
    rnd = random.Random(20261202)
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    objects = {}
    for i in range(40):
        labels = random_labels(rnd)
        core.create_namespaced_config_map(namespace, {"metadata": {"name": f"cm-{i}", "labels": labels}})
        objects[f"cm-{i}"] = labels
    checked = 0
    for _ in range(80):
        selector = random_selector(rnd)
        if not (selector.matchLabels or selector.matchExpressions):
            continue
        served = core.list_namespaced_config_map(namespace, label_selector=to_label_selector_string(selector))
        by_server = {item.metadata.name for item in served.items if item.metadata.name in objects}
        by_us = {name for name, labels in objects.items() if matches(selector, labels)}
        assert by_us == by_server, f"selector {selector.model_dump(exclude_none=True)}"
        checked += 1
    assert checked >= 60
