"""The webhook's count of a Reject-bounded queue: narrowed to the key server-side, and never a lost Job."""

from __future__ import annotations

import asyncio

from jobgate.core.admission import governance
from jobgate.core.jobs import JobView
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
