"""A real Kubernetes control plane on 127.0.0.1, with kwok playing the nodes.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the real
binaries; kwok stands in for kubelets: it makes the fake nodes Ready and walks
their pods through the stages in ``kwok_stages.yaml``, so Jobs reach Complete
or Failed through the real Job controller.

    with LocalCluster() as cluster:
        subprocess.run([cluster.bin_dir / "kubectl", "--kubeconfig", cluster.kubeconfig, "get", "nodes"])
"""

from __future__ import annotations

import atexit
import contextlib
import json
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import kubernetes.client
from kubernetes.client import ApiException

from localcluster.access import ClusterAccess, client_certificate_credentials, cluster_entry, write_kubeconfig
from localcluster.build import ensure_binaries
from localcluster.certs import ADMIN_USER, CertifiedKey, ClusterPki
from localcluster.processes import (
    Component,
    free_port,
    kill_process_group,
    process_is_running,
    stop_in_order,
    stop_process_groups,
)

STAGES_FILE = Path(__file__).with_name("kwok_stages.yaml")
STATE_FILE = "state.json"
TEMPORARY_PREFIX = "localcluster-"
ABANDONED_AFTER_SECONDS = 300

# Put this annotation on a Job's pod template and its pod fails (exit code 1) instead of succeeding.
FAIL_ANNOTATION = "localcluster.jobgate.dev/fail"
# How long a fake pod runs before it succeeds or fails, e.g. "5s" (default 1s).
RUN_TIME_ANNOTATION = "pod-complete.stage.kwok.x-k8s.io/delay"

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
NODE_CAPACITY = {"cpu": "32", "memory": "256Gi", "pods": "110"}
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"  # kwok's default overlaps the service range: keep pod IPs apart

CONTROLLERS = (
    "job-controller",
    "cronjob-controller",  # CronJobs create their Jobs, which jobgate gates like any other
    "garbage-collector-controller",  # deletes a Job's pods with it
    "ttl-after-finished-controller",
    "namespace-controller",  # without it deleted namespaces stay Terminating
    "serviceaccount-controller",  # the ServiceAccount admission plugin rejects pods until `default` exists
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",  # kube-root-ca.crt, which pods' token volumes reference
    "clusterrole-aggregation-controller",  # fills the rules of the built-in admin, edit and view roles
)

PORT_ATTEMPTS = 3
ETCD_TIMEOUT = 30.0
APISERVER_TIMEOUT = 120.0
SETTLE_TIMEOUT = 60.0  # nodes Ready and the default ServiceAccount made, after the apiserver is ready
POLL_INTERVAL = 0.1


class ClusterStartError(RuntimeError):
    """The local control plane could not start; the message names the component that failed."""

    def __init__(self, message: str, component: Component | None = None) -> None:
        super().__init__(message)
        self.component = component


class LocalCluster:
    """etcd, the Kubernetes control plane and kwok on 127.0.0.1, in ``directory`` or a temporary folder.

    ``detached=True`` leaves the processes running when this object (or the
    Python process) goes away: ``stop_cluster_in(directory)`` ends them later.
    Otherwise the processes die with this Python process however it ends.
    The folder holds certificates, kubeconfig, etcd data and one log per
    component under ``logs/``; it is deleted on stop.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        bin_dir: Path | None = None,
        nodes: int = 3,
        detached: bool = False,
        extra_args: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self._given_directory = directory
        self.directory = (directory or Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX))).resolve()
        self._bin_dir = bin_dir
        self.node_count = nodes
        self.detached = detached
        self.extra_args = dict(extra_args or {})
        self.components: list[Component] = []
        self.pki = ClusterPki.in_directory(self.directory / "pki")
        self.kubeconfig = self.directory / "kubeconfig"
        self.etcd_url = ""
        self.apiserver_port = 0
        self._stopped = False
        self._previous_sigterm: Any = None

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = ensure_binaries()
        return self._bin_dir

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def access(self) -> ClusterAccess:
        """Clients, kubectl and identities for this cluster."""
        return ClusterAccess(
            self.kubeconfig,
            bin_dir=self.bin_dir,
            workdir=self.directory / "identities",
            authority=self.pki.authority(),
            webhooks_on_loopback=True,
        )

    # -- lifecycle -------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component and return once Jobs can run; on failure, stop everything and raise."""
        bin_dir = self.bin_dir  # builds first if needed: not counted in any start timeout
        if self._given_directory is None:
            remove_abandoned_temporary_clusters()
        self._claim_directory()
        if not self.detached:
            atexit.register(self.stop)
            self._stop_on_sigterm()
        try:
            self.pki = ClusterPki.create(self.directory / "pki")
            self._start_retrying_ports(lambda: self._etcd(bin_dir), self._wait_for_etcd)
            self._start_retrying_ports(lambda: self._apiserver(bin_dir), self._wait_for_apiserver)
            self._write_admin_kubeconfig()
            for component in (
                self._controller_manager(bin_dir),
                self._scheduler(bin_dir),
                self._kwok(bin_dir),
            ):
                self._launch(component)
            self._settle()
        except BaseException as e:
            if isinstance(e, ClusterStartError) and e.component is not None:
                _print_log_tail(e.component)
            self.stop()
            raise

    def stop(self) -> None:
        """Kill every component (SIGTERM, then SIGKILL) and delete the cluster folder. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        stop_in_order([c.pid for c in reversed(self.components) if c.process is not None])
        shutil.rmtree(self.directory, ignore_errors=True)
        if self._previous_sigterm is not None:
            with contextlib.suppress(ValueError):  # not the main thread any more
                signal.signal(signal.SIGTERM, self._previous_sigterm)
        atexit.unregister(self.stop)

    def _stop_on_sigterm(self) -> None:
        """Turn SIGTERM into KeyboardInterrupt so finally blocks and pytest's teardown run."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # someone else handles it; do not take it away

        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        self._previous_sigterm = signal.signal(signal.SIGTERM, interrupt)

    def _claim_directory(self) -> None:
        """Use the folder only if it is empty or holds a cluster that is no longer running."""
        state = self.directory / STATE_FILE
        if state.exists():
            if running_pids(self.directory):
                raise ClusterStartError(
                    f"a local cluster is already running in {self.directory}: "
                    f"stop it with `python -m localcluster down --dir {self.directory}` first"
                )
            shutil.rmtree(self.directory)
        elif self.directory.exists() and any(self.directory.iterdir()):
            raise ClusterStartError(
                f"{self.directory} is not empty and holds no local cluster: choose an empty or new folder"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_state()

    def _write_state(self) -> None:
        """Record pids so `python -m localcluster down` can stop a detached cluster."""
        state = {
            "apiserver_port": self.apiserver_port,
            "processes": [
                {"name": c.name, "pid": c.pid, "executable": c.argv[0]}
                for c in self.components
                if c.process is not None
            ],
        }
        path = self.directory / STATE_FILE
        path.with_suffix(".tmp").write_text(json.dumps(state, indent=2))
        path.with_suffix(".tmp").replace(path)

    # -- starting components ---------------------------------------------

    def _launch(self, component: Component) -> None:
        component.start(self.detached)
        self.components.append(component)
        self._write_state()

    def _start_retrying_ports(self, make: Callable[[], Component], wait: Callable[[Component], None]) -> None:
        """Start a component on fresh free ports; if another process took a port first, try new ones."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            component = make()
            self._launch(component)
            try:
                wait(component)
                return
            except ClusterStartError:
                if attempt == PORT_ATTEMPTS or not component.port_was_taken():
                    raise
                self.components.remove(component)
                stop_process_groups([component.pid], grace_seconds=1)

    def _log(self, name: str) -> Path:
        return self.directory / "logs" / f"{name}.log"

    def _etcd(self, bin_dir: Path) -> Component:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        return Component(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=localcluster",
                f"--data-dir={self.directory / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=localcluster=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # throwaway data: durability only costs time
                "--log-level=warn",
                *self.extra_args.get("etcd", ()),
            ],
            self._log("etcd"),
        )

    def _wait_for_etcd(self, etcd: Component) -> None:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as response:
                    return bool(json.load(response).get("health") == "true")
            except (OSError, ValueError):
                return False

        self._wait("etcd to report healthy", healthy, ETCD_TIMEOUT, etcd)

    def _apiserver(self, bin_dir: Path) -> Component:
        self.apiserver_port = free_port()
        pki = self.pki
        return Component(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.directory / 'apiserver'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.service_account_public}",
                f"--service-account-signing-key-file={pki.service_account_private}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                # It taints every new node not-ready, and only the node-lifecycle controller
                # (which would also evict kwok's pods) removes that taint.
                "--disable-admission-plugins=TaintNodesByCondition",
                "--profiling=false",
                *self.extra_args.get("kube-apiserver", ()),
            ],
            self._log("kube-apiserver"),
        )

    def _admin_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def _wait_for_apiserver(self, apiserver: Component) -> None:
        context = self._admin_ssl_context()

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", timeout=5, context=context) as response:
                    return bool(response.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        self._wait("kube-apiserver to report /readyz", ready, APISERVER_TIMEOUT, apiserver)

    def _write_admin_kubeconfig(self) -> None:
        write_kubeconfig(
            self.kubeconfig,
            cluster_entry(self.server, self.pki.ca_cert.read_bytes()),
            ADMIN_USER,
            client_certificate_credentials(
                CertifiedKey(self.pki.admin_cert.read_bytes(), self.pki.admin_key.read_bytes())
            ),
        )

    def _controller_manager(self, bin_dir: Path) -> Component:
        return Component(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={self.pki.service_account_private}",
                f"--root-ca-file={self.pki.ca_cert}",
                "--use-service-account-credentials=false",
                *self.extra_args.get("kube-controller-manager", ()),
            ],
            self._log("kube-controller-manager"),
        )

    def _scheduler(self, bin_dir: Path) -> Component:
        return Component(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                *self.extra_args.get("kube-scheduler", ()),
            ],
            self._log("kube-scheduler"),
        )

    def _kwok(self, bin_dir: Path) -> Component:
        return Component(
            "kwok",
            [
                str(bin_dir / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={STAGES_FILE}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}",
                *self.extra_args.get("kwok", ()),
            ],
            self._log("kwok"),
        )

    # -- faults ----------------------------------------------------------

    def component(self, name: str) -> Component:
        """The running component called ``name`` (etcd, kube-apiserver, kube-controller-manager, ...)."""
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(f"no component {name!r}; there are {[c.name for c in self.components]}")

    def kill_component(self, name: str) -> None:
        """SIGKILL one component; it stays down until `restart_component`. Its clients see their connections die."""
        component = self.component(name)
        kill_process_group(component.pid)
        assert component.process is not None
        component.process.wait(timeout=10)

    def restart_component(self, name: str) -> None:
        """Start a killed component again in place: same arguments, data folder, ports, certificates and log.

        After etcd or kube-apiserver, returns once the API server answers /readyz
        again (it has to reconnect to a restarted etcd); raises ClusterStartError
        if that does not happen in time. The controller manager, the scheduler and
        kwok serve no health endpoint here: they are started, not awaited.
        """
        component = self.component(name)
        if component.exit_code() is None:
            raise RuntimeError(f"{name} is still running: kill_component({name!r}) first")
        component.start(self.detached)
        self._write_state()
        if name == "etcd":
            self._wait_for_etcd(component)
        if name in ("etcd", "kube-apiserver"):
            self._wait_for_apiserver(self.component("kube-apiserver"))

    # -- waiting ---------------------------------------------------------

    def _wait(self, what: str, condition: Callable[[], bool], timeout: float, blame: Component) -> None:
        """Poll ``condition`` until true; fail fast if any component exits, and blame ``blame`` on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for component in self.components:
                code = component.exit_code()
                if code is not None:
                    raise ClusterStartError(
                        f"{component.name} exited with code {code} while the local cluster waited for {what}; "
                        "the end of its log is printed above",
                        component,
                    )
            if condition():
                return
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"the local cluster timed out after {timeout:.0f}s waiting for {what}; "
                    f"the end of the {blame.name} log is printed above",
                    blame,
                )
            time.sleep(POLL_INTERVAL)

    def _settle(self) -> None:
        """Create the fake nodes, then wait until they are Ready and pods can be admitted in `default`."""
        api = kubernetes.client.ApiClient(self._admin_client_configuration())
        try:
            core = kubernetes.client.CoreV1Api(api)
            for index in range(self.node_count):
                core.create_node(kubernetes.client.V1Node.model_validate(fake_node(f"kwok-node-{index}")))
            by_name = {c.name: c for c in self.components}

            def nodes_ready() -> bool:
                nodes = core.list_node().items
                return len(nodes) >= self.node_count and all(_is_ready(n) for n in nodes)

            def default_service_account_exists() -> bool:
                try:
                    core.read_namespaced_service_account("default", "default")
                except ApiException as e:
                    if e.status == 404:
                        return False
                    raise
                return True

            self._wait("kwok to make the fake nodes Ready", nodes_ready, SETTLE_TIMEOUT, by_name["kwok"])
            self._wait(
                "the default ServiceAccount in namespace default",
                default_service_account_exists,
                SETTLE_TIMEOUT,
                by_name["kube-controller-manager"],
            )
        finally:
            api.close()

    def _admin_client_configuration(self) -> kubernetes.client.Configuration:
        configuration = kubernetes.client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.pki.ca_cert)
        configuration.cert_file = str(self.pki.admin_cert)
        configuration.key_file = str(self.pki.admin_key)
        return configuration


def _print_log_tail(component: Component) -> None:
    # The cluster folder, logs included, is deleted on stop: this is all that remains.
    print(f"--- last lines of the {component.name} log ---", file=sys.stderr)
    print(component.log_tail(), file=sys.stderr)
    print(f"--- end of the {component.name} log ---", file=sys.stderr)


def fake_node(name: str) -> dict[str, Any]:
    """A Node that kwok manages: big enough for any test, no taints."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "spec": {},
        "status": {"capacity": dict(NODE_CAPACITY), "allocatable": dict(NODE_CAPACITY)},
    }


def _is_ready(node: Any) -> bool:
    conditions = node.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


# -- detached clusters -----------------------------------------------------


def _recorded_processes(directory: Path) -> list[dict[str, Any]]:
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return []
    processes: list[dict[str, Any]] = state.get("processes", [])
    return processes


def running_pids(directory: Path) -> list[int]:
    """Pids recorded in ``directory`` that still run the recorded executable (a reused pid is not ours)."""
    pids = []
    for process in _recorded_processes(directory):
        pid = int(process["pid"])
        try:
            executable = Path(f"/proc/{pid}/exe").resolve()
        except OSError:
            continue
        if process_is_running(pid) and executable == Path(process["executable"]).resolve():
            pids.append(pid)
    return pids


def remove_abandoned_temporary_clusters() -> None:
    """Delete temporary cluster folders left by runs that were SIGKILLed (their processes died with them).

    A folder touched in the last few minutes may belong to a cluster that is
    starting right now, in another process, before it has recorded its pids.
    """
    cutoff = time.time() - ABANDONED_AFTER_SECONDS
    for folder in Path(tempfile.gettempdir()).glob(f"{TEMPORARY_PREFIX}*"):
        state = folder / STATE_FILE
        with contextlib.suppress(OSError):
            if state.stat().st_mtime < cutoff and not running_pids(folder):
                shutil.rmtree(folder, ignore_errors=True)


def stop_cluster_in(directory: Path) -> bool:
    """Stop a cluster started with ``detached=True`` in ``directory`` and delete the folder.

    Returns False if ``directory`` holds no cluster. Refuses folders without a
    state file so that a mistyped ``--dir`` never deletes anything else.
    """
    if not (directory / STATE_FILE).exists():
        return False
    stop_in_order(list(reversed(running_pids(directory))))
    shutil.rmtree(directory, ignore_errors=True)
    return True
