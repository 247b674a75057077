"""Build the local control plane's binaries from Go modules into a versioned cache.

Nothing is downloaded except through the Go module proxy, and nothing is
committed: binaries live under ``$JOBGATE_CACHE_DIR`` (default
``$XDG_CACHE_HOME/jobgate``, i.e. ``~/.cache/jobgate``), in a folder named after
the pinned versions, so a warm start rebuilds nothing and a version bump builds
afresh beside the old binaries.

The control plane (Kubernetes, etcd, kwok, helm) shares one folder, ``bin/<versions>``.
Extra tools (Toxiproxy for the fault tests, Kueue for the benchmarks) each get
their own, ``tools/<name>-<version>``: adding or bumping one never rebuilds the
control plane. ``python -m localcluster.build`` builds the control plane and the
default extras; ``--extra kueue`` adds Kueue, which takes minutes and only the
benchmarks need.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

VERSIONS_FILE = Path(__file__).with_name("versions.toml")

KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ALL_BINARIES = (*KUBERNETES_COMMANDS, "etcd", "kwok", "helm")
# The entries of versions.toml that name the control plane's folder; any other entry is an extra tool.
CONTROL_PLANE = ("kubernetes", "etcd", "kwok", "helm")


class BuildError(RuntimeError):
    """The control plane could not be built; the message says what to do instead."""


HOW_ELSE = (
    "or run the integration tests on kind (pytest --cluster=kind, needs Docker) "
    "or on a cluster you have (pytest --cluster=existing, uses $KUBECONFIG)"
)


def pinned_versions() -> dict[str, str]:
    with VERSIONS_FILE.open("rb") as f:
        return {name: str(version) for name, version in tomllib.load(f).items()}


def cache_root() -> Path:
    explicit = os.environ.get("JOBGATE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "jobgate"


def bin_dir(versions: dict[str, str] | None = None) -> Path:
    v = versions or pinned_versions()
    key = "_".join(f"{name}-{v[name]}" for name in CONTROL_PLANE)
    return cache_root() / "bin" / key


def missing_binaries(directory: Path) -> list[str]:
    return [name for name in ALL_BINARIES if not (directory / name).is_file()]


@dataclass(frozen=True)
class GoBuild:
    """One ``go build`` of main packages from a wrapper module into a folder."""

    wrapper: Path  # module directory with go.mod
    packages: Sequence[str]
    ldflags: str
    output: Path

    def run(self, label: str) -> None:
        env = go_env()
        total = _count_packages(self.wrapper, self.packages, env)
        cmd = ["go", "build", "-v", "-trimpath", "-ldflags", self.ldflags, "-o", f"{self.output}/"]
        _progress(label, f"compiling ~{total} packages (cold builds take minutes; cached after)")
        done = 0
        started = time.monotonic()
        with subprocess.Popen(
            [*cmd, *self.packages],
            cwd=self.wrapper,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        ) as proc:
            assert proc.stderr is not None
            tail: list[str] = []
            last_report = 0.0
            for line in proc.stderr:
                done += 1
                tail = [*tail[-30:], line.rstrip()]
                now = time.monotonic()
                if now - last_report > 15:
                    last_report = now
                    pct = min(99, 100 * done // max(total, 1))
                    _progress(label, f"{pct:3d}% ({done}/{total}) after {now - started:.0f}s")
        if proc.returncode != 0:
            raise BuildError(f"go build of {label} failed:\n" + "\n".join(tail))
        _progress(label, f"built in {time.monotonic() - started:.0f}s")


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOFLAGS", "-buildvcs=false")
    return env


def _progress(label: str, message: str) -> None:
    print(f"[localcluster build] {label}: {message}", file=sys.stderr, flush=True)


def _count_packages(wrapper: Path, packages: Sequence[str], env: dict[str, str]) -> int:
    out = _go(["list", "-deps", *packages], cwd=wrapper, env=env)
    return len(out.splitlines())


def _go(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(["go", *args], cwd=cwd, env=env or go_env(), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BuildError(f"the Go toolchain (go) is not on PATH: install Go >= 1.26, {HOW_ELSE}") from None
    if proc.returncode != 0:
        hint = ""
        if "proxy" in proc.stderr or "dial tcp" in proc.stderr or "no such host" in proc.stderr:
            hint = f"\nthe Go module proxy is unreachable: set GOPROXY to one that is, {HOW_ELSE}"
        raise BuildError(f"go {' '.join(args)} failed in {cwd}:\n{proc.stderr.strip()[-3000:]}{hint}")
    return proc.stdout


def _write_wrapper(
    directory: Path, module: str, requires: dict[str, str], replaces: dict[str, str], imports: Sequence[str]
) -> None:
    """A throwaway module whose only purpose is to pin and build others' main packages."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"module {module}", "", "go 1.26", "", "require ("]
    lines += [f"\t{path} {version}" for path, version in sorted(requires.items())]
    lines.append(")")
    if replaces:
        lines += ["", "replace ("]
        lines += [f"\t{path} => {path} {version}" for path, version in sorted(replaces.items())]
        lines.append(")")
    (directory / "go.mod").write_text("\n".join(lines) + "\n")
    body = "\n".join(f'\t_ "{imp}"' for imp in imports)
    # The classic tools.go pattern: the build tag keeps it out of builds, tidy still sees it.
    (directory / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{body}\n)\n")


def staging_modules(kubernetes: str) -> list[str]:
    """The staging modules that k8s.io/kubernetes replaces with local paths, read from its go.mod."""
    info = json.loads(_go(["mod", "download", "-json", f"k8s.io/kubernetes@{kubernetes}"], cwd=cache_root()))
    gomod = Path(info["GoMod"]).read_text()
    modules = []
    for line in gomod.splitlines():
        if "=> ./staging/src/" in line:
            modules.append(line.split("=>")[0].strip())
    if not modules:
        raise BuildError(f"found no staging replaces in the go.mod of k8s.io/kubernetes {kubernetes}")
    return modules


def build_kubernetes(v: dict[str, str], output: Path) -> None:
    version = v["kubernetes"]
    major, minor, _ = version.lstrip("v").split(".")
    staging_version = f"v0.{minor}.{version.split('.')[2]}"
    wrapper = cache_root() / "src" / f"kubernetes-{version}"
    packages = [f"k8s.io/kubernetes/cmd/{name}" for name in KUBERNETES_COMMANDS]
    _write_wrapper(
        wrapper,
        "jobgate.dev/localcluster/kubernetes",
        {"k8s.io/kubernetes": version},
        dict.fromkeys(staging_modules(version), staging_version),
        packages,
    )
    _progress("kubernetes", f"resolving modules for {version}")
    _go(["mod", "tidy"], cwd=wrapper)
    build_date = "2026-01-01T00:00:00Z"  # fixed, so that rebuilds are reproducible
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major.lstrip('v')}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={build_date}",
        ]
    GoBuild(wrapper, packages, "-s -w " + " ".join(flags), output).run("kubernetes")


def build_etcd(v: dict[str, str], output: Path) -> None:
    wrapper = cache_root() / "src" / f"etcd-{v['etcd']}"
    _write_wrapper(
        wrapper,
        "jobgate.dev/localcluster/etcd",
        {"go.etcd.io/etcd/server/v3": v["etcd"]},
        {},
        ["go.etcd.io/etcd/server/v3"],
    )
    _progress("etcd", f"resolving modules for {v['etcd']}")
    _go(["mod", "tidy"], cwd=wrapper)
    GoBuild(wrapper, ["go.etcd.io/etcd/server/v3"], "-s -w", output).run("etcd")
    (output / "server").rename(output / "etcd")  # go names it after the path, less its /v3


def build_kwok(v: dict[str, str], output: Path) -> None:
    wrapper = cache_root() / "src" / f"kwok-{v['kwok']}"
    _write_wrapper(
        wrapper,
        "jobgate.dev/localcluster/kwok",
        {"sigs.k8s.io/kwok": v["kwok"]},
        {},
        ["sigs.k8s.io/kwok/cmd/kwok"],
    )
    _go(["mod", "tidy"], cwd=wrapper)
    flags = f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={v['kwok']}"
    GoBuild(wrapper, ["sigs.k8s.io/kwok/cmd/kwok"], flags, output).run("kwok")


def build_helm(v: dict[str, str], output: Path) -> None:
    wrapper = cache_root() / "src" / f"helm-{v['helm']}"
    _write_wrapper(
        wrapper,
        "jobgate.dev/localcluster/helm",
        {"helm.sh/helm/v3": v["helm"]},
        {},
        ["helm.sh/helm/v3/cmd/helm"],
    )
    _go(["mod", "tidy"], cwd=wrapper)
    _, minor, _ = v["kubernetes"].lstrip("v").split(".")
    flags = [
        f"-X helm.sh/helm/v3/internal/version.version={v['helm']}",
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
        # Without these helm assumes an ancient cluster for `helm template` and lint.
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
        f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={minor}",
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
        f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={minor}",
    ]
    GoBuild(wrapper, ["helm.sh/helm/v3/cmd/helm"], "-s -w " + " ".join(flags), output).run("helm")


def build_toxiproxy(v: dict[str, str], output: Path) -> None:
    version = v["toxiproxy"]
    wrapper = cache_root() / "src" / f"toxiproxy-{version}"
    package = "github.com/Shopify/toxiproxy/v2/cmd/server"
    _write_wrapper(
        wrapper, "jobgate.dev/localcluster/toxiproxy", {"github.com/Shopify/toxiproxy/v2": version}, {}, [package]
    )
    _go(["mod", "tidy"], cwd=wrapper)
    GoBuild(wrapper, [package], f"-s -w -X github.com/Shopify/toxiproxy/v2.Version={version}", output).run("toxiproxy")
    (output / "server").rename(output / "toxiproxy-server")


def build_kueue(v: dict[str, str], output: Path) -> None:
    version = v["kueue"]
    wrapper = cache_root() / "src" / f"kueue-{version}"
    package = "sigs.k8s.io/kueue/cmd/kueue"
    _write_wrapper(wrapper, "jobgate.dev/localcluster/kueue", {"sigs.k8s.io/kueue": version}, {}, [package])
    _progress("kueue", f"resolving modules for {version}")
    _go(["mod", "tidy"], cwd=wrapper)
    GoBuild(wrapper, [package], f"-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion={version}", output).run("kueue")
    # Kueue's CRDs come with the binary: a cluster must have them before the manager starts.
    source = Path(json.loads(_go(["list", "-m", "-json", "sigs.k8s.io/kueue"], cwd=wrapper))["Dir"])
    crds = output / "crds"
    shutil.copytree(source / "config" / "components" / "crd" / "bases", crds, copy_function=shutil.copyfile)
    crds.chmod(0o755)  # the module cache is read-only, and copytree copies the folder's mode


BUILDERS = {
    "kubernetes": (KUBERNETES_COMMANDS, build_kubernetes),
    "etcd": (("etcd",), build_etcd),
    "kwok": (("kwok",), build_kwok),
    "helm": (("helm",), build_helm),
}


@dataclass(frozen=True)
class ExtraTool:
    """A tool outside the control plane, built into its own folder when first asked for."""

    outputs: tuple[str, ...]  # what the build leaves in its folder (binaries, or folders beside them)
    build: Callable[[dict[str, str], Path], None]
    by_default: bool  # built by `python -m localcluster.build` (and so by `make binaries`) without --extra


EXTRA_TOOLS = {
    "toxiproxy": ExtraTool(("toxiproxy-server",), build_toxiproxy, by_default=True),  # seconds to build
    "kueue": ExtraTool(("kueue", "crds"), build_kueue, by_default=False),  # minutes: for the benchmarks only
}


def tool_dir(name: str, versions: dict[str, str] | None = None) -> Path:
    v = versions or pinned_versions()
    return cache_root() / "tools" / f"{name}-{v[name]}"


def _require_go(target: Path) -> None:
    if shutil.which("go") is None:
        raise BuildError(
            f"the Go toolchain (go) is not on PATH and {target} lacks binaries: install Go >= 1.26, {HOW_ELSE}"
        )


def _build_into(target: Path, name: str, outputs: Sequence[str], build: Callable[[dict[str, str], Path], None]) -> None:
    """Build into a scratch folder, then move: an interrupted build leaves no half binary."""
    cache_root().mkdir(parents=True, exist_ok=True)
    scratch = cache_root() / "tmp" / name
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    build(pinned_versions(), scratch)
    target.mkdir(parents=True, exist_ok=True)
    for output in outputs:
        shutil.rmtree(target / output, ignore_errors=True)  # a folder output left by an interrupted move
        os.replace(scratch / output, target / output)
    shutil.rmtree(scratch, ignore_errors=True)


def ensure_binaries() -> Path:
    """Return the folder holding every control-plane binary, building what is missing."""
    versions = pinned_versions()
    target = bin_dir(versions)
    if not missing_binaries(target):
        return target
    _require_go(target)
    started = time.monotonic()
    for name, (binaries, build) in BUILDERS.items():
        if not all((target / b).is_file() for b in binaries):
            _build_into(target, name, binaries, build)
    _progress("all", f"binaries ready in {target} after {time.monotonic() - started:.0f}s")
    return target


def ensure_tool(name: str) -> Path:
    """Return the folder holding the extra tool ``name`` (a key of EXTRA_TOOLS), building it if missing."""
    tool = EXTRA_TOOLS[name]
    target = tool_dir(name)
    if all((target / output).exists() for output in tool.outputs):
        return target
    _require_go(target)
    _build_into(target, name, tool.outputs, tool.build)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.build",
        description="Build the local control plane and the default extra tools into the versioned cache.",
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        choices=sorted(EXTRA_TOOLS),
        help="also build this extra tool (repeatable); "
        f"built by default: {', '.join(n for n, t in EXTRA_TOOLS.items() if t.by_default)}",
    )
    args = parser.parse_args(argv)
    wanted = [n for n, tool in EXTRA_TOOLS.items() if tool.by_default or n in args.extra]
    try:
        print(ensure_binaries())
        for name in wanted:
            print(ensure_tool(name))
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
