"""A Python client of the collector's labels API, for label sources in the cloud.

    from edgedl.collector_client import CollectorClient, DirectLabel

    with CollectorClient("http://collector:8000", token="<[http] admin_token>") as collector:
        collector.label(DirectLabel("factory-7", "pi-7", "3f9c2a71-17", 4,
                                    model="digits", version="2", predicted=9))
        collector.labels([DirectLabel("factory-7", "pi-7", "req-18", 1)])  # a sampled id

A label names its prediction by the id the agent answered with, and carries the prediction
itself (model, version, predicted class) unless the id names a sample the device sent. The
collector counts each prediction once, whether its label came here or to the agent
(docs/collector.md). A refused single label, an unreachable collector or a wrong token
raise :class:`~edgedl.errors.ServingError` with the collector's reason and ``status``
(409 duplicate, 404 unknown, 400 invalid, 401/403 token; 0 unreachable). Needs only httpx.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from .errors import ServingError


@dataclass(frozen=True)
class DirectLabel:
    """The true label of one prediction (a class, or one per sample of a batch request)."""

    fleet: str
    device: str
    id: str
    label: int | list[int]
    model: str | None = None
    version: str | None = None
    predicted: int | list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The label as the API takes it (unset fields left out)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


class CollectorClient:
    """Sends late labels to one collector. Use as a context manager, or call :meth:`close`."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def __enter__(self) -> CollectorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def label(self, label: DirectLabel) -> dict[str, Any]:
        """Send one label; the collector's result (``status`` ``accepted``), else raises."""
        return self._post(label.to_dict())

    def labels(self, labels: Iterable[DirectLabel]) -> dict[str, Any]:
        """Send many labels at once (at most 1000): ``{"counts": {status: n}, "results":
        [...]}``, one result per label in order (``accepted``, ``duplicate``, ``unknown`` or
        ``invalid``, each with its ``message``)."""
        return self._post({"labels": [item.to_dict() for item in labels]})

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post("/api/v1/labels", json=body)
        except httpx.HTTPError as exc:
            raise ServingError(
                f"cannot reach the collector at {self.url}: {exc}", status=0
            ) from exc
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            message = response.text or response.reason_phrase
            if isinstance(data, dict):
                message = str(data.get("error") or data.get("message") or message)
            raise ServingError(message, status=response.status_code)
        if not isinstance(data, dict):
            raise ServingError("/api/v1/labels: expected a JSON object", status=502)
        return data


__all__ = ["CollectorClient", "DirectLabel"]
