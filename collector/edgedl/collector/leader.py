"""One collector of a group runs a job: a lease row in the database the group shares.

Several collectors on one database each run the same threads; a job that must run once (the
fleet's wave controller) runs only in the collector that holds its lease. A lease is a row of
the ``leases`` table (:mod:`.schema`, migration 8): the holder's id, the HTTP address it
answers on, a ``term`` that grows by one each time the lease changes hands, and when it
expires. :meth:`Lease.hold` takes or renews it in one statement::

    INSERT INTO leases ... VALUES (name, me, now, now + ttl, term 1)
    ON CONFLICT (name) DO UPDATE SET holder = me, expires_at = now + ttl, term = term (+ 1)
    WHERE leases.holder = me OR leases.expires_at < now
    RETURNING term

so of several collectors trying at once, one gets a row back and the others none (PostgreSQL
locks the row; SQLite has one writer). Times are the database's clock
(``clock_timestamp()``, ``julianday('now')``), never the collectors' own, so their clocks
need not agree. A holder that stops (SIGTERM) releases the lease and another takes it at its
next try; one that dies (``kill -9``, a lost machine) stops renewing, and another takes it
once it expires, ``ttl_s`` after the last renewal.

The holder acts only while its last renewal is younger than ``ttl_s`` by its own monotonic
clock, measured from before the renewal was sent: it stops believing it leads before the
database lets anyone else in, as long as one of its ticks is shorter than the lease.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, case, literal, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.expression import ColumnElement

from .schema import leases

log = logging.getLogger("edgedl.collector.leader")


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease, as the database says."""

    name: str
    holder: str
    address: str | None
    term: int
    acquired_at: float
    expires_in_s: float


def database_now(dialect: str) -> ColumnElement[Any]:
    """The database's clock in seconds since the Unix epoch, as an SQL expression."""
    from sqlalchemy import func

    if dialect == "sqlite":
        return (func.julianday("now") - 2440587.5) * 86400.0
    return func.extract("epoch", func.clock_timestamp())


class Lease:
    """The lease ``name`` as seen by the collector ``holder`` (thread-safe like the engine)."""

    def __init__(
        self,
        engine: Engine,
        dialect: str,
        name: str,
        holder: str,
        address: str | None = None,
        ttl_s: float = 15.0,
    ) -> None:
        self.engine = engine
        self.dialect = dialect
        self.name = name
        self.holder = holder
        self.address = address
        self.ttl_s = ttl_s
        self.term: int | None = None
        self._valid_until = 0.0
        self._last_seen: tuple[str, int] | None = None
        self._failing = False

    @property
    def held(self) -> bool:
        """Whether this collector holds the lease now (by its last renewal)."""
        return self.term is not None and time.monotonic() < self._valid_until

    def hold(self) -> bool:
        """Take the lease, or renew it if held; whether this collector holds it now."""
        sent = time.monotonic()
        try:
            term = self._take()
        except SQLAlchemyError as exc:
            if not self._failing:
                log.warning("lease %s: the database refused a renewal: %s", self.name, exc)
            self._failing = True
            self._lost(None)
            return False
        self._failing = False
        if term is None:
            self._lost(self.current())
            return False
        # Act only while the renewal, counted from before it was sent, is younger than ttl.
        self._valid_until = sent + self.ttl_s
        if term != self.term:
            log.info("lease %s: this collector (%s) leads, term %d", self.name, self.holder, term)
            self._last_seen = (self.holder, term)
        self.term = term
        return self.held

    def _take(self) -> int | None:
        from sqlalchemy.dialects import postgresql, sqlite

        insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        now = database_now(self.dialect)
        stmt = insert(leases).values(
            name=self.name,
            holder=self.holder,
            address=self.address,
            term=1,
            acquired_at=now,
            renewed_at=now,
            expires_at=now + self.ttl_s,
        )
        new, old = stmt.excluded, leases.c
        mine = old.holder == new.holder
        upsert = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "holder": new.holder,
                "address": new.address,
                "term": case((mine, old.term), else_=old.term + 1),
                "acquired_at": case((mine, old.acquired_at), else_=new.acquired_at),
                "renewed_at": new.renewed_at,
                "expires_at": new.expires_at,
            },
            where=mine | (old.expires_at < now),
        ).returning(leases.c.term)
        with self.engine.begin() as conn:
            row = conn.execute(upsert).first()
        return int(row.term) if row else None

    def _lost(self, other: LeaseHolder | None) -> None:
        if self.term is not None:
            who = f"{other.holder} leads, term {other.term}" if other else "the database is away"
            log.warning(
                "lease %s: this collector (%s) no longer leads: %s", self.name, self.holder, who
            )
        self.term = None
        self._valid_until = 0.0
        if other is not None and self._last_seen != (other.holder, other.term):
            self._last_seen = (other.holder, other.term)
            log.info("lease %s: %s leads, term %d", self.name, other.holder, other.term)

    def release(self) -> None:
        """Give the lease up (when stopping), so another collector takes it at once."""
        if self.term is None:
            return
        self.term = None
        self._valid_until = 0.0
        stmt = (
            update(leases)
            .where(leases.c.name == self.name, leases.c.holder == self.holder)
            .values(expires_at=literal(0.0))
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(stmt)
        except SQLAlchemyError as exc:
            log.warning("lease %s: could not release it: %s", self.name, exc)
            return
        log.info("lease %s: this collector (%s) released it", self.name, self.holder)

    def current(self) -> LeaseHolder | None:
        """Who holds the lease now (None when nobody does or it expired)."""
        now = database_now(self.dialect)
        query = select(
            leases.c.holder,
            leases.c.address,
            leases.c.term,
            leases.c.acquired_at,
            (leases.c.expires_at - now).label("left"),
        ).where(leases.c.name == self.name)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None or float(row.left) <= 0:
            return None
        return LeaseHolder(
            self.name,
            str(row.holder),
            row.address,
            int(row.term),
            float(row.acquired_at),
            round(float(row.left), 3),
        )
