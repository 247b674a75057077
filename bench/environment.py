"""What a result was measured on: the machine, the versions, and how busy the machine was."""

from __future__ import annotations

import os
import platform
import tomllib
from importlib import metadata
from typing import Any

from localcluster.build import VERSIONS_FILE


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(_meminfo_kib("MemTotal") / 2**20, 1),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: above the CPU count, something else competes for the CPUs."""
    return [round(x, 2) for x in os.getloadavg()]


def versions() -> dict[str, str]:
    with VERSIONS_FILE.open("rb") as f:
        pinned = {name: str(version) for name, version in tomllib.load(f).items()}
    packages = {name: metadata.version(name) for name in ("jobgate", "kopf", "aiohttp")}
    # "kubernetes" in versions.toml is the control plane; the Python client has its own numbering.
    return {
        **pinned,
        "python": platform.python_version(),
        **packages,
        "kubernetes-client": metadata.version("kubernetes"),
    }


def _meminfo_kib(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name == field:
                return int(rest.split()[0])
    raise RuntimeError(f"/proc/meminfo has no {field} line")


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                return value.strip()
    return platform.processor() or "unknown"


def process_memory_kib(pid: int) -> dict[str, int]:
    """Resident memory now (VmRSS) and at its peak (VmHWM) of a process, in KiB."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(rest.split()[0])
    return {"rss_kib": found["VmRSS"], "peak_rss_kib": found["VmHWM"]}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
