"""`jobgate run`: start the operator (watches, engine, webhook, metrics, leader election)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import kopf

from jobgate.engine.engine import Engine, EngineSettings
from jobgate.engine.webhook_scope import keep_webhook_scope
from jobgate.kube import api as kube
from jobgate.kube import paging
from jobgate.kube.lease import BadLeaseTiming, Leadership, LeaseTiming
from jobgate.service import handlers
from jobgate.service.tls import ReloadingWebhookServer
from jobgate.telemetry.logs import setup_logging
from jobgate.telemetry.metrics import Metrics

log = logging.getLogger("jobgate")


def lease_timing(args: argparse.Namespace) -> LeaseTiming:
    """The Lease timings from the flags; raises BadLeaseTiming, naming the inequality, if they are unsafe."""
    scaled = LeaseTiming.for_lease(float(args.lease_seconds))
    return dataclasses.replace(
        scaled,
        renew_seconds=args.renew_deadline or scaled.renew_seconds,
        retry_seconds=args.retry_period or scaled.retry_seconds,
        write_timeout=args.write_timeout or scaled.write_timeout,
    )


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_format, args.log_level)
    if bool(args.webhook_port) != bool(args.webhook_cert and args.webhook_key):
        print(
            "error: --webhook-port needs --webhook-cert and --webhook-key (and they need the port)",
            file=sys.stderr,
        )
        return 2
    try:
        lease_timing(args)
    except BadLeaseTiming as e:
        print(f"error: unsafe leader election flags: {e}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(operate(args))
    return 0


async def operate(args: argparse.Namespace, stop_flag: asyncio.Event | None = None) -> None:
    metrics = Metrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    api_client = await kube.connect(args.kubeconfig, args.context)
    timing = lease_timing(args)
    api = kube.KubeApi(api_client, metrics, write_timeout=timing.write_timeout)
    namespaces = tuple(args.namespaces or ())
    engine_settings = EngineSettings(
        namespaces=namespaces,
        job_selector=args.job_selector,
        resync_seconds=args.resync_seconds,
        landing_seconds=timing.landing_seconds,
        cluster_policies=args.cluster_policies,
    )
    engine = Engine(api, engine_settings, metrics)
    identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"

    async def lead() -> None:
        metrics.leader.set(1)
        try:
            await engine.lead()
        finally:
            metrics.leader.set(0)

    leadership = Leadership(api, args.leader_election_namespace, args.lease_name, identity, lead, timing)
    if args.leader_elect:
        api.may_write = leadership.may_write  # every Job write proves the Lease is held as it leaves

    registry = kopf.OperatorRegistry()
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings, args)
    install_login(registry, api_client)
    handlers.register(
        registry,
        engine,
        webhook=bool(args.webhook_port),
        cluster_policies=args.cluster_policies,
        is_leader=(lambda: leadership.is_leader) if args.leader_elect else (lambda: True),
    )

    log.info("jobgate starting as %s, watching %s", identity, ", ".join(namespaces) or "all namespaces")
    await engine.sync_policies()
    scoping = None
    if args.webhook_configuration:  # the leader keeps the webhook's matchConditions in step with the policies
        leading = (lambda: leadership.is_leader) if args.leader_elect else (lambda: True)
        scoping = asyncio.create_task(keep_webhook_scope(api_client, args.webhook_configuration, engine, leading))
    stop_flag = stop_flag or asyncio.Event()
    elected = asyncio.create_task(leadership.run() if args.leader_elect else lead())

    def stop_if_failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("leading failed: %s; stopping", task.exception(), exc_info=task.exception())
            stop_flag.set()

    elected.add_done_callback(stop_if_failed)
    install_shutdown(registry, elected, stop_flag)
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings,
            standalone=True,
            stop_flag=stop_flag,
            liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
            **({"namespaces": list(namespaces)} if namespaces else {"clusterwide": True}),
        )
    finally:
        elected.cancel()
        await asyncio.gather(elected, return_exceptions=True)
        if scoping is not None:
            scoping.cancel()
            await asyncio.gather(scoping, return_exceptions=True)
        await engine.close()
        await api_client.close()


def configure_kopf(settings: kopf.OperatorSettings, args: argparse.Namespace) -> None:
    settings.posting.enabled = False  # jobgate posts its own Events, on transitions only
    settings.scanning.disabled = True  # no CRD/namespace scanning: fewer permissions needed
    settings.persistence.finalizer = "jobgate.dev/unused"  # never strip anyone's Kopf finalizer
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.chunk_size = paging.LIST_PAGE  # Kopf lists in one request by default
    if args.webhook_port:
        settings.admission.server = ReloadingWebhookServer(
            addr=args.webhook_addr,
            port=args.webhook_port,
            cert_path=Path(args.webhook_cert),
            key_path=Path(args.webhook_key),
        )
    settings.admission.managed = None  # the chart (or the test) owns the webhook configuration


def install_shutdown(registry: kopf.OperatorRegistry, elected: asyncio.Task[None], stop_flag: asyncio.Event) -> None:
    """On SIGTERM, stop admitting and release the Lease at once; then let Kopf exit without delay.

    Kopf never cancels `elected` (it predates the operator). It gives the tasks
    made since — the engine's among them — 5 s to end before cancelling them, so
    the replica went on admitting for 5 s and released the Lease only after.
    Kopf also leaves its own waiter on `stop_flag` pending when a signal stops
    it, and waits those 5 s for it too: setting the flag ends it.
    """

    @kopf.on.cleanup(registry=registry)
    async def stop_leading(**_: Any) -> None:
        elected.cancel()
        await asyncio.gather(elected, return_exceptions=True)
        stop_flag.set()


def install_login(registry: kopf.OperatorRegistry, api_client: Any) -> None:
    """Kopf's watches use the same identity as our writes."""

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        cfg = api_client.configuration
        header = await cfg.get_api_key_with_prefix("BearerToken")
        scheme, _space, token = (header or "").rpartition(" ")
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
            scheme=scheme or None,
            token=token or None,
        )
