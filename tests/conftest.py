"""Fixtures for tests that need a Kubernetes API: ``cluster`` (session) and ``namespace`` (per test).

Mark such tests ``@pytest.mark.cluster``; choose the cluster with
``--cluster=local`` (default: the local control plane, built on first use),
``--cluster=kind`` (needs Docker) or ``--cluster=existing`` ($KUBECONFIG).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Before the imports below: the support modules' asserts report their values too.
pytest.register_assert_rewrite("tests.support")

from localcluster.access import ClusterAccess  # noqa: E402
from localcluster.image import docker_engine_answers  # noqa: E402
from tests.support.clusters import (  # noqa: E402
    FLAVORS,
    existing_kubeconfig,
    local_cluster,
    prebuilt_bin_dir,
)
from tests.support.faults import LOCAL_CONTROL_PLANE, report_recoveries  # noqa: E402

# Fixtures of jobgate itself: the CRD (installed once per session) and `scenario` (the operator at work).
pytest_plugins = ["tests.support.crd", "tests.support.scenario", "tests.support.faults", "tests.support.tenants"]

START_TIME = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster",
        choices=FLAVORS,
        default="local",
        help="where cluster tests run: local control plane (default), kind (needs Docker), existing ($KUBECONFIG)",
    )


@pytest.fixture(scope="session")
def cluster_flavor(request: pytest.FixtureRequest) -> str:
    flavor: str = request.config.getoption("--cluster")
    return flavor


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, cluster_flavor: str) -> Iterator[ClusterAccess]:
    """Admin access to the cluster under test, with ``kubectl``, ``api_client`` and identity helpers."""
    if cluster_flavor == "local":
        with local_cluster() as (local, access, start_seconds):
            request.config.stash[START_TIME] = start_seconds
            request.config.stash[LOCAL_CONTROL_PLANE] = local
            yield access
        return
    if cluster_flavor == "kind":
        if not docker_engine_answers():
            pytest.skip("no Docker engine: kind cannot run here; use --cluster=local")
        kubeconfig = Path(request.getfixturevalue("kind_cluster").kubeconfig_path)
    else:
        kubeconfig = existing_kubeconfig(request.config.getoption("--kubeconfig", default=None))
    # Neither can call webhooks on this machine's 127.0.0.1 (kind's apiserver runs in a container).
    access = ClusterAccess(kubeconfig, bin_dir=prebuilt_bin_dir(), webhooks_on_loopback=False)
    yield access
    access.close()


@pytest.fixture
def namespace(cluster: ClusterAccess, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (pods can be created in it at once), deleted after the test."""
    name = cluster.create_namespace(request.node.name)
    yield name
    cluster.delete_namespace(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run a built binary (helm) are `binaries` tests: `make unit` runs without any."""
    for item in items:
        if "helm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.binaries)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if START_TIME in config.stash:
        terminalreporter.write_line(f"local control plane started in {config.stash[START_TIME]:.1f}s")
    report_recoveries(terminalreporter)
