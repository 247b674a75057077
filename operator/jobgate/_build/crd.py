"""Generate the ConcurrencyPolicy CRD from the pydantic models (`make crds`).

The committed `charts/jobgate/files/crds/concurrencypolicies.jobgate.dev.yaml` is
this module's output, and the only copy: the chart renders it (templates/crd.yaml),
`kubectl apply -f` takes it as it is. A test fails when it is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from jobgate.core.policy import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, PolicySpec, PolicyStatus

REPO = Path(__file__).resolve().parents[3]
CRD_FILE = REPO / "charts" / "jobgate" / "files" / "crds" / f"{PLURAL}.{GROUP}.yaml"
# The same generated file, for `kubectl apply -f crds/` without Helm (the chart can only read its own folder).
PUBLISHED_CRD_FILE = REPO / "crds" / f"{PLURAL}.{GROUP}.yaml"

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


def render_crd() -> dict[str, Any]:
    spec = structural_schema(PolicySpec)
    spec["description"] = "Limits how many Jobs that the selector matches run at once, per value of keyLabels."
    status = structural_schema(PolicyStatus)
    status["description"] = "Written by jobgate only: what it sees and does for this policy."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
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
                            "description": "ConcurrencyPolicy limits how many Jobs run at once per value "
                            "of a label: one export per customer-id, three backups per database.",
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


def render_crd_yaml() -> str:
    header = "# Generated from operator/jobgate/core/policy.py by `make crds`. Do not edit.\n"
    return header + yaml.safe_dump(render_crd(), sort_keys=False, width=120)


REFERENCE_START = "<!-- policy-reference: generated by `make crds` from operator/jobgate/core/policy.py -->"
REFERENCE_END = "<!-- /policy-reference -->"


def render_reference_markdown() -> str:
    """The README's policy reference: every spec field, its type and description, from the schema."""
    spec = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rows = ["| field | type | required | description |", "| --- | --- | --- | --- |"]

    def walk(node: dict[str, Any], path: str, required: bool) -> None:
        kind = node.get("type", "object")
        if kind == "array":
            kind = f"[]{node['items'].get('type', 'object')}"
        elif kind == "object" and "additionalProperties" in node:
            kind = "map[string]string"
        rows.append(f"| `{path}` | {kind} | {'yes' if required else 'no'} | {node.get('description', '')} |")
        children = node.get("properties") or (node.get("items") or {}).get("properties") or {}
        needed = node.get("required") or (node.get("items") or {}).get("required") or []
        suffix = "[]" if node.get("type") == "array" else ""
        for name, child in children.items():
            walk(child, f"{path}{suffix}.{name}", name in needed)

    walk(spec, "spec", True)
    return "\n".join([REFERENCE_START, *rows, REFERENCE_END])


def update_readme(readme: Path) -> None:
    text = readme.read_text()
    start, end = text.index(REFERENCE_START), text.index(REFERENCE_END) + len(REFERENCE_END)
    readme.write_text(text[:start] + render_reference_markdown() + text[end:])


def main() -> None:
    if sys.argv[1:] == ["--update-readme"]:
        update_readme(REPO / "README.md")
        return
    sys.stdout.write(render_crd_yaml())


if __name__ == "__main__":
    main()
