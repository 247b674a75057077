"""`jobgate run`'s flags, apart from the operator itself: the CLI builds its parser without importing Kopf."""

from __future__ import annotations

import argparse
import os


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("what to watch")
    where.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config, then $KUBECONFIG)")
    where.add_argument("--context", help="kubeconfig context to use")
    scope = where.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeatable); the default is all namespaces",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    where.add_argument(
        "--job-selector",
        metavar="SELECTOR",
        help="a further server-side label selector for the Jobs to watch, e.g. 'team=data': jobgate "
        "already asks only for the Jobs that some policy selects (or that it queued), and this narrows them",
    )
    where.add_argument(
        "--cluster-policies",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also follow ClusterConcurrencyPolicies, and the Namespaces' labels their namespaceSelectors read "
        "(needs list and watch on namespaces and clusterconcurrencypolicies cluster-wide; default: off)",
    )
    where.add_argument("--resync-seconds", type=float, default=300.0, help="full re-list period (default 300)")

    serve = parser.add_argument_group("endpoints")
    serve.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port; 0 disables")
    serve.add_argument("--health-port", type=int, default=8081, help="liveness /healthz port; 0 disables")
    serve.add_argument("--webhook-port", type=int, default=0, help="serve the mutating webhook on this port")
    serve.add_argument("--webhook-cert", help="PEM certificate for the webhook server")
    serve.add_argument("--webhook-key", help="PEM private key for the webhook server")
    serve.add_argument("--webhook-addr", default="0.0.0.0", help="webhook listen address (default 0.0.0.0)")
    serve.add_argument(
        "--webhook-configuration",
        metavar="NAME",
        help="keep this MutatingWebhookConfiguration's matchConditions in step with the policies (leader only), "
        "so that the API server calls the webhook only for Jobs that a policy governs",
    )

    elect = parser.add_argument_group("leader election")
    elect.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="elect one admitting replica with a Lease (default: on)",
    )
    elect.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace of the Lease (default: $POD_NAMESPACE or 'default')",
    )
    elect.add_argument("--lease-name", default="jobgate-leader", help="name of the Lease (default jobgate-leader)")
    elect.add_argument(
        "--lease-seconds",
        type=float,
        default=15.0,
        help="Lease duration (default 15); the other timings default to fixed shares of it",
    )
    elect.add_argument("--renew-deadline", type=float, help="stop leading when no renewal succeeded for this long")
    elect.add_argument("--retry-period", type=float, help="renew the Lease this often")
    elect.add_argument("--write-timeout", type=float, help="give up on a Job write after this long")

    logs = parser.add_argument_group("logging")
    logs.add_argument("--log-format", choices=["text", "json"], default="text", help="one event per line")
    logs.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
