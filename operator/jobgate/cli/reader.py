"""The CLI's reads: policies and Jobs as the API holds them now, through the sync client, as small views.

Raw JSON GETs, like kube.py, so that listing many Jobs stays cheap. Every
failure becomes one of two errors that say in a sentence what is wrong:
``NotFound`` (a namespace, Job, policy or the CRD) and ``Unreachable`` (no
kubeconfig, no answer, or not allowed).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import kubernetes.client
import kubernetes.config
import urllib3
from kubernetes.client import ApiException
from kubernetes.config import ConfigException

from jobgate.core.jobs import JobView
from jobgate.core.policy import GROUP, PLURAL, VERSION, ConcurrencyPolicy

LIST_PAGE = 500
TIMEOUT = (10.0, 60.0)  # connect, read
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class NotFound(Exception):
    """A namespace, Job, policy or the ConcurrencyPolicy API itself does not exist."""


class Unreachable(Exception):
    """No usable kubeconfig, no answer from the API, or the credentials are not allowed to read."""


class Cluster:
    """Read-only access to one cluster; ``namespace`` is the kubeconfig context's, else "default"."""

    def __init__(self, client: kubernetes.client.ApiClient, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.server: str = client.configuration.host

    def policies(self, namespace: str | None) -> list[ConcurrencyPolicy]:
        """The ConcurrencyPolicies of the namespace, or of all namespaces for None."""
        path = f"/apis/{GROUP}/{VERSION}/{_scope(namespace)}{PLURAL}"
        missing = f"this cluster does not serve ConcurrencyPolicies ({GROUP}/{VERSION}): is jobgate's CRD installed?"
        return [ConcurrencyPolicy.from_body(body) for body in self._list(path, missing)]

    def jobs(self, namespace: str | None) -> list[JobView]:
        path = f"/apis/batch/v1/{_scope(namespace)}jobs"
        return [JobView.from_body(body) for body in self._list(path, "this cluster does not serve batch/v1 Jobs")]

    def job(self, namespace: str, name: str) -> JobView | None:
        body = self._get(f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs/{quote(name)}")
        return None if body is None else JobView.from_body(body)

    def namespace_exists(self, namespace: str) -> bool:
        """False only when the API says the namespace is not there; a user may not be allowed to ask."""
        try:
            return self._get(f"/api/v1/namespaces/{quote(namespace)}") is not None
        except Unreachable:
            return True

    def close(self) -> None:
        self.client.close()

    def _get(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        """The object at ``path``, or None when the API says 404."""
        serialized = self.client.param_serialize(
            method="GET",
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        try:
            response = self.client.call_api(*serialized, _request_timeout=TIMEOUT)
            data = response.read()
        except urllib3.exceptions.HTTPError as e:
            raise Unreachable(f"cannot reach the Kubernetes API at {self.server} ({_cause(e)})") from e
        except ApiException as e:  # TLS failures come as status 0
            raise Unreachable(f"cannot reach the Kubernetes API at {self.server} ({_cause(e)})") from e
        if response.status == 404:
            return None
        if response.status == 401:
            raise Unreachable(
                f"the Kubernetes API at {self.server} does not accept these credentials (401 Unauthorized): "
                "check the kubeconfig's user"
            )
        if response.status >= 300:
            message = _message(data) or response.reason
            if response.status == 403:
                raise Unreachable(f"not allowed: {message}")
            raise Unreachable(f"the Kubernetes API at {self.server} answered {response.status}: {message}")
        return json.loads(data)

    def _list(self, path: str, missing: str) -> list[Mapping[str, Any]]:
        """Every item, page by page; ``missing`` says what a 404 means."""
        items: list[Mapping[str, Any]] = []
        query = {"limit": str(LIST_PAGE)}
        while True:
            page = self._get(path, query)
            if page is None:
                raise NotFound(missing)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            query = {**query, "continue": token}


def connect(kubeconfig: str | None = None, context: str | None = None) -> Cluster:
    """A client from ``kubeconfig`` (else $KUBECONFIG, else ~/.kube/config, else the in-cluster config)."""
    configuration = kubernetes.client.Configuration()
    configuration.retries = 1  # fail fast: a person or a script is waiting
    if kubeconfig is not None and not Path(kubeconfig).is_file():
        raise Unreachable(f"the kubeconfig '{kubeconfig}' does not exist")
    try:
        if kubeconfig is None and not _default_kubeconfig_exists():
            if "KUBERNETES_SERVICE_HOST" not in os.environ:
                raise Unreachable("no kubeconfig: pass --kubeconfig FILE, set $KUBECONFIG, or create ~/.kube/config")
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            return Cluster(kubernetes.client.ApiClient(configuration), _service_account_namespace())
        contexts, current = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = current if context is None else next((c for c in contexts if c["name"] == context), None)
        if chosen is None:
            names = ", ".join(c["name"] for c in contexts) or "none"
            raise Unreachable(f"the kubeconfig has no context '{context}' (it has: {names})")
        kubernetes.config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration, persist_config=False
        )
    except ConfigException as e:
        raise Unreachable(f"cannot use the kubeconfig: {e}") from e
    namespace = (chosen.get("context") or {}).get("namespace") or "default"
    return Cluster(kubernetes.client.ApiClient(configuration), namespace)


def _scope(namespace: str | None) -> str:
    return "" if namespace is None else f"namespaces/{quote(namespace)}/"


def _default_kubeconfig_exists() -> bool:
    """Whether $KUBECONFIG (when set) or else ~/.kube/config names a file, as the client will look."""
    paths = (os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep)
    return any(p and Path(p).expanduser().is_file() for p in paths)


def _service_account_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def _message(data: bytes) -> str:
    try:
        return str(json.loads(data).get("message") or "")
    except (ValueError, AttributeError):
        return data.decode(errors="replace").strip()


def _cause(error: Exception) -> str:
    """The useful end of urllib3's nested messages: 'Connection refused', 'certificate verify failed'."""
    text = str(getattr(error, "reason", None) or error)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text) or re.search(r"\] ([^'\")\]]+) \(_ssl", text)
    return found.group(1).strip() if found else text.strip().splitlines()[-1][:200]
