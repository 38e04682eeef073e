"""One collector of a group holds the wave controller's lease; another takes it when it goes.

The lease's own rules on SQLite and PostgreSQL (one holder among racing collectors, release,
expiry, terms), then collectors in one process on one database: the API, ``/metrics`` and
the handover on a clean stop. The three-process test with a kill -9 of the leader in the
middle of a rollout is tests/e2e/test_collector_group.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from tests.collector.helpers import Broker, collector_config, get_json, metric, wait_until

from edgedl.collector.leader import Lease
from edgedl.collector.service import Collector
from edgedl.collector.store import Store
from edgedl.errors import ConfigError


def test_racing_collectors_get_one_lease_and_take_it_over_on_release_or_expiry(
    db_url: str,
) -> None:
    store = Store(db_url)
    try:
        leases = [Lease(store.engine, store.dialect, "job", f"c{i}", ttl_s=1.0) for i in range(3)]
        won: list[bool] = [False] * 3
        barrier = threading.Barrier(3)

        def race(i: int) -> None:
            barrier.wait()
            won[i] = leases[i].hold()

        threads = [threading.Thread(target=race, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(won) == 1, won
        first = won.index(True)
        holder = leases[0].current()
        assert holder is not None and (holder.holder, holder.term) == (f"c{first}", 1)
        # Renewing keeps the term; the others still get nothing.
        assert leases[first].hold() and leases[first].term == 1
        others = [lease for i, lease in enumerate(leases) if i != first]
        assert not any(lease.hold() for lease in others)

        # A clean stop releases it: the next try of another collector takes it, term 2.
        leases[first].release()
        assert not leases[first].held
        assert others[0].hold() and others[0].term == 2
        # A holder that stops renewing (dies) loses it once it expires, not before.
        assert not others[1].hold()
        deadline = time.monotonic() + 5
        while not others[1].hold():
            assert time.monotonic() < deadline, "the lease never expired"
            time.sleep(0.05)
        assert others[1].term == 3
        assert not others[0].hold() and not others[0].held  # the old holder knows it lost
        current = others[0].current()
        assert current is not None and current.holder == others[1].holder
    finally:
        store.close()


def test_a_collector_pair_names_one_leader_and_hands_over_on_stop(
    broker: Broker,
    db_url: str,
    fleet: str,
    start_collector: Callable[..., Collector],
) -> None:
    first = start_collector(collector_config(broker, db_url, fleet, **{"fleet.tick_s": 0.1}))
    wait_until(lambda: first.fleet.lease.held, 10, "the first collector to lead")
    second = start_collector(
        collector_config(
            broker, db_url, fleet, **{"fleet.tick_s": 0.1, "mqtt.group": first.config.mqtt.group}
        )
    )
    for c in (first, second):
        view = get_json(f"{c.url}/api/v1/fleet/leader")
        assert view["leader"] == first.mqtt.client_id  # type: ignore[union-attr]
        assert view["address"] == first.url and view["term"] == 1
        assert view["is_leader"] is (c is first)
    assert metric(first, "edgedl_collector_fleet_leader") == 1.0
    assert metric(second, "edgedl_collector_fleet_leader") == 0.0

    first.stop()  # releases the lease: the other collector takes it at its next tick
    wait_until(lambda: second.fleet.lease.held, 5, "the second collector to lead")
    view = get_json(f"{second.url}/api/v1/fleet/leader")
    assert view["leader"] == second.mqtt.client_id and view["term"] == 2  # type: ignore[union-attr]
    assert metric(second, "edgedl_collector_fleet_leader") == 1.0


def test_a_lease_shorter_than_three_ticks_is_refused_naming_the_key(broker: Broker) -> None:
    with pytest.raises(ConfigError, match="leader_lease_s"):
        collector_config(
            broker, "sqlite:///x.db", **{"fleet.leader_lease_s": 1, "fleet.tick_s": 0.5}
        )
