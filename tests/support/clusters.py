"""The cluster that tests run against: the local control plane, kind, or whatever $KUBECONFIG names."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from localcluster.access import ClusterAccess
from localcluster.build import BuildError, bin_dir, ensure_binaries, missing_binaries
from localcluster.cluster import ClusterStartError, LocalCluster

FLAVORS = ("local", "kind", "existing")


@contextmanager
def local_cluster() -> Iterator[tuple[LocalCluster, ClusterAccess, float]]:
    """Start the local control plane (building it first if needed); yield it, access and the start time."""
    started = time.monotonic()
    cluster = _start_local_cluster()
    if isinstance(cluster, str):
        # Outside the except block, so that pytest shows one message and no chained traceback.
        pytest.fail(f"the local control plane is not available: {cluster}", pytrace=False)
    access = cluster.access()
    try:
        yield cluster, access, time.monotonic() - started
    finally:
        access.close()
        cluster.stop()


def _start_local_cluster() -> LocalCluster | str:
    """The running cluster, or what went wrong."""
    try:
        cluster = LocalCluster(bin_dir=ensure_binaries())
        cluster.start()
    except (BuildError, ClusterStartError) as e:
        return str(e)
    return cluster


def prebuilt_bin_dir() -> Path | None:
    """The local control plane's binaries if they were built, so kind/existing runs can use its kubectl."""
    directory = bin_dir()
    return None if missing_binaries(directory) else directory


def existing_kubeconfig(option: str | None) -> Path:
    """``--kubeconfig``, else the first file of $KUBECONFIG, else ~/.kube/config."""
    candidates = [option] if option else (os.environ.get("KUBECONFIG") or "").split(os.pathsep)
    for candidate in [*candidates, str(Path.home() / ".kube" / "config")]:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.fail(
        "--cluster=existing needs a kubeconfig: set $KUBECONFIG or pass --kubeconfig, or use --cluster=local",
        pytrace=False,
    )
