"""The ConcurrencyPolicy and ClusterConcurrencyPolicy CRDs installed once per test session, as `kubectl apply` would."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localcluster.access import ClusterAccess
from localcluster.operator_process import CLUSTER_CRD_FILE, CRD_FILE


@pytest.fixture(scope="session")
def crd(cluster: ClusterAccess) -> Iterator[None]:
    for path in (CRD_FILE, CLUSTER_CRD_FILE):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    for name in (CRD_FILE.stem, CLUSTER_CRD_FILE.stem):
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{name}")
    yield
