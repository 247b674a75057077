"""Generate the ConcurrencyPolicy and ClusterConcurrencyPolicy CRDs from the pydantic models (`make crds`).

The committed `charts/jobgate/files/crds/<plural>.jobgate.dev.yaml` files are
this module's output, and the only copies: the chart renders them (templates/crd.yaml),
`kubectl apply -f` takes them as they are. A test fails when one is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from jobgate.core.policy import (
    CLUSTER_KIND,
    CLUSTER_PLURAL,
    CLUSTER_SHORT_NAMES,
    CLUSTER_SINGULAR,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    ClusterPolicySpec,
    PolicySpec,
    PolicyStatus,
)

REPO = Path(__file__).resolve().parents[3]
CRD_DIR = REPO / "charts" / "jobgate" / "files" / "crds"
CRD_FILE = CRD_DIR / f"{PLURAL}.{GROUP}.yaml"
CLUSTER_CRD_FILE = CRD_DIR / f"{CLUSTER_PLURAL}.{GROUP}.yaml"
# The same generated files, for `kubectl apply -f crds/` without Helm (the chart can only read its own folder).
PUBLISHED_CRD_FILE = REPO / "crds" / f"{PLURAL}.{GROUP}.yaml"
PUBLISHED_CLUSTER_CRD_FILE = REPO / "crds" / f"{CLUSTER_PLURAL}.{GROUP}.yaml"

PRINTER_COLUMNS = [
    {
        "name": "Key Labels",
        "type": "string",
        "jsonPath": ".spec.keyLabels",
        "description": "Labels that form the key",
    },
    {
        "name": "Max",
        "type": "integer",
        "jsonPath": ".spec.maxConcurrent",
        "description": "Running Jobs allowed per key",
    },
    {
        "name": "Running",
        "type": "integer",
        "jsonPath": ".status.running",
        "description": "Running Jobs, all keys",
    },
    {
        "name": "Queued",
        "type": "integer",
        "jsonPath": ".status.queued",
        "description": "Queued Jobs, all keys",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    # -o wide only: most policies leave their queues unbounded.
    {
        "name": "Max Queued",
        "type": "integer",
        "jsonPath": ".spec.maxQueued",
        "description": "Queued Jobs allowed per key",
        "priority": 1,
    },
    {
        "name": "Overflow",
        "type": "string",
        "jsonPath": ".spec.overflow",
        "description": "What a full queue does: Reject or ReplaceOldest",
        "priority": 1,
    },
]


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema made structural: refs inlined, optionals unwrapped, titles dropped."""
    raw = model.model_json_schema()
    definitions = raw.pop("$defs", {})

    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(n) for n in node]
        if not isinstance(node, dict):
            return node
        node = dict(node)
        if "$ref" in node:
            target = definitions[node.pop("$ref").split("/")[-1]]
            node = {**target, **node}
        if "anyOf" in node:
            # Optional[X] is anyOf [X, null]; Kubernetes expresses optional by omission.
            branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
            if len(branches) != 1:
                raise ValueError(f"cannot express a union in a structural schema: {branches}")
            node = {**convert(branches[0]), **node}
        if node.get("default", ...) is None:
            del node["default"]
        if node.get("additionalProperties") is False:
            # Forbidden in structural schemas; the API server prunes and, with kubectl's
            # strict field validation, refuses unknown fields anyway.
            del node["additionalProperties"]
        if "const" in node:
            node["enum"] = [node.pop("const")]
        node.pop("title", None)
        return {key: convert(value) for key, value in node.items()}

    schema: dict[str, Any] = convert(raw)
    return schema


def render_crd(cluster: bool = False) -> dict[str, Any]:
    """The ConcurrencyPolicy CRD, or with `cluster` the ClusterConcurrencyPolicy CRD."""
    spec = structural_schema(ClusterPolicySpec if cluster else PolicySpec)
    spec["description"] = "Limits how many Jobs that the selector matches run at once, per value of keyLabels."
    if cluster:
        spec["description"] += " A key spans the namespaces that namespaceSelector selects."
    status = structural_schema(PolicyStatus)
    status["description"] = "Written by jobgate only: what it sees and does for this policy."
    kind, plural, singular, short_names = (
        (CLUSTER_KIND, CLUSTER_PLURAL, CLUSTER_SINGULAR, CLUSTER_SHORT_NAMES)
        if cluster
        else (KIND, PLURAL, SINGULAR, SHORT_NAMES)
    )
    description = (
        "ClusterConcurrencyPolicy limits how many Jobs run at once per value of a label, across namespaces: "
        "at most three Jobs per team in every tenant namespace together."
        if cluster
        else "ConcurrencyPolicy limits how many Jobs run at once per value "
        "of a label: one export per customer-id, three backups per database."
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Cluster" if cluster else "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": ["jobgate"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd_yaml(cluster: bool = False) -> str:
    header = "# Generated from operator/jobgate/core/policy.py by `make crds`. Do not edit.\n"
    return header + yaml.safe_dump(render_crd(cluster), sort_keys=False, width=120)


REFERENCE_START = "<!-- policy-reference: generated by `make crds` from operator/jobgate/core/policy.py -->"
REFERENCE_END = "<!-- /policy-reference -->"


def render_reference_markdown() -> str:
    """The README's policy reference: every spec field, its type and description, from the schema."""
    spec = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    cluster_spec = render_crd(cluster=True)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rows = ["| field | type | required | description |", "| --- | --- | --- | --- |"]

    def walk(node: dict[str, Any], path: str, required: bool) -> None:
        kind = node.get("type", "object")
        if kind == "array":
            kind = f"[]{node['items'].get('type', 'object')}"
        elif kind == "object" and "additionalProperties" in node:
            kind = "map[string]string"
        description = node.get("description", "")
        if path == "spec.namespaceSelector":
            description = f"{CLUSTER_KIND} only (required there). {description}"
        rows.append(f"| `{path}` | {kind} | {'yes' if required else 'no'} | {description} |")
        children = node.get("properties") or (node.get("items") or {}).get("properties") or {}
        needed = node.get("required") or (node.get("items") or {}).get("required") or []
        suffix = "[]" if node.get("type") == "array" else ""
        for name, child in children.items():
            walk(child, f"{path}{suffix}.{name}", name in needed)

    walk(spec, "spec", True)
    walk(cluster_spec["properties"]["namespaceSelector"], "spec.namespaceSelector", False)
    return "\n".join([REFERENCE_START, *rows, REFERENCE_END])


def update_readme(readme: Path) -> None:
    text = readme.read_text()
    start, end = text.index(REFERENCE_START), text.index(REFERENCE_END) + len(REFERENCE_END)
    readme.write_text(text[:start] + render_reference_markdown() + text[end:])


def main() -> None:
    if sys.argv[1:] == ["--update-readme"]:
        update_readme(REPO / "README.md")
        return
    sys.stdout.write(render_crd_yaml(cluster=sys.argv[1:] == ["--cluster"]))


if __name__ == "__main__":
    main()
