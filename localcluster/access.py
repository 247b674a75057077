"""Reaching a cluster as admin, as a ServiceAccount or as a user: kubeconfigs, clients, kubectl.

Works for any cluster given an admin kubeconfig. Users are authenticated by
client certificates when the cluster's CA key is at hand (the local cluster),
and otherwise by impersonation through the admin's credentials.
"""

from __future__ import annotations

import base64
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kubernetes.aio.client
import kubernetes.aio.config
import kubernetes.client
import kubernetes.config
import yaml
from kubernetes.client import ApiException

from localcluster.certs import CertificateAuthority, CertifiedKey

TOKEN_LIFETIME_SECONDS = 3600
NAMESPACE_READY_TIMEOUT = 30.0

# Kubeconfig fields holding file paths, which may be relative to the kubeconfig's folder.
_PATH_FIELDS = ("certificate-authority", "client-certificate", "client-key", "tokenFile")


class ToolError(RuntimeError):
    """kubectl or helm exited non-zero; the message carries its stderr."""


class ClusterAccess:
    """Clients and identities for the cluster that ``kubeconfig`` (its current context) points at as admin.

    ``authority`` is the cluster's CA (with key): given, users get client
    certificates; absent, users are impersonated. ``webhooks_on_loopback`` says
    whether the apiserver can call a webhook served on this machine's 127.0.0.1.
    """

    def __init__(
        self,
        kubeconfig: Path,
        *,
        bin_dir: Path | None = None,
        workdir: Path | None = None,
        authority: CertificateAuthority | None = None,
        webhooks_on_loopback: bool = False,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.bin_dir = bin_dir
        self.webhooks_on_loopback = webhooks_on_loopback
        self._workdir = workdir or Path(tempfile.mkdtemp(prefix="cluster-access-"))
        self._owns_workdir = workdir is None
        self._authority = authority
        self._admin: kubernetes.client.ApiClient | None = None

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self._owns_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    # -- clients ---------------------------------------------------------

    def api_client(self, kubeconfig: Path | None = None) -> kubernetes.client.ApiClient:
        """A sync client: the shared admin one, or a new one for ``kubeconfig`` (close it when done)."""
        if kubeconfig is None:
            if self._admin is None:
                self._admin = _new_sync_client(self.kubeconfig)
            return self._admin
        return _new_sync_client(kubeconfig)

    async def aio_api_client(self, kubeconfig: Path | None = None) -> kubernetes.aio.client.ApiClient:
        """A new ``kubernetes.aio`` client as admin or for ``kubeconfig``; ``await client.close()`` it."""
        path = kubeconfig or self.kubeconfig
        client: kubernetes.aio.client.ApiClient = await kubernetes.aio.config.new_client_from_config(
            config_file=str(path), persist_config=False
        )
        _impersonate(client, path)
        return client

    def service_account_client(self, namespace: str, name: str) -> kubernetes.client.ApiClient:
        return self.api_client(self.service_account_kubeconfig(namespace, name))

    def user_client(self, name: str, groups: Sequence[str] = ()) -> kubernetes.client.ApiClient:
        return self.api_client(self.user_kubeconfig(name, groups))

    # -- identities ------------------------------------------------------

    def service_account_kubeconfig(
        self, namespace: str, name: str, expiration_seconds: int = TOKEN_LIFETIME_SECONDS
    ) -> Path:
        """A kubeconfig with a new TokenRequest token for ServiceAccount ``namespace/name``, made if missing."""
        core = kubernetes.client.CoreV1Api(self.api_client())
        try:
            core.create_namespaced_service_account(
                namespace,
                kubernetes.client.V1ServiceAccount(metadata=kubernetes.client.V1ObjectMeta(name=name)),
            )
        except ApiException as e:
            if e.status != 409:
                raise
        request = kubernetes.client.AuthenticationV1TokenRequest(
            spec=kubernetes.client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
        )
        status = core.create_namespaced_service_account_token(name, namespace, request).status
        if status is None:
            raise RuntimeError(f"the apiserver returned no token for ServiceAccount {namespace}/{name}")
        token = status.token
        return self._write_identity(f"system:serviceaccount:{namespace}:{name}", {"token": token})

    def user_kubeconfig(self, name: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig authenticating as user ``name`` in ``groups``."""
        if self._authority is not None:
            cert = self._authority.issue_client(name, groups)
            return self._write_identity(name, client_certificate_credentials(cert))
        if len(groups) > 1:
            # The Python client sends each default header once, so only one Impersonate-Group fits.
            raise ValueError(
                f"cannot impersonate {name} in {len(groups)} groups on this cluster: use one group, "
                "or the local cluster (pytest --cluster=local), which issues client certificates"
            )
        user = dict(self._admin_entries()[1])
        user["as"] = name
        if groups:
            user["as-groups"] = list(groups)
        return self._write_identity(name, user)

    def webhook_certificate(self) -> tuple[CertifiedKey, bytes]:
        """A serving certificate for a webhook on 127.0.0.1 and the caBundle the apiserver should trust."""
        authority = self._authority or CertificateAuthority.create("webhook-ca")
        return authority.issue_webhook_serving(), authority.cert_pem

    def _admin_entries(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The admin kubeconfig's current cluster and user entries, with file paths made absolute."""
        config = yaml.safe_load(self.kubeconfig.read_text())
        current = config.get("current-context")
        contexts = {c["name"]: c["context"] for c in config.get("contexts") or []}
        if current not in contexts:
            raise ValueError(f"{self.kubeconfig} has no current context: set one with `kubectl config use-context`")
        context = contexts[current]
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        base = self.kubeconfig.resolve().parent
        for entry in (cluster, user):
            for key in _PATH_FIELDS:
                if key in entry:
                    entry[key] = str(base / entry[key])
        return cluster, user

    def _write_identity(self, user: str, credentials: dict[str, Any]) -> Path:
        cluster, _ = self._admin_entries()
        self._workdir.mkdir(parents=True, exist_ok=True)
        path = self._workdir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', user)}-{secrets.token_hex(3)}.kubeconfig"
        write_kubeconfig(path, cluster, user, credentials)
        return path

    # -- namespaces ------------------------------------------------------

    def create_namespace(self, prefix: str = "test") -> str:
        """A new namespace named ``<prefix>-<random>``, returned once pods can be created in it."""
        stem = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:48] or "test"
        name = f"{stem}-{secrets.token_hex(3)}"
        core = kubernetes.client.CoreV1Api(self.api_client())
        core.create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name)))
        # The ServiceAccount admission plugin rejects pods until the controller makes `default`.
        deadline = time.monotonic() + NAMESPACE_READY_TIMEOUT
        while True:
            try:
                core.read_namespaced_service_account("default", name)
                return name
            except ApiException as e:
                if e.status != 404:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"namespace {name} got no default ServiceAccount in {NAMESPACE_READY_TIMEOUT:.0f}s: "
                    "is the serviceaccount controller of kube-controller-manager running?"
                )
            time.sleep(0.05)

    def delete_namespace(self, name: str) -> None:
        """Delete without waiting: the namespace controller finishes the job in the background."""
        core = kubernetes.client.CoreV1Api(self.api_client())
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise

    # -- command-line tools ----------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, kubeconfig: Path | None = None) -> str:
        """Run kubectl against this cluster (as admin unless ``kubeconfig`` is given); return its stdout."""
        return self._run_tool("kubectl", ["--kubeconfig", str(kubeconfig or self.kubeconfig), *args], input)

    def helm(self, *args: str, input: str | None = None) -> str:
        return self._run_tool("helm", ["--kubeconfig", str(self.kubeconfig), *args], input)

    def tool(self, name: str) -> Path:
        """Where ``name`` (kubectl, helm) is: the control plane's bin folder, else $PATH."""
        if self.bin_dir is not None and (self.bin_dir / name).is_file():
            return self.bin_dir / name
        found = shutil.which(name)
        if found is None:
            raise ToolError(f"{name} is neither in {self.bin_dir} nor on PATH: run `make binaries` or install it")
        return Path(found)

    def _run_tool(self, name: str, args: list[str], input: str | None) -> str:
        proc = subprocess.run([str(self.tool(name)), *args], input=input, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ToolError(f"{name} {' '.join(args[2:])} exited with {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout


def client_certificate_credentials(cert: CertifiedKey) -> dict[str, str]:
    """A kubeconfig user entry that authenticates with ``cert``."""
    return {
        "client-certificate-data": base64.b64encode(cert.cert_pem).decode(),
        "client-key-data": base64.b64encode(cert.key_pem).decode(),
    }


def write_kubeconfig(path: Path, cluster: dict[str, Any], user: str, credentials: dict[str, Any]) -> None:
    """Write a kubeconfig with one cluster, one user and a current context joining them (owner-only)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": "cluster", "user": user}}],
        "current-context": user,
    }
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config))


def cluster_entry(server: str, ca_pem: bytes) -> dict[str, str]:
    return {"server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}


def _new_sync_client(kubeconfig: Path) -> kubernetes.client.ApiClient:
    client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(
        config_file=str(kubeconfig), persist_config=False
    )
    _impersonate(client, kubeconfig)
    return client


def _impersonate(client: Any, kubeconfig: Path) -> None:
    """Apply the kubeconfig's ``as``/``as-groups``, which kubectl honours and the Python client ignores."""
    config = yaml.safe_load(kubeconfig.read_text())
    contexts = {c["name"]: c["context"] for c in config.get("contexts") or []}
    context = contexts.get(config.get("current-context"), {})
    users = {u["name"]: u["user"] for u in config.get("users") or []}
    user: dict[str, Any] = users.get(context.get("user"), {})
    if "as" in user:
        client.set_default_header("Impersonate-User", user["as"])
    for group in user.get("as-groups", [])[:1]:
        client.set_default_header("Impersonate-Group", group)
