"""The webhook's count of a Reject-bounded queue: narrowed to the key server-side, and never a lost Job."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jobgate.core.admission import governance
from jobgate.core.jobs import JobView
from jobgate.core.policy import ClusterPolicySpec, ConcurrencyPolicy
from jobgate.service import queues
from jobgate.service.queues import first_full, key_selector
from tests.support.views import job, policy

BOUNDED = policy("p", {"app": "x"}, ["customer", "region"], 1, maxQueued=1)


def test_the_count_lists_only_the_keys_jobs_when_its_values_say_so() -> None:
    [gov] = governance([BOUNDED], job("new", {"app": "x", "customer": "acme", "region": "eu"}))
    assert key_selector(gov) == "app=x,customer=acme,region=eu"
    [gov] = governance([BOUNDED], job("new", {"app": "x", "customer": "acme"}))
    assert key_selector(gov) == "app=x,customer=acme"  # region "" may be absent too: filtered after the LIST


class Lister:
    def __init__(self, jobs: list[JobView] | Exception) -> None:
        self.jobs = jobs
        self.selectors: list[str | None] = []

    async def list_jobs(self, namespace: str | None, label_selector: str | None = None) -> tuple[list[JobView], int]:
        self.selectors.append(label_selector)
        if isinstance(self.jobs, Exception):
            raise self.jobs
        return self.jobs, 1


def test_a_full_queue_refuses_and_an_uncountable_one_accepts_with_a_warning() -> None:
    labels = {"app": "x", "customer": "acme", "region": "eu"}
    new = job("new", labels)
    govs = governance([BOUNDED], new)
    full = [job("running", labels, suspended=False), job("queued", labels)]
    warnings: list[str] = []
    refused = asyncio.run(first_full(Lister(full), new, govs, warnings))
    assert refused is not None and refused.policy.name == "p" and warnings == []
    assert asyncio.run(first_full(Lister(full[:1]), new, govs, warnings)) is None
    assert asyncio.run(first_full(Lister(ConnectionError("refused")), new, govs, warnings)) is None
    assert warnings == ["jobgate: could not count the queue of ConcurrencyPolicy p; accepted"]
    unbounded = governance([policy("q", {"app": "x"}, [], 0)], new)
    lister = Lister(full)
    assert asyncio.run(first_full(lister, new, unbounded, warnings)) is None
    assert lister.selectors == []  # an unbounded queue costs no LIST


def test_counting_shares_one_deadline_and_lists_a_keys_scopes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An API server that does not answer: the Job is accepted within one count timeout, however many
    scopes and bounded policies, well before the API server's webhook timeout would fail its creation."""

    def cluster_policy(name: str, keys: list[str], **spec: Any) -> ConcurrencyPolicy:
        body = {"selector": {}, "namespaceSelector": {}, "keyLabels": keys, "maxConcurrent": 1, **spec}
        return ConcurrencyPolicy(
            namespace="", name=name, uid=name, generation=1, created=0.0, spec=ClusterPolicySpec.model_validate(body)
        )

    class Silent(Lister):
        async def list_jobs(self, namespace: str | None, selector: str | None = None) -> tuple[list[JobView], int]:
            self.selectors.append(namespace)
            await asyncio.Event().wait()  # never answers
            raise AssertionError

    monkeypatch.setattr(queues, "COUNT_TIMEOUT_SECONDS", 0.05)
    per_team = cluster_policy("per-team", ["team"], maxQueued=1)
    per_app = cluster_policy("per-app", ["app"], maxQueued=1)
    new = job("new", {"team": "red", "app": "x"}, namespace="a")
    govs = governance([per_team, per_app], new)
    api, warnings = Silent([]), list[str]()
    assert asyncio.run(first_full(api, new, govs, warnings, scopes=("a", "b", "c"))) is None
    assert set(api.selectors[:3]) == {"a", "b", "c"}  # listed at once: none had answered
    assert len(warnings) == 2
