"""Kueue's manager as a local process against the local control plane, for side-by-side benchmarks.

Kueue ships as a Deployment with a Service in front of its webhooks; here there
is no kube-proxy, so it runs as a plain process with only its Job integration:

- its CRDs are installed from the folder the build copied from its module;
  those served in two versions convert through a webhook, reached by URL on
  127.0.0.1 (what the apiserver stores and we ask for is always the storage
  version, v1beta2, so no conversion is ever asked for);
- its internal certificate management makes the webhook server's certificate
  into a Secret of the `kueue-system` namespace (made empty beforehand, as its
  manifests do), which is copied to the folder it reads, as the kubelet would
  mount it; no mutating or
  validating webhook configuration is installed: Jobs are created suspended
  and labelled with their queue already, as Kueue's webhook would have made them;
- no leader election, metrics off, and the on-demand visibility API server off
  (an extension API server that this control plane is not set up to aggregate).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from localcluster.access import ClusterAccess
from localcluster.processes import Component, free_port, stop_process_groups

NAMESPACE = "kueue-system"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SECRET = "kueue-webhook-server-cert"
API = "kueue.x-k8s.io/v1beta2"


@dataclass(frozen=True)
class KueueSettings:
    """What differs between runs; the rest is Kueue's own shipped configuration."""

    qps: float = 50.0  # the shipped clientConnection (also client-go's usual 50/100 x 10)
    burst: int = 100

    @property
    def name(self) -> str:
        return "defaults" if (self.qps, self.burst) == (50.0, 100) else f"client QPS {self.qps:g}, burst {self.burst}"


class KueueManager:
    """Install Kueue's CRDs, start its manager, wait until it is ready; stop it."""

    def __init__(self, tool_dir: Path, access: ClusterAccess, work_dir: Path, settings: KueueSettings) -> None:
        self.tool_dir = tool_dir
        self.access = access
        self.work_dir = work_dir
        self.settings = settings
        self.health_port = free_port()
        self.webhook_port = free_port()
        self.component: Component | None = None

    def install(self) -> None:
        """Kueue's CRDs (conversion by URL on this host) and its namespace."""
        documents = []
        for path in sorted((self.tool_dir / "crds").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            if len(crd["spec"]["versions"]) > 1:
                crd["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "conversionReviewVersions": ["v1"],
                        "clientConfig": {"url": f"https://127.0.0.1:{self.webhook_port}/convert"},
                    },
                }
            documents.append(crd)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        crds = self.work_dir / "kueue-crds.yaml"
        crds.write_text(yaml.safe_dump_all(documents))
        self.access.kubectl("apply", "--server-side", "-f", str(crds))
        for crd in documents:
            name = crd["metadata"]["name"]
            self.access.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
        self.access.kubectl("create", "namespace", NAMESPACE)
        # The certificate rotator fills this Secret in; Kueue's manifests ship it empty.
        self.access.kubectl("create", "secret", "generic", SECRET, "--namespace", NAMESPACE)

    def configuration(self) -> dict[str, Any]:
        shipped_concurrency = {
            "Job.batch": 5,
            "Pod": 5,
            "Workload.kueue.x-k8s.io": 5,
            "LocalQueue.kueue.x-k8s.io": 1,
            "Cohort.kueue.x-k8s.io": 1,
            "ClusterQueue.kueue.x-k8s.io": 1,
            "ResourceFlavor.kueue.x-k8s.io": 1,
        }
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": "0"},
            "webhook": {"port": self.webhook_port, "host": "127.0.0.1", "certDir": str(self.work_dir / "certs")},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {
                "enable": True,
                "webhookServiceName": "kueue-webhook-service",
                "webhookSecretName": SECRET,
            },
            "controller": {"groupKindConcurrency": shipped_concurrency},
            "clientConnection": {"qps": self.settings.qps, "burst": self.settings.burst},
            "integrations": {"frameworks": ["batch/job"]},
        }

    def start(self, timeout: float = 120.0) -> KueueManager:
        config = self.work_dir / "kueue-config.yaml"
        config.write_text(yaml.safe_dump(self.configuration()))
        argv = [
            str(self.tool_dir / "kueue"),
            f"--config={config}",
            "--feature-gates=VisibilityOnDemand=false",
            f"--kubeconfig={self.access.kubeconfig}",
            "--zap-log-level=info",
        ]
        self.component = Component("kueue", argv, self.work_dir / f"kueue-{self.health_port}.log")
        self.component.start(detached=False)
        deadline = time.monotonic() + timeout
        mounted = False
        while not self.ready():
            mounted = mounted or self._mount_certificates()
            if self.component.exit_code() is not None:
                raise RuntimeError(f"kueue exited with {self.component.exit_code()}:\n{self.component.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"kueue was not ready within {timeout:.0f}s:\n{self.component.log_tail()}")
            time.sleep(0.2)
        return self

    def _mount_certificates(self) -> bool:
        """What the kubelet does for Kueue's Pod: put the Secret its rotator filled in where it reads them."""
        secret = json.loads(self.access.kubectl("get", "secret", SECRET, "--namespace", NAMESPACE, "-o", "json"))
        data = secret.get("data") or {}
        if not {"tls.crt", "tls.key"} <= data.keys():
            return False
        certs = self.work_dir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            (certs / name).write_bytes(base64.b64decode(data[name]))
        return True

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    @property
    def pid(self) -> int:
        if self.component is None:
            raise RuntimeError("kueue was never started")
        return self.component.pid

    def stop(self) -> None:
        if self.component is not None and self.component.exit_code() is None:
            stop_process_groups([self.component.pid])

    # --- queues -------------------------------------------------------------------------------------

    def create_queues(self, namespace: str, keys: list[str], per_key: int, cpu_per_job: str) -> None:
        """One ClusterQueue and LocalQueue per key, each ClusterQueue with room for `per_key` Jobs."""
        milli = int(cpu_per_job.removesuffix("m"))
        quota = [{"name": "default", "resources": [{"name": "cpu", "nominalQuota": f"{milli * per_key}m"}]}]
        documents: list[dict[str, Any]] = [
            {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": "default"}}
        ]
        for key in keys:
            documents.append(
                {
                    "apiVersion": API,
                    "kind": "ClusterQueue",
                    "metadata": {"name": f"cq-{key}"},
                    "spec": {
                        "namespaceSelector": {},
                        "resourceGroups": [{"coveredResources": ["cpu"], "flavors": quota}],
                    },
                }
            )
            documents.append(
                {
                    "apiVersion": API,
                    "kind": "LocalQueue",
                    "metadata": {"name": local_queue(key), "namespace": namespace},
                    "spec": {"clusterQueue": f"cq-{key}"},
                }
            )
        queues = self.work_dir / f"kueue-queues-{namespace}.yaml"
        queues.write_text(yaml.safe_dump_all(documents))
        self.access.kubectl("apply", "--server-side", "-f", str(queues))


def local_queue(key: str) -> str:
    return f"lq-{key}"
