"""The ConcurrencyPolicy CRD installed once per test session, as `kubectl apply` would."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localcluster.access import ClusterAccess
from localcluster.operator_process import CRD_FILE


@pytest.fixture(scope="session")
def crd(cluster: ClusterAccess) -> Iterator[None]:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/concurrencypolicies.jobgate.dev")
    yield
