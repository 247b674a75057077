"""Keeps the MutatingWebhookConfiguration's matchConditions in step with the policies (`--webhook-configuration`).

Only the leader writes, so that two replicas that briefly disagree about the
policies never undo each other's writes; a replica that stopped leading but has
not noticed yet may write a stale condition, and the leader, which watches the
configuration, puts its own back at once. The same watch restores
the conditions after anything else replaced them (`helm upgrade --force`, a
GitOps tool that owns the field). While no replica leads, the conditions stay as
the last leader wrote them: right for every policy that has not changed since,
and a policy created meanwhile is covered by the engine, which re-suspends the
Jobs that started past their limit.

The chart renders no matchConditions: `helm upgrade` (a three-way merge) and
server-side appliers then leave the operator's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes.aio import client as aio_client

from jobgate.core.admission import NO_NAMESPACES, NamespaceLabels
from jobgate.core.match_conditions import EXPRESSION_BUDGET, TERM_BUDGET, Precision, WebhookScope, webhook_scope
from jobgate.core.policy import ConcurrencyPolicy, Condition
from jobgate.engine.engine import Engine

log = logging.getLogger("jobgate.webhook_scope")

CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
CHECK_SECONDS = 1.0  # how soon a replica that becomes leader takes over, and a failed write is retried
WATCH_SECONDS = 300
CONDITION_TYPE = "WebhookScoped"

_NOTES = {
    Precision.SELECTOR: (
        "True",
        "Selector",
        "the API server calls jobgate's webhook only for the Jobs that policies select",
    ),
    Precision.NAMESPACE: (
        "False",
        "NamespaceOnly",
        "this namespace's selectors would make the webhook's matchConditions larger than jobgate writes them "
        f"({EXPRESSION_BUDGET} characters, {TERM_BUDGET} selectors, which the API server compiles at every change): "
        "it calls jobgate for every Job of the namespace, and refuses them while jobgate is down",
    ),
    Precision.UNSCOPED: (
        "False",
        "Unscoped",
        "even the list of namespaces with policies would make the webhook's matchConditions larger than "
        f"jobgate writes them ({EXPRESSION_BUDGET} characters): the API server calls jobgate for every Job "
        "in the webhook's scope",
    ),
    Precision.ANY_NAMESPACE: (
        "False",
        "SelectorInAnyNamespace",
        "the API server calls jobgate's webhook for the Jobs this policy's selector matches in every namespace, "
        "also those its namespaceSelector leaves out (the names of the namespaces it selects would make the "
        f"webhook's matchConditions larger than {EXPRESSION_BUDGET} characters): while jobgate is down, those "
        "are refused too",
    ),
    Precision.EXCLUDED: (
        "False",
        "NamespaceExcluded",
        "the webhook never sees Jobs of this namespace: they are created unsuspended, and jobgate "
        "suspends again those that run past the limit",
    ),
}


class ApiError(Exception):
    def __init__(self, status: int, what: str, body: bytes) -> None:
        self.status = status
        try:
            message = json.loads(body).get("message") or body.decode(errors="replace")
        except ValueError:
            message = body.decode(errors="replace")
        super().__init__(f"{what}: {status} {message}")


class WebhookScopeKeeper:
    """Writes `webhook_scope(policies())` into every webhook of one MutatingWebhookConfiguration."""

    def __init__(
        self,
        client: aio_client.ApiClient,
        configuration: str,
        policies: Callable[[], Iterable[ConcurrencyPolicy]],
        is_leader: Callable[[], bool],
        scope_changed: Callable[[], None] = lambda: None,
        namespaces: Callable[[], NamespaceLabels] = lambda: NO_NAMESPACES,
    ) -> None:
        self.client = client
        self.configuration = configuration
        self.policies = policies
        self.namespaces = namespaces  # their labels: which namespaces cluster policies select, by name
        self.is_leader = is_leader
        self.scope_changed = scope_changed
        self.scope: WebhookScope | None = None  # what the leader wants; None while not leading
        self.observed: Mapping[str, Any] | None = None  # the configuration as last read or written
        self._stale = True  # the policies changed since `scope` was computed
        self._wake = asyncio.Event()
        self._complaint = ""  # the last failure logged, so that a retry every second logs it once

    def policies_changed(self) -> None:
        self._stale = True
        self._wake.set()

    def namespace_changed(self, _name: str) -> None:
        """A Namespace's labels changed: cluster policies may select other namespaces by name."""
        self.policies_changed()

    def condition_for(self, policy: ConcurrencyPolicy) -> Condition | None:
        """The policy's WebhookScoped condition: whether the webhook sees exactly its Jobs."""
        if self.scope is None:
            return None
        status, reason, message = _NOTES[self.scope.precision_for(policy.namespace)]
        return Condition(type=CONDITION_TYPE, status=status, reason=reason, message=message)  # type: ignore[arg-type]

    async def run(self) -> None:
        watching = asyncio.create_task(self._follow_configuration())
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), CHECK_SECONDS)
                self._wake.clear()
                if not self.is_leader():
                    if self.scope is not None:
                        self.scope = None
                        self._stale = True
                    continue
                if self._stale:
                    self._stale = False
                    self._update_scope(webhook_scope(self.policies(), namespaces=self.namespaces()))
                await self._converge()
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching

    def _update_scope(self, scope: WebhookScope) -> None:
        if scope == self.scope:
            return
        before = self.scope.precision if self.scope is not None else {}
        self.scope = scope
        coarse = sorted(
            namespace
            for namespace, precision in scope.precision.items()
            if precision in (Precision.NAMESPACE, Precision.UNSCOPED) and before.get(namespace) != precision
        )
        if coarse and not scope.conditions:
            log.warning(
                "the webhook's matchConditions for %d namespaces with policies would be too large: it has none, "
                "and the API server calls jobgate for every Job in its scope",
                len(scope.precision),
            )
        elif coarse:
            log.warning(
                "the selectors of the policies of namespace(s) %s would make the webhook's matchConditions too "
                "large: the API server calls jobgate for every Job of those namespaces",
                ", ".join(coarse),
            )
        if scope.precision != before:
            self.scope_changed()

    async def _converge(self) -> None:
        """Write the wanted conditions into every webhook of the configuration, if one differs."""
        if self.observed is None or self.scope is None:
            return
        wanted = [dict(c) for c in self.scope.conditions]
        hooks = self.observed.get("webhooks") or []
        operations: list[dict[str, Any]] = []
        for index, hook in enumerate(hooks):
            path = f"/webhooks/{index}/matchConditions"
            if wanted and hook.get("matchConditions") != wanted:
                operations.append({"op": "add", "path": path, "value": wanted})  # add replaces a present member
            elif not wanted and "matchConditions" in hook:
                operations.append({"op": "remove", "path": path})
        if not operations:
            return
        # Only onto the version we looked at: the indexes must still point at the same webhooks.
        version = self.observed["metadata"]["resourceVersion"]
        operations.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": version})
        try:
            self.observed = await self._request("PATCH", self._path(), body=operations)
        except ApiError as e:
            # A failed `test` (changed meanwhile: the watch brings the new version) is a 422 too, but
            # only a refused condition names the field.
            if e.status == 409 or (e.status == 422 and "matchConditions" not in str(e)):
                log.debug("webhook configuration %s changed while writing; retrying", self.configuration)
                return
            self._complain(
                f"cannot write the matchConditions of MutatingWebhookConfiguration {self.configuration}: {e}"
            )
            return
        except (aiohttp.ClientError, TimeoutError) as e:
            self._complain(f"cannot write the matchConditions of {self.configuration}: {e}")
            return
        self._complaint = ""
        log.info(
            "webhook configuration %s now calls jobgate for %s",
            self.configuration,
            _describe(self.scope),
        )

    async def _follow_configuration(self) -> None:
        """Keep `observed` current: read the configuration, then watch it, as client-go's reflector does."""
        failures = 0
        while True:
            try:
                listed = await self._request("GET", CONFIGURATIONS, {"fieldSelector": self._field_selector()})
                items = listed.get("items") or []
                self._observe(items[0] if items else None)
                version = listed["metadata"]["resourceVersion"]
                async for event_type, body in self._watch(version):
                    self._observe(None if event_type == "DELETED" else body)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a broken watch is retried, never fatal
                failures += 1
                delay = min(30.0, 0.5 * 2**failures)
                self._complain(f"cannot watch MutatingWebhookConfiguration {self.configuration} ({e}); retrying")
                await asyncio.sleep(delay)

    def _observe(self, body: Mapping[str, Any] | None) -> None:
        if body is None and self.observed is not None:
            log.warning("MutatingWebhookConfiguration %s is gone: no matchConditions to keep", self.configuration)
        self.observed = body
        self._wake.set()

    async def _watch(self, version: str) -> AsyncIterator[tuple[str, Mapping[str, Any]]]:
        query = {
            "fieldSelector": self._field_selector(),
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=WATCH_SECONDS + 60)
        response = await self._send("GET", CONFIGURATIONS, query, None, timeout)
        stream: aiohttp.ClientResponse = response.response
        try:
            if not 200 <= response.status < 300:
                raise ApiError(response.status, "watch", await response.read())
            # Lines split here, not by aiohttp's readline: a large expression passes its line limit.
            pending = b""
            async for chunk in stream.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for event in (json.loads(line) for line in lines if line.strip()):
                    if event["type"] == "ERROR":
                        raise ApiError(int(event["object"].get("code") or 500), "watch", json.dumps(event).encode())
                    if event["type"] != "BOOKMARK":
                        yield event["type"], event["object"]
        finally:
            stream.release()

    async def _request(
        self, method: str, path: str, query: Mapping[str, str] | None = None, body: Any = None
    ) -> Mapping[str, Any]:
        response = await self._send(method, path, query, body, aiohttp.ClientTimeout(total=10))
        data = await response.read()
        if not 200 <= response.status < 300:
            raise ApiError(response.status, f"{method} {path}", data)
        result: Mapping[str, Any] = json.loads(data)
        return result

    async def _send(
        self, method: str, path: str, query: Mapping[str, str] | None, body: Any, timeout: aiohttp.ClientTimeout
    ) -> Any:
        content_type = "application/json-patch+json" if method == "PATCH" else "application/json"
        serialized = await self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        return await self.client.call_api(*serialized, _request_timeout=timeout)

    def _path(self) -> str:
        return f"{CONFIGURATIONS}/{quote(self.configuration)}"

    def _field_selector(self) -> str:
        # A single object by name: RBAC can then grant list and watch on it alone (resourceNames).
        return f"metadata.name={self.configuration}"

    def _complain(self, message: str) -> None:
        if message != self._complaint:
            log.warning(message)
            self._complaint = message


async def keep_webhook_scope(
    client: aio_client.ApiClient, configuration: str, engine: Engine, is_leader: Callable[[], bool]
) -> None:
    """Keep `configuration`'s matchConditions in step with the engine's policies, and report in policy status."""
    policies = engine.policies
    keeper = WebhookScopeKeeper(
        client, configuration, policies.policies.values, is_leader, engine.changed, lambda: policies.namespaces
    )
    policies.listeners.append(keeper.policies_changed)
    policies.namespace_listeners.append(keeper.namespace_changed)
    policies.condition_sources.append(keeper.condition_for)
    try:
        await keeper.run()
    finally:
        policies.listeners.remove(keeper.policies_changed)
        policies.namespace_listeners.remove(keeper.namespace_changed)
        policies.condition_sources.remove(keeper.condition_for)


def _describe(scope: WebhookScope) -> str:
    if not scope.conditions:
        return "every Job in its scope"
    if not scope.precision:
        return "no Job (no policy)"
    exact = sum(p is Precision.SELECTOR for p in scope.precision.values())
    whole = sum(p is Precision.NAMESPACE for p in scope.precision.values())
    return f"the Jobs that policies select in {exact} namespace(s), and every Job in {whole}"
