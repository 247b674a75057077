"""Command line: start and stop a local control plane that outlives the command.

python -m localcluster up --dir .cluster      # builds binaries on first use, returns once ready
eval "$(python -m localcluster env --dir .cluster)"
python -m localcluster down --dir .cluster
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from localcluster.build import BuildError, bin_dir, ensure_binaries, missing_binaries
from localcluster.cluster import ClusterStartError, LocalCluster, running_pids, stop_cluster_in

DEFAULT_DIR = Path(".cluster")


def up(directory: Path, nodes: int) -> int:
    binaries = ensure_binaries()
    kubectl = shlex.quote(str(binaries / "kubectl"))
    kubeconfig = shlex.quote(str(directory / "kubeconfig"))
    if running_pids(directory):
        print(f"a local cluster is already running in {directory}")
    else:
        started = time.monotonic()
        LocalCluster(directory, bin_dir=binaries, nodes=nodes, detached=True).start()
        print(
            f"local cluster ready in {time.monotonic() - started:.1f}s ({nodes} kwok nodes); logs in {directory}/logs"
        )
    print(f"  {kubectl} --kubeconfig {kubeconfig} get nodes")
    print(f'  eval "$({shlex.quote(sys.executable)} -m localcluster env --dir {shlex.quote(str(directory))})"')
    print(f"  stop it: {shlex.quote(sys.executable)} -m localcluster down --dir {shlex.quote(str(directory))}")
    return 0


def down(directory: Path) -> int:
    if stop_cluster_in(directory):
        print(f"stopped the local cluster in {directory} and removed the folder")
    else:
        print(f"no local cluster in {directory}: nothing to stop")
    return 0


def env(directory: Path) -> int:
    """Shell lines that put the binaries on PATH and point KUBECONFIG at the cluster."""
    binaries = bin_dir()
    if missing_binaries(binaries):
        print(f"binaries missing in {binaries}: run `python -m localcluster up` first", file=sys.stderr)
        return 1
    print(f'export PATH={shlex.quote(str(binaries))}:"$PATH"')
    print(f"export KUBECONFIG={shlex.quote(str((directory / 'kubeconfig').resolve()))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start a cluster in the background and wait until Jobs can run"),
        ("down", "stop the cluster and delete its folder"),
        ("env", "print export lines for PATH and KUBECONFIG"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"cluster folder (default {DEFAULT_DIR})")
        if name == "up":
            command.add_argument("--nodes", type=int, default=3, help="number of kwok nodes (default 3)")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return up(args.dir, args.nodes)
        if args.command == "down":
            return down(args.dir)
        return env(args.dir)
    except (BuildError, ClusterStartError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
