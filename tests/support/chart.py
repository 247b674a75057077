"""The jobgate chart from tests: render it with helm, install it, and its webhook pointed at a local URL."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # rendering needs no cluster
    from localcluster.access import ClusterAccess

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "jobgate"
RELEASE = "jobgate"

Manifest = dict[str, Any]


def run_helm(helm: Path, *args: str, values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm with `values` on stdin (`-f -`); the caller checks the outcome."""
    stdin_values = ["-f", "-"] if values is not None else []
    return subprocess.run(
        [str(helm), *args, *stdin_values],
        input=yaml.safe_dump(values) if values is not None else None,
        capture_output=True,
        text=True,
        check=False,
    )


def render(
    helm: Path, values: Mapping[str, Any] | None = None, *, namespace: str, template: str | None = None
) -> list[Manifest]:
    """`helm template` of the chart released into `namespace`, optionally only one template file."""
    only = ["--show-only", f"templates/{template}"] if template else []
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", namespace, *only, values=values or {})
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def install(cluster: ClusterAccess, namespace: str, values: Mapping[str, Any]) -> None:
    install_chart(cluster, CHART, namespace, values)


def install_chart(cluster: ClusterAccess, chart: Path, namespace: str, values: Mapping[str, Any]) -> None:
    cluster.helm("install", RELEASE, str(chart), "--namespace", namespace, "-f", "-", input=yaml.safe_dump(values))


def uninstall(cluster: ClusterAccess, namespace: str) -> None:
    cluster.helm("uninstall", RELEASE, "--namespace", namespace, "--ignore-not-found", "--wait")


def webhook_configuration_at_url(
    helm: Path, name: str, url: str, ca_bundle: bytes, values: Mapping[str, Any]
) -> Manifest:
    """The chart's MutatingWebhookConfiguration for `values`, calling `url` instead of the chart's Service.

    Rules, selectors and policies are the chart's own; only the client
    configuration (a Service cannot route to this machine) and the name differ.
    """
    rendered = render(helm, values, namespace="jobgate-system", template="webhook.yaml")
    (configuration,) = [m for m in rendered if m["kind"] == "MutatingWebhookConfiguration"]
    configuration["metadata"]["name"] = name
    (hook,) = configuration["webhooks"]
    hook["clientConfig"] = {"url": url, "caBundle": base64.b64encode(ca_bundle).decode()}
    return configuration
