"""Reading a `jobgate run` process's Prometheus metrics in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from localcluster.operator_process import OperatorProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(operator: OperatorProcess) -> Samples:
    """Every jobgate_* sample, by name and sorted labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(operator.metrics()):
        for s in family.samples:
            if s.name.startswith("jobgate_"):
                found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 if it was never set."""
    return found.get((name, tuple(sorted(labels.items()))), 0.0)
