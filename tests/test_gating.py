"""The gating engine on the real local control plane: one test per SPEC admission rule.

Each test runs `jobgate run` as a process, creates Jobs that kwok runs for a
second or so, and checks what an independent watch of the API saw: never more
running per key than the limit because of an admission, and every Job done.
"""

from __future__ import annotations

import time

import pytest

from tests.support.scenario import Scenario, assert_never_over_admitted
from tests.support.waiting import poll_until

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "jobgate.dev", "v1alpha1", "concurrencypolicies"


# --- per-key limits ---------------------------------------------------------------------------------


def test_each_key_runs_at_most_max_concurrent_and_all_finish(scenario: Scenario) -> None:
    scenario.start_operator()
    scenario.policy("exports", {"app": "export"}, ["customer"], 2)
    names = []
    for customer in ("a", "b", "c", "d", "e"):
        for i in range(4):
            names.append(f"export-{customer}-{i}")
            scenario.job(names[-1], {"app": "export", "customer": customer})
    scenario.watch.wait_for(lambda w: w.finished(*names), "all 20 exports finishing", timeout=120)
    assert_never_over_admitted(scenario.watch)
    peaks = {key: peak for (policy, key), peak in scenario.watch.peak.items() if policy == "exports"}
    assert max(peaks.values()) == 2, peaks  # the limit, and parallelism up to it


def test_empty_key_labels_make_one_key_for_all_jobs(scenario: Scenario) -> None:
    scenario.start_operator()
    scenario.policy("global", {"app": "batch"}, [], 3)
    names = [f"batch-{i}" for i in range(8)]
    for i, name in enumerate(names):
        scenario.job(name, {"app": "batch", "customer": str(i)})
    scenario.watch.wait_for(lambda w: w.finished(*names), "all 8 Jobs finishing", timeout=90)
    assert_never_over_admitted(scenario.watch)
    assert scenario.watch.peak[("global", ())] == 3


def test_a_job_governed_by_two_policies_needs_a_slot_in_both(scenario: Scenario) -> None:
    scenario.start_operator()
    scenario.policy("per-customer", {"app": "x"}, ["customer"], 1)
    scenario.policy("per-db", {"app": "x"}, ["db"], 1)
    scenario.job("a-main", {"app": "x", "customer": "a", "db": "main"}, runs_for="4s")
    scenario.watch.wait_for(lambda w: "a-main" in w.running(), "a-main running")
    scenario.job("b-main", {"app": "x", "customer": "b", "db": "main"})  # db main is taken
    scenario.job("a-other", {"app": "x", "customer": "a", "db": "other"})  # customer a is taken
    scenario.job("c-other", {"app": "x", "customer": "c", "db": "other"})  # both free
    scenario.watch.wait_for(lambda w: w.finished("c-other"), "c-other finishing while a-main runs")
    assert "a-main" in scenario.watch.running()
    assert scenario.suspended("b-main") and scenario.suspended("a-other")
    scenario.watch.wait_for(lambda w: w.finished("a-main", "b-main", "a-other"), "all finishing", timeout=60)
    assert_never_over_admitted(scenario.watch)


def test_higher_priority_goes_first_then_older(scenario: Scenario) -> None:
    scenario.policy("one", {"app": "p"}, [], 1)
    scenario.job("old-low", {"app": "p"})
    created = scenario.watch_created("old-low")
    poll_until(lambda: time.time() >= created + 1, "a second passing: creationTimestamp has whole seconds")
    scenario.job("new-high", {"app": "p"}, annotations={"jobgate.dev/priority": "10"})
    scenario.job("new-low", {"app": "p"})
    scenario.start_operator()  # all three are queued before the first decision
    scenario.watch.wait_for(lambda w: w.finished("old-low", "new-high", "new-low"), "all finishing", timeout=60)
    admitted = {name: job.admitted_at or 0 for name, job in scenario.watch.jobs.items()}
    assert admitted["new-high"] < admitted["old-low"] < admitted["new-low"], admitted


def test_raising_the_limit_admits_at_once_and_lowering_never_preempts(scenario: Scenario) -> None:
    scenario.start_operator()
    scenario.policy("flex", {"app": "f"}, [], 1)
    names = [f"flex-{i}" for i in range(6)]
    for name in names:
        scenario.job(name, {"app": "f"}, runs_for="3s")
    scenario.watch.wait_for(lambda w: len(w.running()) == 1, "one running")
    scenario.set_limit("flex", 3)
    scenario.watch.wait_for(lambda w: len(w.running()) == 3, "three running after raising the limit")
    running_when_lowered = scenario.watch.running()
    scenario.set_limit("flex", 1)
    # No preemption: the three keep running until they finish on their own.
    scenario.watch.wait_for(lambda w: w.finished(*running_when_lowered), "the three finishing")
    scenario.watch.wait_for(lambda w: w.finished(*names), "all finishing", timeout=90)
    assert_never_over_admitted(scenario.watch)
    for name in running_when_lowered:
        assert scenario.watch.jobs[name].finished


def test_max_concurrent_zero_pauses_the_policy(scenario: Scenario) -> None:
    scenario.start_operator()
    scenario.policy("paused", {"app": "z"}, [], 0)
    scenario.job("waits-1", {"app": "z"})
    scenario.job("waits-2", {"app": "z"})
    status = scenario.wait_status("paused", lambda s: s.get("queued") == 2, "status showing 2 queued")
    assert status["conditions"][0]["reason"] == "Paused"
    assert scenario.suspended("waits-1") and scenario.suspended("waits-2")
    scenario.set_limit("paused", 1)
    scenario.watch.wait_for(lambda w: w.finished("waits-1", "waits-2"), "both finishing after unpausing")
    assert_never_over_admitted(scenario.watch)


def test_held_jobs_are_never_admitted(scenario: Scenario) -> None:
    scenario.start_operator()
    scenario.policy("hold", {"app": "h"}, [], 5)
    scenario.job("held", {"app": "h"}, annotations={"jobgate.dev/hold": "true"})
    scenario.job("free", {"app": "h"})
    scenario.watch.wait_for(lambda w: w.finished("free"), "the Job without hold finishing")
    assert scenario.suspended("held")
    scenario.batch.patch_namespaced_job(
        "held", scenario.namespace, {"metadata": {"annotations": {"jobgate.dev/hold": None}}}
    )
    scenario.watch.wait_for(lambda w: w.finished("held"), "the Job finishing once the hold is lifted")


def test_deleting_a_running_job_frees_its_slot(scenario: Scenario) -> None:
    scenario.start_operator()
    scenario.policy("del", {"app": "d"}, [], 1)
    scenario.job("long", {"app": "d"}, runs_for="600s")
    scenario.watch.wait_for(lambda w: "long" in w.running(), "long running")
    scenario.job("next", {"app": "d"})
    scenario.batch.delete_namespaced_job("long", scenario.namespace, propagation_policy="Background")
    scenario.watch.wait_for(lambda w: w.finished("next"), "next finishing after long was deleted")
    assert_never_over_admitted(scenario.watch)


def test_deleting_a_queued_job_skips_it(scenario: Scenario) -> None:
    scenario.start_operator()
    scenario.policy("delq", {"app": "q"}, [], 1)
    scenario.job("first", {"app": "q"}, runs_for="3s")
    scenario.watch.wait_for(lambda w: "first" in w.running(), "first running")
    scenario.job("doomed", {"app": "q"})
    scenario.job("last", {"app": "q"})
    scenario.batch.delete_namespaced_job("doomed", scenario.namespace)
    scenario.watch.wait_for(lambda w: w.finished("first", "last"), "first and last finishing")
    assert_never_over_admitted(scenario.watch)


def test_failed_jobs_free_their_slot(scenario: Scenario) -> None:
    scenario.start_operator()
    scenario.policy("fails", {"app": "fl"}, [], 1)
    scenario.job("broken", {"app": "fl"}, fail=True)
    scenario.job("after", {"app": "fl"})
    scenario.watch.wait_for(lambda w: w.finished("broken", "after"), "both finishing")
    broken = scenario.batch.read_namespaced_job("broken", scenario.namespace)
    assert any(c.type == "Failed" and c.status == "True" for c in broken.status.conditions)


def test_deleting_the_policy_releases_the_jobs_it_queued(scenario: Scenario) -> None:
    scenario.start_operator()
    scenario.policy("gone", {"app": "g"}, [], 0)
    # As the webhook would have marked them: queued by jobgate.
    queued_at = {"jobgate.dev/queued-at": "2026-01-01T00:00:00.000000Z"}
    scenario.job("ours-1", {"app": "g"}, annotations=queued_at)
    scenario.job("ours-2", {"app": "g"}, annotations=queued_at)
    scenario.job("theirs", {"app": "g"}, queued_mark=False)  # suspended by its owner: not ours to release
    scenario.wait_status("gone", lambda s: s.get("queued") == 2, "status showing 2 queued (not the owner's)")
    scenario.custom.delete_namespaced_custom_object(GROUP, VERSION, scenario.namespace, PLURAL, "gone")
    scenario.watch.wait_for(lambda w: w.finished("ours-1", "ours-2"), "released Jobs finishing")
    assert "Released" in [r for r, _ in scenario.events("ours-1")]
    assert scenario.suspended("theirs")


def test_jobs_queued_under_a_policy_deleted_while_no_operator_ran_are_released(scenario: Scenario) -> None:
    scenario.policy("gone", {"app": "g"}, [], 0)
    # As the webhook marks them: queued by jobgate (the label lets the operator find them without the policy).
    queued_at = {"jobgate.dev/queued-at": "2026-01-01T00:00:00.000000Z"}
    for name in ("ours-1", "ours-2"):
        scenario.job(name, {"app": "g", "jobgate.dev/queued": "true"}, annotations=queued_at)
    scenario.job("theirs", {"app": "g"}, queued_mark=False)  # suspended by its owner: not ours to release
    scenario.custom.delete_namespaced_custom_object(GROUP, VERSION, scenario.namespace, PLURAL, "gone")
    scenario.start_operator()
    scenario.watch.wait_for(lambda w: w.finished("ours-1", "ours-2"), "released Jobs finishing")
    assert "Released" in [r for r, _ in scenario.events("ours-1")]
    released = scenario.batch.read_namespaced_job("ours-1", scenario.namespace)
    assert released.metadata.labels == {"app": "g"}, "released Jobs leave the queue label"
    assert scenario.suspended("theirs")


def test_a_running_job_relabeled_into_another_policy_holds_a_slot_there(scenario: Scenario) -> None:
    """Each policy's Jobs come through their own watch: leaving one and entering the other moves the slot."""
    scenario.start_operator()
    scenario.policy("old", {"app": "x"}, [], 1)
    scenario.policy("new", {"moved": "yes"}, [], 1)
    scenario.job("mover", {"app": "x"}, runs_for="600s")
    scenario.watch.wait_for(lambda w: "mover" in w.running(), "mover admitted under policy old")
    relabel = [{"op": "replace", "path": "/metadata/labels", "value": {"moved": "yes"}}]
    scenario.batch.patch_namespaced_job("mover", scenario.namespace, relabel)

    scenario.job("after-old", {"app": "x"})
    scenario.watch.wait_for(lambda w: w.finished("after-old"), "old's slot, freed by the move, taken")
    scenario.job("blocked", {"moved": "yes"})
    scenario.wait_status("new", lambda s: s.get("running") == 1 and s.get("queued") == 1, "mover counted by new")
    assert scenario.suspended("blocked")
    scenario.batch.delete_namespaced_job("mover", scenario.namespace, propagation_policy="Background")
    scenario.watch.wait_for(lambda w: w.finished("blocked"), "the queued Job admitted once mover is gone")
    assert_never_over_admitted(scenario.watch)


def test_many_policies_each_with_its_own_watch_still_admit(scenario: Scenario) -> None:
    """120 distinct selectors: once one watch each (and a connection each, which must not starve the
    writes), now past the bound one watch of the namespace, filtered by their union."""
    for i in range(120):
        scenario.policy(f"tenant-{i:03d}", {"tenant": f"t{i:03d}"}, [], 1)
    scenario.start_operator()
    scenario.job("last-tenant-1", {"tenant": "t119"})
    scenario.job("last-tenant-2", {"tenant": "t119"})
    scenario.job("first-tenant", {"tenant": "t000"})
    scenario.watch.wait_for(
        lambda w: w.finished("last-tenant-1", "last-tenant-2", "first-tenant"), "the tenants' Jobs admitted in turn"
    )
    assert_never_over_admitted(scenario.watch)


def test_jobs_running_before_the_policy_count_and_are_left_alone(scenario: Scenario) -> None:
    early = [f"early-{i}" for i in range(3)]
    for name in early:
        scenario.job(name, {"app": "e"}, suspend=False, runs_for="600s")
    scenario.watch.wait_for(lambda w: len(w.running()) == 3, "three early Jobs running")
    scenario.start_operator()
    scenario.policy("late", {"app": "e"}, [], 1)
    scenario.job("queued", {"app": "e"})
    status = scenario.wait_status("late", lambda s: s.get("queued") == 1, "status showing the queued Job")
    assert status["running"] == 3
    assert scenario.watch.running() == set(early)  # none re-suspended
    assert "Resuspended" not in [r for name in early for r, _ in scenario.events(name)]
    for name in early[:2]:
        scenario.batch.delete_namespaced_job(name, scenario.namespace, propagation_policy="Background")
    assert scenario.suspended("queued")  # still 1 running: the limit
    scenario.batch.delete_namespaced_job(early[2], scenario.namespace, propagation_policy="Background")
    scenario.watch.wait_for(lambda w: w.finished("queued"), "the queued Job admitted once below the limit")


def test_backstop_resuspends_a_job_unsuspended_behind_our_back(scenario: Scenario) -> None:
    scenario.start_operator()
    policy = scenario.policy("strict", {"app": "s"}, [], 1)
    scenario.job("admitted", {"app": "s"}, runs_for="600s")
    scenario.watch.wait_for(lambda w: "admitted" in w.running(), "the first Job admitted")
    # Created after the policy (timestamps have whole seconds), unsuspended, over the limit.
    poll_until(lambda: time.time() >= policy.created + 1, "a second passing since the policy was created")
    scenario.job("intruder", {"app": "s"}, suspend=False)
    message = scenario.wait_event("intruder", "Resuspended")
    assert "without jobgate's admission" in message
    assert scenario.suspended("intruder")
    scenario.batch.delete_namespaced_job("admitted", scenario.namespace, propagation_policy="Background")
    scenario.watch.wait_for(lambda w: w.finished("intruder"), "the intruder admitted once the slot frees")


def test_a_missing_key_label_counts_as_empty_and_warns(scenario: Scenario) -> None:
    scenario.start_operator()
    scenario.policy("keyed", {"app": "k"}, ["customer"], 1)
    scenario.job("no-customer", {"app": "k"}, runs_for="3s")
    scenario.job("no-customer-2", {"app": "k"})
    message = scenario.wait_event("no-customer-2", "MissingKeyLabel")
    assert "customer" in message
    scenario.watch.wait_for(lambda w: w.finished("no-customer", "no-customer-2"), "both finishing")
    assert scenario.watch.peak[("keyed", ("",))] == 1


def test_events_and_status_tell_what_happens(scenario: Scenario) -> None:
    scenario.start_operator()
    scenario.policy("told", {"app": "t"}, ["customer"], 1)
    scenario.job("t-1", {"app": "t", "customer": "42"}, runs_for="4s")
    scenario.watch.wait_for(lambda w: "t-1" in w.running(), "t-1 running")
    scenario.job("t-2", {"app": "t", "customer": "42"})
    queued = scenario.wait_event("t-2", "Queued")
    assert "told" in queued and "customer=42" in queued and "1/1 running" in queued
    status = scenario.wait_status("told", lambda s: s.get("queued") == 1, "status showing the queue")
    assert status["running"] == 1 and status["keys"] == 1 and status["observedGeneration"] == 1
    assert status["busiestKeys"] == [{"key": {"customer": "42"}, "running": 1, "queued": 1}]
    assert status["conditions"][0]["type"] == "Ready" and status["conditions"][0]["status"] == "True"
    admitted = scenario.wait_event("t-2", "Admitted")
    assert "told" in admitted
    scenario.wait_status("told", lambda s: s.get("running") == 0 and s.get("queued") == 0, "status back to 0")


def test_restarting_the_operator_mid_burst_neither_over_admits_nor_strands(scenario: Scenario) -> None:
    first = scenario.start_operator()
    scenario.policy("burst", {"app": "b"}, ["customer"], 2)
    names = [f"burst-{c}-{i}" for c in "xyz" for i in range(10)]
    for name in names:
        scenario.job(name, {"app": "b", "customer": name.split("-")[1]})
    scenario.watch.wait_for(lambda w: sum(j.finished for j in w.jobs.values()) >= 6, "a few finishing")
    first.kill()  # no goodbye: the Lease is left to expire
    scenario.start_operator()
    scenario.watch.wait_for(lambda w: w.finished(*names), "all 30 finishing after the restart", timeout=180)
    assert_never_over_admitted(scenario.watch)
    assert max(scenario.watch.peak.values()) == 2


def test_a_job_selector_keeps_unselected_jobs_out_of_sight(scenario: Scenario) -> None:
    scenario.start_operator("--job-selector", "jobgate.dev/governed")
    scenario.policy("selected", {"app": "sel"}, [], 1)
    scenario.job("unseen", {"app": "sel"}, runs_for="600s")  # matches the policy, not the operator's selector
    scenario.job("seen-1", {"app": "sel", "jobgate.dev/governed": "yes"})
    scenario.job("seen-2", {"app": "sel", "jobgate.dev/governed": "yes"})
    scenario.watch.wait_for(lambda w: w.finished("seen-1", "seen-2"), "the selected Jobs admitted one by one")
    assert scenario.suspended("unseen")
    assert_never_over_admitted(scenario.watch)
