"""`python -m bench [SCENARIO ...]`: run jobgate's benchmarks on local control planes (see bench/results/README.md)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import report
from bench.runner import RESULTS, SCENARIOS, parse_overrides, run_scenarios
from localcluster.build import BuildError
from localcluster.cluster import ClusterStartError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where results go (default {RESULTS})")
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes (about 20 Jobs each)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SCENARIO.PARAM=VALUE", help="e.g. refill.jobs=500"
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite README.md and plots from the JSON files")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
    if args.report_only:
        report.write(args.out)
        return 0
    started = time.monotonic()
    try:
        run_scenarios(args.scenarios or list(SCENARIOS), args.out, tiny=args.tiny, overrides=parse_overrides(args.set))
    except (BuildError, ClusterStartError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"==> benchmarks took {time.monotonic() - started:.0f}s; results in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
