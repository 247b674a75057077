"""The committed CRD is generated from the pydantic models, and stays so."""

from __future__ import annotations

from jobgate._build.crd import (
    CLUSTER_CRD_FILE,
    CRD_FILE,
    PUBLISHED_CLUSTER_CRD_FILE,
    PUBLISHED_CRD_FILE,
    REPO,
    render_crd,
    render_crd_yaml,
    render_reference_markdown,
)


def test_the_committed_crds_are_not_stale() -> None:
    for path in (CRD_FILE, PUBLISHED_CRD_FILE):
        assert path.read_text() == render_crd_yaml(), f"{path} is stale: run `make crds` and commit the result"
    for path in (CLUSTER_CRD_FILE, PUBLISHED_CLUSTER_CRD_FILE):
        assert path.read_text() == render_crd_yaml(cluster=True), f"{path} is stale: run `make crds`"


def test_the_cluster_crd_is_the_namespaced_one_plus_a_namespace_selector() -> None:
    namespaced, cluster = render_crd(), render_crd(cluster=True)
    assert cluster["spec"]["scope"] == "Cluster"
    assert cluster["spec"]["names"]["kind"] == "ClusterConcurrencyPolicy"
    assert cluster["spec"]["names"]["shortNames"] == ["cconpol"]
    version, cluster_version = namespaced["spec"]["versions"][0], cluster["spec"]["versions"][0]
    assert cluster_version["subresources"] == {"status": {}}
    assert cluster_version["additionalPrinterColumns"] == version["additionalPrinterColumns"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    cluster_spec = cluster_version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(cluster_spec["properties"]) - set(spec["properties"]) == {"namespaceSelector"}
    assert "namespaceSelector" in cluster_spec["required"]
    assert cluster_spec["properties"]["namespaceSelector"]["properties"] == spec["properties"]["selector"]["properties"]


def test_the_crd_explains_every_spec_field() -> None:
    schema = render_crd(cluster=True)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def undocumented(node: dict[str, object], path: str) -> list[str]:
        missing = [] if "description" in node or path.endswith("[]") else [path]
        for name, child in (node.get("properties") or {}).items():  # type: ignore[attr-defined]
            missing += undocumented(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            missing += undocumented(node["items"], f"{path}[]")  # type: ignore[arg-type]
        return missing

    assert undocumented(schema, "spec") == []


def test_printer_columns_are_those_of_the_spec() -> None:
    columns = render_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == ["Key Labels", "Max", "Running", "Queued", "Age"]
    assert [c["name"] for c in columns if c.get("priority")] == ["Max Queued", "Overflow"]  # -o wide


def test_the_readme_policy_reference_is_generated_from_the_models() -> None:
    readme = (REPO / "README.md").read_text()
    assert render_reference_markdown() in readme, "README's policy reference is stale: run `make crds`"
