"""Label selector matching, with the semantics of metav1.LabelSelector."""

from __future__ import annotations

from collections.abc import Mapping

from jobgate.core.policy import LabelSelector


def matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """True when the labels satisfy every matchLabels entry and every matchExpressions requirement."""
    for key, value in (selector.matchLabels or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.matchExpressions or ():
        present = requirement.key in labels
        values = requirement.values or []
        match requirement.operator:
            case "In":
                ok = present and labels[requirement.key] in values
            case "NotIn":
                ok = not present or labels[requirement.key] not in values
            case "Exists":
                ok = present
            case "DoesNotExist":
                ok = not present
        if not ok:
            return False
    return True


def to_label_selector_string(selector: LabelSelector) -> str:
    """The selector in the string form that `kubectl -l` and the API's labelSelector take."""
    parts = [f"{key}={value}" for key, value in (selector.matchLabels or {}).items()]
    for requirement in selector.matchExpressions or ():
        values = ",".join(requirement.values or [])
        match requirement.operator:
            case "In":
                parts.append(f"{requirement.key} in ({values})")
            case "NotIn":
                parts.append(f"{requirement.key} notin ({values})")
            case "Exists":
                parts.append(requirement.key)
            case "DoesNotExist":
                parts.append(f"!{requirement.key}")
    return ",".join(parts)
