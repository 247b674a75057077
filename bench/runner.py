"""Run scenarios, stamp each result with machine, versions and parameters, write JSON, then the report."""

from __future__ import annotations

import dataclasses
import datetime
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from bench import environment, report
from bench.scenarios import Document, burst, ceiling, core, kueue, reaction, refill, scale, watches

RESULTS = Path(__file__).resolve().parent / "results"


class Scenario(Protocol):
    """What each module in bench.scenarios provides."""

    Params: Any

    def run(self, params: Any, log_dir: Path) -> dict[str, Document]: ...


SCENARIOS: dict[str, Scenario] = {
    "refill": refill,  # also writes api_cost (scenario 4)
    "burst": burst,
    "scale": scale,
    "ceiling": ceiling,
    "core": core,  # no cluster: the decision core alone, up to a million queued Jobs
    "reaction": reaction,  # no cluster: the whole engine, its API answered from memory
    "watches": watches,
    "kueue": kueue,  # builds Kueue from its Go module on first use (minutes)
}


def run_scenarios(
    names: Sequence[str],
    out_dir: Path = RESULTS,
    *,
    tiny: bool = False,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Document]:
    """Run the named scenarios in order; write `<name>.json` for each result and the report; return them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="jobgate-bench-"))
    print(f"==> operator logs in {log_dir}", flush=True)
    stamp = {"machine": environment.machine(), "versions": environment.versions()}
    written: dict[str, Document] = {}
    for name in names:
        module = SCENARIOS[name]
        params = module.Params.tiny() if tiny else module.Params()
        params = dataclasses.replace(params, **dict((overrides or {}).get(name, {})))
        print(f"==> {name}: {params}", flush=True)
        started = time.monotonic()
        measured_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        load_before = environment.load_average()
        documents = module.run(params, log_dir)
        seconds = round(time.monotonic() - started, 1)
        # Other work on the machine competes for the same CPUs: say how busy it was.
        load = {"load_average_before": load_before, "load_average_after": environment.load_average()}
        print(f"==> {name} took {seconds:.0f}s", flush=True)
        for scenario, document in documents.items():
            full = {"scenario": scenario, "measured_at": measured_at, "bench_seconds": seconds, **load, **stamp}
            full.update(document)
            (out_dir / f"{scenario}.json").write_text(json.dumps(full, indent=1, ensure_ascii=False) + "\n")
            written[scenario] = full
    report.write(out_dir)
    return written


def parse_overrides(settings: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`refill.jobs=100` → {"refill": {"jobs": 100}}, typed like the parameter's default."""
    overrides: dict[str, dict[str, Any]] = {}
    for setting in settings:
        dotted, _, value = setting.partition("=")
        name, _, field = dotted.partition(".")
        if name not in SCENARIOS or not value:
            raise ValueError(f"--set {setting}: expected SCENARIO.PARAMETER=VALUE, SCENARIO one of {list(SCENARIOS)}")
        defaults = SCENARIOS[name].Params()
        if not hasattr(defaults, field):
            fields = [f.name for f in dataclasses.fields(defaults)]
            raise ValueError(f"--set {setting}: {name} has no parameter {field!r}; it has {fields}")
        overrides.setdefault(name, {})[field] = type(getattr(defaults, field))(value)
    return overrides
