"""bench/results/README.md and the PNG plots, from the JSON result files alone (so they can be redrawn)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

TITLES = {
    "refill": "1. Refill: freed slots refilled",
    "burst": "2. Burst: Jobs created as fast as the API accepts them",
    "scale": "3. Scale: memory and start-up with many Jobs present",
    "api_cost": "4. API cost per admission (during the refill run)",
    "ceiling": "5. The ceiling of this machine: raw admission patches without an operator",
    "core": "6. Core: the cost of one decision, up to a million queued Jobs (no cluster)",
    "watches": "7. Watches: thousands of policies, a bounded number of watch connections",
    "kueue": "8. Side by side with Kueue: the refill workload under each gate",
    "reaction": "9. Reaction: jobgate's own time from a completion seen to the next admission sent (no cluster)",
}
ORDER = tuple(TITLES)
PLOT_SIZE = (7.0, 2.8)
PLOT_DPI = 90


def load(out_dir: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for name in ORDER:
        path = out_dir / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def write(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    documents = load(out_dir)
    images = plot(documents, out_dir)
    (out_dir / "README.md").write_text(markdown(documents, images))


# --- Markdown ------------------------------------------------------------------------------------


def markdown(documents: Mapping[str, Mapping[str, Any]], images: Mapping[str, list[str]]) -> str:
    if not documents:
        return "# jobgate benchmark results\n\nNo results yet: run `make bench`.\n"
    first = next(iter(documents.values()))
    machine, versions = first["machine"], first["versions"]
    total = sum(d["bench_seconds"] for name, d in documents.items() if name != "api_cost")
    lines = [
        "# jobgate benchmark results",
        "",
        "Written by `make bench` (`python -m bench`). Every figure is measured from outside the operator: "
        "an independent watch of the API (`localcluster/jobwatch.py`), the operator's RSS from /proc, "
        "and the request counters of the operator's and the apiserver's `/metrics`. Each scenario runs on "
        "a fresh local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok) on this "
        "same machine, so the operator, the control plane and the load generator share its CPUs.",
        "",
        f"- measured: {min(d['measured_at'] for d in documents.values())}, {total:.0f} s of benchmarks in all",
        f"- machine: {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
        f"kernel {machine['kernel']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "## Scorecard",
        "",
        "| scenario | figure | target | measured | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, document in documents.items():
        for row in document["targets"]:
            met = {True: "yes", False: "**no**", None: ""}[row["met"]]
            lines.append(f"| {name} | {row['figure']} | {row['target']} | {row['measured']} | {met} |")
    lines += _burst_against_ceiling(documents)
    for name, document in documents.items():
        lines += ["", f"## {TITLES[name]}", ""]
        lines.append(
            f"Took {document['bench_seconds']:.0f} s; load average {document['load_average_before']} before, "
            f"{document['load_average_after']} after (1, 5, 15 min; {machine['nproc']} CPUs). Parameters: "
            + ", ".join(f"`{k}={v}`" for k, v in document["parameters"].items())
            + "."
        )
        lines += ["", "| result | value |", "| --- | --- |"]
        lines += [f"| {key} | {_cell(value)} |" for key, value in _flatten(document["results"])]
        for image in images.get(name, []):
            lines += ["", f"![{name}]({image})"]
    return "\n".join(lines) + "\n"


def _burst_against_ceiling(documents: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The burst's first-round admission rate as a share of the ceiling's raw patch rate, when both ran."""
    if "burst" not in documents or "ceiling" not in documents:
        return []
    burst = documents["burst"]["results"]
    ours = burst["first_round_admission_rate_per_second"]
    ceiling = documents["ceiling"]["results"]["raw_patch"]["admission_rate_per_second"]
    if not ours or not ceiling:
        return []
    share = ours / ceiling
    met = "yes" if share >= 0.5 else "**no**"
    return [
        f"| burst | first-round admission rate vs the ceiling's raw patch rate | ≥ 50 % | "
        f"{ours:.0f}/s vs {ceiling:.0f}/s ({share * 100:.0f} %, while the same API server accepts "
        f"{burst['create_rate_per_second']:.0f} creates/s) | {met} |"
    ]


def _flatten(results: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in results.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return "none" if not value else f"{len(value)}: " + ", ".join(map(str, value[:3])) + (" …" * (len(value) > 3))
    if value is None:
        return "n/a"
    return str(value)


# --- plots ---------------------------------------------------------------------------------------


def plot(documents: Mapping[str, Mapping[str, Any]], out_dir: Path) -> dict[str, list[str]]:
    """Draw what the documents hold; return the image file names per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    images: dict[str, list[str]] = {}
    for name, document in documents.items():
        if "series" in document:
            images.setdefault(name, []).append(_plot_series(name, document, out_dir))
        if document.get("latencies_ms"):
            images.setdefault(name, []).append(_plot_latencies(name, document, out_dir))
        if name == "scale":
            images.setdefault(name, []).append(_plot_memory(document, out_dir))
        if name == "core":
            images.setdefault(name, []).append(_plot_cost_per_event(document, out_dir))
    return images


def _save(figure: Any, out_dir: Path, file_name: str) -> str:
    figure.tight_layout()
    figure.savefig(out_dir / file_name, dpi=PLOT_DPI)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return file_name


def _plot_series(name: str, document: Mapping[str, Any], out_dir: Path) -> str:
    import matplotlib.pyplot as plt

    series = document["series"]
    figure, axes = plt.subplots(figsize=PLOT_SIZE)
    axes.plot(series["t"], series["running"], label="running", color="tab:green")
    axes.plot(series["t"], series["queued"], label="queued", color="tab:orange")
    axes.plot(series["t"], series["finished"], label="finished", color="tab:gray", linestyle=":")
    axes.set_xlabel("seconds from t0 (as seen by the watch)")
    axes.set_ylabel("Jobs")
    axes.set_title(f"{name}: Jobs by state over time", fontsize=10)
    axes.legend(loc="center right", fontsize=8)
    axes.grid(alpha=0.3)
    return _save(figure, out_dir, f"{name}.png")


def _plot_latencies(name: str, document: Mapping[str, Any], out_dir: Path) -> str:
    import matplotlib.pyplot as plt

    values = document["latencies_ms"]
    latency = document["results"]["decision_latency_ms"]
    figure, axes = plt.subplots(figsize=PLOT_SIZE)
    axes.hist(values, bins=60, color="tab:blue")
    for label, style in (("p50", "--"), ("p99", "-")):
        axes.axvline(latency[label], color="black", linestyle=style, label=f"{label} {latency[label]:.0f} ms")
    axes.axvline(50, color="tab:red", linestyle=":", label="target p99 50 ms")
    axes.set_xlabel("decision latency: Complete seen → next Job of the key seen unsuspended (ms)")
    axes.set_ylabel("refills")
    axes.set_title(f"{name}: decision latency ({len(values)} refills)", fontsize=10)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return _save(figure, out_dir, f"{name}-latency.png")


def _plot_memory(document: Mapping[str, Any], out_dir: Path) -> str:
    import matplotlib.pyplot as plt

    phases = document["results"]["phases"]
    names = list(phases)
    figure, axes = plt.subplots(figsize=PLOT_SIZE)
    positions = range(len(names))
    axes.bar([p - 0.2 for p in positions], [phases[n]["rss_kib"] / 1024 for n in names], 0.4, label="RSS after start")
    axes.bar([p + 0.2 for p in positions], [phases[n]["peak_rss_kib"] / 1024 for n in names], 0.4, label="peak RSS")
    axes.set_xticks(list(positions), [n.replace("_", " ") for n in names], fontsize=8)
    axes.set_ylabel("MiB")
    axes.set_title("scale: operator memory by what the namespace holds", fontsize=10)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3, axis="y")
    return _save(figure, out_dir, "scale-memory.png")


def _plot_cost_per_event(document: Mapping[str, Any], out_dir: Path) -> str:
    """Cost of one decision against the queue's length: flat is the point."""
    import matplotlib.pyplot as plt

    sizes = document["results"]["by_queue_length"]
    queued = [figures["queued"] for figures in sizes.values()]
    figure, axes = plt.subplots(figsize=PLOT_SIZE)
    for series, label, color in (
        ("completion_cpu_ms", "completion → decision", "tab:blue"),
        ("arrival_cpu_ms", "arrival → decision", "tab:green"),
    ):
        for stat, style in (("p50", "--"), ("p99", "-")):
            values = [figures[series][stat] for figures in sizes.values()]
            axes.plot(queued, values, style, marker="o", color=color, label=f"{label} {stat}")
    full = [
        (figures["queued"], figures["full_plan_seconds"] * 1000)
        for figures in sizes.values()
        if "full_plan_seconds" in figures
    ]
    if full:
        axes.plot(*zip(*full, strict=True), ":", marker="x", color="tab:gray", label="one full plan() (before)")
    axes.axhline(1.0, color="tab:red", linestyle=":", label="target p99 1 ms")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("queued Jobs")
    axes.set_ylabel("CPU per event (ms)")
    axes.set_title("core: decision cost per event against queue length", fontsize=10)
    axes.legend(fontsize=6, loc="upper left")
    axes.grid(alpha=0.3, which="both")
    read = [(f["queued"], f["keys_read_per_completion"]["mean"]) for f in sizes.values() if "queued" in f]
    if read:  # the work a completion's pass does, apart from what each step costs at that size
        work = axes.twinx()
        work.plot(*zip(*read, strict=True), "-.", marker="s", color="tab:purple", label="keys read per completion")
        work.set_ylim(0, max(v for _, v in read) * 3)
        work.set_ylabel("keys read (mean)", fontsize=8)
        work.legend(fontsize=6, loc="lower right")
    return _save(figure, out_dir, "core-cost-per-event.png")
