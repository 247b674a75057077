"""Kueue's manager as a local process against the local control plane, for side-by-side benchmarks.

Kueue ships as a Deployment with a Service in front of its webhooks; here there
is no kube-proxy, so it runs as a plain process with only its Job integration:

- its CRDs are installed from the folder the build copied from its module;
  those its certificate rotator looks after convert through its webhook,
  reached by URL on 127.0.0.1;
- its internal certificate management keeps the webhook server's certificate,
  made here for both the Service's name and 127.0.0.1 (`_certify`); no mutating or
  validating webhook configuration is installed: Jobs are created suspended
  and labelled with their queue already, as Kueue's webhook would have made them;
- no leader election, metrics off, and the on-demand visibility API server off
  (an extension API server that this control plane is not set up to aggregate).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localcluster.access import ClusterAccess
from localcluster.processes import Component, free_port, stop_process_groups

NAMESPACE = "kueue-system"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SECRET = "kueue-webhook-server-cert"
SERVICE = "kueue-webhook-service"
SERVICE_NAME = f"{SERVICE}.{NAMESPACE}.svc"
CA_NAME = "kueue-ca"
# The CRDs whose conversion webhook Kueue's certificate rotator gives its CA. The others keep their
# files' strategy (None): a webhook without a CA would refuse every conversion asked of it.
CONVERTED = tuple(
    f"{plural}.kueue.x-k8s.io"
    for plural in ("localqueues", "clusterqueues", "workloads", "cohorts", "multikueueclusters")
)
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
            if crd["metadata"]["name"] in CONVERTED:
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
        self._certify()

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
                "webhookServiceName": SERVICE,
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
        while not self.ready():
            if self.component.exit_code() is not None:
                raise RuntimeError(f"kueue exited with {self.component.exit_code()}:\n{self.component.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"kueue was not ready within {timeout:.0f}s:\n{self.component.log_tail()}")
            time.sleep(0.2)
        return self

    def _certify(self) -> None:
        """Kueue's webhook certificate, made here rather than by its rotator.

        The rotator would name only the Service (`kueue-webhook-service.kueue-system.svc`),
        and the apiserver reaches the conversion webhook at 127.0.0.1: it would refuse the
        certificate. This one names both; the rotator finds it valid and keeps it, and
        puts the CA into the CRDs.
        The files go where the kubelet would mount the Secret.
        """
        files = _rotator_certificates()
        certs = self.work_dir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            (certs / name).write_bytes(files[name])
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NAMESPACE},
            "data": {name: base64.b64encode(content).decode() for name, content in files.items()},
        }
        self.access.kubectl("apply", "-f", "-", input=json.dumps(secret))

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


def _rotator_certificates() -> dict[str, bytes]:
    """A CA and a serving certificate in the Secret's layout, as Kueue's certificate rotator reads them.

    The rotator (open-policy-agent/cert-controller) wants what it makes itself: RSA keys in
    PKCS#1, a CA that is valid for the DNS name `kueue-ca`, and a serving certificate valid
    for the Service's name; this one is valid for 127.0.0.1 too.
    """
    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, key: rsa.RSAPrivateKey, issuer: x509.Name, sans: list[x509.GeneralName]) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        )

    def pem(key: rsa.RSAPrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    ca = (
        build(CA_NAME, ca_key, ca_name, [x509.DNSName(CA_NAME)])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )  # digital signature, certificate and CRL signing
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sans: list[x509.GeneralName] = [x509.DNSName(SERVICE_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    serving = (
        build(SERVICE_NAME, key, ca_name, sans)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": pem(ca_key),
        "tls.crt": serving.public_bytes(serialization.Encoding.PEM),
        "tls.key": pem(key),
    }
