"""The `jobgate` command (also `kubectl jobgate`): `run` the operator, or look at the queues."""

from __future__ import annotations

import argparse
import sys

from jobgate import run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobgate",
        description="Limit how many Kubernetes Jobs run at once per value of a label.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = commands.add_parser("run", help="run the operator", description="Run the jobgate operator.")
    run.add_run_arguments(run_parser)
    run_parser.set_defaults(handler=run.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
