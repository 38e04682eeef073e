"""The registry of enrolled devices: who may report when ``[registry] required`` is on.

``edgedl collector devices add/ls/rm`` edit it; ingest asks :meth:`DeviceRegistry.among`
once per batch, so a device enrolled while the collector runs counts from its next batch.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, select, tuple_

from .schema import registered_devices

if TYPE_CHECKING:
    from .store import Store

DeviceKey = tuple[str, str]  # fleet, device


class DeviceRegistry:
    """The enrolled ``(fleet, device)`` pairs, kept in the collector's database."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def add(self, fleet: str, device: str) -> bool:
        """Enrol a device; False when it was enrolled already."""
        stmt = (
            self._store.insert(registered_devices)
            .values(fleet=fleet, device=device, added_at=time.time())
            .on_conflict_do_nothing(index_elements=["fleet", "device"])
        )
        with self._store.write_lock, self._store.engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount)

    def remove(self, fleet: str, device: str) -> bool:
        """Remove a device from the registry; False when it was not enrolled."""
        r = registered_devices.c
        stmt = registered_devices.delete().where(and_(r.fleet == fleet, r.device == device))
        with self._store.write_lock, self._store.engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount)

    def enrolled(self) -> list[dict[str, Any]]:
        """The enrolled devices: fleet, device, added_at."""
        r = registered_devices.c
        with self._store.engine.connect() as conn:
            rows = conn.execute(select(registered_devices).order_by(r.fleet, r.device))
            return [dict(row._mapping) for row in rows]

    def among(self, keys: set[DeviceKey]) -> set[DeviceKey]:
        """Which of these ``(fleet, device)`` are enrolled."""
        if not keys:
            return set()
        r = registered_devices.c
        q = select(r.fleet, r.device).where(tuple_(r.fleet, r.device).in_(list(keys)))
        with self._store.engine.connect() as conn:
            return {(row.fleet, row.device) for row in conn.execute(q)}
