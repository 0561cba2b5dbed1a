"""The registry contract, run on every backend (SQLite file, then PostgreSQL)."""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fanout.storage import (
    DuplicateExecutionError,
    InvalidFieldError,
    InvalidPageToken,
    LoadReading,
    NewObservation,
    ObservationRecord,
    Registry,
    TaskNotFoundError,
)

NS = "default"


def observation(execution_id: str, /, **overrides: object) -> NewObservation:
    fields: dict[str, object] = {
        "execution_id": execution_id,
        "workflow": "genome",
        "task": "individuals",
        "parallelism": 4,
        "cluster_load": 2.0,
        "duration_seconds": 82.0,
    }
    fields.update(overrides)
    return NewObservation(**fields)  # type: ignore[arg-type]


def create_task(registry: Registry, name: str, *, namespace: str = NS) -> int:
    with registry.task_transaction(namespace, name, create_config={"max_parallelism": 8}) as tx:
        return tx.record.id


# -- tasks ------------------------------------------------------------------------------


def test_task_is_created_once_with_its_config(registry: Registry) -> None:
    with registry.task_transaction(NS, "genome/individuals", create_config={"a": 1}) as tx:
        assert tx.created
        first = tx.record
    assert first.version == 1
    assert first.config == {"a": 1}
    assert first.state == {}
    assert first.created_at.tzinfo is not None
    assert first.created_at.utcoffset() == timedelta(0)

    with registry.task_transaction(NS, "genome/individuals", create_config={"a": 2}) as tx:
        assert not tx.created
        assert tx.record.id == first.id
    stored = registry.get_task(NS, "genome/individuals")
    assert stored == first  # the second create_config changed nothing
    assert registry.count_tasks() == 1


def test_missing_task_without_create_config_raises_and_creates_nothing(
    registry: Registry,
) -> None:
    with (
        pytest.raises(TaskNotFoundError, match="genome/missing"),
        registry.task_transaction(NS, "genome/missing"),
    ):
        pass  # pragma: no cover - never entered
    assert registry.get_task(NS, "genome/missing") is None
    assert registry.count_tasks() == 0


def test_get_task_by_id(registry: Registry) -> None:
    task_id = create_task(registry, "w/t")
    assert registry.get_task_by_id(task_id) == registry.get_task(NS, "w/t")
    assert registry.get_task_by_id(task_id + 1000) is None


def test_same_name_in_two_namespaces_are_two_tasks(registry: Registry) -> None:
    first = create_task(registry, "w/t", namespace="team-a")
    second = create_task(registry, "w/t", namespace="team-b")
    assert first != second
    task_a = registry.get_task("team-a", "w/t")
    assert task_a is not None
    assert task_a.id == first


@pytest.mark.parametrize(
    ("namespace", "name", "field"),
    [("", "w/t", "namespace"), (NS, "", "name"), (NS, "x" * 256, "name")],
)
def test_bad_task_keys_name_the_field(
    registry: Registry, namespace: str, name: str, field: str
) -> None:
    with (
        pytest.raises(InvalidFieldError) as caught,
        registry.task_transaction(namespace, name, create_config={}),
    ):
        pass  # pragma: no cover - never entered
    assert caught.value.field == field
    assert registry.count_tasks() == 0


def test_create_config_must_be_plain_json(registry: Registry) -> None:
    with (
        pytest.raises(InvalidFieldError, match="config"),
        registry.task_transaction(NS, "w/t", create_config={"when": datetime.now(UTC)}),
    ):
        pass  # pragma: no cover - never entered
    assert registry.get_task(NS, "w/t") is None


# -- paging -----------------------------------------------------------------------------


def test_list_tasks_pages_through_everything_in_key_order(registry: Registry) -> None:
    keys = [("alpha", f"w/t{i}") for i in range(5)] + [("beta", f"w/t{i}") for i in range(3)]
    for namespace, name in reversed(keys):
        create_task(registry, name, namespace=namespace)

    seen: list[tuple[str, str]] = []
    token: str | None = None
    pages = 0
    while True:
        page, token = registry.list_tasks(namespace=None, page_size=3, page_token=token)
        assert len(page) <= 3
        seen.extend((task.namespace, task.name) for task in page)
        pages += 1
        if token is None:
            break
    assert seen == sorted(keys)
    assert pages == 3

    only_beta, token = registry.list_tasks(namespace="beta", page_size=10, page_token=None)
    assert [task.name for task in only_beta] == ["w/t0", "w/t1", "w/t2"]
    assert token is None


def test_a_full_last_page_ends_without_a_token(registry: Registry) -> None:
    for i in range(4):
        create_task(registry, f"w/t{i}")
    page, token = registry.list_tasks(namespace=NS, page_size=2, page_token=None)
    assert token is not None
    page, token = registry.list_tasks(namespace=NS, page_size=2, page_token=token)
    assert [task.name for task in page] == ["w/t2", "w/t3"]
    assert token is None


def _token(parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "!!!!",
        _token({"namespace": "x"}),
        _token([None, "only-two"]),
        _token([None, 1, 2]),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_bad_page_token_is_refused(registry: Registry, token: str) -> None:
    with pytest.raises(InvalidPageToken) as caught:
        registry.list_tasks(namespace=None, page_size=5, page_token=token)
    assert caught.value.field == "page_token"


def test_page_token_is_tied_to_its_namespace_filter(registry: Registry) -> None:
    for i in range(3):
        create_task(registry, f"w/t{i}")
    _, token = registry.list_tasks(namespace=NS, page_size=1, page_token=None)
    assert token is not None
    with pytest.raises(InvalidPageToken, match="namespace"):
        registry.list_tasks(namespace=None, page_size=1, page_token=token)


@pytest.mark.parametrize("page_size", [0, -1, 1001])
def test_page_size_out_of_range(registry: Registry, page_size: int) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        registry.list_tasks(namespace=None, page_size=page_size, page_token=None)
    assert caught.value.field == "page_size"


# -- transactions -----------------------------------------------------------------------


class InjectedError(Exception):
    pass


def test_exception_inside_transaction_leaves_nothing_changed(registry: Registry) -> None:
    create_task(registry, "w/t")
    with registry.task_transaction(NS, "w/t") as tx:
        tx.save(state={"counter": 1})
    before = registry.get_task(NS, "w/t")
    assert before is not None

    def write_everything_then_fail() -> None:
        expires = datetime.now(UTC) + timedelta(hours=1)
        with registry.task_transaction(NS, "w/t") as tx:
            tx.add_observation(observation("e1"))
            tx.open_lease(
                "lease-1", parallelism=3, cluster_load=0, input_size=None, expires_at=expires
            )
            tx.save(config={"changed": True}, state={"counter": 99})
            raise InjectedError

    with pytest.raises(InjectedError):
        write_everything_then_fail()

    assert registry.get_task(NS, "w/t") == before
    assert registry.count_observations(before.id) == 0
    assert registry.get_lease("lease-1") is None
    assert registry.cluster_load() == 0


def test_exception_after_creation_rolls_the_creation_back(registry: Registry) -> None:
    def create_then_fail() -> None:
        with registry.task_transaction(NS, "w/new", create_config={}) as tx:
            assert tx.created
            raise InjectedError

    with pytest.raises(InjectedError):
        create_then_fail()
    assert registry.get_task(NS, "w/new") is None


def test_every_save_bumps_the_version(registry: Registry) -> None:
    create_task(registry, "w/t")
    with registry.task_transaction(NS, "w/t") as tx:
        saved = tx.save(state={"p": 0.5})
        assert saved.version == 2
        saved = tx.save(config={"max_parallelism": 16})
        assert saved.version == 3
        assert tx.record.version == 1  # as locked at the start
    with registry.task_transaction(NS, "w/t") as tx:
        saved = tx.save()
    assert saved.version == 4
    stored = registry.get_task(NS, "w/t")
    assert stored is not None
    assert stored.version == 4
    assert stored.state == {"p": 0.5}  # saving the config kept the state
    assert stored.config == {"max_parallelism": 16}
    assert stored.updated_at >= stored.created_at


def test_saved_state_round_trips_nested_json(registry: Registry) -> None:
    state = {"window": [[1, 1.0, 0.0, 292.0], [4, 1.0, 2.5, 82.0]], "p": 0.959, "phase": "PROBE"}
    create_task(registry, "w/t")
    with registry.task_transaction(NS, "w/t") as tx:
        tx.save(state=state)
    stored = registry.get_task(NS, "w/t")
    assert stored is not None
    assert stored.state == state


@pytest.mark.parametrize(
    "state", [{"p": math.nan}, {"p": math.inf}, {"when": datetime.now(UTC)}, ["not", "a", "dict"]]
)
def test_save_refuses_what_is_not_plain_json(registry: Registry, state: object) -> None:
    create_task(registry, "w/t")
    with registry.task_transaction(NS, "w/t") as tx:
        with pytest.raises(InvalidFieldError) as caught:
            tx.save(state=state)  # type: ignore[arg-type]
        assert caught.value.field == "state"
    stored = registry.get_task(NS, "w/t")
    assert stored is not None
    assert stored.version == 1
    assert stored.state == {}


def test_records_are_copies(registry: Registry) -> None:
    create_task(registry, "w/t")
    state = {"list": [1, 2]}
    with registry.task_transaction(NS, "w/t") as tx:
        saved = tx.save(state=state)
    state["list"].append(3)
    saved.state["list"].append(4)
    stored = registry.get_task(NS, "w/t")
    assert stored is not None
    assert stored.state == {"list": [1, 2]}


def test_transaction_cannot_be_used_after_its_block(registry: Registry) -> None:
    create_task(registry, "w/t")
    with registry.task_transaction(NS, "w/t") as tx:
        pass
    with pytest.raises(RuntimeError, match="ended"):
        tx.save(state={"late": True})


# -- observations -----------------------------------------------------------------------


def test_repeated_execution_id_is_refused_and_the_transaction_goes_on(
    registry: Registry,
) -> None:
    task_id = create_task(registry, "w/t")
    with registry.task_transaction(NS, "w/t") as tx:
        first = tx.add_observation(observation("e1", duration_seconds=80.0))
    with registry.task_transaction(NS, "w/t") as tx:
        assert tx.find_observation("e1") == first
        assert tx.find_observation("e2") is None
        with pytest.raises(DuplicateExecutionError) as caught:
            tx.add_observation(observation("e1", duration_seconds=999.0))
        assert caught.value.execution_id == "e1"
        # On PostgreSQL a failed INSERT would have aborted the transaction.
        tx.add_observation(observation("e2"))
        tx.save(state={"after": "duplicate"})
    stored = registry.observations(task_id)
    assert [o.execution_id for o in stored] == ["e1", "e2"]
    assert stored[0].duration_seconds == 80.0
    task = registry.get_task(NS, "w/t")
    assert task is not None
    assert task.state == {"after": "duplicate"}


def test_one_execution_id_may_appear_under_two_tasks(registry: Registry) -> None:
    first = create_task(registry, "w/a")
    second = create_task(registry, "w/b")
    for name in ("w/a", "w/b"):
        with registry.task_transaction(NS, name) as tx:
            tx.add_observation(observation("shared"))
    assert registry.count_observations(first) == 1
    assert registry.count_observations(second) == 1
    assert registry.count_observations() == 2


def test_observation_origin_may_be_unknown(registry: Registry) -> None:
    task_id = create_task(registry, "shared-model")
    with registry.task_transaction(NS, "shared-model") as tx:
        tx.add_observation(observation("e1", workflow="", task=""))
    (stored,) = registry.observations(task_id)
    assert (stored.workflow, stored.task) == ("", "")


def test_observation_fields_are_stored_as_given(registry: Registry) -> None:
    task_id = create_task(registry, "w/t")
    when = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    given = observation(
        "e1",
        parallelism=6,
        input_size=2.5e9,
        cluster_load=12,
        duration_seconds=58.7,
        startup_seconds=4.25,
        outcome="failed",
        recommendation_id="rec-1",
        created_at=when,
    )
    with registry.task_transaction(NS, "w/t") as tx:
        stored = tx.add_observation(given)
    (read,) = registry.observations(task_id, succeeded_only=False)
    assert read == stored
    assert read.task_id == task_id
    assert (read.workflow, read.task) == ("genome", "individuals")
    assert (read.parallelism, read.input_size, read.cluster_load) == (6, 2.5e9, 12.0)
    assert (read.duration_seconds, read.startup_seconds) == (58.7, 4.25)
    assert (read.outcome, read.recommendation_id, read.created_at) == ("failed", "rec-1", when)


def test_observations_limit_keeps_the_newest_oldest_first(registry: Registry) -> None:
    task_id = create_task(registry, "w/t")
    outcomes = ["succeeded", "failed", "succeeded", "succeeded", "failed", "succeeded"]
    with registry.task_transaction(NS, "w/t") as tx:
        for index, outcome in enumerate(outcomes):
            tx.add_observation(observation(f"e{index}", outcome=outcome))
    succeeded = [f"e{i}" for i, outcome in enumerate(outcomes) if outcome == "succeeded"]

    def ids(records: list[ObservationRecord]) -> list[str]:
        return [r.execution_id for r in records]

    assert ids(registry.observations(task_id)) == succeeded
    assert ids(registry.observations(task_id, limit=2)) == succeeded[-2:]
    assert ids(registry.observations(task_id, limit=0)) == []
    assert ids(registry.observations(task_id, succeeded_only=False)) == [f"e{i}" for i in range(6)]
    assert ids(registry.observations(task_id, limit=3, succeeded_only=False)) == [
        "e3",
        "e4",
        "e5",
    ]
    with registry.task_transaction(NS, "w/t") as tx:
        assert ids(tx.observations(limit=2)) == succeeded[-2:]
        assert ids(tx.observations(limit=None, succeeded_only=False)) == [f"e{i}" for i in range(6)]
    assert registry.count_observations(task_id) == 6
    assert registry.count_observations(task_id, succeeded_only=True) == 4
    seqs = [o.seq for o in registry.observations(task_id, succeeded_only=False)]
    assert seqs == sorted(seqs)
    with pytest.raises(InvalidFieldError, match="limit"):
        registry.observations(task_id, limit=-1)


def test_delete_observations_forgets_only_this_task(registry: Registry) -> None:
    kept_id = create_task(registry, "w/kept")
    reset_id = create_task(registry, "w/reset")
    with registry.task_transaction(NS, "w/kept") as tx:
        tx.add_observation(observation("k1"))
    with registry.task_transaction(NS, "w/reset") as tx:
        for index in range(3):
            tx.add_observation(observation(f"r{index}"))
    old_seqs = [o.seq for o in registry.observations(reset_id)]

    with registry.task_transaction(NS, "w/reset") as tx:
        assert tx.delete_observations() == 3
        assert tx.observations(limit=None) == []
        tx.add_observation(observation("r0"))  # the execution id is free again
    assert registry.count_observations(kept_id) == 1
    (fresh,) = registry.observations(reset_id)
    assert fresh.seq > max(old_seqs)  # seq never goes back, even after a delete


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"parallelism": 0}, "parallelism"),
        ({"parallelism": 2.5}, "parallelism"),
        ({"parallelism": True}, "parallelism"),
        ({"duration_seconds": 0.0}, "duration_seconds"),
        ({"duration_seconds": math.inf}, "duration_seconds"),
        ({"cluster_load": -1.0}, "cluster_load"),
        ({"cluster_load": math.nan}, "cluster_load"),
        ({"input_size": 0.0}, "input_size"),
        ({"startup_seconds": -0.5}, "startup_seconds"),
        ({"outcome": "lost"}, "outcome"),
        ({"execution_id": ""}, "execution_id"),
        ({"workflow": "w" * 300}, "workflow"),
        ({"task": None}, "task"),
        ({"recommendation_id": "r" * 65}, "recommendation_id"),
        ({"created_at": datetime(2024, 1, 1)}, "created_at"),  # naive on purpose
    ],
)
def test_bad_observation_fields_are_named(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        observation("e1", **overrides)
    assert caught.value.field == field
    assert field in str(caught.value)


# -- leases -----------------------------------------------------------------------------


def test_leases_count_until_closed_or_expired(registry: Registry) -> None:
    task_id = create_task(registry, "w/t")
    now = datetime.now(UTC)
    with registry.task_transaction(NS, "w/t") as tx:
        short = tx.open_lease(
            "short",
            parallelism=3,
            cluster_load=0,
            input_size=None,
            expires_at=now + timedelta(minutes=1),
        )
        tx.open_lease(
            "long",
            parallelism=5,
            cluster_load=3,
            input_size=1e6,
            expires_at=now + timedelta(hours=1),
        )
    assert registry.get_lease("short") == short
    assert short.task_id == task_id
    assert short.closed_at is None
    long_lease = registry.get_lease("long")
    assert long_lease is not None
    assert (long_lease.parallelism, long_lease.cluster_load, long_lease.input_size) == (
        5,
        3.0,
        1e6,
    )
    assert registry.get_lease("unknown") is None

    assert registry.cluster_load(now=now) == 8
    # Past its expiry a lease stops counting, though nobody closed it.
    assert registry.cluster_load(now=now + timedelta(minutes=2)) == 5
    assert registry.cluster_load(now=now + timedelta(hours=2)) == 0

    closed_at = now + timedelta(seconds=30)
    with registry.task_transaction(NS, "w/t") as tx:
        assert tx.close_lease("long", now=closed_at) is True
        assert tx.close_lease("long", now=closed_at) is False
        assert tx.close_lease("never-opened", now=closed_at) is False
    assert registry.cluster_load(now=now) == 3
    closed = registry.get_lease("long")
    assert closed is not None
    assert closed.closed_at == closed_at
    assert not closed.is_open(now)


def test_lease_at_version_opens_only_while_the_task_is_current(registry: Registry) -> None:
    task_id = create_task(registry, "w/t")
    record = registry.get_task(NS, "w/t")
    assert record is not None
    expires = datetime.now(UTC) + timedelta(hours=1)
    fields: dict[str, Any] = {
        "parallelism": 4,
        "cluster_load": 2.5,
        "input_size": 7.0,
        "expires_at": expires,
    }
    assert registry.open_lease_at_version(
        task_id, record.version, "fresh", workflow="w", task="t", **fields
    )
    lease = registry.get_lease("fresh")
    assert lease is not None
    assert (lease.task_id, lease.parallelism, lease.cluster_load, lease.input_size) == (
        task_id,
        4,
        2.5,
        7.0,
    )
    assert (lease.workflow, lease.task, lease.expires_at, lease.closed_at) == (
        "w",
        "t",
        expires,
        None,
    )
    # Stored like any other lease: counted, and past its expiry not.
    assert registry.cluster_load(now=expires - timedelta(seconds=1)) == 4
    assert registry.cluster_load(now=expires) == 0

    with registry.task_transaction(NS, "w/t") as tx:
        tx.save(state={"moved": True})
    assert not registry.open_lease_at_version(task_id, record.version, "stale", **fields)
    assert not registry.open_lease_at_version(task_id + 1000, 1, "no-task", **fields)
    assert registry.get_lease("stale") is None and registry.get_lease("no-task") is None
    with pytest.raises(InvalidFieldError) as caught:
        registry.open_lease_at_version(task_id, 2, "bad", **(fields | {"parallelism": 0}))
    assert caught.value.field == "parallelism"


def test_report_at_version_writes_run_state_and_lease_together(registry: Registry) -> None:
    task_id = create_task(registry, "w/t")
    expires = datetime.now(UTC) + timedelta(hours=1)
    lease = registry.open_lease_at_version(
        task_id, 1, "lease-1", parallelism=4, cluster_load=0.0, input_size=None, expires_at=expires
    )
    assert lease is not None and registry.cluster_load() == 4
    closing = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    # No input size and no start-up time: NULLs must reach float columns on every backend.
    run = observation("run-1", recommendation_id="lease-1", created_at=closing)
    written = registry.report_at_version(
        task_id, 1, run, state={"learned": [1.5, None]}, lease_id="lease-1", now=closing
    )
    assert written is not None
    assert (written.version, written.lease_closed) == (2, True)
    stored = registry.get_task(NS, "w/t")
    assert stored is not None
    assert (stored.version, stored.state) == (2, {"learned": [1.5, None]})
    assert stored.updated_at == written.updated_at
    [kept] = registry.observations(task_id)
    assert (kept.execution_id, kept.recommendation_id, kept.input_size) == (
        "run-1",
        "lease-1",
        None,
    )
    assert (kept.parallelism, kept.cluster_load, kept.created_at) == (4, 2.0, closing)
    closed = registry.get_lease("lease-1")
    assert closed is not None and closed.closed_at == closing
    assert registry.cluster_load() == 0

    # A lease already closed stays as it was; the run is still stored.
    again = registry.report_at_version(
        task_id, 2, observation("run-2"), state={"n": 2}, lease_id="lease-1", now=expires
    )
    assert again is not None and (again.version, again.lease_closed) == (3, False)
    closed_again = registry.get_lease("lease-1")
    assert closed_again is not None and closed_again.closed_at == closing


def test_report_at_version_writes_nothing_when_stale_or_repeated(registry: Registry) -> None:
    task_id = create_task(registry, "w/t")
    now = datetime.now(UTC)
    assert registry.report_at_version(
        task_id, 1, observation("run-1"), state={"n": 1}, lease_id=None, now=now
    )
    before = registry.get_task(NS, "w/t")
    for version, execution_id in ((1, "run-2"), (2, "run-1"), (7, "run-3")):
        # Stale version, repeated execution id, a version the task never had.
        assert (
            registry.report_at_version(
                task_id, version, observation(execution_id), state={"n": 9}, lease_id=None, now=now
            )
            is None
        )
    assert registry.get_task(NS, "w/t") == before
    assert [o.execution_id for o in registry.observations(task_id)] == ["run-1"]
    assert (
        registry.report_at_version(
            task_id + 1000, 1, observation("run-4"), state={}, lease_id=None, now=now
        )
        is None
    )
    assert registry.count_observations() == 1


def test_report_at_version_loses_a_race_for_its_execution_id_cleanly(registry: Registry) -> None:
    task_id = create_task(registry, "w/t")
    results: list[object] = []

    def report() -> None:
        results.append(
            registry.report_at_version(
                task_id, 1, observation("x"), state={"n": 1}, lease_id=None, now=datetime.now(UTC)
            )
        )

    racer = threading.Thread(target=report)
    with registry.task_transaction(NS, "w/t") as tx:
        # A failed run of the same execution, stored without a new version; the racer
        # waits for this transaction's lock and must then find the id taken.
        tx.add_observation(observation("x", outcome="failed"))
        racer.start()
        time.sleep(0.5)
        assert racer.is_alive()
    racer.join(timeout=30)
    assert results == [None]
    stored = registry.get_task(NS, "w/t")
    assert stored is not None and (stored.version, stored.state) == (1, {})
    assert [o.outcome for o in registry.observations(task_id, succeeded_only=False)] == ["failed"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"observation": observation("x", outcome="failed")}, "observation"),
        ({"state": {"bad": math.nan}}, "state"),
        ({"lease_id": ""}, "lease_id"),
        ({"task_id": "1"}, "task_id"),
        ({"now": datetime(2026, 1, 1)}, "now"),
    ],
)
def test_report_at_version_names_bad_arguments(
    registry: Registry, overrides: dict[str, Any], field: str
) -> None:
    task_id = create_task(registry, "w/t")
    arguments: dict[str, Any] = {
        "task_id": task_id,
        "version": 1,
        "observation": observation("x"),
        "state": {},
        "lease_id": None,
        "now": datetime.now(UTC),
    }
    with pytest.raises(InvalidFieldError) as caught:
        registry.report_at_version(**(arguments | overrides))
    assert caught.value.field == field
    stored = registry.get_task(NS, "w/t")
    assert stored is not None and stored.version == 1
    assert registry.count_observations() == 0


def test_cluster_load_spans_every_task(registry: Registry) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    for index, name in enumerate(("w/a", "w/b", "w/c")):
        with registry.task_transaction(NS, name, create_config={}) as tx:
            tx.open_lease(
                f"lease-{name}",
                parallelism=index + 1,
                cluster_load=0,
                input_size=None,
                expires_at=expires,
            )
    assert registry.cluster_load() == 6


def test_read_load_tells_when_the_first_counted_lease_expires(registry: Registry) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert registry.read_load(now=now) == LoadReading(0, None)
    with registry.task_transaction(NS, "w/a", create_config={}) as tx:
        for lease_id, s, minutes in (("soon", 2, 5), ("later", 3, 60), ("gone", 7, -1)):
            tx.open_lease(
                lease_id,
                parallelism=s,
                cluster_load=0,
                input_size=None,
                expires_at=now + timedelta(minutes=minutes),
            )
        tx.close_lease("later", now=now)
        tx.open_lease(
            "last",
            parallelism=1,
            cluster_load=0,
            input_size=None,
            expires_at=now + timedelta(hours=2),
        )
    # "gone" expired and "later" is closed: neither counts nor sets the expiry.
    assert registry.read_load(now=now) == LoadReading(3, now + timedelta(minutes=5))
    assert registry.read_load(now=now + timedelta(minutes=5)) == LoadReading(
        1, now + timedelta(hours=2)
    )


def test_a_lease_closes_from_another_tasks_transaction(registry: Registry) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    with registry.task_transaction(NS, "w/a", create_config={}) as tx:
        tx.open_lease("lease-a", parallelism=2, cluster_load=0, input_size=None, expires_at=expires)
    with registry.task_transaction(NS, "w/b", create_config={}) as tx:
        assert tx.close_lease("lease-a", now=datetime.now(UTC))
    assert registry.cluster_load() == 0


def test_lease_id_in_use_is_refused_and_the_transaction_goes_on(registry: Registry) -> None:
    create_task(registry, "w/t")
    expires = datetime.now(UTC) + timedelta(hours=1)
    with registry.task_transaction(NS, "w/t") as tx:
        tx.open_lease("dup", parallelism=2, cluster_load=0, input_size=None, expires_at=expires)
        with pytest.raises(InvalidFieldError) as caught:
            tx.open_lease("dup", parallelism=7, cluster_load=0, input_size=None, expires_at=expires)
        assert caught.value.field == "lease_id"
        tx.save(state={"still": "usable"})
    assert registry.cluster_load() == 2
    task = registry.get_task(NS, "w/t")
    assert task is not None
    assert task.state == {"still": "usable"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"parallelism": 0}, "parallelism"),
        ({"cluster_load": -2.0}, "cluster_load"),
        ({"input_size": -1.0}, "input_size"),
        ({"expires_at": datetime(2030, 1, 1)}, "expires_at"),  # naive on purpose
    ],
)
def test_bad_lease_fields_are_named(
    registry: Registry, overrides: dict[str, object], field: str
) -> None:
    create_task(registry, "w/t")
    arguments: dict[str, object] = {
        "parallelism": 2,
        "cluster_load": 0.0,
        "input_size": None,
        "expires_at": datetime.now(UTC) + timedelta(hours=1),
    }
    arguments.update(overrides)
    with registry.task_transaction(NS, "w/t") as tx, pytest.raises(InvalidFieldError) as caught:
        tx.open_lease("lease", **arguments)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert registry.get_lease("lease") is None


def test_cluster_load_needs_an_aware_time(registry: Registry) -> None:
    with pytest.raises(InvalidFieldError, match="now"):
        registry.cluster_load(now=datetime(2030, 1, 1))  # naive on purpose


def test_purge_leases_drops_only_finished_ones(registry: Registry) -> None:
    create_task(registry, "w/t")
    now = datetime.now(UTC)
    with registry.task_transaction(NS, "w/t") as tx:
        for lease_id, expires in (("expired", -10), ("open", 60), ("closed", 60)):
            tx.open_lease(
                lease_id,
                parallelism=1,
                cluster_load=0,
                input_size=None,
                expires_at=now + timedelta(minutes=expires),
            )
        tx.close_lease("closed", now=now - timedelta(minutes=5))
    assert registry.purge_leases(before=now) == 2
    assert registry.get_lease("open") is not None
    assert registry.get_lease("expired") is None
    assert registry.get_lease("closed") is None


def test_purge_leases_in_batches(registry: Registry) -> None:
    create_task(registry, "w/t")
    now = datetime.now(UTC)
    with registry.task_transaction(NS, "w/t") as tx:
        for i in range(5):
            tx.open_lease(
                f"old-{i}",
                parallelism=1,
                cluster_load=0,
                input_size=None,
                expires_at=now - timedelta(minutes=1),
            )
        tx.open_lease(
            "open", parallelism=1, cluster_load=0, input_size=None, expires_at=now + timedelta(1)
        )
    assert [registry.purge_leases(before=now, limit=2) for _ in range(4)] == [2, 2, 1, 0]
    assert registry.get_lease("open") is not None
    with pytest.raises(InvalidFieldError) as caught:
        registry.purge_leases(before=now, limit=0)
    assert caught.value.field == "limit"
