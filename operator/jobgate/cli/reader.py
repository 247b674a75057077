"""The CLI's access to the cluster: policies and Jobs as the API holds them now, and annotation patches.

Raw JSON requests through the sync client, like kube/api.py, so that listing
many Jobs stays cheap. Every failure becomes an error that says in a sentence
what is wrong: ``NotFound`` (a namespace, Job, policy or the CRD),
``Unreachable`` (no usable kubeconfig, no answer, or not allowed),
``Rejected`` (the API refused what was asked, e.g. a malformed label selector).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import kubernetes.client
import kubernetes.config
import urllib3
import yaml
from kubernetes.client import ApiException
from kubernetes.config import ConfigException

from jobgate.cli.report import RunTimes
from jobgate.core.jobs import JobView
from jobgate.core.policy import CLUSTER_KIND, CLUSTER_PLURAL, GROUP, PLURAL, VERSION, ConcurrencyPolicy
from jobgate.core.timestamps import parse_timestamp
from jobgate.kube import paging

# Seconds for a whole request, (connect, read), or None for no limit: urllib3's forms.
Timeout = float | tuple[float, float] | None
TIMEOUT: Timeout = (10.0, 60.0)  # unless --request-timeout says otherwise
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class NotFound(Exception):
    """A namespace, Job, policy or the ConcurrencyPolicy API itself does not exist."""


class Unreachable(Exception):
    """No usable kubeconfig, no answer from the API, or the credentials are not allowed."""


class Forbidden(Unreachable):
    """The credentials are not allowed to do this (403)."""


class Rejected(Exception):
    """The API refused the request as malformed (400), e.g. a label selector that does not parse."""


class Conflict(Exception):
    """A patch's test failed: the object changed since it was read."""


class Cluster:
    """Access to one cluster; ``namespace`` is the kubeconfig context's, else "default".

    ``timeout``: seconds for each request (None: no limit), else the default (10 s to connect, 60 s to read).
    """

    def __init__(self, client: kubernetes.client.ApiClient, namespace: str, timeout: Timeout = TIMEOUT) -> None:
        self.client = client
        self.namespace = namespace
        self.server: str = client.configuration.host
        self.timeout = timeout

    def policies(self, namespace: str | None) -> list[ConcurrencyPolicy]:
        """The ConcurrencyPolicies of the namespace, or of all namespaces for None."""
        path = f"/apis/{GROUP}/{VERSION}/{_scope(namespace)}{PLURAL}"
        missing = f"this cluster does not serve ConcurrencyPolicies ({GROUP}/{VERSION}): is jobgate's CRD installed?"
        return [ConcurrencyPolicy.from_body(body) for body in self._list(path, missing)]

    def cluster_policies(self) -> list[ConcurrencyPolicy]:
        """The ClusterConcurrencyPolicies; none when their CRD is not installed or the user may not read them."""
        path = f"/apis/{GROUP}/{VERSION}/{CLUSTER_PLURAL}"
        try:
            bodies = self._list(path, "")
        except (NotFound, Forbidden):
            return []
        return [ConcurrencyPolicy.from_body({**body, "kind": CLUSTER_KIND}) for body in bodies]

    def namespace_labels(self) -> dict[str, dict[str, str]]:
        """Every Namespace's labels, by name: what ClusterConcurrencyPolicies' namespaceSelectors read."""
        listed = self._list("/api/v1/namespaces", "no namespaces")
        return {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in listed}

    def jobs(self, namespace: str | None) -> list[JobView]:
        return self.jobs_and_runs(namespace)[0]

    def jobs_and_runs(self, namespace: str | None) -> tuple[list[JobView], dict[str, RunTimes]]:
        """The Jobs as views, and when each started and ended (by uid), for estimates."""
        views, runs = [], {}
        for body in self._list(f"/apis/batch/v1/{_scope(namespace)}jobs", "this cluster does not serve batch/v1 Jobs"):
            view = JobView.from_body(body)
            views.append(view)
            runs[view.uid] = run_times(body)
        return views, runs

    def selected(self, namespace: str | None, selector: str) -> list[JobView]:
        """The Jobs that a label selector (``kubectl -l`` syntax, checked by the API server) selects."""
        path = f"/apis/batch/v1/{_scope(namespace)}jobs"
        missing = "this cluster does not serve batch/v1 Jobs"
        return [JobView.from_body(body) for body in self._list(path, missing, {"labelSelector": selector})]

    def named_jobs(self, name: str) -> list[JobView]:
        """The Jobs of this name in every namespace."""
        missing = "this cluster does not serve batch/v1 Jobs"
        query = {"fieldSelector": f"metadata.name={name}"}
        return [JobView.from_body(body) for body in self._list("/apis/batch/v1/jobs", missing, query)]

    def job(self, namespace: str, name: str) -> JobView | None:
        body = self.job_body(namespace, name)
        return None if body is None else JobView.from_body(body)

    def job_body(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        found: Mapping[str, Any] | None = self._get(_job_path(namespace, name))
        return found

    def patch_job(self, namespace: str, name: str, patch: list[dict[str, Any]]) -> Mapping[str, Any]:
        """Apply a JSON patch; ``Conflict`` if one of its tests fails, ``NotFound`` if the Job is gone."""
        body: Mapping[str, Any] | None = self._request(
            "PATCH", _job_path(namespace, name), body=patch, content_type="application/json-patch+json"
        )
        if body is None:
            raise NotFound(f"Job '{name}' not found in namespace '{namespace}'")
        return body

    def namespace_names(self) -> list[str]:
        return sorted(n["metadata"]["name"] for n in self._list("/api/v1/namespaces", "no namespaces"))

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
        return self._request("GET", path, query)

    def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        serialized = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.client.call_api(*serialized, _request_timeout=self.timeout)
            data = response.read()
        except urllib3.exceptions.HTTPError as e:
            raise Unreachable(f"cannot reach the Kubernetes API at {self.server} ({_cause(e)})") from e
        except ApiException as e:  # TLS failures come as status 0
            raise Unreachable(f"cannot reach the Kubernetes API at {self.server} ({_cause(e)})") from e
        if response.status == 404:
            return None
        if response.status == 422 and method == "PATCH":
            raise Conflict(_message(data) or "the object changed since it was read")
        if response.status == 400:
            raise Rejected(_message(data) or "the Kubernetes API refused the request as malformed")
        if response.status == 401:
            raise Unreachable(
                f"the Kubernetes API at {self.server} does not accept these credentials (401 Unauthorized): "
                "check the kubeconfig's user"
            )
        if response.status >= 300:
            message = _message(data) or response.reason
            if response.status == 403:
                raise Forbidden(f"not allowed: {message}")
            raise Unreachable(f"the Kubernetes API at {self.server} answered {response.status}: {message}")
        return json.loads(data)

    def _list(self, path: str, missing: str, query: Mapping[str, str] | None = None) -> list[Mapping[str, Any]]:
        """Every item, page by page; ``missing`` says what a 404 means."""
        items: list[Mapping[str, Any]] = []
        params: dict[str, str] | None = paging.first_page(query)
        while params is not None:
            page = self._get(path, params)
            if page is None:
                raise NotFound(missing)
            items.extend(page.get("items") or [])
            params = paging.next_page(params, page)
        return items


def connect(kubeconfig: str | None = None, context: str | None = None, timeout: Timeout = TIMEOUT) -> Cluster:
    """A client from ``kubeconfig`` (else $KUBECONFIG, else ~/.kube/config, else the in-cluster config)."""
    configuration = kubernetes.client.Configuration()
    configuration.retries = 1  # fail fast: a person or a script is waiting
    if kubeconfig is not None and not Path(kubeconfig).is_file():
        raise Unreachable(f"the kubeconfig '{kubeconfig}' does not exist")
    named = f"'{kubeconfig or os.environ.get('KUBECONFIG') or '~/.kube/config'}'"
    try:
        if kubeconfig is None and not _default_kubeconfig_exists():
            if "KUBERNETES_SERVICE_HOST" not in os.environ:
                raise Unreachable("no kubeconfig: pass --kubeconfig FILE, set $KUBECONFIG, or create ~/.kube/config")
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            return Cluster(kubernetes.client.ApiClient(configuration), _service_account_namespace(), timeout)
        contexts, current = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = current if context is None else next((c for c in contexts if c["name"] == context), None)
        if chosen is None:
            names = ", ".join(c["name"] for c in contexts) or "none"
            raise Unreachable(f"the kubeconfig has no context '{context}' (it has: {names})")
        _require_credential_plugin(kubeconfig, chosen)
        with _library_errors() as errors:
            kubernetes.config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration, persist_config=False
            )
        if errors:  # the client logs a failed credential plugin, and goes on without credentials
            raise Unreachable(f"cannot get credentials for the kubeconfig's user: {errors[-1]}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "it does not parse"
        raise Unreachable(f"the kubeconfig {named} is not valid YAML: {problem}{where}") from None
    except ConfigException as e:
        raise Unreachable(f"cannot use the kubeconfig {named}: {_one_line(str(e))}") from None
    except (Unreachable, NotFound):
        raise
    except Exception as e:  # a kubeconfig of the wrong shape fails deep in the client, with any error
        raise Unreachable(f"cannot use the kubeconfig {named}: {type(e).__name__}: {_one_line(str(e))}") from None
    namespace = (chosen.get("context") or {}).get("namespace") or "default"
    return Cluster(kubernetes.client.ApiClient(configuration), namespace, timeout)


def kubeconfig_contexts(kubeconfig: str | None) -> list[str]:
    contexts, _ = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
    return sorted(c["name"] for c in contexts)


def run_times(body: Mapping[str, Any]) -> RunTimes:
    """When the Job started (status.startTime) and ended (completionTime, else its final condition's time)."""
    status = body.get("status") or {}
    ended = status.get("completionTime")
    if ended is None:
        for condition in status.get("conditions") or ():
            if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
                ended = condition.get("lastTransitionTime")
    started = status.get("startTime")
    return RunTimes(
        started=parse_timestamp(started) if started else None,
        ended=parse_timestamp(ended) if ended else None,
    )


def _require_credential_plugin(kubeconfig: str | None, context: Mapping[str, Any]) -> None:
    """A user's exec credential plugin must be on PATH: the client would log and go on without credentials."""
    user_name = (context.get("context") or {}).get("user")
    for path in (kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep):
        file = Path(path).expanduser()
        if not path or not file.is_file():
            continue
        config = yaml.safe_load(file.read_text()) or {}
        for user in config.get("users") or ():
            if not isinstance(user, Mapping) or user.get("name") != user_name:
                continue
            command = ((user.get("user") or {}).get("exec") or {}).get("command")
            if command and shutil.which(command) is None:
                raise Unreachable(
                    f"the kubeconfig's user '{user_name}' gets credentials from '{command}', "
                    "which is not installed (not on PATH)"
                )
            return


@contextmanager
def _library_errors() -> Iterator[list[str]]:
    """Error messages the kubernetes client logs (to the root logger) meanwhile, instead of printing them."""
    found: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                found.append(_one_line(record.getMessage()))

    root = logging.getLogger()
    handler = Collect()
    root.addHandler(handler)
    try:
        yield found
    finally:
        root.removeHandler(handler)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _job_path(namespace: str, name: str) -> str:
    return f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs/{quote(name)}"


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
    """The useful end of urllib3's nested messages: 'Connection refused', 'certificate verify failed',
    'read timed out (read timeout=1.0)'."""
    text = str(getattr(error, "reason", None) or error)
    found = (
        re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
        or re.search(r"\] ([^'\")\]]+) \(_ssl", text)
        or re.search(r"((?:Read|Connect|connect)[^.:()]* timed out\.? \([^)]*\))", text)
    )
    return found.group(1).strip() if found else text.strip().splitlines()[-1][:200]
